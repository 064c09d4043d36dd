"""The ``fanet`` command line: fire parsing of bundle overrides, and demo / infer end to end at tiny sizes."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import fire
import numpy as np
import pytest
from PIL import Image

from fanet_monai.bundle import bundle_configs
from fanet_monai.cli import FanetCLI, run

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


# -- issue 11: a CLI a person can read (case 8), runs that remember their settings (case 7), inference that
# -- survives bad files (case 6), silences (case 10) -------------------------------------------------------------------
TINY_RUN = ["--num_workers", "0", "--num_passes", "2", "--batch_size", "4", "--show_progress", "False",
            "--network_def#channels", "[8,16,16,16]"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A one-epoch run trained with non-default settings: split_mode last, 32x32 inputs, narrow widths."""
    from fanet_monai.data import make_synthetic_dataset

    base = tmp_path_factory.mktemp("cli")
    data = make_synthetic_dataset(base / "data", num_images=8, height=32, width=32, seed=2)
    root = base / "run"
    code = run(["train", str(data), "--bundle_root", str(root), "--image_size", "[32,32]", "--split_mode", "last",
                "--max_epochs", "1", *TINY_RUN])
    assert code == 0
    return data, root


def test_help_lists_the_commands_and_their_real_options(capsys):
    assert run(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("prepare", "train", "evaluate", "infer", "export", "ablation", "demo"):
        assert f"\n  {command} " in out
    assert run(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--max_epochs" in out and "100" in out and "--split_mode" in out and "--resume" in out
    assert "--overwrite" in out and "--network_def#variant" in out and "Optional[" not in out
    assert "--unroll_corrections" in out
    # the volume layer sets three of the network's arguments (not a copy of network_def): listed as its options
    layer = out[out.index("volume options"):]
    assert "--network_def#prior_probability 0.05" in layer and "--network_def#spatial_dims" in layer
    assert "--network_def#variant" not in layer and "--spatial_dims" in layer
    assert run(["infer", "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: fanet infer DATASET_DIR OUTPUT_DIR" in out and "--skip_bad" in out and "default false" in out


def test_unknown_option_or_command_is_refused_with_the_closest_one(tmp_path, capsys):
    assert run(["train", str(tmp_path), "--bundle_root", str(tmp_path / "r"), "--max_epoch", "1"]) == 2
    err = capsys.readouterr().err
    assert "unknown option --max_epoch (did you mean --max_epochs?)" in err
    assert not (tmp_path / "r").exists()  # refused before anything ran
    assert run(["trian", "x"]) == 2
    assert "did you mean train?" in capsys.readouterr().err
    assert run(["train"]) == 2
    assert "missing DATASET_DIR" in capsys.readouterr().err


def test_a_command_added_as_a_method_gets_help_and_option_checks(monkeypatch, tmp_path, capsys):
    calls = []

    def package(self, bundle_root: str, out: str = "package"):
        """Package a trained run for MONAI Label."""
        calls.append((bundle_root, out))

    monkeypatch.setattr(FanetCLI, "package", package, raising=False)
    assert run(["--help"]) == 0 and "package      Package a trained run" in capsys.readouterr().out
    assert run(["package", "--help"]) == 0 and "--out" in capsys.readouterr().out
    assert run(["package", "R", "--outt", "x"]) == 2
    assert "did you mean --out?" in capsys.readouterr().err
    assert run(["package", "R", "--out", str(tmp_path / "p")]) == 0 and calls == [("R", str(tmp_path / "p"))]


def test_errors_are_one_or_two_lines_with_exit_codes_and_the_traceback_in_the_log(tmp_path, capsys, monkeypatch):
    missing = tmp_path / "no-such-data"
    root = tmp_path / "root"
    assert run(["train", str(missing), "--bundle_root", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and str(missing) in err[0] and "Traceback" not in "\n".join(err)
    assert not root.exists()  # bad input: nothing written there; the log is in the temporary folder
    log = Path(err[1].split("see ")[1].rstrip(")"))
    assert log.parent.name == f"fanet-logs-{os.getuid()}" and "Traceback" in log.read_text()

    assert run(["train", str(missing), "--bundle_root", str(root), "--debug", "True"]) == 2
    assert "Traceback" in capsys.readouterr().err

    def broken(self, layout: str, root: str, out_json: str):
        """Broken on purpose."""
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(FanetCLI, "prepare", broken)
    assert run(["prepare", "folder", "a", "b.json"]) == 1
    assert "internal error (ZeroDivisionError)" in capsys.readouterr().err


def test_evaluate_uses_the_runs_settings_and_an_explicit_flag_wins(trained, capsys, monkeypatch):
    import fanet_monai.bundle
    from fanet_monai.data import folder_datalist

    data, root = trained
    seen = []
    real = fanet_monai.bundle.run_workflow
    monkeypatch.setattr(fanet_monai.bundle, "run_workflow", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    assert run(["evaluate", str(data), "--bundle_root", str(root), "--num_workers", "0"]) == 0
    out = capsys.readouterr().out
    assert 'split_mode="last"' in out and "image_size=[32, 32]" in out and "channels=[8, 16, 16, 16]" in out
    evaluated = [d["image"] for d in seen[-1].parser.get_parsed_content("evaluate#dataset#data")]
    held_out = [d["image"] for d in folder_datalist(data, split_mode="last")["validation"]]
    assert evaluated == held_out  # the run's contiguous hold-out, not the random split
    assert seen[-1].parser.get_parsed_content("image_size") == [32, 32]
    assert "Got new best metric" not in out and "evaluation: 1 batches done" in out
    # issue 18 case 9: evaluation shows every pass (evaluate.json's 10), not the run's inference default (2 here)
    assert "num_passes" not in out and seen[-1].parser.get_parsed_content("num_passes") == 10
    with open(root / "eval" / "metrics_per_pass.csv") as f:
        assert [r["pass"] for r in csv.DictReader(f)] == [*map(str, range(1, 11)), "early_stop"]

    assert run(["evaluate", str(data), "--bundle_root", str(root), "--num_workers", "0", "--num_passes", "1"]) == 0
    assert seen[-1].parser.get_parsed_content("num_passes") == 1


def test_infer_checks_every_input_first_and_skips_bad_ones_on_request(trained, tmp_path, capsys):
    data, root = trained
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted((data / "images").iterdir())[:3]:
        shutil.copy(path, images / path.name)
    (images / "bad1.png").write_bytes(b"not an image")
    (images / "bad2.png").write_bytes((data / "images" / sorted(os.listdir(data / "images"))[0]).read_bytes()[:60])
    masks = tmp_path / "masks"
    assert run(["infer", str(images), str(masks), "--bundle_root", str(root), "--num_workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "2 of 5 input images cannot be used; nothing was written" in err and "bad1.png" in err
    assert "bad2.png" in err and not masks.exists()

    assert run(["infer", str(images), str(masks), "--bundle_root", str(root), "--num_workers", "0",
                "--skip_bad", "True"]) == 3  # issue 18 case 10: skipped work has its own exit code
    out = capsys.readouterr().out
    assert "3 masks written to" in out and "skipped 2 unusable image(s)" in out and "bad1.png" in out
    assert any("bad1.png" in p.read_text() for p in (root / "logs").glob("infer-*.log"))  # the log is kept
    assert "inference: 3 batches done" in out and "; masks written to " in out  # also via monai.bundle run
    written = sorted(masks.glob("*.png"))
    assert len(written) == 3 and np.asarray(Image.open(written[0])).shape == (32, 32)  # run's network, input size

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert run(["infer", str(images), str(blocker / "masks"), "--bundle_root", str(root), "--skip_bad", "True",
                "--num_workers", "0"]) == 2
    assert "cannot write to the output folder" in capsys.readouterr().err


def test_unusable_model_checkpoints_are_named(tmp_path, capsys):
    import datetime

    import torch

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(images / "a.png")
    models = tmp_path / "models"
    models.mkdir()
    torch.save({"model": {"w": torch.zeros(1)}, "when": datetime.date(2020, 1, 1)}, models / "model.pt")
    assert run(["infer", str(images), str(tmp_path / "out"), "--bundle_root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(models / "model.pt") in err and "refused by the weights-only loader" in err
    (models / "model.pt").write_bytes(b"")  # what a kill during a non-atomic write used to leave
    assert run(["infer", str(images), str(tmp_path / "out"), "--bundle_root", str(tmp_path)]) == 2
    assert "empty checkpoint file" in capsys.readouterr().err


def test_ablation_and_export_read_the_run_settings(trained, capsys):
    from fanet_monai.cli.settings import with_run_settings

    _, root = trained
    settings = with_run_settings("ablation", root / "models" / "model.pt", ("train", "evaluate"),
                                  {"network_def#variant": "B3"})
    assert settings["split_mode"] == "last" and settings["image_size"] == [32, 32]
    assert settings["network_def"]["channels"] == [8, 16, 16, 16]
    assert list(settings)[-1] == "network_def#variant"  # explicit after stored: it wins
    assert "the run was trained with \"B4\"" in capsys.readouterr().out


@pytest.mark.slow
def test_export_uses_the_runs_network_and_size_and_writes_atomically(trained, capsys):
    import torch

    from fanet_monai import FANet
    from fanet_monai.io import TEMP_SUFFIX

    _, root = trained
    assert run(["export", "--bundle_root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "image_size=[32, 32]" in out and "TorchScript model written to" in out
    scripted = torch.jit.load(str(root / "models" / "model.ts"))
    eager = FANet(spatial_dims=2, in_channels=3, out_channels=1, channels=[8, 16, 16, 16])
    eager.load_state_dict(torch.load(root / "models" / "model.pt", weights_only=True))
    x = torch.rand(1, 4, 32, 32)
    with torch.no_grad():
        assert torch.allclose(scripted(x), eager.eval()(x), atol=1e-5)
    assert not list((root / "models").glob(f".*{TEMP_SUFFIX}"))


def test_a_failure_during_inference_says_the_folder_is_incomplete(trained, tmp_path, capsys, monkeypatch):
    from monai.transforms import SaveImaged

    data, root = trained
    real, calls = SaveImaged.__call__, []

    def failing(self, data_dict, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk on fire")
        return real(self, data_dict, *args, **kwargs)

    monkeypatch.setattr(SaveImaged, "__call__", failing)
    masks = tmp_path / "masks"
    assert run(["infer", str(data / "images"), str(masks), "--bundle_root", str(root), "--num_workers", "0"]) == 1
    err = capsys.readouterr().err
    assert f"1 masks were written to {masks} before the failure: the folder is incomplete" in err
    assert "internal error (RuntimeError): disk on fire" in err


def test_resume_from_the_command_line_reapplies_the_runs_settings(trained, capsys):
    """Run last in this file: it continues the shared run. Without its stored network widths and image size the
    checkpoint would not even load."""
    data, root = trained
    assert run(["train", str(data), "--bundle_root", str(root), "--max_epochs", "1"]) == 2
    assert "--resume True to continue that run, --overwrite True" in capsys.readouterr().err
    assert run(["train", str(data), "--bundle_root", str(root), "--resume", "True", "--max_epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "resuming with the run's settings" in out and '"network_def#channels"' not in out
    assert 'network_def#channels=[8, 16, 16, 16]' in out and 'split_mode="last"' in out
    assert "--max_epochs 2 given (was 1)" in out
    assert sorted(p.name for p in (root / "models").glob("checkpoint_epoch=*.pt")) == [
        "checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt"]
