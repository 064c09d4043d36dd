"""Thin structures at their own size: resize mode vs patch mode vs plain MONAI pipelines, scored at native size.

Every configuration trains on the same images and seed and is scored on the same held-out images **at the images'
own size** (Dice, clDice, Betti-0 error: :mod:`fanet_monai.metrics`, :mod:`fanet_monai.topology`), side by side in
one run:

- ``resize_nearest``: the bundle in resize mode as it was (bilinear image without anti-aliasing, nearest label);
- ``resize_area``: the bundle in resize mode with an anti-aliased image and an area-resized (soft) label (the
  default since this comparison);
- ``fanet_patch``: the bundle in patch mode (``patch_size`` patches, sliding-window refinement);
- ``basicunet_resize_nearest``, ``basicunet_resize_area``, ``basicunet_patch``: the same three with MONAI's
  ``BasicUNet`` as ``network_def`` (the bundle's pipeline against the plain scripts, same network);
- ``monai_resize``: a plain MONAI script (``BasicUNet``, images and labels resized bilinear with anti-aliasing /
  area, flips, Dice-CE, Adam, logits resized back to the native size);
- ``monai_patch``: a plain MONAI script with ``BasicUNet`` on ``RandCropByPosNegLabeld`` patches and
  ``SlidingWindowInferer``.

The bundle configurations run through ``fanet train`` / ``fanet infer`` (the masks a user gets). Data: the synthetic
thin vessels (:func:`fanet_monai.data.make_vessel_dataset`, default 584x565 like retinal photographs) or the ISBI
2012 membranes (``--data isbi``, 512², from ``../shared``).

    python benchmarks/native_resolution.py --epochs 30 --seeds 0 1 2          # the table
    python benchmarks/native_resolution.py --smoke                            # every configuration, tiny (CI)
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from monai.data import DataLoader, Dataset
from monai.inferers import SlidingWindowInferer
from monai.losses import DiceCELoss
from monai.networks.nets import BasicUNet
from monai.transforms import (Compose, EnsureChannelFirstd, LoadImaged, RandCropByPosNegLabeld, RandFlipd, Resize,
                              Resized, ScaleIntensityd)
from monai.utils import set_determinism
from PIL import Image

from fanet_monai.cli import run
from fanet_monai.data import make_vessel_dataset
from fanet_monai.metrics import segmentation_metrics
from fanet_monai.run import release_claims
from fanet_monai.topology import connectivity_metrics

SHARED_EM = Path(__file__).resolve().parents[2] / "shared" / "data" / "isbi2012_em"
CONFIGS = ("resize_nearest", "resize_area", "fanet_patch", "basicunet_resize_nearest", "basicunet_resize_area",
           "basicunet_patch", "monai_resize", "monai_patch")
BASICUNET = {"_target_": "fanet_monai.networks.ImageOnlyNetwork",
             "network": {"_target_": "BasicUNet", "spatial_dims": 2, "in_channels": 3, "out_channels": 1}}


def prepare(data: str, work: Path, num_images: int, height: int, width: int, num_test: int) -> tuple[Path, Path]:
    """``(train folder, test folder)`` with ``images/`` + ``masks/`` each."""
    source = work / "all"
    if data == "vessels":
        make_vessel_dataset(source, num_images, height=height, width=width, seed=123)
    else:
        if not SHARED_EM.is_dir():
            raise SystemExit(f"{SHARED_EM}: the ISBI data is not there; use --data vessels.")
        shutil.copytree(SHARED_EM, source)
    names = sorted(p.name for p in (source / "images").iterdir())
    folders = []
    for split, chosen in (("train", names[:-num_test]), ("test", names[-num_test:])):
        for sub in ("images", "masks"):
            (work / split / sub).mkdir(parents=True, exist_ok=True)
            for name in chosen:
                stem = Path(name).stem
                match = next((source / sub).glob(stem + ".*"))
                shutil.copy(match, work / split / sub / match.name)
        folders.append(work / split)
    return folders[0], folders[1]


def score(predictions: dict[str, np.ndarray], test: Path) -> dict[str, float]:
    """Mean Dice, clDice and Betti-0 error of native-size binary masks against the test labels."""
    rows = []
    for name, pred in predictions.items():
        label = np.asarray(Image.open(next((test / "masks").glob(Path(name).stem + ".*")))) > 127
        p = torch.as_tensor(pred, dtype=torch.float32)[None, None]
        y = torch.as_tensor(label, dtype=torch.float32)[None, None]
        connectivity = connectivity_metrics(p, y)
        rows.append({"dice": float(segmentation_metrics(p, y, ["f1"])["f1"][0]),
                     "cldice": float(connectivity["cldice"][0]), "betti0": float(connectivity["betti0_error"][0])})
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def run_bundle(config: str, train: Path, test: Path, out: Path, args: argparse.Namespace, seed: int) -> dict:
    common = ["--num_workers", "0", "--show_progress", "False", "--seed", str(seed), "--batch_size",
              str(args.batch), "--max_epochs", str(args.epochs), "--val_interval", str(10**9), "--val_fraction", "0",
              "--network_def#channels", json.dumps(args.channels), "--learning_rate", "1e-3"]
    if "resize" in config:
        common += ["--input_mode", "resize", "--image_size", json.dumps([args.resize] * 2)]
        area = config.endswith("resize_area")
        common += ["--resize_anti_aliasing", str(area), "--resize_label_mode", "area" if area else "nearest"]
    else:
        common += ["--input_mode", "patch", "--patch_size", json.dumps([args.patch] * 2), "--patches_per_image",
                   str(args.patches)]
    if config.startswith("basicunet"):
        common = [c for c in common if not c.startswith("--network_def#channels")]
        common.remove(json.dumps(args.channels))
        common += ["--network_def", json.dumps(BASICUNET)]
    start = time.time()
    if run(["train", str(train), "--bundle_root", str(out), "--overwrite", "True", *common]) != 0:
        raise SystemExit(f"{config}: training failed (see {out / 'logs'})")
    release_claims()
    seconds = time.time() - start
    shutil.copy(sorted((out / "models").glob("checkpoint_epoch=*.pt"))[-1], out / "models" / "last.pt")
    masks = out / "masks"
    if run(["infer", str(test / "images"), str(masks), "--bundle_root", str(out), "--num_workers", "0",
            "--ckpt_path", str(out / "models" / "last.pt")]) != 0:
        raise SystemExit(f"{config}: inference failed")
    predictions = {p.name: np.asarray(Image.open(p)) > 127 for p in masks.iterdir()}
    return {**score(predictions, test), "train_s": seconds}


def _items(folder: Path) -> list[dict]:
    return [{"image": str(p), "label": str(next((folder / "masks").glob(p.stem + ".*")))}
            for p in sorted((folder / "images").iterdir())]


def run_monai(config: str, train: Path, test: Path, args: argparse.Namespace, seed: int) -> dict:
    """The plain MONAI reference scripts (no fanet_monai code in the training or inference path)."""
    set_determinism(seed)
    load = [LoadImaged(["image", "label"], image_only=True), EnsureChannelFirstd(["image", "label"]),
            ScaleIntensityd(["image", "label"])]
    size = [args.resize] * 2
    if config == "monai_resize":
        spatial = [Resized(["image", "label"], size, mode=["bilinear", "area"], anti_aliasing=[True, False])]
    else:
        spatial = [RandCropByPosNegLabeld(["image", "label"], "label", [args.patch] * 2, num_samples=args.patches)]
    transform = Compose([*load, *spatial, RandFlipd(["image", "label"], prob=0.5, spatial_axis=0),
                         RandFlipd(["image", "label"], prob=0.5, spatial_axis=1)])
    loader = DataLoader(Dataset(_items(train), transform), batch_size=args.batch, shuffle=True, num_workers=0)
    net = BasicUNet(spatial_dims=2, in_channels=3, out_channels=1)
    loss_fn = DiceCELoss(sigmoid=True)
    optimizer = torch.optim.Adam(net.parameters(), 1e-3)
    start = time.time()
    for _ in range(args.epochs):
        net.train()
        for batch in loader:
            optimizer.zero_grad()
            loss = loss_fn(net(batch["image"]), batch["label"])
            loss.backward()
            optimizer.step()
    seconds = time.time() - start
    net.eval()
    predictions = {}
    window = SlidingWindowInferer([args.patch] * 2, sw_batch_size=4, overlap=0.25, mode="gaussian")
    with torch.no_grad():
        for item in _items(test):
            image = Compose([LoadImaged("image", image_only=True), EnsureChannelFirstd("image"),
                             ScaleIntensityd("image")])({"image": item["image"]})["image"]
            if config == "monai_resize":
                logits = net(Resize(size, mode="bilinear", anti_aliasing=True)(image)[None])[0]
                logits = Resize(image.shape[1:], mode="bilinear")(logits)
            else:
                logits = window(image[None], net)[0]
            # MONAI's PIL reading puts width first: back to the PNG's (H, W)
            predictions[Path(item["image"]).name] = (logits[0] > 0).numpy().T
    return {**score(predictions, test), "train_s": seconds}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=("vessels", "isbi"), default="vessels")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--test", type=int, default=6)
    parser.add_argument("--height", type=int, default=584)
    parser.add_argument("--width", type=int, default=565)
    parser.add_argument("--resize", type=int, default=256)
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--patches", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--channels", type=int, nargs=4, default=[16, 32, 64, 128])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, 1 epoch: every step runs (for CI)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.images, args.test, args.height, args.width, args.resize, args.patch = 5, 2, 48, 40, 32, 32
        args.epochs, args.patches, args.channels = 1, 2, [4, 8, 8, 8]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="native-resolution-"))
    train, test = prepare(args.data, work / "data", args.images, args.height, args.width, args.test)
    results = []
    for seed in args.seeds:
        for config in args.configs:
            out = work / f"{config}-seed{seed}"
            if config.startswith("monai"):
                row = run_monai(config, train, test, args, seed)
            else:
                row = run_bundle(config, train, test, out, args, seed)
            results.append({"config": config, "seed": seed, **row})
            print(json.dumps(results[-1]), flush=True)
    print(f"\n{args.data} {args.height}x{args.width}, {args.images - args.test} train / {args.test} test images, "
          f"{args.epochs} epochs, seeds {args.seeds}; scored at the native size")
    print("| configuration | Dice | clDice | Betti-0 error | train s |\n|---|---|---|---|---|")
    for config in args.configs:
        rows = [r for r in results if r["config"] == config]
        cell = {k: f"{np.mean([r[k] for r in rows]):.3f} ± {np.std([r[k] for r in rows]):.3f}"
                for k in ("dice", "cldice", "betti0")}
        print(f"| {config} | {cell['dice']} | {cell['cldice']} | {cell['betti0']} | "
              f"{np.mean([r['train_s'] for r in rows]):.0f} |")
    return results


if __name__ == "__main__":
    main()
