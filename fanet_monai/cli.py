"""``fanet`` command line (``python -m fanet_monai``): thin wrappers over the bundle configs, with ``fire``.

Every command runs the bundle's own config in-process with ``monai.bundle`` (no second implementation); any
config id can be overridden as a flag, e.g. ``fanet train DIR --max_epochs 50 --network_def#variant B3``.

Around ``fire`` (:func:`main`): ``fanet --help`` lists the commands, ``fanet CMD --help`` a command's arguments and
the bundle config ids it accepts with their defaults; an unknown option is refused with the closest valid one;
errors print the message (which names the file and what to do) and where the traceback is (``--debug True``
prints it; it is always in the command's log file); exit code 2 for bad input, 1 for an internal failure. All of
this is derived from the methods' signatures and their :func:`bundle_command` configs, so a command added as a
method of :class:`FanetCLI` gets it too.
"""

from __future__ import annotations

import datetime
import difflib
import functools
import inspect
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import fire

__all__ = ["FanetCLI", "bundle_command", "main", "run"]

#: run settings that are part of a run's identity and not re-applied from ``run.json`` on resume
_NOT_STORED = ("resume", "overwrite", "bundle_root", "bundle_dir")
#: exceptions that mean "the input is wrong" (exit code 2); everything else is an internal failure (1)
_INPUT_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
                 FileExistsError, KeyError)


def bundle_command(*configs: str) -> Callable:
    """Mark a :class:`FanetCLI` method as running the bundle configs ``configs`` (names under ``bundle/configs``):
    its ``**overrides`` are then checked against, and its help lists, the config ids of those files."""

    def mark(method: Callable) -> Callable:
        method.bundle_configs = tuple(configs)
        return method

    return mark


def _bundle_configs(names: Sequence[str], bundle_dir: str | None = None) -> list[str]:
    from fanet_monai.bundle import bundle_configs

    return bundle_configs(*names, bundle_dir=bundle_dir)


def _with_run_settings(command: str, bundle_root: str | os.PathLike | None, names: Sequence[str],
                       overrides: dict[str, Any], bundle_dir: str | None = None) -> dict[str, Any]:
    """``overrides`` preceded by the settings the run in ``bundle_root`` was trained with (split, image size,
    network, start mask, feedback mode, passes...), for those ids the command's configs have; prints what was
    taken and where an explicit option differs from the run."""
    from fanet_monai.run import find_run_root, stored_settings

    root = find_run_root(bundle_root) if bundle_root is not None else None
    if root is None:
        return dict(overrides)
    ids = _config_ids(names, bundle_dir)
    stored = {k: v for k, v in stored_settings(root).items() if k in ids}
    taken = {k: v for k, v in stored.items() if k not in overrides}
    if taken:
        shown = ", ".join(f"{k}={json.dumps(v) if k != 'network_def' else _network_text(v)}" for k, v in taken.items())
        print(f"fanet {command}: settings of the run in {root} (run.json): {shown}")
    for key, value in overrides.items():
        top, _, sub = key.partition("#")
        if key in stored:
            old = stored[key]
        elif sub and isinstance(stored.get(top), dict) and "#" not in sub:
            old = stored[top].get(sub)
        else:
            continue
        if old != value:
            print(f"fanet {command}: --{key} {json.dumps(value)} given; the run was trained with {json.dumps(old)}")
    return {**taken, **overrides}


def _network_text(config: Any) -> str:
    if not isinstance(config, dict):
        return json.dumps(config)
    fields = {k: v for k, v in config.items() if k not in ("_target_", "spatial_dims", "in_channels", "out_channels")}
    name = str(config.get("_target_", "?")).rsplit(".", 1)[-1]
    return f"{name}({', '.join(f'{k}={json.dumps(v)}' for k, v in fields.items())})"


