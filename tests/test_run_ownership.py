"""A run owns its bundle_root (issue 11, cases 1, 2, 3, 5, 11): refusal of a second run, resume of *that* run,
overwrite, the best score behind model.pt kept over a resume, fallback past a broken checkpoint, pruning after a
resume, stale temporary files cleaned, the lock of a process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events

from fanet_monai.bundle import load_workflow
from fanet_monai.checkpoints import BestMetricSaver, latest_intact_checkpoint, load_checkpoint, model_load_dict
from fanet_monai.data import make_synthetic_dataset
from fanet_monai.errors import InputError, RunOwnershipError
from fanet_monai.io import TEMP_SUFFIX, atomic_write
from fanet_monai.run import RUN_FILE, RunOwner, read_run, release_claims

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "bundle" / "configs" / "train.json"
TINY = {
    "image_size": [32, 32],
    "batch_size": 4,
    "num_workers": 0,
    "num_passes": 2,
    "show_progress": False,
    "network_def#channels": [8, 16, 16, 16],
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("data"), num_images=8, height=32, width=32, seed=5)


def train(root: Path, data: Path, **overrides):
    """One in-process training run; returns the workflow (finalized, lock released)."""
    workflow = None
    try:
        workflow = load_workflow([TRAIN], dataset_dir=str(data), bundle_root=str(root), **{**TINY, **overrides})
        workflow.run()
    finally:
        if workflow is not None:
            workflow.finalize()
        release_claims()
    return workflow


def cause(error: BaseException) -> BaseException:
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def epochs_on_disk(root: Path) -> list[int]:
    return sorted(int(p.stem.split("=")[1]) for p in (root / "models").glob("checkpoint_epoch=*.pt"))


def test_new_run_is_refused_then_resume_continues_that_run_and_overwrite_starts_afresh(tmp_path, data):
    """Case 1 (another run's checkpoints are never picked up), case 3 (best score restored) and case 11 (the
    checkpoints from before a resume are pruned)."""
    first = train(tmp_path, data, max_epochs=2)
    run = read_run(tmp_path)
    assert run["status"] == "finished" and run["settings"]["image_size"] == [32, 32]
    best = first.parser.get_parsed_content("validate#best_model_saver").best_score
    assert best is not None and epochs_on_disk(tmp_path) == [1, 2]
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "models").iterdir()}

    with pytest.raises(RuntimeError) as refused:  # a new run into a root with checkpoints: refused, nothing touched
        train(tmp_path, data, max_epochs=1)
    message = str(cause(refused.value))
    assert isinstance(cause(refused.value), RunOwnershipError)
    assert "--resume True" in message and "--overwrite True" in message and run["run_id"] in message
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "models").iterdir()} == stamps
    assert read_run(tmp_path)["run_id"] == run["run_id"]

    seen = {}
    resumed_wf = load_workflow([TRAIN], dataset_dir=str(data), bundle_root=str(tmp_path),
                               **{**TINY, "max_epochs": 4, "resume": True})
    saver = resumed_wf.parser.get_parsed_content("validate#best_model_saver")
    evaluator = resumed_wf.parser.get_parsed_content("validate#evaluator")

    def capture(engine):
        if not seen:  # after the checkpoint was restored, before the first resumed epoch
            seen.update(epoch=engine.state.epoch, best=saver.best_score, evaluator_best=evaluator.state.best_metric)

    resumed_wf.parser.get_parsed_content("train#trainer").add_event_handler(Events.EPOCH_STARTED, capture)
    try:
        resumed_wf.run()
    finally:
        resumed_wf.finalize()
        release_claims()
    assert seen == {"epoch": 3, "best": best, "evaluator_best": best}  # the best score behind model.pt survived
    assert epochs_on_disk(tmp_path) == [3, 4]  # epochs 1 and 2 (from before the resume) were pruned
    resumed = read_run(tmp_path)
    assert resumed["run_id"] == run["run_id"] and len(resumed["resumes"]) == 1
    assert torch.load(tmp_path / "models" / "checkpoint_epoch=4.pt", weights_only=True)["run"] == {
        "run_id": run["run_id"]}

    train(tmp_path, data, max_epochs=1, overwrite=True)
    fresh = read_run(tmp_path)
    assert fresh["run_id"] != run["run_id"] and epochs_on_disk(tmp_path) == [1]


def test_resume_skips_a_corrupt_newest_checkpoint_naming_it(tmp_path, data):
    """Case 5: the newest epoch checkpoint is truncated: resume warns with its name and uses the previous one."""
    train(tmp_path, data, max_epochs=2)
    newest = tmp_path / "models" / "checkpoint_epoch=2.pt"
    newest.write_bytes(newest.read_bytes()[:100])
    with pytest.warns(UserWarning, match="checkpoint_epoch=2.pt"):
        path = latest_intact_checkpoint(tmp_path / "models")
    assert path.endswith("checkpoint_epoch=1.pt")
    starts = []
    wf = load_workflow([TRAIN], dataset_dir=str(data), bundle_root=str(tmp_path),
                       **{**TINY, "max_epochs": 3, "resume": True})
    wf.parser.get_parsed_content("train#trainer").add_event_handler(
        Events.EPOCH_STARTED, lambda e: starts.append(e.state.epoch))
    try:
        with pytest.warns(UserWarning, match="checkpoint_epoch=2.pt"):
            wf.run()
    finally:
        wf.finalize()
        release_claims()
    assert starts == [2, 3]  # continued from epoch 1's checkpoint
    rewritten = load_checkpoint(newest)["trainer"]  # rewritten whole
    assert rewritten["iteration"] == 2 * rewritten["epoch_length"]

    for name in ("checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt", "checkpoint_epoch=3.pt"):
        p = tmp_path / "models" / name
        if p.exists():
            p.write_bytes(b"")
    with pytest.raises(InputError, match="no epoch checkpoint loads"):
        latest_intact_checkpoint(tmp_path / "models")


def test_best_metric_saver_keeps_the_best_score_across_a_restart(tmp_path):
    """Case 3 in isolation: a restored saver does not overwrite model.pt with a worse score, and writes a better."""
    net = torch.nn.Linear(1, 1)

    def run_scores(saver: BestMetricSaver, scores: list[float]) -> None:
        engine = Engine(lambda e, b: None)

        @engine.on(Events.EPOCH_COMPLETED)
        def metric(e):
            torch.nn.init.constant_(net.weight, scores[e.state.epoch - 1])
            e.state.metrics["dice"] = scores[e.state.epoch - 1]

        saver.attach(engine)
        engine.run([0], max_epochs=len(scores))

    first = BestMetricSaver(tmp_path, {"model": net}, key_metric_name="dice")
    run_scores(first, [0.5, 0.8, 0.7])
    assert first.best_score == pytest.approx(0.8) and first.best_epoch == 2
    assert load_checkpoint(tmp_path / "model.pt")["weight"].item() == pytest.approx(0.8)

    second = BestMetricSaver(tmp_path, {"model": net}, key_metric_name="dice")
    second.load_state_dict(first.state_dict())
    run_scores(second, [0.6])
    assert load_checkpoint(tmp_path / "model.pt")["weight"].item() == pytest.approx(0.8)  # not overwritten
    run_scores(second, [0.9])
    assert load_checkpoint(tmp_path / "model.pt")["weight"].item() == pytest.approx(0.9)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_one_process_per_root_and_stale_temp_files_cleaned(tmp_path):
    """Case 2 (in one process: a second owner is refused until the first releases) and case 11 (temporary files of
    dead writers are removed at the next start; a live writer's are kept)."""
    models = tmp_path / "models"
    models.mkdir(parents=True)
    dead = models / f".model.pt.999999999{TEMP_SUFFIX}"
    dead.write_bytes(b"partial")
    alive = models / f".checkpoint_epoch=1.pt.{os.getppid()}{TEMP_SUFFIX}"
    alive.write_bytes(b"partial")

    owner = RunOwner(tmp_path, settings={"image_size": [32, 32]}).claim().start()
    assert not dead.exists() and alive.exists()
    with pytest.raises(RunOwnershipError, match=f"another process is running.*pid {os.getpid()}"):
        RunOwner(tmp_path).claim()
    owner.release("finished")
    other = RunOwner(tmp_path, overwrite=True).claim().start()
    assert json.loads((tmp_path / RUN_FILE).read_text())["run_id"] == other.run_id != owner.run_id
    other.release()
    with pytest.raises(RunOwnershipError, match="no checkpoint to resume from"):
        RunOwner(tmp_path, resume=True).claim()
    with pytest.raises(RunOwnershipError, match="contradict"):
        RunOwner(tmp_path, resume=True, overwrite=True)
    with pytest.raises(RunOwnershipError, match="written by run someone-else"):
        other.load_state_dict({"run_id": "someone-else"})


def test_atomic_write_leaves_the_old_file_on_failure(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old\n")
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(target, "w") as f:
            f.write("half")
            raise KeyboardInterrupt
    assert target.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]
    with atomic_write(target, "w") as f:
        f.write("new\n")
    assert target.read_text() == "new\n"


# -- real processes killed with SIGKILL at the named moment ---------------------------------------------------------
def start_probe(tmp_path: Path, root: Path, data: Path, target: str = "-", nth: int = 1, always_better=False,
                **overrides) -> tuple[subprocess.Popen, Path]:
    marker = tmp_path / "probe-marker"
    settings = {**TINY, "bundle_root": str(root), "dataset_dir": str(data), **overrides}
    env = {**os.environ, "PYTHONPATH": str(ROOT), **({"PROBE_ALWAYS_BETTER": "1"} if always_better else {})}
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "kill_probe.py"), str(marker), target, str(nth), json.dumps(settings)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=tmp_path,
    )
    return process, marker


