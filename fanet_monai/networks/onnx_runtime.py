"""ONNX Runtime as the engine of inference: a trained network exported to ONNX and wrapped as a ``torch.nn.Module``.

``fanet infer``, ``dicom_infer`` and ``pacs`` take ``--runtime onnxruntime`` (the ``runtime`` id of
``inference.json``): :func:`~fanet_monai.networks.load_for_inference` then exports the loaded network (weights of
``model.pt``, the run's ``network_def``) to ONNX in memory and returns an :class:`OnnxRuntimeNetwork`. Everything
around the network stays as it is: the same :class:`~fanet_monai.inferers.IterativeRefinementInferer` (refinement
passes, early stop, sliding windows, patches, slice-wise volumes) calls ``network(tensor)``, the same
post-processing and writers run. Exporting from ``model.pt`` at load time (2-5 s) keeps the ONNX graph the weights'
own: there is no second model file to go stale.

The export is traced (the TorchScript-based exporter, opset 17) with a dynamic batch and dynamic spatial sizes. A
trace fixes Python branches, so the graph only takes sizes that are multiples of the network's ``divisor`` (16 for
FANet's four stages); :class:`OnnxRuntimeNetwork` pads other sizes the way FANet does itself (replicate, split
around the middle) and crops the logits back, so any size works as with the eager network.

Needs ``onnx`` (to export) and ``onnxruntime`` (to run): ``pip install "fanet-monai[onnx]"``.
"""

from __future__ import annotations

import importlib.util
import io
import time
import warnings
from typing import Any, List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from fanet_monai.errors import InputError

__all__ = ["RUNTIMES", "OnnxRuntimeNetwork", "check_runtime", "export_onnx"]

#: the engines inference runs on: PyTorch eager (the default) or ONNX Runtime
RUNTIMES = ("pytorch", "onnxruntime")
_INSTALL = 'pip install "fanet-monai[onnx]" (onnx and onnxruntime)'


