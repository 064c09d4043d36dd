"""The ``slice`` volume mode (issue 20): a 2-D network run over the slices of volumes inside the 3-D pipeline."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import BasicUNet

from fanet_monai import FANet
from fanet_monai.networks import ImageOnlyNetwork, network_spatial_dims, slice_axis_of, slice_wise

SMALL = dict(channels=(4, 8, 8, 8), in_channels=1)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_a_slice_wise_fanet_is_the_2d_fanet_on_every_slice(axis):
    torch.manual_seed(0)
    net = FANet(spatial_dims=2, slice_axis=axis, **SMALL).eval()
    volume = torch.rand(2, 2, 12, 16, 20)
    with torch.no_grad():
        out = net(volume)
        expected = torch.stack([net._forward(volume.select(axis + 2, k)) for k in range(volume.shape[axis + 2])],
                               dim=axis + 2)
    assert out.shape == (2, 1, 12, 16, 20)
    torch.testing.assert_close(out, expected)


def test_a_slice_wise_checkpoint_is_a_2d_fanets():
    flat, sliced = FANet(spatial_dims=2, **SMALL), FANet(spatial_dims=2, slice_axis=2, **SMALL)
    assert flat.state_dict().keys() == sliced.state_dict().keys()
    sliced.load_state_dict(flat.state_dict())  # strict: the same parameters


def test_image_only_baselines_run_slice_wise_too():
    net = ImageOnlyNetwork(BasicUNet(spatial_dims=2, in_channels=1, out_channels=3, features=(4, 4, 8, 8, 16, 4)),
                           slice_axis=1).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 2, 32, 3, 32)).shape == (1, 3, 32, 3, 32)


def test_modes_and_bad_arguments():
    assert network_spatial_dims("3d") == 3 and network_spatial_dims("slice") == 2
    assert slice_axis_of("3d", 2) is None and slice_axis_of("slice", 1) == 1
    with pytest.raises(ValueError, match="volume_mode must be one of"):
        network_spatial_dims("2.5d")
    with pytest.raises(ValueError, match="spatial_dims must be 2"):
        FANet(spatial_dims=3, slice_axis=2, **SMALL)
    with pytest.raises(ValueError, match="slice_axis must be 0, 1 or 2"):
        FANet(spatial_dims=2, slice_axis=3, **SMALL)
    with pytest.raises(ValueError, match="takes volumes"):
        slice_wise(lambda x: x, torch.rand(1, 2, 8, 8), 0)


@pytest.mark.slow
def test_slice_mode_trains_evaluates_and_infers_volumes_with_a_2d_fanet(tmp_path, capsys):
    """``--volume_mode slice``: the 3-D pipeline (patches 4 slices thick, cache per volume, sliding windows over
    the volume) with a 2-D FANet; the checkpoint is a 2-D FANet's; masks come back on the input's grid."""
    import csv
    import json

    import nibabel as nib
    import numpy as np

    from fanet_monai.cli import run
    from fanet_monai.data import make_volume_dataset
    from fanet_monai.feedback.cache import FeedbackMaskCache
    from fanet_monai.run import release_claims

    data = make_volume_dataset(tmp_path / "data", num_volumes=5, shape=(20, 24, 12), kind="blobs", num_classes=2,
                               spacing=(1.0, 1.0, 2.0), seed=4)
    root = tmp_path / "run"
    tiny = ["--num_workers", "0", "--num_passes", "2", "--network_def#channels", "[4,8,8,8]"]
    assert run(["train", str(data), "--bundle_root", str(root), "--volume_mode", "slice", "--num_classes", "2",
                "--patch_size", "[16,16,4]", "--max_epochs", "1", "--batch_size", "2", "--show_progress", "False",
                *tiny]) == 0
    release_claims()
    settings = json.loads((root / "run.json").read_text())["settings"]
    assert settings["volume_mode"] == "slice" and settings["slice_axis"] == 2
    state = torch.load(root / "models" / "checkpoint_epoch=1.pt", weights_only=True)
    FANet(spatial_dims=2, in_channels=1, out_channels=3, channels=(4, 8, 8, 8)).load_state_dict(state["network"])
    cache = FeedbackMaskCache()
    cache.load_state_dict(state["feedback_cache"])
    assert len(cache) == 4 and all(cache.get(k).ndim == 4 for k in cache.keys())  # one mask per volume
    assert run(["evaluate", str(data), "--bundle_root", str(root), "--num_qualitative", "0", *tiny]) == 0
    with open(root / "eval" / "metrics_per_pass.csv") as f:
        assert {"dice_class_1", "dice_class_2", "hd95_class_mean"} <= set(next(csv.DictReader(f)))
    masks = tmp_path / "masks"
    assert run(["infer", str(data / "images"), str(masks), "--bundle_root", str(root), "--num_workers", "0"]) == 0
    assert "volume_mode=\"slice\"" in capsys.readouterr().out  # taken from the run
    for path in sorted(masks.rglob("*.nii.gz")):
        mask, source = nib.load(path), nib.load(data / "images" / path.name)
        assert mask.shape == source.shape and np.allclose(mask.affine, source.affine)
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2}