class FanetCLI:
    """FANet as a MONAI bundle: prepare data, train, evaluate, infer, export, package, DICOM and PACS, ablation, demo."""

    def prepare(self, layout: str, root: str, out_json: str, seed: int = 0, **options: Any):
        """Check a dataset in its native layout and write the MONAI datalist ``out_json`` with the paper's split.

        Layouts: kvasir-seg, cvc-clinicdb, dsb2018, isic2018, em-isbi2012, drive, chase-db1, folder; prints a
        report. Options: ``--split_order``, ``--val_from_train N``, ``--offline_copies N|paper``,
        ``--val_fraction``, ``--test_fraction`` (see :func:`fanet_monai.data.layouts.prepare`)."""
        from fanet_monai.data.layouts import prepare

        prepare(layout, root, out_json, seed=seed, **options)

    @bundle_command("train")
    def train(self, dataset_dir: str, bundle_root: str = ".", bundle_dir: str | None = None, **overrides: Any):
        """Train on ``dataset_dir`` (``images/`` + ``masks/`` folder, or a datalist JSON) into ``bundle_root``.

        One run per ``bundle_root``: a root holding checkpoints needs ``--resume True`` (continue that run, with
        its stored settings) or ``--overwrite True`` (delete them, start afresh). Checkpoints go to
        ``bundle_root/models`` (``model.pt``: best validation Dice), the settings to ``bundle_root/run.json``.
        Returns the per-epoch Dice of the fed and of the stored feedback masks."""
        from fanet_monai.bundle import load_workflow
        from fanet_monai.run import read_run

        names = ("train",)
        if overrides.get("resume"):
            previous = (read_run(bundle_root) or {}).get("overrides", {})
            stored = {k: v for k, v in previous.items() if k not in _NOT_STORED and k != "dataset_dir"}
            changed = {k: v for k, v in overrides.items() if k in stored and stored[k] != v}
            if stored:
                print(f"fanet train: resuming with the run's settings: "
                      f"{', '.join(f'{k}={json.dumps(v)}' for k, v in stored.items() if k not in overrides)}"
                      + "".join(f"; --{k} {json.dumps(v)} given (was {json.dumps(stored[k])})"
                                for k, v in changed.items()))
            overrides = {**stored, **overrides}
        workflow = load_workflow(_bundle_configs(names, bundle_dir), "training", dataset_dir=dataset_dir,
                                 bundle_root=bundle_root, **overrides)
        owner = workflow.parser.get_parsed_content("run_owner")
        owner.record(
            settings={"network_def": workflow.parser.get("network_def"), "dataset_dir": str(dataset_dir)},
            overrides={k: v for k, v in {"dataset_dir": dataset_dir, **overrides}.items() if k not in _NOT_STORED},
        )
        try:
            workflow.run()
        finally:
            workflow.finalize()
        handler = workflow.parser.get_parsed_content("train#feedback_handler")
        return {
            "feedback_mask_dice_per_epoch": [round(v, 4) for v in handler.history],
            "stored_mask_dice_per_epoch": [round(v, 4) for v in handler.stored_history],
        }

    @bundle_command("train", "evaluate")
    def evaluate(self, dataset_dir: str, bundle_root: str = ".", bundle_dir: str | None = None, **overrides: Any):
        """Refine the validation images pass by pass with ``bundle_root/models/model.pt``; metrics per pass.

        Uses the run's stored settings (split, image size, network, start mask...) unless given. ``--eval_split
        test`` evaluates a datalist's test list. Writes ``metrics_per_pass.csv``, ``metrics_per_pass.png`` and
        ``qualitative.png`` to ``bundle_root/eval``."""
        from fanet_monai.bundle import run_workflow

        names = ("train", "evaluate")
        overrides = _with_run_settings("evaluate", bundle_root, names, overrides, bundle_dir)
        run_workflow(_bundle_configs(names, bundle_dir), "evaluating", dataset_dir=dataset_dir,
                     bundle_root=bundle_root, **overrides)

    @bundle_command("inference")
    def infer(self, dataset_dir: str, output_dir: str, bundle_root: str = ".", skip_bad: bool = False,
              bundle_dir: str | None = None, **overrides: Any):
        """Write a binary mask for every image of ``dataset_dir`` into ``output_dir``, same size as the input.

        ``dataset_dir``: a folder, its ``images/``, or a datalist JSON. Every image is read before anything is
        written; unreadable ones are all reported (``--skip_bad True`` segments the others and lists them). Uses
        the run's stored settings unless given. PNG masks for bitmaps, NIfTI for NIfTI. Refine-my-mask:
        ``--start_mask_dir MASKS`` starts each image's refinement from the mask of the same file stem in ``MASKS``
        (an existing, rough label) instead of Otsu's threshold."""
        from fanet_monai.bundle import run_workflow

        names = ("inference",)
        overrides = _with_run_settings("infer", bundle_root, names, overrides, bundle_dir)
        before = set(Path(output_dir).iterdir()) if Path(output_dir).is_dir() else set()
        try:
            workflow = run_workflow(_bundle_configs(names, bundle_dir), "run", dataset_dir=dataset_dir,
                                    output_dir=output_dir, bundle_root=bundle_root, skip_bad=skip_bad, **overrides)
        except BaseException:
            written = set(Path(output_dir).iterdir()) - before if Path(output_dir).is_dir() else set()
            if written:
                print(f"fanet infer: {len(written)} masks were written to {output_dir} before the failure: the folder "
                      "is incomplete.", file=sys.stderr)
            raise
        check = workflow.parser.get_parsed_content("input_check")
        print(f"{len(check.good)} masks written to {output_dir}")
        if check.skipped:
            print(f"skipped {len(check.skipped)} unusable image(s):\n  " + "\n  ".join(check.skipped))

    @bundle_command("inference")
    def export(self, bundle_root: str = ".", filepath: str | None = None, bundle_dir: str | None = None,
               **overrides: Any):
        """Export ``bundle_root/models/model.pt`` as TorchScript (MONAI ``ckpt_export``, traced) to ``filepath``.

        Default ``bundle_root/models/model.ts``; the network definition and input size come from the run's
        stored settings unless given; written atomically."""
        from monai.bundle import ckpt_export

        from fanet_monai.checkpoints import checked_checkpoint
        from fanet_monai.io import atomic_path

        names = ("inference",)
        overrides = _with_run_settings("export", bundle_root, names, overrides, bundle_dir)
        size = list(overrides.get("image_size") or [256, 256])
        ckpt = checked_checkpoint(Path(bundle_root) / "models" / "model.pt")
        target = Path(filepath) if filepath else Path(bundle_root) / "models" / "model.ts"
        config = _bundle_configs(names, bundle_dir)[0]
        with atomic_path(target) as temp:
            ckpt_export(
                net_id="network_def", filepath=str(temp), ckpt_file=ckpt,
                meta_file=str(Path(config).parent / "metadata.json"), config_file=config, use_trace=True,
                input_shape=[1, 4, *size], bundle_root=bundle_root, **overrides,
            )
        print(f"TorchScript model written to {target}")

    @bundle_command("inference")
    def package(self, out: str, bundle_root: str = ".", label_name: str | None = None,
                bundle_dir: str | None = None, torchscript: bool = True, **overrides: Any):
        """Write a self-contained model-zoo bundle folder ``out`` from the run ``bundle_root``.

        ``out`` holds configs, models/model.pt (+ model.ts), docs, LICENSE and scripts/ with this package's code:
        it runs where only MONAI is installed (MONAI Label's ``monaibundle`` app, ``python -m monai.bundle run``).
        The network definition and input size come from the run's stored settings unless given;
        ``--label_name polyp`` names the foreground label."""
        from fanet_monai.packaging import package_bundle

        overrides = _with_run_settings("package", bundle_root, ("inference",), overrides, bundle_dir)
        path = package_bundle(out, bundle_root, bundle_dir, label_name, torchscript, **overrides)
        print(f"bundle written to {path}")

    @bundle_command("inference")
    def dicom_infer(self, input: str, output_dir: str, bundle_root: str = ".", bundle_dir: str | None = None,
                    fractional: bool = False, **overrides: Any):
        """One DICOM SEG per DICOM image under ``input`` (a file or folder, recursive) into ``output_dir``.

        Same preprocessing, refinement and weights as ``infer`` (and the run's stored settings unless given);
        ``--fractional`` stores probabilities. Exit code 1 if any source failed (one line each, naming file, SOP
        Instance UID and reason)."""
        from fanet_monai.dicom.pipeline import dicom_infer

        _log_to_console()
        overrides = _with_run_settings("dicom_infer", bundle_root, ("inference",), overrides, bundle_dir)
        summary = dicom_infer([input], output_dir, bundle_root, bundle_dir, fractional, **overrides)
        if summary.failed:
            raise SystemExit(1)

    @bundle_command("inference")
    def pacs(self, url: str, bundle_root: str = ".", bundle_dir: str | None = None, watch: bool = False,
             interval: float = 10.0, credentials: str | None = None, fractional: bool = False, retries: int = 5,
             backoff: float = 0.5, **overrides: Any):
        """Segment the PACS's images over DICOMweb (``--url http://host:port/dicom-web``), storing DICOM SEGs.

        QIDO finds instances of the configured modalities without a SEG from this model version, WADO-RS fetches,
        STOW-RS stores the SEG. ``--watch`` polls every ``--interval`` s until SIGINT/SIGTERM. Credentials:
        FANET_PACS_USERNAME / FANET_PACS_PASSWORD or FANET_PACS_TOKEN, or ``--credentials FILE`` (JSON). Exit code
        1 if a source failed, 2 if the PACS stayed unreachable after ``--retries``."""
        from fanet_monai.dicom.pacs import run_pacs

        _log_to_console()
        overrides = _with_run_settings("pacs", bundle_root, ("inference",), overrides, bundle_dir)
        raise SystemExit(run_pacs(url, bundle_root, bundle_dir, watch=watch, interval=interval,
                                  credentials=credentials, fractional=fractional, retries=retries, backoff=backoff,
                                  **overrides))

    @bundle_command("train", "evaluate")
    def ablation(self, dataset_dir: str, b1: str, b3: str, b4: str, output_dir: str = "ablation",
                 num_passes: int | None = None, bundle_dir: str | None = None, **overrides: Any):
        """Paper Table IX for trained B1, B3 and B4 checkpoints (B2 = the B4 weights evaluated with one pass).

        The split, image size and network settings come from the B4 run's ``run.json`` unless given."""
        from fanet_monai.ablation import ablation_table

        names = ("train", "evaluate")
        overrides = _with_run_settings("ablation", b4, names, overrides, bundle_dir)
        ablation_table(
            {"B1": b1, "B2": b4, "B3": b3, "B4": b4}, dataset_dir, output_dir, num_passes, overrides,
            config_files=_bundle_configs(names, bundle_dir),
        )

    def demo(
        self,
        out_dir: str = "demo",
        num_images: int = 48,
        size: int = 64,
        max_epochs: int = 15,
        learning_rate: float = 1e-3,
        seed: int = 0,
        **overrides: Any,
    ):
        """Train FANet B4 on a generated synthetic set (CPU or GPU) and refine its validation images.

        Prints what the feedback did: the Dice of the cached masks fed each epoch climbs from the Otsu start.
        Overrides go to both training and evaluation; the run in ``out_dir`` is replaced."""
        from fanet_monai.data import make_synthetic_dataset

        start = time.time()
        data = make_synthetic_dataset(Path(out_dir) / "data", num_images, size, size, seed=seed)
        print(f"synthetic dataset: {num_images} images of {size}x{size} in {data}")
        result = self.train(
            str(data), bundle_root=out_dir, image_size=[size, size], max_epochs=max_epochs,
            learning_rate=learning_rate, batch_size=4, show_progress=False, seed=seed, overwrite=True, **overrides,
        )
        print("\ntest-time refinement of the validation images (best checkpoint, Otsu start):")
        self.evaluate(str(data), bundle_root=out_dir, seed=seed, **overrides)
        fed, stored = result["feedback_mask_dice_per_epoch"], result["stored_mask_dice_per_epoch"]
        print("\nfeedback masks during training, Dice vs labels (fed: what the network was given; stored: its "
              "prediction, cached for the next epoch):")
        print("| epoch | " + " | ".join(str(i + 1) for i in range(len(fed))) + " |")
        print("|---" * (len(fed) + 1) + "|")
        print("| fed | " + " | ".join(f"{d:.3f}" for d in fed) + " |")
        print("| stored | " + " | ".join(f"{d:.3f}" for d in stored) + " |")
        print(f"\ndemo finished in {time.time() - start:.0f} s; checkpoints in {Path(out_dir) / 'models'}, "
              f"metrics and figures in {Path(out_dir) / 'eval'}")
        return None


