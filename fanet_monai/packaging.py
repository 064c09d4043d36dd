"""``fanet package``: write a self-contained, model-zoo-format bundle folder from this repository's bundle and a
training run's weights.

Layout written to ``OUT``::

    configs/   metadata, train, evaluate, inference, multi-GPU and logging configs (training overrides baked in)
    models/    model.pt (the run's best network, a bare state dict) and model.ts (TorchScript, ckpt_export)
    docs/      README.md, data_license.txt
    scripts/   __init__.py (the import shim) + fanet_monai/ (this package's source, copied at packaging time)
    LICENSE

A run trained with a data layer (``volume.json``: ``run.json``'s ``config_layers``) is packaged with the layer merged
into ``train.json``, ``evaluate.json`` and ``inference.json``, so each packaged config is a complete 3-D bundle on its
own (MONAI Label and ``python -m monai.bundle run`` read one config), and ``metadata.json`` describes it: three
``spatial_shape`` entries (MONAI Label's dimension), one image channel plus the feedback mask, and the run's label
names in the output's ``channel_def``.

One source of truth: the code under ``scripts/fanet_monai`` is copied from the imported ``fanet_monai`` package
when the bundle is written, never kept as a second copy in git. The configs keep importing ``fanet_monai`` (so
they stay identical to the repository's, and the package's absolute imports work unchanged); the packaged configs
only gain ``"$import scripts"`` in front, whose ``__init__`` puts ``scripts/`` on ``sys.path``. The alternative,
rewriting every config target and every import inside the package to ``scripts.fanet_monai``, would make the
packaged code differ from the tested source.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser, ckpt_export

import fanet_monai
from fanet_monai.bundle import packaged_bundle_dir

__all__ = ["package_bundle", "write_label_app", "LABEL_APP_MAIN", "SCRIPTS_IMPORT"]

#: First import of every packaged config: makes ``scripts/fanet_monai`` importable as ``fanet_monai``.
SCRIPTS_IMPORT = "$import scripts"
_CONFIGS = ("metadata.json", "train.json", "evaluate.json", "inference.json", "multi_gpu_train.json",
            "multi_gpu_evaluate.json", "logging.conf")


def _set_override(config: dict, key: str, value: Any) -> bool:
    """Set ``key`` (``a#b#0`` style) in ``config`` when its parent exists; returns whether it was set."""
    parts = key.split("#")
    node: Any = config
    for part in parts[:-1]:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    last = parts[-1]
    if isinstance(node, dict) and (last in node or len(parts) > 1):
        node[last] = value
        return True
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        node[int(last)] = value
        return True
    return False


_LAYERED = ("train.json", "evaluate.json", "inference.json")


def _merge_layer(config: dict, layer: dict) -> dict:
    """``config`` with the data layer's ids over it, as MONAI's ``ConfigParser`` merges the two files: top-level
    ids replaced, ``+imports`` appended, and a nested id (``network_def#spatial_dims``) set inside its parent — or,
    in a config without that parent (``evaluate.json``, laid over ``train.json`` when it runs), kept as the id for
    ``ConfigParser`` to set at load time."""
    merged = copy.deepcopy(config)
    for key, value in layer.items():
        if key == "+imports":
            target = "imports" if "imports" in merged else "+imports"
            merged[target] = [*merged.get(target, []), *[i for i in value if i not in merged.get(target, [])]]
        elif "#" not in key or not _set_override(merged, key, value):
            merged[key] = value
    return merged


def _describe(meta: dict, overrides: Mapping[str, Any], label_names: Mapping[str, str] | None,
              label_name: str | None) -> None:
    """Fit ``metadata.json``'s ``network_data_format`` to the packaged network: dimensions, image channels, the
    classes and their names."""
    formats = meta["network_data_format"]
    image, pred = formats["inputs"]["image"], formats["outputs"]["pred"]
    dims = int(overrides.get("spatial_dims", len(image["spatial_shape"])))
    channels = int(overrides.get("image_channels", image["num_channels"] - 1))
    image["spatial_shape"] = pred["spatial_shape"] = ["16*n"] * dims
    reviewed = bool(overrides.get("reviewed_input", False))
    mask_def = image["channel_def"][str(image["num_channels"] - 1)]
    if channels != image["num_channels"] - 1:
        image.update(format="magnitude", channel_def={str(c): f"image channel {c}" for c in range(channels)})
    defs = {str(c): image["channel_def"][str(c)] for c in range(channels)}
    if reviewed:  # FANet(reviewed_input=True): the reviewed pixels come between the image and the mask
        defs[str(channels)] = "reviewed pixels (1: the annotator's label there is final; zeros without one)"
    defs[str(len(defs))] = mask_def
    image.update(num_channels=len(defs), channel_def=defs)
    num_classes = int(overrides.get("num_classes", 1))
    names = {str(k): str(v) for k, v in (label_names or {}).items()}
    if num_classes == 1:
        pred["channel_def"] = {"0": "background", "1": label_name or names.get("1") or "foreground"}
    else:
        pred["channel_def"] = {"0": "background", **{str(k): names.get(str(k), f"class {k}")
                                                     for k in range(1, num_classes + 1)}}
    pred["num_channels"] = num_classes + 1 if num_classes > 1 else 1
    if dims == 3:
        meta["description"] = meta.get("description", "") + " This bundle segments 3-D volumes."


def _write_configs(out: Path, bundle_dir: Path, overrides: Mapping[str, Any], label_name: str | None,
                   layers: tuple[str, ...] = (), label_names: Mapping[str, str] | None = None) -> None:
    (out / "configs").mkdir(parents=True, exist_ok=True)
    unused = set(overrides)
    layered = [json.loads((bundle_dir / "configs" / f"{name}.json").read_text()) for name in layers]
    for name in _CONFIGS:
        src = bundle_dir / "configs" / name
        if not src.is_file():
            continue
        if not name.endswith(".json"):
            shutil.copy2(src, out / "configs" / name)
            continue
        config = json.loads(src.read_text())
        if name in _LAYERED:
            for layer in layered:
                config = _merge_layer(config, layer)
        for key in ("imports", "+imports"):
            if key in config and SCRIPTS_IMPORT not in config[key]:
                config[key] = [SCRIPTS_IMPORT, *config[key]]
        if name == "metadata.json":
            config.get("required_packages_version", {}).pop("fanet-monai", None)  # the code travels in scripts/
            _describe(config, overrides, label_names, label_name)
        else:
            for key, value in overrides.items():
                if _set_override(config, key, value):
                    unused.discard(key)
        if name == "train.json":
            # MONAI Label retrains into the bundle folder from its model.pt, one task at a time: the folder is the
            # model's home, not one run's, so the one-run-per-root lock and refusal stay off there.
            config["own_bundle_root"] = False
        (out / "configs" / name).write_text(json.dumps(config, indent=4) + "\n")
    if unused:
        raise ValueError(f"override(s) {sorted(unused)} match no id of the bundle's configs; check the spelling.")


def _copy_scripts(out: Path, bundle_dir: Path) -> None:
    scripts = out / "scripts"
    if scripts.exists():
        shutil.rmtree(scripts)
    shutil.copytree(bundle_dir / "scripts", scripts, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    source = Path(fanet_monai.__file__).resolve().parent
    # an installed wheel holds the bundle itself as fanet_monai/packaged_bundle: the package's code only
    shutil.copytree(source, scripts / "fanet_monai",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "packaged_bundle"))


@contextmanager
def _bundle_importable(out: Path) -> Iterator[None]:
    """Parse the packaged configs in this process: ``out`` on ``sys.path`` and any other ``scripts`` module hidden
    while inside (the process keeps its already imported ``fanet_monai``)."""
    sys.path.insert(0, str(out))
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if k == "scripts" or k.startswith("scripts.")}
    try:
        yield
    finally:
        sys.path.remove(str(out))
        for k in [k for k in sys.modules if k == "scripts" or k.startswith("scripts.")]:
            del sys.modules[k]
        sys.modules.update(saved)


