"""Operating the command line (issue 18): secrets never reach a log, logs are private and always possible, option
values are checked before anything is written, a resume applies what it announces, refused runs leave no
"running" record, partial work has its own exit code, a foreign checkpoint is named with the safe way out."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path

import pytest
import torch

from fanet_monai.cli import run
from fanet_monai.cli.logs import redact
from fanet_monai.data import make_synthetic_dataset
from fanet_monai.errors import RunOwnershipError
from fanet_monai.run import RUN_FILE, RunOwner, read_run, release_claims

TINY_RUN = ["--num_workers", "0", "--num_passes", "2", "--batch_size", "4", "--show_progress", "False",
            "--network_def#channels", "[8,16,16,16]", "--image_size", "[32,32]"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("data"), num_images=8, height=32, width=32, seed=3)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- case 1: credentials ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, secret", [
    ("$ fanet pacs --url http://user:SECRET1@127.0.0.1:8042/dicom-web", "SECRET1"),
    ("--password SECRET2 --bundle_root r", "SECRET2"),
    ("--pacs_token=SECRET3", "SECRET3"),
    ("GET https://pacs/dicom-web?access_token=SECRET4&x=1", "SECRET4"),
    ("Authorization: Bearer SECRET5.abc", "SECRET5"),
    ('{"username": "u", "password": "SECRET6"}', "SECRET6"),
])
def test_redact_removes_every_kind_of_secret(text, secret):
    assert secret not in redact(text) and "***" in redact(text)


def test_redact_keeps_ordinary_urls_and_the_values_of_secret_environment_variables_are_hidden(monkeypatch):
    plain = "fanet pacs --url http://127.0.0.1:8042/dicom-web --bundle_root runs/a"
    assert redact(plain) == plain
    monkeypatch.setenv("FANET_PACS_TOKEN", "tok-123456")
    assert redact("the server said: tok-123456 is not valid") == "the server said: *** is not valid"


def test_a_credential_on_the_command_line_never_reaches_the_log_which_only_its_user_can_read(tmp_path, capsys):
    root = tmp_path / "root"
    root.mkdir()
    code = run(["pacs", "--url", "http://user:SECRET@127.0.0.1:9/dicom-web", "--bundle_root", str(root),
                "--retries", "0"])
    assert code == 2
    err = capsys.readouterr().err
    assert "must not hold credentials" in err and "SECRET" not in err
    logs = list((root / "logs").glob("pacs-*.log"))
    assert len(logs) == 1
    text = logs[0].read_text()
    assert text.startswith("$ fanet pacs --url http://***@127.0.0.1:9/dicom-web") and "SECRET" not in text
    assert _mode(logs[0]) == 0o600 and _mode(root / "logs") & 0o077 == 0


# -- case 8: the log folder -------------------------------------------------------------------------------------------
def test_a_blocked_log_folder_means_no_log_file_and_a_one_line_note(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    (tmp_path / f"fanet-logs-{os.getuid()}").write_text("a file where the folder should be")
    assert run(["prepare", "folder", str(tmp_path / "missing"), str(tmp_path / "out.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("note: no log file for this command") and "Traceback" not in "\n".join(err)
    assert "missing" in err[1] and "there is no log file" in err[2]


def test_the_per_user_log_folder_is_private(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert run(["prepare", "folder", str(tmp_path / "missing"), str(tmp_path / "out.json")]) == 2
    folder = tmp_path / f"fanet-logs-{os.getuid()}"
    logs = list(folder.glob("prepare-*.log"))
    assert len(logs) == 1 and _mode(folder) == 0o700 and _mode(logs[0]) == 0o600


# -- case 3: option values --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("option, value, expected", [
    ("--max_epochs", "abc", "--max_epochs 'abc': expected a whole number >= 1 (default 100)"),
    ("--max_epochs", "0", "--max_epochs 0: expected a whole number >= 1"),
    ("--learning_rate", "-1", "--learning_rate -1: expected a number > 0"),
    ("--image_size", "64", "--image_size 64: expected a list of whole numbers each >= 1"),
    ("--val_fraction", "1.5", "--val_fraction 1.5: expected a number >= 0 and < 1"),
    ("--show_progress", "yes", "--show_progress 'yes': expected True or False"),
    ("--batch_size", "2.5", "--batch_size 2.5: expected a whole number >= 1"),
])
def test_bad_option_values_are_refused_in_one_line_before_anything_is_written(data, tmp_path, capsys, option,
                                                                               value, expected):
    root = tmp_path / "root"
    assert run(["train", str(data), "--bundle_root", str(root), option, value]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fanet train: ") and expected in lines[0]
    assert "== " not in out  # refused before the data report
    assert not root.exists()


def _train(data: Path, root: Path, *extra: str) -> int:
    code = run(["train", str(data), "--bundle_root", str(root), *TINY_RUN, *extra])
    release_claims()
    return code


def test_refused_runs_leave_no_running_record(data, tmp_path, capsys):
    new = tmp_path / "new"
    assert _train(data, new, "--network_def#variant", "B9", "--max_epochs", "1") == 2
    assert "variant must be one of" in capsys.readouterr().err
    assert not (new / RUN_FILE).exists() and not (new / "models").exists()

    root = tmp_path / "root"
    assert _train(data, root, "--max_epochs", "1") == 0
    assert read_run(root)["status"] == "finished"
    assert _train(data, root, "--resume", "True", "--max_epochs", "2", "--network_def#variant", "B9") == 2
    assert read_run(root)["status"] == "finished"  # refused before it started: the record is untouched
    assert _train(data, root, "--resume", "True", "--max_epochs", "1") == 2
    assert "has trained 1 epochs already; give a larger --max_epochs" in capsys.readouterr().err
    assert read_run(root)["status"] == "finished"
    # a resume refused by the checkpoint itself (another network's weights): the record says so
    assert _train(data, root, "--resume", "True", "--max_epochs", "2", "--network_def#channels", "[8,8,8,8]") == 2
    record = read_run(root)
    assert record["status"] == "failed" and "size mismatch" in record["error"]


# -- case 2: an explicit option on resume takes effect ----------------------------------------------------------------
def test_resume_applies_a_new_learning_rate_and_scheduler_setting_and_keeps_them_otherwise(data, tmp_path, capsys):
    root = tmp_path / "root"
    assert _train(data, root, "--max_epochs", "1", "--learning_rate", "0.01") == 0
    assert _train(data, root, "--resume", "True", "--max_epochs", "2", "--learning_rate", "0.005",
                  "--lr_scheduler#patience", "9", "--feedback_cache#update_policy", "on_improvement") == 0
    out = capsys.readouterr().out
    assert "--learning_rate 0.005 given (was 0.01)" in out
    assert "resume: optimizer param group 0 lr: 0.01 (checkpoint) -> 0.005" in out
    assert "resume: lr_scheduler patience: 5 (checkpoint) -> 9" in out
    assert "resume: feedback_cache update_policy: every_epoch (checkpoint) -> on_improvement" in out
    state = torch.load(root / "models" / "checkpoint_epoch=2.pt", weights_only=True)
    assert [g["lr"] for g in state["optimizer"]["param_groups"]] == [0.005]
    assert state["lr_scheduler"]["patience"] == 9 and state["feedback_cache"]["update_policy"] == "on_improvement"

    assert _train(data, root, "--resume", "True", "--max_epochs", "3") == 0  # nothing given: the state is kept
    assert "resume: " not in capsys.readouterr().out
    state = torch.load(root / "models" / "checkpoint_epoch=3.pt", weights_only=True)
    assert [g["lr"] for g in state["optimizer"]["param_groups"]] == [0.005]
    assert state["lr_scheduler"]["patience"] == 9


# -- case 10: a foreign checkpoint is named, with the safe action first -----------------------------------------------
def test_a_foreign_checkpoint_is_named_and_moving_it_is_suggested_before_overwrite(tmp_path):
    owner = RunOwner(tmp_path).claim().start()
    try:
        foreign = tmp_path / "models" / "checkpoint_epoch=7.pt"
        foreign.parent.mkdir(exist_ok=True)
        torch.save({"run": {"run_id": "0th3r"}, "network": {}}, foreign)
        torch.save({"run": {"run_id": owner.run_id}, "network": {}}, foreign.with_name("checkpoint_epoch=6.pt"))
        with pytest.raises(RunOwnershipError) as refused:
            owner.load_state_dict({"run_id": "0th3r"})
    finally:
        owner.release()
    message = str(refused.value)
    assert message.startswith(f"{foreign}: written by run 0th3r") and "checkpoint_epoch=6" not in message
    assert message.index("Move that file out of") < message.index("--overwrite True")
    assert json.loads((tmp_path / RUN_FILE).read_text())["run_id"] == owner.run_id
