"""Network cost of FANet against the MONAI networks a user would pick instead, on the current device.

For each network: parameters, GMac (ptflops, pytorch backend, at 512²), forward latency per image (median of
``--repeats`` runs after a warm-up) at each size and batch, achieved GFLOP/s (2 FLOP per MAC), and the time of one
training step (forward + backward + Adam) at 256². Each row also gives its latency ratio to FANet B4 from the same
run. A second table tries FANet B4's cheap inference wins: channels-last memory format, conv-BN folding
(:func:`fanet_monai.networks.fuse_conv_bn`), and optionally ``torch.compile``.

    python benchmarks/network.py                       # CPU: 128² and 256², batch 1 and 4
    python benchmarks/network.py --sizes 128 256 512 --batches 1 4 --compile
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Dict, List

import torch
from monai.networks.nets import AttentionUnet, BasicUNet, BasicUNetPlusPlus

from fanet_monai.networks import FANet, ImageOnlyNetwork, fuse_conv_bn


def candidates() -> Dict[str, Callable[[], torch.nn.Module]]:
    paper = (64, 128, 256, 512, 1024)
    return {
        "FANet B4": lambda: FANet(variant="B4"),
        "FANet B3": lambda: FANet(variant="B3"),
        "FANet B1": lambda: FANet(variant="B1"),
        "BasicUNet (MONAI default widths)": lambda: ImageOnlyNetwork(BasicUNet(2, 3, 1)),
        "AttentionUnet (16-256)": lambda: ImageOnlyNetwork(
            AttentionUnet(2, 3, 1, (16, 32, 64, 128, 256), (2, 2, 2, 2))),
        "BasicUNetPlusPlus (MONAI default widths)": lambda: ImageOnlyNetwork(BasicUNetPlusPlus(2, 3, 1)),
        "BasicUNet (paper widths 64-1024)": lambda: ImageOnlyNetwork(BasicUNet(2, 3, 1, features=(*paper, 64))),
        "AttentionUnet (paper widths 64-1024)": lambda: ImageOnlyNetwork(AttentionUnet(2, 3, 1, paper, (2, 2, 2, 2))),
        "BasicUNetPlusPlus (paper widths 64-1024)": lambda: ImageOnlyNetwork(
            BasicUNetPlusPlus(2, 3, 1, features=(*paper, 64))
        ),
    }


def gmac(net: torch.nn.Module, size: int) -> float:
    from ptflops import get_model_complexity_info

    macs, _ = get_model_complexity_info(
        net, (4, size, size), as_strings=False, print_per_layer_stat=False, backend="pytorch"
    )
    return macs / 1e9


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_time(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def net_input(batch: int, size: int, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    x = torch.rand(batch, 4, size, size, device=device)
    x[:, 3] = (x[:, 3] > 0.5).float()
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def forward_latency(net, batch, size, device, repeats, channels_last=False) -> float:
    x = net_input(batch, size, device, channels_last)
    with torch.inference_mode():
        return median_time(lambda: net(x), device, repeats) / batch


def train_step_time(net: torch.nn.Module, size: int, batch: int, device: torch.device, repeats: int) -> float:
    net.train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    x = net_input(batch, size, device)
    y = (torch.rand(batch, 1, size, size, device=device) > 0.5).float()

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x), y)
        loss.backward()
        optimizer.step()

    result = median_time(step, device, repeats)
    net.eval()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-size", type=int, default=256)
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--models", nargs="*", default=None, help="subset of model names (substring match)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow cold start)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"device: {device} ({where}), torch {torch.__version__}")

    rows: List[dict] = []
    for name, build in candidates().items():
        if args.models and not any(m.lower() in name.lower() for m in args.models):
            continue
        net = build().eval()
        row = {"name": name, "params": sum(p.numel() for p in net.parameters()), "gmac512": gmac(net, 512)}
        net = net.to(device)
        for size in args.sizes:
            for batch in args.batches:
                row[(size, batch)] = forward_latency(net, batch, size, device, args.repeats)
        row["train"] = train_step_time(net, args.train_size, args.train_batch, device, args.repeats)
        rows.append(row)
        print(f"  measured {name}", flush=True)

    ref = next(r for r in rows if r["name"] == "FANet B4") if any(r["name"] == "FANet B4" for r in rows) else rows[0]
    big = (max(args.sizes), max(args.batches))
    header = ["network", "params (M)", "GMac@512²"]
    header += [f"fwd {s}² b{b} (ms/img)" for s in args.sizes for b in args.batches]
    header += [f"GFLOP/s @{big[0]}² b{big[1]}", f"train step {args.train_size}² b{args.train_batch} (s)",
               f"fwd ratio to B4 @{big[0]}² b{big[1]}"]
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        flops = 2 * r["gmac512"] * (big[0] / 512) ** 2 * 1e9  # per image
        cells = [r["name"], f"{r['params'] / 1e6:.2f}", f"{r['gmac512']:.2f}"]
        cells += [f"{1e3 * r[(s, b)]:.1f}" for s in args.sizes for b in args.batches]
        cells += [f"{flops / r[big] / 1e9:.1f}", f"{r['train']:.2f}", f"{r[big] / ref[big]:.2f}"]
        print("| " + " | ".join(cells) + " |")

    # cheap inference wins for FANet B4
    print()
    def b4() -> torch.nn.Module:
        torch.manual_seed(0)
        return FANet(variant="B4").eval().to(device)

    channels_last = torch.channels_last
    options = {
        "eager (float32)": (b4(), False),
        "channels-last": (b4().to(memory_format=channels_last), True),
        "conv-BN folded": (fuse_conv_bn(b4()), False),
        "conv-BN folded + channels-last": (fuse_conv_bn(b4()).to(memory_format=channels_last), True),
    }
    if device.type == "cuda":
        options["AMP float16"] = (b4(), False)
    if args.compile:
        options["torch.compile"] = (torch.compile(fuse_conv_bn(b4())), False)
    size, batch = big
    print(f"| FANet B4 inference option | fwd {size}² b{batch} (ms/img) | speed-up vs eager |")
    print("|---|---|---|")
    eager = None
    for label, (net, cl) in options.items():
        if label == "AMP float16":
            x = net_input(batch, size, device)
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
                t = median_time(lambda: net(x), device, args.repeats) / batch
        else:
            t = forward_latency(net, batch, size, device, args.repeats, channels_last=cl)
        eager = eager or t
        print(f"| {label} | {1e3 * t:.1f} | {eager / t:.2f}× |")


if __name__ == "__main__":
    main()