def _export_torchscript(out: Path) -> None:
    """``models/model.ts`` with MONAI's ckpt_export, run on the packaged configs."""
    with _bundle_importable(out):
        ckpt_export(
            net_id="network_def",
            filepath=str(out / "models" / "model.ts"),
            ckpt_file=str(out / "models" / "model.pt"),
            meta_file=str(out / "configs" / "metadata.json"),
            config_file=str(out / "configs" / "inference.json"),
            bundle_root=str(out),
        )


def package_bundle(
    out: str | os.PathLike,
    bundle_root: str | os.PathLike = ".",
    bundle_dir: str | os.PathLike | None = None,
    label_name: str | None = None,
    torchscript: bool = True,
    layers: tuple[str, ...] = (),
    **overrides: Any,
) -> Path:
    """Write the self-contained bundle folder ``out`` (see module doc) and return its path.

    Args:
        out: folder to write (created; an existing bundle there is overwritten file by file).
        bundle_root: the training run whose ``models/model.pt`` is packaged.
        bundle_dir: the bundle whose configs, docs and scripts are used (default: this repository's ``bundle/``).
        label_name: name of the foreground label (``metadata.json`` ``channel_def``; MONAI Label shows it).
        torchscript: also write ``models/model.ts``.
        layers: data layers the run was trained with (``("volume",)``), merged into the packaged configs.
        overrides: config ids the run was trained with (``image_size``, ``network_def#channels``, ...), written
            into every packaged config that has them, so the packaged ``network_def`` fits ``model.pt``; its
            ``label_names`` (``{code: name}``, the run's) also name the classes in ``metadata.json``.

    Raises:
        FileNotFoundError: ``bundle_root/models/model.pt`` does not exist.
        ValueError: an override matches no config id, or ``model.pt`` does not fit the packaged ``network_def``
            (pass the training run's network overrides).
    """
    out, src_dir = Path(out), Path(bundle_dir) if bundle_dir else packaged_bundle_dir()
    weights = Path(bundle_root) / "models" / "model.pt"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no trained network to package (train first, or pass --bundle_root RUN).")
    if out.resolve() == src_dir.resolve():
        raise ValueError(f"{out}: choose an output folder other than the source bundle.")
    _write_configs(out, src_dir, overrides, label_name, tuple(layers), overrides.get("label_names"))
    _copy_scripts(out, src_dir)
    parser = ConfigParser()
    parser.read_config(str(out / "configs" / "inference.json"))
    with _bundle_importable(out):
        network = parser.get_parsed_content("network_def")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    for key in ("network", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    try:
        network.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(
            f"{weights} does not fit the bundle's network_def: pass the overrides the run was trained with "
            f"(e.g. --network_def#channels \"[8,16,16,16]\"). {str(err).splitlines()[0]}"
        ) from err
    (out / "models").mkdir(parents=True, exist_ok=True)
    torch.save(state, out / "models" / "model.pt")
    for name in ("docs", "LICENSE", "large_files.yml"):
        src = src_dir / name
        if src.is_dir():
            shutil.copytree(src, out / name, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.is_file():
            shutil.copy2(src, out / name)
    if torchscript:
        _export_torchscript(out)
    return out


#: ``main.py`` of the MONAI Label app :func:`write_label_app` writes (``{name}``: the bundle's folder under ``model/``)
LABEL_APP_MAIN = '''"""MONAI Label app for the FANet bundle in model/{name} (written by `fanet label_app`).

Start it with: monailabel start_server --app . --studies STUDIES --conf models {name}
Adds to the stock bundle app: the `{name}_where_to_look` inference task, the `{name}_where_to_look` scoring method
and the `where_to_look` active-learning strategy (fanet_monai.monailabel_app).
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "model", "{name}", "scripts"))

from fanet_monai.monailabel_app import FanetApp  # noqa: E402,F401  (MONAI Label looks for the app class here)
'''


def write_label_app(app_dir: str | os.PathLike, name: str = "fanet") -> Path:
    """Write ``main.py`` of a MONAI Label app around the packaged bundle ``app_dir/model/<name>``
    (:mod:`fanet_monai.monailabel_app`) and return ``app_dir``.

    Raises:
        FileNotFoundError: naming the folder, when ``app_dir/model/<name>`` holds no packaged bundle.
    """
    app = Path(app_dir)
    bundle = app / "model" / name
    if not (bundle / "configs" / "inference.json").is_file() or not (bundle / "scripts" / "fanet_monai").is_dir():
        raise FileNotFoundError(f"{bundle}: no packaged FANet bundle there (write it with fanet package first).")
    (app / "main.py").write_text(LABEL_APP_MAIN.format(name=name))
    return app