def _log_to_console() -> None:
    """Log to the console for commands that run no bundle ``logging.conf`` of their own (DICOM, PACS)."""
    import logging

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(name)s - %(levelname)s - %(message)s")
    for noisy in ("highdicom", "dicomweb_client"):  # a line per copied module / per request
        logging.getLogger(noisy).setLevel(logging.WARNING)


# -- help and option checking, generic over the commands' signatures ---------------------------------------------------
def _commands() -> dict[str, Callable]:
    return {name: member for name, member in inspect.getmembers(FanetCLI, inspect.isfunction)
            if not name.startswith("_")}


def _parameters(method: Callable) -> tuple[list[inspect.Parameter], bool]:
    """The named parameters of a command (without ``self``) and whether it takes ``**overrides``."""
    params = list(inspect.signature(method).parameters.values())[1:]
    named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return named, any(p.kind == p.VAR_KEYWORD for p in params)


@functools.lru_cache(maxsize=None)
def _config(names: tuple[str, ...], bundle_dir: str | None = None) -> dict[str, Any]:
    """The raw merged content of the bundle configs ``names`` (MONAI ``ConfigParser``, nothing evaluated)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(_bundle_configs(names, bundle_dir))
    return parser.get() or {}


def _config_ids(names: Sequence[str], bundle_dir: str | None = None) -> set[str]:
    return {k for k in _config(tuple(names), bundle_dir) if not k.startswith("_")}


def _default_text(value: Any, width: int = 70) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _usage(name: str, method: Callable) -> str:
    named, extra = _parameters(method)
    parts = [p.name.upper() if p.default is p.empty else f"[--{p.name} {_default_text(p.default, 20)}]"
             for p in named]
    return f"fanet {name} " + " ".join(parts) + (" [--CONFIG_ID VALUE ...]" if extra else "")


def command_help(name: str, method: Callable) -> str:
    """``fanet NAME --help``: usage, description, arguments with defaults, and the bundle config ids with theirs."""
    named, extra = _parameters(method)
    lines = [f"usage: {_usage(name, method)}", "", inspect.cleandoc(method.__doc__ or ""), "", "arguments:"]
    for p in named:
        default = "required" if p.default is p.empty else f"default {_default_text(p.default)}"
        lines.append(f"  --{p.name:<24} {default}")
    lines.append("  --debug True                print the traceback of an error")
    configs = getattr(method, "bundle_configs", None)
    if configs:
        raw = _config(tuple(configs))
        lines += ["", f"bundle options (ids of {', '.join(c + '.json' for c in configs)}; any id or sub-id such as "
                      "--network_def#variant B3 can be set; '$...' defaults are computed):"]
        shown = {p.name for p in named} | {"network", "run", "own_bundle_root"}  # internal wiring
        for key, value in raw.items():
            if key in shown or key.startswith("_") or key in ("imports", "+imports"):
                continue
            if isinstance(value, dict) and "_target_" in value and key == "network_def":
                for sub, sub_value in value.items():
                    lines.append(f"  --{key}#{sub:<{max(1, 23 - len(key))}} {_default_text(sub_value)}")
            elif not isinstance(value, (dict, list)) or (isinstance(value, list) and len(json.dumps(value)) < 60):
                lines.append(f"  --{key:<24} {_default_text(value)}")
    elif extra:
        lines += ["", "more options are passed through (see the description)."]
    return "\n".join(lines)


def overview() -> str:
    """``fanet --help``: the commands with their first docstring line."""
    lines = ["usage: fanet COMMAND [ARGS] [--OPTION VALUE ...]", "", inspect.cleandoc(FanetCLI.__doc__ or ""), "",
             "commands:"]
    for name, method in _commands().items():
        first = inspect.cleandoc(method.__doc__ or "").split("\n")[0]
        lines.append(f"  {name:<12} {first}")
    lines += ["", "`fanet COMMAND --help` lists a command's options and their defaults; add --debug True to see the "
                  "traceback of an error."]
    return "\n".join(lines)


class UsageError(ValueError):
    """A command line that does not match the command (unknown option, missing argument)."""


def _split_args(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """Positional tokens and option names (``--a b``, ``--a=b``; a flag followed by another flag is boolean)."""
    positional, options = [], []
    i = 0
    while i < len(args):
        token = args[i]
        if token == "--":
            break
        if token.startswith("--") and len(token) > 2:
            name = token[2:].split("=", 1)[0].replace("-", "_")
            options.append(name)
            if "=" not in token and i + 1 < len(args) and not args[i + 1].startswith("--"):
                i += 1
        elif token.startswith("-") and len(token) == 2 and token[1].isalpha():
            options.append(token[1:])
        else:
            positional.append(token)
        i += 1
    return positional, options


def check_command_line(name: str, method: Callable, args: Sequence[str]) -> None:
    """Refuse unknown options (suggesting the closest) and missing required arguments, before anything runs."""
    named, extra = _parameters(method)
    positional, options = _split_args(args)
    valid = {p.name for p in named}
    configs = getattr(method, "bundle_configs", None)
    ids = _config_ids(configs) if configs else set()
    for option in options:
        if option in valid or option.split("#")[0] in ids or (extra and not configs):
            continue
        candidates = sorted(valid | ids)
        close = difflib.get_close_matches(option, candidates, n=1, cutoff=0.6)
        hint = f" (did you mean --{close[0]}?)" if close else ""
        raise UsageError(f"unknown option --{option}{hint}; `fanet {name} --help` lists the options.")
    given = set(options)
    required = [p.name for p in named if p.default is p.empty and p.name not in given]
    if len(positional) < len(required):
        missing = " ".join(r.upper() for r in required[len(positional):])
        raise UsageError(f"missing {missing}; usage: {_usage(name, method)}")
    if len(positional) > len([p for p in named if p.name not in given]):
        raise UsageError(f"too many arguments {positional}; usage: {_usage(name, method)}")


# -- running a command: log file, errors, exit codes ------------------------------------------------------------------
def _root_cause(error: BaseException) -> BaseException:
    """The exception to report: the outermost :class:`~fanet_monai.errors.InputError` of the ``__cause__`` chain
    (its message names the file and what to do), else the innermost cause (MONAI wraps errors raised inside config
    expressions in a ``RuntimeError``)."""
    from fanet_monai.errors import InputError

    chain = [error]
    while chain[-1].__cause__ is not None and len(chain) < 50:
        chain.append(chain[-1].__cause__)
    return next((e for e in chain if isinstance(e, InputError)), chain[-1])


def exit_code(error: BaseException) -> int:
    """2 for bad input (a file, a folder, an option), 1 for an internal failure."""
    return 2 if isinstance(_root_cause(error), _INPUT_ERRORS) else 1


class _Tee:
    """Write to a stream and to the log file."""

    def __init__(self, stream: Any, log: Any) -> None:
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        if not self.log.closed:
            self.log.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()
        if not self.log.closed:
            self.log.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def _bundle_root_arg(name: str, args: Sequence[str]) -> Path | None:
    """The ``--bundle_root`` of a command that has one (its default when not given), else ``None``."""
    params = {p.name: p for p in _parameters(_commands()[name])[0]}
    if "bundle_root" not in params:
        return None
    root = params["bundle_root"].default
    for i, token in enumerate(args):
        if token == "--bundle_root" and i + 1 < len(args):
            root = args[i + 1]
        elif token.startswith("--bundle_root="):
            root = token.split("=", 1)[1]
    return None if root in (None, inspect.Parameter.empty) else Path(str(root))


def _keep_log(log_path: Path, root: Path | None) -> Path:
    """Move the command's log into ``root/logs`` when the bundle root exists (a command that failed before
    creating its root leaves nothing there; its log stays in the temporary folder). Returns where the log is."""
    if root is None or not root.is_dir() or log_path.parent == root / "logs":
        return log_path
    try:
        target = root / "logs" / log_path.name
        target.parent.mkdir(exist_ok=True)
        shutil.move(str(log_path), target)
        return target
    except OSError:
        return log_path


def _pop_debug(args: list[str]) -> bool:
    """Remove ``--debug [True|False]`` / ``--debug=VALUE`` from ``args``; returns its value."""
    for i, token in enumerate(args):
        if token.startswith("--debug="):
            del args[i]
            return token.split("=", 1)[1].lower() in ("true", "1", "yes")
        if token == "--debug":
            has_value = i + 1 < len(args) and not args[i + 1].startswith("--")
            value = args[i + 1] if has_value else "True"
            del args[i: i + 2 if has_value else i + 1]
            return value.lower() in ("true", "1", "yes")
    return False


def run(argv: Iterable[str] | None = None) -> int:
    """Run ``fanet`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code (see the module doc)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = _pop_debug(args)
    commands = _commands()
    if not args or args[0] in ("-h", "--help", "help"):
        print(overview())
        return 0
    name, rest = args[0], args[1:]
    if name not in commands:
        close = difflib.get_close_matches(name, list(commands), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        print(f"fanet: unknown command {name!r}{hint}; commands: {', '.join(commands)}.", file=sys.stderr)
        return 2
    method = commands[name]
    if "--help" in rest or "-h" in rest:
        print(command_help(name, method))
        return 0
    try:
        check_command_line(name, method, rest)
    except UsageError as error:
        print(f"fanet {name}: {error}", file=sys.stderr)
        return 2
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    root = _bundle_root_arg(name, rest)
    folder = Path(tempfile.gettempdir()) / "fanet-logs"
    if root is not None and root.is_dir() and os.access(root, os.W_OK):
        folder = root / "logs"  # an existing root: log there from the start (tail -f); a new one: moved at the end
    folder.mkdir(exist_ok=True)
    log_path = folder / f"{name}-{stamp}-{os.getpid()}.log"
    stdout, stderr = sys.stdout, sys.stderr
    with open(log_path, "a") as log:
        log.write(f"$ fanet {' '.join(args)}\n")
        sys.stdout, sys.stderr = _Tee(stdout, log), _Tee(stderr, log)
        try:
            fire.Fire(FanetCLI, command=args, name="fanet")
            sys.stdout, sys.stderr = stdout, stderr
            log.close()
            _keep_log(log_path, root)
            return 0
        except SystemExit as error:  # fire's own usage errors
            return error.code if isinstance(error.code, int) else 2
        except KeyboardInterrupt:
            print(f"fanet {name}: interrupted", file=stderr)
            return 130
        except BaseException as error:  # noqa: BLE001 - reported in one place, with the right exit code
            log.write(traceback.format_exc())
            cause = _root_cause(error)
            message = str(cause).strip() or type(cause).__name__
            sys.stdout, sys.stderr = stdout, stderr
            if debug:
                traceback.print_exc()
            kind = "error" if exit_code(error) == 2 else f"internal error ({type(cause).__name__})"
            log.close()
            kept = _keep_log(log_path, root)
            print(f"fanet {name}: {kind}: {message}", file=stderr)
            print(f"  (traceback: add --debug True, or see {kept})", file=stderr)
            return exit_code(error)
        finally:
            sys.stdout, sys.stderr = stdout, stderr
            from fanet_monai.run import release_claims

            release_claims()


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(run())


if __name__ == "__main__":
    main()
