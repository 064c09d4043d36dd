"""Pass-wise evaluation (handler, early-stop row), the evaluate/inference bundles end to end, the ablation table."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.bundle import ConfigWorkflow
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator
from PIL import Image

from fanet_monai import FANet
from fanet_monai.bundle import run_workflow
from fanet_monai.data import make_synthetic_dataset
from fanet_monai.ablation import ablation_table
from fanet_monai.evaluation import TABLE_IX_COLUMNS, PassWiseEvaluationHandler, PassWiseInferer
from fanet_monai.feedback import otsu_mask_torch
from fanet_monai.inferers import IterativeRefinementInferer, early_stop_passes
from fanet_monai.metrics import PAPER_METRICS, segmentation_metrics

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundle" / "configs"
SMALL = [8, 16, 16, 16]
CSV_COLUMNS = ["pass", *PAPER_METRICS, "n_images", "mean_passes", "seconds", "images_per_s"]


class BoundedDilation(torch.nn.Module):
    """Grows the mask by one pixel per pass inside the region where image channel 0 is > 0.5 (so it converges)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grown = (F.max_pool2d(x[:, -1:], kernel_size=3, stride=1, padding=1) > 0.5) & (x[:, :1] > 0.5)
        return torch.where(grown, 10.0, -10.0)


def seed_from_channel_1(images: torch.Tensor) -> torch.Tensor:
    """Start mask: image channel 1 (a seed pixel)."""
    return (images[:, 1:2] > 0.5).float()


def stub_samples(n: int = 5, size: int = 24) -> list[dict]:
    """Images whose channel 0 is a square region of growing size and channel 1 a seed pixel; labels are discs."""
    samples = []
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for i in range(n):
        image = torch.zeros(3, size, size)
        half = 1 + 2 * i
        image[0, 12 - half : 12 + half + 1, 12 - half : 12 + half + 1] = 1.0
        image[1, 12, 12] = 1.0
        label = (((yy - 12) ** 2 + (xx - 12) ** 2) <= (2 + 2 * i) ** 2).float()[None]
        samples.append({"image": image, "label": label})
    return samples


@pytest.mark.parametrize("tolerance", [0.0, 0.01])
def test_pass_rows_and_early_stop_row_match_the_inferer(tolerance):
    samples, num_passes = stub_samples(), 6
    inferer = PassWiseInferer(num_passes=num_passes, start_mask=seed_from_channel_1, tolerance=tolerance)
    handler = PassWiseEvaluationHandler(output_dir=None)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(samples, batch_size=2),
        network=BoundedDilation(),
        inferer=inferer,
        val_handlers=[handler],
    )
    evaluator.run()
    rows = handler.rows
    assert [r["pass"] for r in rows] == [*range(1, num_passes + 1), "early_stop"]

    images = torch.stack([s["image"] for s in samples])
    labels = torch.stack([s["label"] for s in samples])
    every = IterativeRefinementInferer(num_passes=num_passes, start_mask=seed_from_channel_1, return_all_passes=True)
    passes = every(images, BoundedDilation())  # (P, B, 1, H, W)
    for k in range(num_passes):
        expected = segmentation_metrics(passes[k] > 0, labels)
        for m in PAPER_METRICS:
            assert rows[k][m] == pytest.approx(float(expected[m].mean()), abs=1e-6), (k, m)
        assert rows[k]["n_images"] == len(samples) and rows[k]["seconds"] > 0

    early = IterativeRefinementInferer(
        num_passes=num_passes, start_mask=seed_from_channel_1, early_stop=True, tolerance=tolerance
    )
    refinement = early.refine(images, BoundedDilation())
    logits, used = refinement.logits, refinement.num_passes
    assert len(set(used.tolist())) > 1  # images stop at different passes: a real check
    assert torch.equal(early_stop_passes(passes > 0, tolerance), used)
    expected = segmentation_metrics(logits > 0, labels)
    for m in PAPER_METRICS:
        assert rows[-1][m] == pytest.approx(float(expected[m].mean()), abs=1e-6), m
    assert rows[-1]["mean_passes"] == pytest.approx(float(used.float().mean()))
    assert evaluator.state.metrics["early_stop_mean_passes"] == pytest.approx(float(used.float().mean()))


def test_early_stop_passes_single_pass_and_shape_check():
    assert early_stop_passes(torch.zeros(1, 3, 1, 4, 4, dtype=torch.bool), 0.0).tolist() == [1, 1, 1]
    with pytest.raises(ValueError):
        early_stop_passes(torch.zeros(2, 4, 4, dtype=torch.bool), 0.0)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("data"), num_images=6, height=32, width=32, seed=1)


def tiny_checkpoint(path: Path, variant: str = "B4") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(FANet(variant=variant, channels=SMALL).state_dict(), path)
    return path


def run_bundle(config_file, run_id: str = "run", **overrides) -> ConfigWorkflow:
    workflow = run_workflow(config_file, run_id, **overrides)
    workflow.finalize()
    return workflow


