"""The MONAI model zoo's checks on the bundle: metadata schema, network in/out, TorchScript export (ckpt_export),
the iterative inferer on the exported network, and ONNX export checked with onnxruntime."""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import pytest
import torch

import monai.bundle
from fanet_monai import FANet
from fanet_monai.inferers import IterativeRefinementInferer

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundle" / "configs"
META, TRAIN, INFERENCE = CONFIGS / "metadata.json", CONFIGS / "train.json", CONFIGS / "inference.json"
SCHEMA_NAME = "meta_schema_20240725.json"
SCHEMA = ROOT.parent / "shared" / "schemas" / SCHEMA_NAME  # the zoo's schema, kept beside the repository
SCHEMA_MD5 = "76e1add273836515d0bbb3bc71962474"  # the published file, unchanged
ZOO_SCHEMA_URL = f"https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/{SCHEMA_NAME}"
SMALL = {"network_def#channels": [8, 16, 16, 16]}  # narrow widths: the same blocks, fast to build and export


def metadata() -> dict:
    return json.loads(META.read_text())


def test_metadata_points_at_the_zoo_schema_and_lists_the_packages():
    meta = metadata()
    assert meta["schema"] == ZOO_SCHEMA_URL
    packages = meta["required_packages_version"]
    assert "matplotlib" in packages  # evaluation figures
    for name in ("pytorch-ignite", "nibabel", "itk", "scikit-image", "fire", "tensorboard", "matplotlib"):
        assert packages.get(name), f"{name} missing from required_packages_version"


@pytest.mark.skipif(not SCHEMA.is_file(), reason=f"the zoo's schema is not at {SCHEMA} (../shared absent)")
def test_verify_metadata_against_the_zoo_schema():
    pytest.importorskip("jsonschema")
    # the schema file exists at `filepath`, so nothing is downloaded
    monai.bundle.verify_metadata(meta_file=str(META), filepath=str(SCHEMA), hash_val=SCHEMA_MD5, hash_type="md5")


def test_verify_net_in_out():
    fmt = metadata()["network_data_format"]
    assert fmt["inputs"]["image"]["num_channels"] == 4 and fmt["outputs"]["pred"]["num_channels"] == 1
    for config in (TRAIN, INFERENCE):
        monai.bundle.verify_net_in_out(
            net_id="network_def", meta_file=str(META), config_file=str(config), device="cpu", n=4, **SMALL
        )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A training-style checkpoint of the narrow network, with non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    net = FANet(channels=SMALL["network_def#channels"])
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint_epoch=1.pt"
    torch.save({"network": net.state_dict(), "optimizer": {}}, path)
    return path, net.eval()


def _inputs(batch: int = 2, size: int = 64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    image = torch.rand(batch, 3, size, size, generator=generator)
    mask = (torch.rand(batch, 1, size, size, generator=generator) > 0.6).float()
    return torch.cat([image, mask], dim=1)


def test_ckpt_export_torchscript_matches_eager_and_refines(checkpoint, tmp_path):
    path, eager = checkpoint
    exported = tmp_path / "model.ts"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit deprecation notices
        monai.bundle.ckpt_export(
            net_id="network_def", filepath=str(exported), ckpt_file=str(path), meta_file=str(META),
            config_file=str(INFERENCE), key_in_ckpt="network", **SMALL,
        )
        extra = {"metadata.json": "", "inference.json": ""}
        scripted = torch.jit.load(str(exported), map_location="cpu", _extra_files=extra)
    assert json.loads(extra["metadata.json"])["network_data_format"] == metadata()["network_data_format"]
    assert json.loads(extra["inference.json"])["network_def"]["_target_"] == "fanet_monai.FANet"

    x = _inputs()
    # the graph executor's optimisation passes take seconds per new input shape and change no result
    with torch.no_grad(), torch.jit.optimized_execution(False):
        expected, got = eager(x), scripted(x)
        assert got.shape == expected.shape == (2, 1, 64, 64)
        assert torch.allclose(got, expected, atol=1e-5, rtol=0), float((got - expected).abs().max())
        odd = _inputs(1, 50)  # a size that needs padding goes through the same export
        assert torch.allclose(scripted(odd), eager(odd), atol=1e-5, rtol=0)

        inferer = IterativeRefinementInferer(num_passes=3)
        images = x[:, :3]
        refinement = inferer.refine(images, scripted)
        refined_ts = refinement.logits
        refined_eager = inferer(images, eager)
    assert refined_ts.shape == (2, 1, 64, 64) and refinement.num_passes.tolist() == [3, 3]
    # binary feedback: a logit within float noise of 0 could flip one pixel between the two runs, nothing more
    assert ((refined_ts > 0) != (refined_eager > 0)).float().mean() < 1e-3


ONNX_KWARGS = {  # what the bundle README's onnx_export command passes as --converter_kwargs
    "dynamo": False,  # the TorchScript-based exporter: no onnxscript needed
    "opset_version": 17,
    "input_names": ["image"],
    "output_names": ["pred"],
    "dynamic_axes": {"image": {0: "batch", 2: "height", 3: "width"}, "pred": {0: "batch", 2: "height", 3: "width"}},
}


@pytest.mark.skipif(
    importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None,
    reason="onnx / onnxruntime are not installed",
)
def test_onnx_export_of_the_single_pass_network_matches_eager(checkpoint, tmp_path):
    import onnxruntime

    path, eager = checkpoint
    exported = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and exporter deprecation notices
        monai.bundle.onnx_export(
            net_id="network_def", filepath=str(exported), ckpt_file=str(path), meta_file=str(META),
            config_file=str(INFERENCE), key_in_ckpt="network", use_trace=True, input_shape=[1, 4, 64, 64],
            converter_kwargs=ONNX_KWARGS, **SMALL,
        )
    session = onnxruntime.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    # any batch size, and any height and width that are multiples of 16 (metadata: "16*n")
    for batch in (_inputs(2, 64), _inputs(1, 96)):
        (got,) = session.run(["pred"], {"image": batch.numpy()})
        with torch.no_grad():
            expected = eager(batch)
        got = torch.from_numpy(got)
        assert got.shape == expected.shape
        assert torch.allclose(got, expected, atol=1e-4, rtol=0), float((got - expected).abs().max())