def check_runtime(runtime: str) -> str:
    """``runtime`` if it is one of :data:`RUNTIMES` and its packages are installed, else an
    :class:`~fanet_monai.errors.InputError` that says what to do (raised before any image is read)."""
    if runtime not in RUNTIMES:
        raise InputError(f"runtime must be one of {list(RUNTIMES)}, got {runtime!r}.")
    if runtime == "onnxruntime":
        missing = [name for name in ("onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
        if missing:
            raise InputError(f"--runtime onnxruntime needs {' and '.join(missing)}, not installed: {_INSTALL}.")
    return runtime


def _example_input(network: nn.Module) -> torch.Tensor:
    """A small input of the network's kind: ``(1, in_channels + 1, *spatial)``, each side two ``divisor`` long
    (volumes for slice-wise networks)."""
    dims = 3 if getattr(network, "slice_axis", None) is not None else int(network.spatial_dims)
    side = 2 * int(network.divisor)
    return torch.rand(1, int(getattr(network, "guided_channels", network.in_channels)) + 1, *([side] * dims))


def export_onnx(network: nn.Module, opset_version: int = 17) -> bytes:
    """The ONNX model of ``network`` (in ``eval()`` mode, on any device), traced with a dynamic batch and dynamic
    spatial sizes: input ``image`` ``(B, in_channels + 1, *spatial)``, output ``pred`` ``(B, out_channels,
    *spatial)``; spatial sizes must be multiples of ``network.divisor`` (:class:`OnnxRuntimeNetwork` pads)."""
    check_runtime("onnxruntime")
    for name in ("divisor", "in_channels", "spatial_dims"):
        if not hasattr(network, name):
            raise ValueError(f"{type(network).__name__} has no {name!r}: the ONNX Runtime path supports FANet "
                             "(and networks that declare divisor, in_channels and spatial_dims).")
    example = _example_input(network)
    cpu_network = network.to("cpu").eval()
    axes = {0: "batch", **{d: f"spatial{d - 2}" for d in range(2, example.ndim)}}
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on shape-dependent Python branches (handled by padding)
        torch.onnx.export(cpu_network, (example,), buffer, dynamo=False, opset_version=opset_version,
                          input_names=["image"], output_names=["pred"],
                          dynamic_axes={"image": axes, "pred": axes})
    return buffer.getvalue()


class OnnxRuntimeNetwork(nn.Module):
    """An ONNX Runtime session that is called like the network it was exported from: ``network(x)`` with ``x``
    ``(B, in_channels + 1, *spatial)`` (image channels, then the feedback mask) returns ``(B, out_channels,
    *spatial)`` float32 logits on ``x``'s device. Sizes that are not multiples of ``divisor`` are padded (replicate,
    as FANet pads) and the logits cropped back; in slice-wise volumes the slice axis is left as it is.

    Args:
        model: the ONNX model (bytes, as from :func:`export_onnx`, or a file path).
        in_channels: image channels (the input has one more, the feedback mask).
        divisor: the sizes the graph takes are multiples of it.
        slice_axis: for a slice-wise network, the spatial axis the slices are taken across (not padded).
        device: ``"cuda"`` uses ONNX Runtime's CUDA provider when installed, else the CPU provider runs.
        num_threads: ONNX Runtime's intra-op threads (default: as many as PyTorch uses).
    """

    def __init__(self, model: bytes | str, in_channels: int, divisor: int, slice_axis: int | None = None,
                 device: str | torch.device = "cpu", num_threads: int | None = None) -> None:
        super().__init__()
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(num_threads or torch.get_num_threads())
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers: List[str] = ["CPUExecutionProvider"]
        if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = onnxruntime.InferenceSession(model, sess_options=options, providers=providers)
        self.in_channels, self.divisor, self.slice_axis = int(in_channels), int(divisor), slice_axis

    @classmethod
    def from_network(cls, network: nn.Module, device: str | torch.device = "cpu",
                     num_threads: int | None = None) -> "OnnxRuntimeNetwork":
        """Export ``network`` (:func:`export_onnx`) and open it in ONNX Runtime."""
        start = time.perf_counter()
        model = export_onnx(network)
        channels = getattr(network, "guided_channels", network.in_channels)  # the channels before the mask
        wrapped = cls(model, channels, network.divisor, getattr(network, "slice_axis", None), device, num_threads)
        wrapped.export_seconds = time.perf_counter() - start
        return wrapped

    def _padding(self, spatial: Sequence[int]) -> List[int]:
        pads: List[int] = []
        for axis, size in enumerate(spatial):
            total = 0 if axis == self.slice_axis else (self.divisor - size % self.divisor) % self.divisor
            pads = [total // 2, total - total // 2] + pads  # F.pad lists the last dimension first
        return pads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.in_channels + 1:
            raise ValueError(
                f"the network expects {self.in_channels} image channels + 1 feedback-mask channel = "
                f"{self.in_channels + 1} input channels, got {x.shape[1]} (input shape {list(x.shape)}).")
        spatial = list(x.shape[2:])
        pads = self._padding(spatial)
        padded = F.pad(x.float(), pads, mode="replicate") if any(pads) else x.float()
        (logits,) = self.session.run(["pred"], {"image": padded.detach().cpu().contiguous().numpy()})
        out = torch.from_numpy(logits)
        for axis, size in enumerate(spatial):
            out = out.narrow(axis + 2, pads[2 * (len(spatial) - 1 - axis)], size)
        return out.to(x.device)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, divisor={self.divisor}, slice_axis={self.slice_axis}, "
                f"providers={self.session.get_providers()}")

    def __getstate__(self) -> Any:  # a session cannot be pickled (e.g. by a deepcopy): say so clearly
        raise TypeError("an OnnxRuntimeNetwork holds an ONNX Runtime session and cannot be copied or pickled.")