def wait_for(process: subprocess.Popen, condition, timeout: float = 180.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"probe ended early: {process.stderr.read().decode()[-2000:]}")
        if time.time() > deadline:
            process.kill()
            raise AssertionError("probe did not reach the moment to kill it")
        time.sleep(0.1)


def kill(process: subprocess.Popen) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    process.stderr.close()


@pytest.mark.slow
def test_kill_while_model_pt_is_rewritten_leaves_the_previous_model_and_a_temp_file_cleaned_at_restart(tmp_path,
                                                                                                        data):
    """Case 4 (model.pt written atomically) and case 11 (the orphan temporary file is removed at the next start)."""
    root = tmp_path / "run"
    process, marker = start_probe(tmp_path, root, data, target="model.pt", nth=2, always_better=True, max_epochs=3)
    try:
        wait_for(process, marker.exists)  # epoch 2's validation is writing model.pt
    finally:
        kill(process)
    models = root / "models"
    model = models / "model.pt"
    assert model.stat().st_size > 0 and "weight" in "".join(load_checkpoint(model))  # epoch 1's, intact
    orphans = list(models.glob(f".*{TEMP_SUFFIX}"))
    assert [p.name for p in orphans] == [marker.read_text()]

    train(root, data, max_epochs=3, resume=True)  # from epoch 1's checkpoint; the orphan is cleaned at start
    assert not list(models.glob(f".*{TEMP_SUFFIX}"))
    assert epochs_on_disk(root) == [2, 3] and load_checkpoint(model)


