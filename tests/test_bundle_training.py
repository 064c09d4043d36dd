"""The training bundle end to end: a short run on synthetic data, the checkpoint holding the feedback cache,
command-line style overrides, and resuming after the process was killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from monai.handlers import ValidationHandler

from fanet_monai.checkpoints import latest_checkpoint
from fanet_monai.errors import RunOwnershipError
from fanet_monai.data import folder_datalist, make_synthetic_dataset
from fanet_monai.feedback import FeedbackMaskCache, sample_key

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "bundle" / "configs" / "train.json"
META = ROOT / "bundle" / "configs" / "metadata.json"
LOGGING = ROOT / "bundle" / "configs" / "logging.conf"


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("data"), num_images=10, height=64, width=64, seed=3)


def test_two_epoch_training_saves_network_and_feedback_cache(tmp_path, dataset_dir, tiny_training):
    wf = tiny_training(tmp_path, dataset_dir)
    wf.run()
    trainer = wf.parser.get_parsed_content("train#trainer")
    assert trainer.state.epoch == 2
    training_keys = {sample_key(i["image"]) for i in folder_datalist(dataset_dir)["training"]}
    assert len(training_keys) == 8  # seeded 80/20 split of 10 images

    cache = wf.parser.get_parsed_content("feedback_cache")
    assert set(cache.keys()) == training_keys
    handler = wf.parser.get_parsed_content("train#feedback_handler")
    assert len(handler.history) == 2 and trainer.state.metrics["feedback_mask_dice"] == handler.history[-1]
    assert len(handler.stored_history) == 2 and 0 <= trainer.state.metrics["stored_mask_dice"] <= 1

    models = tmp_path / "models"
    assert (models / "model.pt").is_file()  # best network by validation Dice
    checkpoint = torch.load(latest_checkpoint(models), weights_only=True)
    assert checkpoint["trainer"]["iteration"] == 2 * checkpoint["trainer"]["epoch_length"]  # ignite keeps iterations
    assert set(checkpoint) >= {"network", "optimizer", "lr_scheduler", "trainer", "feedback_cache"}
    restored = FeedbackMaskCache()
    restored.load_state_dict(checkpoint["feedback_cache"])
    assert set(restored.keys()) == training_keys
    for key in training_keys:
        assert (restored.get(key) == cache.get(key)).all()
        assert restored.get(key).shape == (1, 64, 64)


def test_overrides_reach_the_objects(tmp_path, dataset_dir, tiny_training):
    wf = tiny_training(tmp_path, dataset_dir, learning_rate=1e-3, max_epochs=3, val_interval=2,
                       **{"network_def#variant": "B3"})
    assert wf.parser.get_parsed_content("train#trainer").state.max_epochs == 3
    assert wf.parser.get_parsed_content("optimizer").param_groups[0]["lr"] == 1e-3
    assert wf.parser.get_parsed_content("network").variant == "B3"
    assert len(wf.parser.get_parsed_content("train#dataset#data")) == 8
    assert len(wf.parser.get_parsed_content("validate#dataset#data")) == 2
    handlers = wf.parser.get_parsed_content("train#handlers")
    validation = next(h for h in handlers if isinstance(h, ValidationHandler))
    assert validation.interval == 2


@pytest.mark.slow
def test_resume_after_kill_continues_with_same_cache_epoch_and_optimizer(
    tmp_path, dataset_dir, tiny_overrides, tiny_training
):
    args = [
        sys.executable, "-m", "monai.bundle", "run", "training",
        "--config_file", str(TRAIN), "--meta_file", str(META), "--logging_file", str(LOGGING),
    ]
    for key, value in tiny_overrides(tmp_path, dataset_dir, max_epochs=30).items():
        args += [f"--{key}", str(value).replace(" ", "")]
    models = tmp_path / "models"
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and process.poll() is None:
            try:
                if int(Path(latest_checkpoint(models)).stem.split("=")[1]) >= 2:
                    break
            except FileNotFoundError:
                pass
            time.sleep(0.2)
        assert process.poll() is None, "training ended before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    path = latest_checkpoint(models)
    saved = torch.load(path, weights_only=True)
    epoch = saved["trainer"]["iteration"] // saved["trainer"]["epoch_length"]
    assert 2 <= epoch < 30

    wf = tiny_training(tmp_path, dataset_dir, max_epochs=epoch + 1, resume=True)
    trainer = wf.parser.get_parsed_content("train#trainer")
    cache = wf.parser.get_parsed_content("feedback_cache")
    optimizer = wf.parser.get_parsed_content("optimizer")
    seen = {}

    def capture(engine):  # after the checkpoint was restored, before the first resumed iteration
        if not seen:
            seen["epoch"] = engine.state.epoch
            seen["cache"] = cache.state_dict()["masks"]
            seen["adam_steps"] = [float(s["step"]) for s in optimizer.state_dict()["state"].values()]

    from ignite.engine import Events

    trainer.add_event_handler(Events.EPOCH_STARTED, capture)
    wf.run()
    assert seen["epoch"] == epoch + 1  # continued from the checkpoint's epoch, not from 1
    assert seen["cache"] == saved["feedback_cache"]["masks"]
    saved_steps = [float(s["step"]) for s in saved["optimizer"]["state"].values()]
    assert seen["adam_steps"] == saved_steps and saved_steps[0] > 0
    assert trainer.state.epoch == epoch + 1
    assert latest_checkpoint(models).endswith(f"checkpoint_epoch={epoch + 1}.pt")


def test_resume_without_checkpoint_names_the_folder(tmp_path, dataset_dir, tiny_training):
    with pytest.raises(RuntimeError) as error:  # MONAI wraps errors raised while it evaluates a config expression
        tiny_training(tmp_path, dataset_dir, resume=True).run()
    cause = error.value.__cause__
    assert isinstance(cause, RunOwnershipError) and str(tmp_path / "models") in str(cause)
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_epoch_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    """A save that dies half-way leaves the previous checkpoint intact and no truncated checkpoint file."""
    from ignite.engine import Engine

    from fanet_monai.checkpoints import EpochCheckpointSaver

    objects = {"network": torch.nn.Linear(2, 2), "other": torch.nn.Linear(1, 1)}
    with pytest.raises(ValueError, match="n_saved >= 2"):
        EpochCheckpointSaver(str(tmp_path), objects, save_interval=1, n_saved=1)
    engine = Engine(lambda e, b: None)
    EpochCheckpointSaver(str(tmp_path), objects, save_interval=1, n_saved=2).attach(engine)
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        if engine.state.epoch == 3:
            f.write(b"partial")  # like a process killed while writing
            raise KeyboardInterrupt
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        engine.run([0], max_epochs=3)
    path = latest_checkpoint(tmp_path)
    assert path.endswith("checkpoint_epoch=2.pt")  # epoch 1 was removed before epoch 3 was written; 3 never landed
    assert set(torch.load(path, weights_only=True)) == {"network", "other", "checkpointer"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch=2.pt"]
