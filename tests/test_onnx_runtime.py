"""ONNX Runtime as the inference engine (issue 23): the exported network equals eager FANet on the logits (2-D at
sizes FANet pads, 3-D, slice-wise), the refinement loop gives the same masks, and ``fanet infer`` / ``dicom_infer``
/ ``pacs`` take ``--runtime onnxruntime`` with masks equal to the PyTorch path.

Tolerances: logits within 1e-4 of eager (float32, other kernels and another summation order); masks equal except
where a logit is within that tolerance of 0 (in these tests: every pixel equal)."""

from __future__ import annotations

import importlib.util

import fire
import highdicom as hd
import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from dicom_support import (DCIODVFY, DICOMWEB_PLUGIN, INFER, ORTHANC, ORTHANC_PASSWORD, ORTHANC_USER,
                           dciodvfy_errors, fanet_infer_png, smooth_rgb, tiny_volume_run)
from fanet_monai.cli import FanetCLI, run
from fanet_monai.dicom.pacs import ENV_PASSWORD, ENV_TOKEN, ENV_USERNAME
from fanet_monai.dicom.samples import make_source, save
from fanet_monai.errors import InputError
from fanet_monai.inferers import IterativeRefinementInferer
from fanet_monai.networks import FANet, OnnxRuntimeNetwork, load_for_inference
from fanet_monai.networks import onnx_runtime

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None,
    reason="onnx / onnxruntime are not installed (pip install 'fanet-monai[onnx]')",
)
LOGIT_TOLERANCE = 1e-4


def _network(spatial_dims: int, in_channels: int = 3, seed: int = 0, **kwargs) -> FANet:
    torch.manual_seed(seed)
    network = FANet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=1, channels=(4, 8, 8, 8),
                    **kwargs)
    with torch.no_grad():  # non-trivial batch-norm statistics, so a wrong fold or layout would show
        for module in network.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return network.eval()


def _inputs(shape: tuple[int, ...], seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=generator)
    x[:, -1] = (x[:, -1] > 0.5).float()  # the feedback mask is binary
    return x


@pytest.mark.parametrize(
    "spatial_dims, in_channels, kwargs, shapes",
    [
        (2, 3, {}, [(2, 4, 64, 64), (1, 4, 50, 70)]),  # 50x70: padded to 64x80 and cropped back, as FANet does
        (3, 1, {}, [(1, 2, 32, 32, 32), (2, 2, 20, 24, 18)]),
        (2, 1, {"slice_axis": 2}, [(1, 2, 32, 32, 7), (1, 2, 20, 33, 5)]),  # slice axis never padded
        (2, 3, {"reviewed_input": True, "mask_input": True}, [(1, 5, 64, 64)]),  # image, reviewed, mask
    ],
    ids=["2d", "3d", "slice-wise", "reviewed"],
)
def test_onnx_runtime_logits_equal_eager(spatial_dims, in_channels, kwargs, shapes):
    network = _network(spatial_dims, in_channels, **kwargs)
    wrapped = OnnxRuntimeNetwork.from_network(network)
    for shape in shapes:
        x = _inputs(shape)
        with torch.no_grad():
            expected = network(x)
        got = wrapped(x)
        assert got.shape == expected.shape and got.dtype == torch.float32
        assert torch.allclose(got, expected, atol=LOGIT_TOLERANCE, rtol=0), float((got - expected).abs().max())


def test_refinement_loop_on_onnx_runtime_gives_the_eager_masks():
    network = _network(2)
    wrapped = load_for_inference(_network(2), runtime="onnxruntime")  # same seed: the same weights
    assert isinstance(wrapped, OnnxRuntimeNetwork)
    images = _inputs((3, 3, 48, 40))
    inferer = IterativeRefinementInferer(num_passes=3, tolerance=0.0)
    with torch.no_grad():
        eager = inferer.refine(images, network)
    onnx = inferer.refine(images, wrapped)
    assert torch.equal(onnx.num_passes, eager.num_passes)
    assert torch.allclose(onnx.logits, eager.logits, atol=LOGIT_TOLERANCE, rtol=0)
    assert torch.equal(onnx.logits > 0, eager.logits > 0)


