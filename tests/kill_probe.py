"""Subprocess of the kill tests (tests/test_run_ownership.py): trains the bundle in-process; the Nth write of the
file named TARGET stops half-way, writes MARKER and waits there to be killed.

usage: python tests/kill_probe.py MARKER TARGET N OVERRIDES_JSON   (TARGET "-": no stop, just train)
With PROBE_ALWAYS_BETTER=1 every validation counts as a new best (so model.pt is rewritten every epoch).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
marker, target, nth, overrides = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
real_save = torch.save
writes = 0


def stopping_save(obj, f, *args, **kwargs):
    global writes
    name = os.path.basename(str(getattr(f, "name", f)))
    if target != "-" and name.startswith(f".{target}."):  # the temporary file of an atomic write of TARGET
        writes += 1
        if writes == nth:
            f.write(b"partial")
            f.flush()
            Path(marker).write_text(name)
            time.sleep(600)
    return real_save(obj, f, *args, **kwargs)


torch.save = stopping_save

import fanet_monai.checkpoints  # noqa: E402
from fanet_monai.bundle import run_workflow  # noqa: E402

if os.environ.get("PROBE_ALWAYS_BETTER"):
    fanet_monai.checkpoints.BestMetricSaver._score = lambda self, engine: float(engine.state.epoch)
run_workflow([ROOT / "bundle" / "configs" / "train.json"], "training", **overrides)