def test_evaluate_bundle_end_to_end(tmp_path, dataset_dir):
    tiny_checkpoint(tmp_path / "models" / "model.pt")
    num_passes = 3
    workflow = run_bundle(
        [CONFIGS / "train.json", CONFIGS / "evaluate.json"],
        run_id="evaluating",
        bundle_root=str(tmp_path),
        dataset_dir=str(dataset_dir),
        image_size=[32, 32],
        num_workers=0,
        num_passes=num_passes,
        val_fraction=0.5,
        num_qualitative=2,
        **{"network_def#channels": SMALL},
    )
    out = tmp_path / "eval"
    with open(out / "metrics_per_pass.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == CSV_COLUMNS
    assert [r[0] for r in rows[1:]] == ["1", "2", "3", "early_stop"]
    assert all(r[CSV_COLUMNS.index("n_images")] == "3" for r in rows[1:])
    assert (out / "metrics_per_pass.png").stat().st_size > 0 and (out / "qualitative.png").stat().st_size > 0
    evaluator = workflow.parser.get_parsed_content("evaluate#evaluator")
    assert "val_mean_dice" in evaluator.state.metrics and "early_stop_f1" in evaluator.state.metrics


def mask_echo_checkpoint(path: Path) -> Path:
    """A FANet whose logits are ``20 * mask - 10``: with one pass it returns the Otsu start mask."""
    net = FANet(channels=SMALL)
    with torch.no_grad():
        weight = net.head.conv.weight
        weight.zero_()
        weight[0, -1] = 20.0
        net.head.conv.bias.fill_(-10.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path


def inference_overrides(tmp_path: Path, data: Path, out: Path) -> dict:
    return {
        "dataset_dir": str(data),
        "output_dir": str(out),
        "ckpt_path": str(mask_echo_checkpoint(tmp_path / "echo.pt")),
        "image_size": [32, 32],
        "num_workers": 0,
        "num_passes": 1,
        "network_def#channels": SMALL,
    }


def test_inference_bundle_writes_png_masks_in_the_input_geometry(tmp_path):
    data = make_synthetic_dataset(tmp_path / "png", num_images=2, height=40, width=56, seed=2, rgb=False)
    out = tmp_path / "out"
    run_bundle([CONFIGS / "inference.json"], **inference_overrides(tmp_path, data, out))
    inputs = sorted((data / "images").glob("*.png"))
    assert sorted(p.name for p in out.iterdir()) == [p.name for p in inputs]
    for path in inputs:
        pixels = np.array(Image.open(path))
        mask = np.asarray(Image.open(out / path.name))
        assert mask.shape == pixels.shape == (40, 56) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255}
        # the echo network returns the Otsu mask: compare with Otsu on the original image, same orientation
        otsu = otsu_mask_torch(torch.as_tensor(pixels, dtype=torch.float32)[None, None])[0, 0].numpy() > 0
        assert ((mask > 0) == otsu).mean() > 0.9


def test_inference_bundle_writes_nifti_masks_with_the_input_affine(tmp_path):
    data, out = tmp_path / "nii", tmp_path / "out"
    data.mkdir()
    affine = np.diag([0.5, 0.7, 1.0, 1.0])
    affine[:3, 3] = [10.0, -5.0, 2.0]
    rng = np.random.default_rng(0)
    for i in range(2):
        image = rng.uniform(0, 80, (40, 56)).astype(np.float32)
        image[8:30, 10 + i : 40] += 150.0
        nib.save(nib.Nifti1Image(image, affine), data / f"case_{i}.nii.gz")
    run_bundle([CONFIGS / "inference.json"], **inference_overrides(tmp_path, data, out))
    for i in range(2):
        saved = nib.load(out / f"case_{i}.nii.gz")
        mask = np.asarray(saved.dataobj)
        assert mask.shape == (40, 56) and mask.dtype == np.uint8
        assert set(np.unique(mask)) == {0, 1}  # a label map holds class codes (bitmaps get 0/255 to be viewable)
        np.testing.assert_allclose(saved.affine, affine, atol=1e-6)
        assert mask[12:26, 15:36].min() == 1  # the bright block, in place


def test_ablation_table_has_the_four_rows(tmp_path, dataset_dir, capsys):
    b1, b3, b4 = (tiny_checkpoint(tmp_path / f"{v}.pt", v) for v in ("B1", "B3", "B4"))
    rows = ablation_table(
        {"B1": b1, "B2": b4, "B3": b3, "B4": b4},
        dataset_dir,
        output_dir=tmp_path / "ablation",
        num_passes=2,
        overrides={"image_size": [32, 32], "num_workers": 0, "network_def#channels": SMALL, "val_fraction": 0.5},
        flops_size=(32, 32),
    )
    assert [r["Method"] for r in rows] == ["B1", "B2", "B3", "B4"]
    assert [r["passes"] for r in rows] == [1, 1, 2, 2]
    assert all(list(r) == [*TABLE_IX_COLUMNS, "passes"] for r in rows)
    assert rows[1]["Param"] == rows[3]["Param"] > rows[0]["Param"]
    printed = capsys.readouterr().out
    assert "| " + " | ".join(TABLE_IX_COLUMNS) + " |" in printed
    assert sum(line.startswith(("| B1 ", "| B2 ", "| B3 ", "| B4 ")) for line in printed.splitlines()) == 4
    assert (tmp_path / "ablation" / "ablation.md").is_file()
    assert (tmp_path / "ablation" / "B3" / "metrics_per_pass.csv").is_file()
