"""What native resolution costs: training steps and refinement passes per megapixel (2-D) and per 64³ (3-D), FANet
against MONAI's BasicUNet and UNet of the same widths (also as voxels per second, with each one's peak memory for
a step and a pass), peak memory of a sliding-window pass over a 4096² image and a 256³ volume, and the size of the
feedback cache per image/volume against raw masks — side by side in one run.

- **Step**: one training step (forward, Dice-CE, backward, Adam) on a batch of ``--batch`` patches (128² / 64³);
  reported per megapixel (2-D) or per 64³ voxels (3-D) of patch.
- **Pass**: one sliding-window pass (128² / 64³ windows, overlap 0.25, Gaussian blending) over a 1024² image or a
  128³ volume, per megapixel / per 64³ of image. An extra refinement pass costs one pass: FANet refines by running
  this again on ``cat(image, new mask)``; BasicUNet has no second pass.
- **Peak memory per network**: resident set (sampled every 5 ms) of a fresh process for one training step on the
  batch of patches and, separately, one sliding-window pass over the image, above the process before either.
- **Peak memory**: resident set (sampled every 5 ms) of a fresh process that runs two refinement passes (start mask
  included) over a 4096² RGB image / a 256³ volume with a narrow FANet, above the same process before the image
  existed.
- **Cache**: run-length-encoded feedback masks (:class:`~fanet_monai.feedback.FeedbackMaskCache`) of the synthetic
  vessels (1024²) and tubes (256³), against one byte per pixel.

    python benchmarks/patch_cost.py            # the table (about 5 minutes on 2 cores)
    python benchmarks/patch_cost.py --smoke    # tiny sizes: every step runs
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import timeit
from pathlib import Path

import numpy as np
import torch
from monai.inferers import SlidingWindowInferer
from monai.losses import DiceCELoss
from monai.networks.nets import BasicUNet, UNet

from fanet_monai import FANet
from fanet_monai.data import make_tube_volume, make_vessel_image
from fanet_monai.feedback import FeedbackMaskCache
from fanet_monai.inferers import IterativeRefinementInferer
from fanet_monai.networks import ImageOnlyNetwork


def networks(dims: int, widths: list[int]) -> dict[str, torch.nn.Module]:
    """FANet, a BasicUNet with the same encoder widths (BasicUNet's first two levels share the first width) and a
    MONAI UNet with them (strides 2, two residual units per level, as MONAI's 3-D bundles build it)."""
    channels = 3 if dims == 2 else 1
    return {
        "FANet": FANet(spatial_dims=dims, in_channels=channels, out_channels=1, channels=widths),
        "BasicUNet": ImageOnlyNetwork(BasicUNet(spatial_dims=dims, in_channels=channels, out_channels=1,
                                                features=(widths[0], *widths, widths[0]))),
        "UNet": ImageOnlyNetwork(UNet(spatial_dims=dims, in_channels=channels, out_channels=1, channels=widths,
                                      strides=(2,) * (len(widths) - 1), num_res_units=2)),
    }


def median_seconds(fn, repeats: int) -> float:
    """Median of ``repeats`` timed calls after one warm-up call."""
    fn()
    return statistics.median(timeit.repeat(fn, number=1, repeat=repeats))


def step_and_pass(dims: int, widths: list[int], patch: int, image: int, batch: int, repeats: int) -> list[dict]:
    rows = []
    channels = 3 if dims == 2 else 1
    unit = 1e6 if dims == 2 else 64**3
    for name, net in networks(dims, widths).items():
        optimizer = torch.optim.Adam(net.parameters(), 1e-3)
        loss_fn = DiceCELoss(sigmoid=True)
        x = torch.rand(batch, channels + 1, *[patch] * dims)
        y = (torch.rand(batch, 1, *[patch] * dims) > 0.8).float()

        def step():
            optimizer.zero_grad()
            loss_fn(net(x), y).backward()
            optimizer.step()

        step_s = median_seconds(step, repeats)
        net.eval()
        whole = torch.rand(1, channels, *[image] * dims)
        inferer = IterativeRefinementInferer(num_passes=1, inner=SlidingWindowInferer([patch] * dims, 4, 0.25,
                                                                                     mode="gaussian"))
        with torch.no_grad():
            pass_s = median_seconds(lambda: inferer(whole, net), max(1, repeats // 2))
        rows.append({"dims": dims, "network": name, "parameters_M": sum(p.numel() for p in net.parameters()) / 1e6,
                     "step_s_per_unit": step_s / (batch * patch**dims / unit),
                     "pass_s_per_unit": pass_s / (image**dims / unit),
                     "step_voxels_per_s": batch * patch**dims / step_s, "pass_voxels_per_s": image**dims / pass_s,
                     **network_peak_memory(dims, name, widths, patch, batch, image)})
    return rows


#: code for the measuring subprocesses: ``rss()`` (resident set now, MiB — the high-water mark of ``getrusage`` would
#: include the imports' peak) and a thread keeping ``peak[0]`` from ``base`` on; the measured code sets ``done``
SAMPLER = """def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

base, peak, done = rss(), [0.0], threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss())
        time.sleep(0.005)
threading.Thread(target=sample, daemon=True).start()
"""


def network_peak_memory(dims: int, name: str, widths: list[int], patch: int, batch: int, image: int) -> dict:
    """Peak resident memory (MiB above the process before it) of one training step on ``batch`` patches and of one
    sliding-window pass over ``image``, each in a fresh process (a subprocess)."""
    out = {}
    for what in ("step", "pass"):
        code = f"""
import threading, time, torch
from monai.inferers import SlidingWindowInferer
from monai.losses import DiceCELoss
from benchmarks.patch_cost import networks
from fanet_monai.inferers import IterativeRefinementInferer

channels = {3 if dims == 2 else 1}
net = networks({dims}, {widths})[{name!r}]
{SAMPLER}if {what!r} == "step":
    x = torch.rand({batch}, channels + 1, *[{patch}] * {dims})
    y = (torch.rand({batch}, 1, *[{patch}] * {dims}) > 0.8).float()
    optimizer = torch.optim.Adam(net.parameters(), 1e-3)
    DiceCELoss(sigmoid=True)(net(x), y).backward()
    optimizer.step()
else:
    with torch.no_grad():
        window = SlidingWindowInferer([{patch}] * {dims}, 4, 0.25, mode="gaussian")
        IterativeRefinementInferer(num_passes=1, inner=window)(torch.rand(1, channels, *[{image}] * {dims}),
                                                               net.eval())
done.set()
print(max(peak[0], rss()) - base)
"""
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                cwd=str(Path(__file__).resolve().parents[1]))
        out[f"{what}_peak_MiB"] = float(result.stdout.strip().splitlines()[-1])
    return out


def peak_memory(dims: int, size: int, widths: list[int], patch: int) -> dict:
    """Peak resident memory above the baseline of a fresh process for one refinement pass (a subprocess)."""
    code = f"""
import threading, time, torch
from monai.inferers import SlidingWindowInferer
from fanet_monai import FANet
from fanet_monai.inferers import IterativeRefinementInferer

torch.set_grad_enabled(False)
channels = {3 if dims == 2 else 1}
net = FANet(spatial_dims={dims}, in_channels=channels, out_channels=1, channels={widths}).eval()
net(torch.rand(1, channels + 1, *[{patch}] * {dims}))
{SAMPLER}image = torch.rand(1, channels, *[{size}] * {dims})
window = SlidingWindowInferer([{patch}] * {dims}, 4, 0.25, mode="gaussian")
IterativeRefinementInferer(num_passes=2, inner=window)(image, net)
done.set()
print(max(peak[0], rss()) - base)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    image_mb = (3 if dims == 2 else 1) * size**dims * 4 / 2**20
    return {"dims": dims, "size": size, "peak_MiB_above_baseline": float(out.stdout.strip().splitlines()[-1]),
            "image_MiB": image_mb}


def cache_size(vessel_size: int, volume_size: int) -> list[dict]:
    rng = np.random.RandomState(0)
    _, vessels = make_vessel_image(vessel_size, vessel_size, rng)
    _, tubes = make_tube_volume((volume_size,) * 3, rng)
    rows = []
    for name, mask in (("vessels 2-D", vessels), ("tubes 3-D", tubes)):
        cache = FeedbackMaskCache()
        cache.put("x", np.asarray(mask, np.uint8)[None])
        rows.append({"mask": f"{name} {mask.shape}", "rle_bytes": cache.nbytes, "raw_bytes": int(mask.size),
                     "ratio": cache.nbytes / mask.size})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(torch.get_num_threads())
    if args.smoke:
        sizes = {"patch2": 32, "image2": 64, "patch3": 32, "image3": 48, "mem2": 128, "mem3": 48, "v": 64, "t": 16}
        widths, narrow, repeats = [8, 16, 16, 16], [4, 8, 8, 8], 1
    else:
        sizes = {"patch2": 128, "image2": 1024, "patch3": 64, "image3": 128, "mem2": 4096, "mem3": 256, "v": 1024,
                 "t": 256}
        widths, narrow, repeats = [32, 64, 128, 256], [8, 16, 16, 16], args.repeats
    rows = step_and_pass(2, widths, sizes["patch2"], sizes["image2"], 4, repeats)
    rows += step_and_pass(3, [16, 32, 64, 128] if not args.smoke else narrow, sizes["patch3"], sizes["image3"], 2,
                          repeats)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU\n")
    print("| dims | network | parameters (M) | training step (s per unit) | one pass (s per unit) "
          "| pass vs BasicUNet | step voxels/s | pass voxels/s | peak MiB step / pass |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        base = next(r for r in rows if r["dims"] == row["dims"] and r["network"] == "BasicUNet")
        unit = "MP" if row["dims"] == 2 else "64³"
        print(f"| {row['dims']}-D | {row['network']} | {row['parameters_M']:.2f} | {row['step_s_per_unit']:.2f} /{unit}"
              f" | {row['pass_s_per_unit']:.2f} /{unit} | {row['pass_s_per_unit'] / base['pass_s_per_unit']:.2f}x "
              f"| {row['step_voxels_per_s']:,.0f} | {row['pass_voxels_per_s']:,.0f} "
              f"| {row['step_peak_MiB']:.0f} / {row['pass_peak_MiB']:.0f} |")
    print("\n| refinement (2 passes, narrow FANet) | image (MiB) | peak above baseline (MiB) |\n|---|---|---|")
    for dims, size in ((2, sizes["mem2"]), (3, sizes["mem3"])):
        m = peak_memory(dims, size, narrow, sizes["patch2"] if dims == 2 else sizes["patch3"])
        print(f"| {size}{'²' if dims == 2 else '³'} | {m['image_MiB']:.0f} | {m['peak_MiB_above_baseline']:.0f} |")
    print("\n| feedback mask | RLE bytes | raw bytes (1 per pixel) | ratio |\n|---|---|---|---|")
    for row in cache_size(sizes["v"], sizes["t"]):
        print(f"| {row['mask']} | {row['rle_bytes']} | {row['raw_bytes']} | {row['ratio']:.4f} |")
    print(json.dumps({"rows": rows}), file=sys.stderr)


if __name__ == "__main__":
    main()