def test_runtime_errors_say_what_to_do(monkeypatch):
    with pytest.raises(InputError, match=r"runtime must be one of \['pytorch', 'onnxruntime'\], got 'tensorrt'"):
        load_for_inference(_network(2), runtime="tensorrt")
    real = importlib.util.find_spec
    monkeypatch.setattr(onnx_runtime.importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(InputError, match=r"needs onnxruntime, not installed: pip install \"fanet-monai\[onnx\]\""):
        load_for_inference(_network(2), runtime="onnxruntime")
    assert run(["infer", "in", "out", "--runtime", "onnxruntime"]) == 2  # refused before anything runs


def test_cli_refuses_an_unknown_runtime_in_one_line(capsys):
    assert run(["infer", "in", "out", "--runtime", "tensorrt"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--runtime 'tensorrt'" in err[0] and "pytorch" in err[0]


@pytest.mark.slow
def test_fanet_infer_and_dicom_infer_on_onnx_runtime_equal_pytorch(tmp_path, tiny_bundle_root):
    from fanet_monai.dicom.pipeline import dicom_infer

    images = {"a": smooth_rgb(64, 64, 3), "b": smooth_rgb(50, 62, 4)}
    eager = fanet_infer_png(tiny_bundle_root, images, tmp_path / "pytorch")
    folder, masks = tmp_path / "pytorch" / "png", tmp_path / "onnx_masks"
    FanetCLI().infer(str(folder), str(masks), bundle_root=str(tiny_bundle_root), runtime="onnxruntime", **INFER)
    for name, mask in eager.items():
        assert mask.any() and not mask.all()  # a real segmentation, not a trivial one
        assert np.array_equal(np.asarray(Image.open(masks / f"{name}.png")) > 0, mask), name

    source = save(make_source(images["b"], "ES"), tmp_path / "b.dcm")
    summary = dicom_infer([source], tmp_path / "seg", str(tiny_bundle_root), runtime="onnxruntime", **INFER)
    assert summary.done == 1 and not summary.failed
    (seg_path,) = sorted((tmp_path / "seg").rglob("*.dcm"))
    if DCIODVFY:
        assert dciodvfy_errors(seg_path) == []
    seg_mask = hd.seg.segread(seg_path).pixel_array.reshape(eager["b"].shape).astype(bool)
    assert np.array_equal(seg_mask, eager["b"])


@pytest.mark.slow
def test_fanet_infer_on_volumes_with_onnx_runtime_equals_pytorch(tmp_path):
    data, root = tiny_volume_run(tmp_path)
    out = {}
    for runtime in ("pytorch", "onnxruntime"):
        assert run(["infer", str(data / "images"), str(tmp_path / runtime), "--bundle_root", str(root),
                    "--num_workers", "0", "--runtime", runtime]) == 0
        out[runtime] = {p.name: np.asarray(nib.load(p).dataobj) for p in sorted((tmp_path / runtime).rglob("*.nii.gz"))}
    assert len(out["pytorch"]) == 3 and out["pytorch"].keys() == out["onnxruntime"].keys()
    for name, mask in out["pytorch"].items():
        assert np.array_equal(out["onnxruntime"][name], mask), name


@pytest.mark.slow
@pytest.mark.skipif(ORTHANC is None or not DICOMWEB_PLUGIN.is_file(),
                    reason="Orthanc or its DICOMweb plugin is not installed (.ci/run installs them, as root)")
def test_pacs_on_onnx_runtime_stores_the_pytorch_segmentation(orthanc, tmp_path, tiny_bundle_root, monkeypatch):
    monkeypatch.setenv(ENV_USERNAME, ORTHANC_USER)
    monkeypatch.setenv(ENV_PASSWORD, ORTHANC_PASSWORD)
    monkeypatch.delenv(ENV_TOKEN, raising=False)
    rgb = smooth_rgb(50, 62, 1)
    orthanc.upload(save(make_source(rgb, "ES"), tmp_path / "es.dcm"))
    args = ["pacs", "--url", orthanc.dicomweb, "--bundle_root", str(tiny_bundle_root), "--runtime", "onnxruntime",
            *[f"--{k}={v}".replace(" ", "") for k, v in INFER.items()]]
    with pytest.raises(SystemExit) as done:
        fire.Fire(FanetCLI, command=args)
    assert done.value.code == 0
    (seg,) = orthanc.seg_instances()
    seg.save_as(tmp_path / "es.seg.dcm")
    expected = fanet_infer_png(tiny_bundle_root, {"es": rgb}, tmp_path / "infer")["es"]
    stored = hd.seg.segread(tmp_path / "es.seg.dcm").pixel_array.reshape(expected.shape).astype(bool)
    assert np.array_equal(stored, expected)
