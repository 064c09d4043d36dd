"""Cost of the feedback machinery against a FANet training step, and the size of the mask cache.

Per training sample, the feedback loop does: cache lookup + RLE decode (``FeedbackMaskd``), concatenation into the
network input, and after the step: sigmoid, inverse of the sample's augmentation, binarize, RLE encode, store
(``FeedbackMaskHandler.to_cache_frame`` + ``FeedbackMaskCache.put``). This script times those for a batch at
256² (with the bundle's default augmentation: rotation, flips) and compares with one training step of FANet B4
(forward + backward + Adam) on the same batch, measured in the same run.

    python benchmarks/feedback.py --size 256 --batch 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

import numpy as np
import torch
from monai.data import DataLoader, Dataset
from monai.losses import DiceCELoss
from monai.transforms import Compose, EnsureTyped, RandFlipd, RandRotated

from fanet_monai import FANet
from fanet_monai.feedback import FeedbackMaskCache, sample_key
from fanet_monai.feedback.handler import FeedbackMaskHandler
from fanet_monai.feedback.transforms import FeedbackMaskd

KEYS = ["image", "label", "mask"]


def blobs(size: int, rng: np.random.RandomState) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    mask = np.zeros((size, size), bool)
    for _ in range(rng.randint(1, 4)):
        cy, cx, r = rng.randint(0, size, 2).tolist() + [rng.randint(size // 12, size // 4)]
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    return mask


def median(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--samples", type=int, default=32, help="samples in the cache (for the size figures)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rng = np.random.RandomState(0)
    size, batch = args.size, args.batch

    from monai.data import MetaTensor

    items = []
    for i in range(args.samples):
        label = blobs(size, rng)
        image = np.repeat(label[None].astype(np.float32), 3, 0) * 0.5 + rng.rand(3, size, size).astype(np.float32) * 0.5
        name = f"sample_{i:04d}.png"
        items.append({"image": MetaTensor(image, meta={"filename_or_obj": name}),
                      "label": MetaTensor(label[None].astype(np.float32), meta={"filename_or_obj": name})})
    cache = FeedbackMaskCache()
    feedback = FeedbackMaskd("image", cache)
    augmentation = [
        RandRotated(KEYS, range_x=0.61, prob=1.0, mode=["bilinear", "nearest", "nearest"]),
        RandFlipd(KEYS, prob=0.5, spatial_axis=0),
        RandFlipd(KEYS, prob=0.5, spatial_axis=1),
    ]
    transform = Compose([EnsureTyped(["image", "label"]), feedback, *augmentation])
    loader = DataLoader(Dataset(items, transform), batch_size=batch, num_workers=0)
    handler = FeedbackMaskHandler(cache, transform)
    handler.initialize(SimpleNamespace(data_loader=loader))

    # the feedback work for one batch, with the masks already in the cache
    pre = Compose([EnsureTyped(["image", "label"])])
    samples = [pre(dict(item)) for item in items[:batch]]

    def lookup():
        return [feedback(dict(s)) for s in samples]

    looked_up = lookup()
    augmented = [Compose(augmentation)(dict(s)) for s in looked_up]
    # prediction-like logits: the augmented label, slightly perturbed
    logits = [20.0 * (s["label"].as_tensor() * 2 - 1) + torch.randn(1, size, size) for s in augmented]

    def store():
        for sample, pred in zip(augmented, logits):
            cache.put(*handler.inverse.to_cache_frame(sample["mask"], pred))

    def concat():
        return torch.cat([torch.stack([s["image"] for s in augmented]), torch.stack([s["mask"] for s in augmented])], 1)

    t_lookup = median(lookup, args.repeats)
    t_concat = median(concat, args.repeats)
    t_store = median(store, args.repeats)

    # store without inversion: the encode + put part alone
    def encode_only():
        for sample, pred in zip(augmented, logits):
            cache.put(sample_key(sample["mask"].meta), (pred > 0).numpy())

    t_encode = median(encode_only, args.repeats)
    cache.load_state_dict(FeedbackMaskCache().state_dict())  # drop the timing masks
    handler.initialize(SimpleNamespace(data_loader=loader))  # back to the Otsu masks

    net = FANet().to(device).train()
    optimizer = torch.optim.Adam(net.parameters(), 1e-4)
    loss_fn = DiceCELoss(sigmoid=True, batch=True, smooth_nr=1, smooth_dr=1, lambda_dice=0.5, lambda_ce=0.5)
    x = torch.as_tensor(concat()).to(device)
    y = torch.as_tensor(torch.stack([s["label"] for s in augmented])).to(device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    t_step = median(step, args.repeats)
    feedback_total = t_lookup + t_concat + t_store
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"device: {device} ({where}); size {size}², batch {batch}; medians of {args.repeats}\n")
    print("| part (per batch) | ms | % of a training step |")
    print("|---|---|---|")
    for label, t in [
        ("cache lookup + RLE decode (FeedbackMaskd)", t_lookup),
        ("image ⊕ mask concatenation", t_concat),
        ("sigmoid + inverse augmentation + binarize + RLE encode + store", t_store),
        ("  of which RLE encode + store alone", t_encode),
        ("feedback machinery, total", feedback_total),
        ("FANet B4 training step (forward + backward + Adam)", t_step),
    ]:
        print(f"| {label} | {1e3 * t:.2f} | {100 * t / t_step:.2f} % |")
    sizes = FeedbackMaskCache()
    for item in items:  # prediction-like masks (the labels: 1-3 blobs)
        sizes.put(sample_key(item["image"].meta), item["label"].numpy())
    for name, c in [("prediction-like masks", sizes), ("Otsu masks of these noisy images (epoch 0)", cache)]:
        per_sample, raw = c.nbytes / len(c), c.raw_nbytes / len(c)
        print(f"cache of {len(c)} {name} at {size}²: {per_sample:.0f} bytes per sample RLE vs {raw:.0f} raw "
              f"uint8 ({100 * per_sample / raw:.2f} %)")


if __name__ == "__main__":
    main()
