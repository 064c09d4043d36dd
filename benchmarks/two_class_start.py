"""How fast each 3-D network starts separating two adjacent classes: a one-minute synthetic check.

Every step draws a batch of volumes holding one ellipsoid split across its long axis into two classes (like the
anterior and posterior hippocampus: adjacent, a few per cent of the voxels each) in Gaussian noise, and takes one
Adam step of the Dice-CE loss the bundle trains with (softmax, batch Dice, 0.5/0.5). Reported every ``--every``
steps: the loss and the Dice of each class on that batch (argmax). FANet variants get an empty feedback mask (the
backbone's start, no feedback training) so the table isolates the head and the initialisation; MONAI's BasicUNet at
the same level widths is the baseline, measured in the same run.

    python benchmarks/two_class_start.py                 # 60 steps, widths 8-16-32-64 (README, volume study)
    python benchmarks/two_class_start.py --smoke         # 2 steps, tiny (CI)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from monai.networks.nets import BasicUNet

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repository's benchmarks/

from fanet_monai.networks import FANet  # noqa: E402
from fanet_monai.outputs import segmentation_loss  # noqa: E402


def split_ellipsoids(generator: torch.Generator, batch: int, shape: tuple[int, int, int]) -> tuple:
    """``(image, label)``: ``(batch, 1, *shape)`` each; label 1 on the ellipsoid's first half along axis 1, 2 on the
    second; the image is the foreground plus N(0, 0.5) noise."""
    label = torch.zeros(batch, 1, *shape)
    grid = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in shape], indexing="ij")
    radii = (shape[0] / 5, shape[1] * 0.3, shape[2] / 6)
    for b in range(batch):
        centre = [s / 2 + float(torch.randint(-2, 3, (1,), generator=generator)) for s in shape]
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) < 1
        label[b, 0][inside & (grid[1] < centre[1])] = 1
        label[b, 0][inside & (grid[1] >= centre[1])] = 2
    image = (label > 0).float() + 0.5 * torch.randn(label.shape, generator=generator)
    return image, label


def networks(widths: list[int]) -> dict[str, torch.nn.Module]:
    w = list(widths)
    fanet = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": w}
    return {
        "BasicUNet": BasicUNet(3, 1, 3, features=(w[0], w[0], w[1], w[2], w[3], w[0])),
        "FANet B1": FANet(variant="B1", **fanet),
        "FANet B1, prior 0.05": FANet(variant="B1", prior_probability=0.05, **fanet),
        "FANet B4": FANet(**fanet),
        "FANet B4, prior 0.05": FANet(prior_probability=0.05, **fanet),
        f"FANet B4, prior 0.05, head {w[0]}": FANet(prior_probability=0.05, head_channels=w[0], **fanet),
    }


def class_dice(logits: torch.Tensor, label: torch.Tensor, k: int) -> float:
    pred, truth = logits.argmax(1) == k, label[:, 0] == k
    return float(2 * (pred & truth).sum() / max(int(pred.sum() + truth.sum()), 1))


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--shape", type=int, nargs=3, default=[32, 48, 32])
    parser.add_argument("--widths", type=int, nargs=4, default=[8, 16, 32, 64])
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="2 steps at 32³, widths 4-8-8-8 (CI)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.every, args.batch, args.shape, args.widths = 2, 1, 2, [32, 32, 32], [4, 8, 8, 8]
    loss = segmentation_loss(2, batch=True, smooth_nr=1.0, smooth_dr=1.0, lambda_dice=0.5, lambda_ce=0.5)
    torch.manual_seed(args.seed)
    rows = []
    print(f"\n{args.steps} Adam steps at {args.learning_rate:g}, batch {args.batch} of {args.shape}, widths "
          f"{args.widths}, seed {args.seed}\n")
    print("| network | step | loss | Dice class 1 | Dice class 2 |\n|---|---|---|---|---|", flush=True)
    for name, net in networks(args.widths).items():
        optimizer = torch.optim.Adam(net.parameters(), args.learning_rate)
        generator = torch.Generator().manual_seed(args.seed)  # the same batches for every network
        for step in range(1, args.steps + 1):
            image, label = split_ellipsoids(generator, args.batch, tuple(args.shape))
            x = torch.cat([image, torch.zeros_like(image)], 1) if isinstance(net, FANet) else image
            logits = net(x)
            value = loss(logits, label)
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
            if step % args.every == 0 or step == args.steps:
                row = {"network": name, "step": step, "loss": float(value.detach()),
                       "dice_1": class_dice(logits.detach(), label, 1), "dice_2": class_dice(logits.detach(), label, 2)}
                rows.append(row)
                print(f"| {name} | {step} | {row['loss']:.3f} | {row['dice_1']:.2f} | {row['dice_2']:.2f} |",
                      flush=True)
    return rows


if __name__ == "__main__":
    main()
