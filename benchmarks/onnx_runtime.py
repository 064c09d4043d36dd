"""PyTorch eager against ONNX Runtime for inference on CPU, side by side in one run (issue 23).

Both engines run the product's refinement loop (:class:`~fanet_monai.inferers.IterativeRefinementInferer`, 3 passes,
no early stop so both do the same work) around the same trained-shape network (FANet B4, widths 32-256, random
weights with non-trivial batch-norm statistics):

- **eager**: :func:`~fanet_monai.networks.load_for_inference` as ``fanet infer`` uses it (conv-BN folded,
  channels-last in 2-D), under ``torch.inference_mode``;
- **onnxruntime**: ``load_for_inference(..., runtime="onnxruntime")`` (the network exported to ONNX, opset 17, all
  graph optimisations), the same number of threads as PyTorch.

Rows: a 256² RGB image (batch 1) and a 64³ one-channel patch (batch 1). Reported: images (patches) per second
(median of ``--repeats`` timed calls after a warm-up), the ratio ONNX Runtime / eager, the largest logit difference
and the share of mask pixels that agree.

    python benchmarks/onnx_runtime.py              # the table (about 2 minutes on 2 cores)
    python benchmarks/onnx_runtime.py --smoke      # tiny sizes: every step runs
"""

from __future__ import annotations

import argparse
import statistics
import sys
import timeit
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fanet_monai import FANet  # noqa: E402
from fanet_monai.inferers import IterativeRefinementInferer  # noqa: E402
from fanet_monai.networks import load_for_inference  # noqa: E402


def trained_like(dims: int, channels: int, widths: list[int], seed: int = 0) -> FANet:
    """FANet B4 with random weights and batch-norm statistics away from the identity (as after training)."""
    torch.manual_seed(seed)
    network = FANet(spatial_dims=dims, in_channels=channels, out_channels=1, channels=widths)
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return network.eval()


def compare(name: str, dims: int, channels: int, size: int, widths: list[int], passes: int, repeats: int) -> dict:
    images = torch.rand(1, channels, *([size] * dims), generator=torch.Generator().manual_seed(1))
    inferer = IterativeRefinementInferer(num_passes=passes, early_stop=False)
    engines = {"eager": load_for_inference(trained_like(dims, channels, widths)),
               "onnxruntime": load_for_inference(trained_like(dims, channels, widths), runtime="onnxruntime")}
    rates, logits = {}, {}
    for engine, network in engines.items():
        def call(network=network):
            with torch.inference_mode():
                return inferer(images, network)

        logits[engine] = call()
        rates[engine] = 1.0 / statistics.median(timeit.repeat(call, number=1, repeat=repeats))
    diff = float((logits["onnxruntime"] - logits["eager"]).abs().max())
    agree = float(((logits["onnxruntime"] > 0) == (logits["eager"] > 0)).float().mean())
    return {"input": name, "passes": passes, "eager": rates["eager"], "onnxruntime": rates["onnxruntime"],
            "ratio": rates["onnxruntime"] / rates["eager"], "max_logit_diff": diff, "mask_agreement": agree}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="PyTorch and ONNX Runtime threads (default: as is)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, narrow widths: every step runs")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    widths = [4, 8, 8, 8] if args.smoke else [32, 64, 128, 256]
    size_2d, size_3d = (32, 16) if args.smoke else (256, 64)
    repeats = 1 if args.smoke else args.repeats
    rows = [compare(f"{size_2d}² RGB image", 2, 3, size_2d, widths, args.passes, repeats),
            compare(f"{size_3d}³ patch", 3, 1, size_3d, widths, args.passes, repeats)]
    print(f"\nPyTorch {torch.__version__} eager vs ONNX Runtime, {torch.get_num_threads()} threads, FANet B4 "
          f"widths {widths}, {args.passes} passes, batch 1, median of {repeats}")
    print("| input | eager /s | onnxruntime /s | onnxruntime / eager | max logit diff | mask agreement |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['input']} | {r['eager']:.2f} | {r['onnxruntime']:.2f} | {r['ratio']:.2f}x | "
              f"{r['max_logit_diff']:.1e} | {100 * r['mask_agreement']:.3f} % |")
    return rows


if __name__ == "__main__":
    main()
