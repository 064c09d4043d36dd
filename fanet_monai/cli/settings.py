"""A run's stored settings as the defaults of the commands that use its weights, and of its own resumption.

``run.json`` (written by :class:`fanet_monai.run.RunOwner`) records what a run was trained with. ``evaluate``,
``infer``, ``export``, ``package``, ``dicom_infer``, ``pacs`` and ``ablation`` take those settings unless an option
says otherwise (:func:`with_run_settings`); ``train --resume True`` re-applies the run's own command-line options
(:func:`resume_overrides`). Both print what they took and where an explicit option differs.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

from fanet_monai.cli.configs import DATA_LAYERS, config_ids, raw_config
from fanet_monai.errors import InputError
from fanet_monai.run import find_run_root, read_run, stored_settings

__all__ = ["NOT_STORED", "network_text", "resume_overrides", "with_run_settings"]

#: run settings that are part of a run's identity and not re-applied from ``run.json`` on resume
NOT_STORED = ("resume", "overwrite", "bundle_root", "bundle_dir")
_EPOCH_FILE = re.compile(r"^checkpoint_epoch=(\d+)\.pt$")


def with_run_settings(command: str, bundle_root: str | os.PathLike | None, names: Sequence[str],
                      overrides: dict[str, Any], bundle_dir: str | None = None) -> dict[str, Any]:
    """``overrides`` preceded by the settings the run in ``bundle_root`` was trained with (split, image size,
    network, start mask, feedback mode, passes...), for those ids the command's configs have; prints what was
    taken and where an explicit option differs from the run.

    A setting that a config layered on ``names[0]`` sets itself is that command's own choice and is not taken
    from the run: ``evaluate.json``'s ``num_passes`` (10, to show every pass) is evaluation's, while ``infer``
    refines for as many passes as the run was validated with. A data layer (``volume.json``) is not a command's
    own choice: the run's settings (e.g. its patch size) win over the layer's defaults."""
    root = find_run_root(bundle_root) if bundle_root is not None else None
    if root is None:
        return dict(overrides)
    ids = config_ids(names, bundle_dir)
    own = set().union(*(raw_config((name,), bundle_dir) for name in names[1:] if name not in DATA_LAYERS))
    stored = {k: v for k, v in stored_settings(root).items() if k in ids and k not in own}
    taken = {k: v for k, v in stored.items() if k not in overrides}
    if taken:
        shown = ", ".join(f"{k}={json.dumps(v) if k != 'network_def' else network_text(v)}" for k, v in taken.items())
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


def resume_overrides(bundle_root: str | os.PathLike, overrides: dict[str, Any]) -> dict[str, Any]:
    """For ``train --resume True``: the options the run in ``bundle_root`` was started with, then ``overrides``.

    Prints both; an option that changes a setting is applied (the learning rate and the optimizer's and
    scheduler's settings to the restored state too: :class:`fanet_monai.checkpoints.ResumedHyperparameters`).

    Raises:
        InputError: ``--max_epochs`` not above the epochs the run has already trained (nothing would run).
    """
    previous = (read_run(bundle_root) or {}).get("overrides", {})
    stored = {k: v for k, v in previous.items() if k not in NOT_STORED and k != "dataset_dir"}
    changed = {k: v for k, v in overrides.items() if k in stored and stored[k] != v}
    if stored:
        print("fanet train: resuming with the run's settings: "
              + ", ".join(f"{k}={json.dumps(v)}" for k, v in stored.items() if k not in overrides)
              + "".join(f"; --{k} {json.dumps(v)} given (was {json.dumps(stored[k])})" for k, v in changed.items()))
    merged = {**stored, **overrides}
    done = max((int(m.group(1)) for p in (Path(bundle_root) / "models").glob("checkpoint_epoch=*.pt")
                if (m := _EPOCH_FILE.match(p.name))), default=0)
    max_epochs = merged.get("max_epochs")
    if isinstance(max_epochs, int) and done and max_epochs <= done:
        raise InputError(f"--max_epochs {max_epochs}: the run in {bundle_root} has trained {done} epochs already; "
                         f"give a larger --max_epochs (e.g. {done + 10}) to continue it.")
    return merged


def network_text(config: Any) -> str:
    """A network definition in one line: ``FANet(variant="B4", channels=[8, 16])``."""
    if not isinstance(config, dict):
        return json.dumps(config)
    fields = {k: v for k, v in config.items() if k not in ("_target_", "spatial_dims", "in_channels", "out_channels")}
    name = str(config.get("_target_", "?")).rsplit(".", 1)[-1]
    return f"{name}({', '.join(f'{k}={json.dumps(v)}' for k, v in fields.items())})"
