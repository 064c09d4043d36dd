"""A checkpoint written by the code before the issue-10 restructuring still infers, trains on and resumes.

``tests/fixtures/pre_refactor_tiny.pt`` is the epoch-1 training checkpoint of a tiny run (32², channels 4-8-16,
one block per stage) written at commit ``eabb4ba``; ``pre_refactor_tiny_expected.pt`` holds that code's refinement
logits for fixed inputs (see ``tests/fixtures/README.md``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fanet_monai import FANet
from fanet_monai.bundle import bundle_configs, load_workflow, run_workflow
from fanet_monai.data import folder_datalist, make_synthetic_dataset
from fanet_monai.feedback import sample_key
from fanet_monai.inferers import IterativeRefinementInferer

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CHECKPOINT = FIXTURES / "pre_refactor_tiny.pt"
EXPECTED = FIXTURES / "pre_refactor_tiny_expected.pt"
NETWORK = {"channels": [4, 8, 16], "blocks_per_stage": 1}
#: the settings the fixture was trained with
SETTINGS = {
    "image_size": [32, 32],
    "batch_size": 2,
    "num_workers": 0,
    "show_progress": False,
    "num_passes": 2,
    **{f"network_def#{k}": v for k, v in NETWORK.items()},
}


def test_fixture_is_small_and_complete():
    assert CHECKPOINT.stat().st_size < 600_000
    checkpoint = torch.load(CHECKPOINT, weights_only=True)
    assert set(checkpoint) == {"network", "optimizer", "lr_scheduler", "trainer", "feedback_cache", "feedback_commit"}
    assert checkpoint["trainer"]["iteration"] == checkpoint["trainer"]["epoch_length"] == 3  # one epoch, 6 images


def test_pre_refactor_weights_give_the_pre_refactor_refinement():
    network = FANet(**NETWORK)
    network.load_state_dict(torch.load(CHECKPOINT, weights_only=True)["network"])  # strict: same parameter names
    network.eval()
    expected = torch.load(EXPECTED, weights_only=True)
    with torch.no_grad():
        refinement = IterativeRefinementInferer(num_passes=3).refine(expected["images"], network)
    torch.testing.assert_close(torch.stack(refinement.passes), expected["passes"], rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    """The fixture's training data: regenerated, same names and pixels."""
    return make_synthetic_dataset(tmp_path_factory.mktemp("data"), 8, 32, 32, seed=0)


@pytest.mark.slow
def test_training_resumes_from_the_pre_refactor_checkpoint(tmp_path, dataset_dir):
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(CHECKPOINT, models / "checkpoint_epoch=1.pt")
    before = torch.load(CHECKPOINT, weights_only=True)
    workflow = load_workflow(bundle_configs("train"), "training", dataset_dir=str(dataset_dir),
                             bundle_root=str(tmp_path), max_epochs=2, resume=True, **SETTINGS)
    workflow.run()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    assert trainer.state.epoch == 2
    assert trainer.state.iteration == 2 * before["trainer"]["epoch_length"]  # continued, not restarted
    # the restored feedback cache was used and updated, for the same samples
    cache = workflow.parser.get_parsed_content("feedback_cache")
    training = {sample_key(item["image"]) for item in folder_datalist(dataset_dir)["training"]}
    assert set(cache.keys()) == training == set(before["feedback_cache"]["masks"])
    handler = workflow.parser.get_parsed_content("train#feedback_handler")
    assert len(handler.history) == 1 and 0.0 <= handler.history[0] <= 1.0
    after = workflow.parser.get_parsed_content("network").state_dict()
    changed = [k for k, v in before["network"].items() if v.is_floating_point() and not torch.equal(v, after[k])]
    assert changed  # it trained on
    workflow.finalize()


@pytest.mark.slow
def test_inference_bundle_runs_the_pre_refactor_checkpoint(tmp_path, dataset_dir):
    out = tmp_path / "predictions"
    run_workflow(bundle_configs("inference"), "run", dataset_dir=str(dataset_dir / "images"), output_dir=str(out),
                 ckpt_path=str(CHECKPOINT), image_size=[32, 32], num_workers=0, num_passes=3,
                 **{f"network_def#{k}": v for k, v in NETWORK.items()})
    images = sorted((dataset_dir / "images").iterdir())
    masks = sorted(out.iterdir())
    assert [p.stem for p in masks] == [p.stem for p in images]
    for image, mask in zip(images, masks):
        pixels = np.asarray(Image.open(mask))
        assert pixels.shape == np.asarray(Image.open(image)).shape[:2] and set(np.unique(pixels)) <= {0, 255}