@pytest.mark.slow
def test_a_second_process_is_refused_while_a_run_lives_and_resumes_it_once_killed(tmp_path, data):
    """Case 2: two processes on one bundle_root never mix: the second is refused, naming the first; once the first
    is killed (SIGKILL: its lock goes with it) the run is resumed from its own newest checkpoint."""
    root = tmp_path / "run"
    process, _ = start_probe(tmp_path, root, data, max_epochs=200)
    try:
        wait_for(process, lambda: epochs_on_disk(root) != [])
        for flags in ({}, {"resume": True}, {"overwrite": True}):
            with pytest.raises(RuntimeError) as refused:
                train(root, data, max_epochs=300, **flags)
            assert isinstance(cause(refused.value), RunOwnershipError)
            assert f"another process is running in this bundle_root (pid {process.pid}" in str(cause(refused.value))
    finally:
        kill(process)
    run_id = read_run(root)["run_id"]
    newest = epochs_on_disk(root)[-1]
    wf = train(root, data, max_epochs=newest + 1, resume=True)
    assert wf.parser.get_parsed_content("train#trainer").state.epoch == newest + 1
    assert read_run(root)["run_id"] == run_id
    assert torch.load(root / "models" / f"checkpoint_epoch={newest + 1}.pt", weights_only=True)["run"] == {
        "run_id": run_id}


def test_a_checkpoint_from_before_run_records_resumes_with_a_warning(tmp_path):
    """A root written by an older version (no run.json; a checkpoint without the best-metric, kept-list and run
    entries) is adopted on --resume: the missing entries are named and start fresh."""
    data = make_synthetic_dataset(tmp_path / "data", 8, 32, 32, seed=0)
    models = tmp_path / "run" / "models"
    models.mkdir(parents=True)
    shutil.copy(ROOT / "tests" / "fixtures" / "pre_refactor_tiny.pt", models / "checkpoint_epoch=1.pt")
    with pytest.warns(UserWarning, match="holds no \\['best_model_saver', 'checkpointer', 'run'\\]"):
        wf = train(tmp_path / "run", data, max_epochs=2, resume=True, batch_size=2,
                   **{"network_def#channels": [4, 8, 16], "network_def#blocks_per_stage": 1})
    assert wf.parser.get_parsed_content("train#trainer").state.epoch == 2
    assert read_run(tmp_path / "run")["status"] == "finished" and epochs_on_disk(tmp_path / "run") == [1, 2]


def test_model_load_dict_matches_the_checkpoint_kind(tmp_path):
    net = torch.nn.Linear(2, 1)
    torch.save(net.state_dict(), tmp_path / "model.pt")  # model.pt: a bare state dict
    torch.save({"network": net.state_dict(), "optimizer": {}}, tmp_path / "checkpoint_epoch=3.pt")
    assert model_load_dict(tmp_path / "model.pt", net) == {"model": net}
    assert model_load_dict(tmp_path / "checkpoint_epoch=3.pt", net) == {"network": net}
    with pytest.raises(InputError, match="checkpoint not found"):
        model_load_dict(tmp_path / "missing.pt", net)
