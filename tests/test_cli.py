"""The ``fanet`` command line: fire parsing of bundle overrides, and demo / infer end to end at tiny sizes."""

from __future__ import annotations

import csv

import fire
import numpy as np
import pytest
from PIL import Image

from fanet_monai.bundle import bundle_configs
from fanet_monai.cli import FanetCLI

TINY = ["--num_workers", "0", "--num_passes", "2", "--network_def#channels", "[8,16,16,16]"]


def test_bundle_configs_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="train.json: bundle config not found"):
        bundle_configs("train", bundle_dir=str(tmp_path))


def test_demo_then_infer_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "demo"
    fire.Fire(FanetCLI, command=["demo", "--out_dir", str(out), "--num_images", "8", "--size", "32",
                                 "--max_epochs", "2", *TINY])
    printed = capsys.readouterr().out
    assert "feedback masks during training" in printed and "| stored |" in printed
    assert (out / "models" / "model.pt").is_file()
    with open(out / "eval" / "metrics_per_pass.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["pass"] for r in rows] == ["1", "2", "early_stop"]
    assert (out / "eval" / "qualitative.png").is_file()

    masks = tmp_path / "masks"
    fire.Fire(FanetCLI, command=["infer", str(out / "data" / "images"), str(masks), "--bundle_root", str(out),
                                 "--image_size", "[32,32]", "--num_workers", "0", "--num_passes", "2",
                                 "--network_def#channels", "[8,16,16,16]"])
    written = sorted(masks.glob("*.png"))
    assert len(written) == 8
    mask = np.asarray(Image.open(written[0]))
    assert mask.shape == (32, 32) and set(np.unique(mask)) <= {0, 255}
