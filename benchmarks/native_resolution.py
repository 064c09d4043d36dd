"""Thin structures at their own size: resize mode vs patch mode vs plain MONAI pipelines, over folds and seeds.

Every configuration trains on the same images and seed and is scored on the same held-out fold **at the images'
own size** (Dice, clDice, Betti-0 error: :mod:`fanet_monai.metrics`, :mod:`fanet_monai.topology`):

- ``resize_nearest``: the bundle in resize mode as it was (bilinear image without anti-aliasing, nearest label);
- ``resize_area``: the bundle in resize mode with an anti-aliased image and an area-resized (soft) label (the
  default since this comparison);
- ``fanet_patch``: the bundle in patch mode (``patch_size`` patches, sliding-window refinement);
- ``fanet_patch_annotator``: the same, trained for annotation: the feedback masks include ``corrected`` ones (the
  previous prediction with the label pasted into random boxes: ``--mask_mix annotator``) and every step draws one
  or two passes (``--unroll_random``), so the network is also trained directly on the mask it is fed
  (``benchmarks/annotation_loop.py`` compares it with ``fanet_patch``);
- ``fanet_patch_annotator_input``: ``fanet_patch_annotator`` with the feedback mask also an input channel of the
  first encoder stage (``network_def#mask_input``);
- ``fanet_patch_annotator_errors_input``: ``fanet_patch_annotator_input`` with the corrections on the mask's errors
  (``--mask_mix annotator_errors``: ``corrected_at_errors`` boxes, centred on pixels the previous prediction has
  wrong);
- ``fanet_patch_annotator_errors_reviewed_input``: ``fanet_patch_annotator_errors_input`` with a reviewed channel
  (``--reviewed_input True``): the network is told which pixels of its fed mask an annotator corrected (the pasted
  boxes in training, the annotator's reviewed pixels at test time);
- ``fanet_patch_annotator_errors_interactive_input``: ``fanet_patch_annotator_errors_input`` trained the way
  interactive-segmentation networks are (RITM's iterative training: ``--unroll_corrections 0.5``): in the steps
  with two passes, half the samples get the label pasted into boxes at the errors of their own first-pass answer
  before the gradient pass, as the annotation loop's annotator corrects the network's current mask;
- ``basicunet_resize_nearest``, ``basicunet_resize_area``, ``basicunet_patch``: the same three with MONAI's
  ``BasicUNet`` as ``network_def`` (the bundle's pipeline against the plain scripts, same network);
- ``monai_resize``: a plain MONAI script (``BasicUNet``, images and labels resized bilinear with anti-aliasing /
  area, flips, Dice-CE, Adam, logits resized back to the native size);
- ``monai_patch``: a plain MONAI script with ``BasicUNet`` on ``RandCropByPosNegLabeld`` patches and
  ``SlidingWindowInferer``.

The bundle configurations run through ``fanet train`` / ``fanet infer`` (the masks a user gets). FANet is scored
after one pass (``--num_passes 1``) and refined (the product's default: 3 passes with early stop), and the refined
masks once more with the components under ``--min-object-size`` pixels removed (``--min_object_size``,
:func:`fanet_monai.outputs.small_object_removal`). Data: the synthetic thin vessels
(:func:`fanet_monai.data.make_vessel_dataset`, ``--size`` square, 1024 by default) or the ISBI 2012 EM slices with
the **membranes** as foreground (``--data isbi``, 512², from ``../shared``).

Folds are contiguous blocks of ``--test`` images (train on the rest); a run is one (data, configuration, fold,
seed), appended to ``WORKDIR/runs.jsonl`` and skipped when the study is started again. The report gives mean ± sd
over the (fold, seed) pairs and **paired** differences (same fold and seed) with 95 % t-intervals: refined − pass 1,
FANet − BasicUNet in the same mode, patch − resize with the same network; ``*`` marks an interval that excludes 0.

    python benchmarks/native_resolution.py --pairs 0:0 1:1 2:2 --workdir runs/native      # vessels 1024²
    python benchmarks/native_resolution.py --data isbi --test 6 --pairs 0:0 2:1 4:2 --workdir runs/native
    python benchmarks/native_resolution.py --report --workdir runs/native                 # tables again
    python benchmarks/native_resolution.py --smoke                                        # tiny, every step (CI)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repository's benchmarks/

from benchmarks.feedback_study import mean_sd, paired_difference, parse_pairs  # noqa: E402
from benchmarks.feedback_study import prepare_data as prepare_isbi  # noqa: E402
from fanet_monai.cli import run  # noqa: E402
from fanet_monai.data import make_vessel_dataset  # noqa: E402
from fanet_monai.metrics import segmentation_metrics  # noqa: E402
from fanet_monai.outputs import small_object_removal  # noqa: E402
from fanet_monai.run import release_claims  # noqa: E402
from fanet_monai.topology import connectivity_metrics  # noqa: E402

SHARED_EM = Path(__file__).resolve().parents[2] / "shared" / "data" / "isbi2012_em"
CONFIGS = ("resize_nearest", "resize_area", "fanet_patch", "fanet_patch_annotator", "fanet_patch_annotator_input",
           "fanet_patch_annotator_errors_input", "fanet_patch_annotator_errors_reviewed_input",
           "fanet_patch_annotator_errors_interactive_input",
           "basicunet_resize_nearest", "basicunet_resize_area", "basicunet_patch", "monai_resize", "monai_patch")

BASICUNET = {"_target_": "fanet_monai.networks.ImageOnlyNetwork",
             "network": {"_target_": "BasicUNet", "spatial_dims": 2, "in_channels": 3, "out_channels": 1}}
METRICS = ("dice", "cldice", "betti0")


def prepare(data: str, work: Path, num_images: int, size: int) -> Path:
    """``work/source`` with images/ + masks/: the synthetic vessels (``size``²) or the ISBI membranes."""
    if data == "vessels":
        source = work / "source"
        return source if (source / "images").is_dir() else make_vessel_dataset(source, num_images, height=size,
                                                                                   width=size, seed=123)
    if not SHARED_EM.is_dir():
        raise SystemExit(f"{SHARED_EM}: the ISBI data is not there; use --data vessels.")
    return prepare_isbi("membrane", work, SHARED_EM, 0, 0)


def fold_folders(source: Path, fold: int, fold_size: int, work: Path) -> tuple[Path, Path]:
    """``(train, test)`` folders (images/ + masks/ of links): images ``fold*fold_size ..`` (sorted, contiguous)
    are the test fold, the rest train."""
    names = sorted(p.name for p in (source / "images").iterdir())
    held = names[fold * fold_size:(fold + 1) * fold_size]
    if len(held) < fold_size or len(held) == len(names):
        raise SystemExit(f"fold {fold} of {fold_size} images does not fit the {len(names)} images of {source}.")
    folders = []
    for split, chosen in (("train", [n for n in names if n not in held]), ("test", held)):
        root = work / f"fold{fold}" / split
        for sub in ("images", "masks"):
            (root / sub).mkdir(parents=True, exist_ok=True)
            for name in chosen:
                match = next((source / sub).glob(Path(name).stem + ".*"))
                if not (root / sub / match.name).exists():
                    (root / sub / match.name).symlink_to(match.resolve())
        folders.append(root)
    return folders[0], folders[1]


def score(predictions: dict[str, np.ndarray], test: Path) -> dict[str, float]:
    """Mean Dice, clDice and Betti-0 error of native-size binary masks against the test labels."""
    rows = []
    for name, pred in predictions.items():
        label = np.asarray(Image.open(next((test / "masks").glob(Path(name).stem + ".*"))).convert("L")) > 127
        p = torch.as_tensor(pred, dtype=torch.float32)[None, None]
        y = torch.as_tensor(label, dtype=torch.float32)[None, None]
        connectivity = connectivity_metrics(p, y)
        rows.append({"dice": float(segmentation_metrics(p, y, ["f1"])["f1"][0]),
                     "cldice": float(connectivity["cldice"][0]), "betti0": float(connectivity["betti0_error"][0])})
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def without_specks(predictions: dict[str, np.ndarray], min_size: int) -> dict[str, np.ndarray]:
    """The masks after the product's ``--min_object_size`` step (same transform as ``fanet infer``)."""
    remove = small_object_removal(min_size, spatial_dims=2)
    return {name: remove({"pred": torch.as_tensor(m[None], dtype=torch.float32)})["pred"][0].numpy() > 0
            for name, m in predictions.items()}


def _infer(out: Path, test: Path, masks: Path, *options: str) -> dict[str, np.ndarray]:
    shutil.rmtree(masks, ignore_errors=True)
    if run(["infer", str(test / "images"), str(masks), "--bundle_root", str(out), "--num_workers", "0",
            "--ckpt_path", str(out / "models" / "last.pt"), *options]) != 0:
        raise SystemExit(f"{out}: inference failed (see {out / 'logs'})")
    return {p.name: np.asarray(Image.open(p)) > 127 for p in masks.iterdir()}


def run_bundle(config: str, train: Path, test: Path, out: Path, args: argparse.Namespace, seed: int) -> dict:
    """Train with ``fanet train``; score ``fanet infer``'s masks after 1 pass and refined (FANet only)."""
    common = ["--num_workers", "0", "--show_progress", "False", "--seed", str(seed), "--batch_size",
              str(args.batch), "--max_epochs", str(args.epochs), "--val_interval", str(10**9), "--val_fraction", "0",
              "--learning_rate", "1e-3"]
    if "resize" in config:
        common += ["--input_mode", "resize", "--image_size", json.dumps([args.resize] * 2)]
        area = config.endswith("resize_area")
        common += ["--resize_anti_aliasing", str(area), "--resize_label_mode", "area" if area else "nearest"]
    else:
        common += ["--input_mode", "patch", "--patch_size", json.dumps([args.patch] * 2), "--patches_per_image",
                   str(args.patches)]
    fanet = not config.startswith("basicunet")
    common += ["--network_def#channels", json.dumps(args.channels)] if fanet else ["--network_def",
                                                                                    json.dumps(BASICUNET)]
    if config.startswith("fanet_patch_annotator"):
        mix = "annotator_errors" if "_errors" in config else "annotator"
        common += ["--mask_mix", mix, "--unroll_random", "True"]
    if config.endswith("_input"):
        common += ["--network_def#mask_input", "True"]
    if "_reviewed" in config:
        common += ["--reviewed_input", "True"]
    if "_interactive" in config:
        common += ["--unroll_corrections", "0.5"]
    start = time.time()
    if run(["train", str(train), "--bundle_root", str(out), "--overwrite", "True", *common]) != 0:
        raise SystemExit(f"{config}: training failed (see {out / 'logs'})")
    release_claims()
    seconds = time.time() - start
    shutil.copy(sorted((out / "models").glob("checkpoint_epoch=*.pt"))[-1], out / "models" / "last.pt")
    first = _infer(out, test, out / "masks_pass1", "--num_passes", "1")
    refined = _infer(out, test, out / "masks_refined") if fanet else first
    return {"p1": score(first, test), "refined": score(refined, test),
            "refined_clean": score(without_specks(refined, args.min_object_size), test), "train_s": seconds}


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
    in_channels = int(Compose(load)(_items(train)[0])["image"].shape[0])
    net = BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=1)
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
    scores = score(predictions, test)
    return {"p1": scores, "refined": scores,
            "refined_clean": score(without_specks(predictions, args.min_object_size), test), "train_s": seconds}


def load_runs(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _paired(runs: list[dict], config: str, other: str, stage: str, metric: str, digits: int = 3) -> str:
    """``config − other`` on the same (data, fold, seed), 95 % t-interval; "–" without pairs."""
    keyed = {(r["data"], r["fold"], r["seed"]): r for r in runs if r["config"] == other}
    pairs = [(r, keyed.get((r["data"], r["fold"], r["seed"]))) for r in runs if r["config"] == config]
    pairs = [(a, b) for a, b in pairs if b is not None]
    if not pairs or config == other:
        return "–"
    return paired_difference([a[stage][metric] for a, _ in pairs],
                             [b[stage][metric] for _, b in pairs], digits)


def report(runs: list[dict]) -> str:
    """One table per data set: means ± sd over (fold, seed) pairs, paired differences with 95 % t-intervals."""
    lines = []
    for data in sorted({r["data"] for r in runs}):
        mine = [r for r in runs if r["data"] == data]
        pairs = sorted({(r["fold"], r["seed"]) for r in mine})
        lines += [f"\n### {data}: {len(pairs)} (fold, seed) pairs {pairs}; scored at the native size\n",
                  "| configuration | runs | Dice p1 | Dice refined | Δ refined − p1 | clDice p1 | clDice refined "
                  "| Betti-0 err p1 | Betti-0 err refined | Betti-0 err refined, specks removed | Dice, specks removed "
                  "| Δ Dice vs BasicUNet, same mode | Δ Dice patch − resize (area) | train s |",
                  "|---|" + "---|" * 13]
        for config in CONFIGS:
            rs = [r for r in mine if r["config"] == config]
            if not rs:
                continue
            fanet = config in ("resize_nearest", "resize_area") or config.startswith("fanet_patch")
            twin = {"resize_nearest": "basicunet_resize_nearest", "resize_area": "basicunet_resize_area"}.get(
                config, "basicunet_patch" if config.startswith("fanet_patch") else config)
            resize = {"fanet_patch": "resize_area", "basicunet_patch": "basicunet_resize_area",
                      "monai_patch": "monai_resize"}.get(config, config)

            def cell(stage: str, metric: str, digits: int = 3) -> str:
                return mean_sd([r[stage][metric] for r in rs], digits)

            lines.append("| " + " | ".join([
                config, str(len(rs)), cell("p1", "dice"), cell("refined", "dice") if fanet else "–",
                paired_difference([r["refined"]["dice"] for r in rs], [r["p1"]["dice"] for r in rs]) if fanet
                else "–",
                cell("p1", "cldice"), cell("refined", "cldice") if fanet else "–", cell("p1", "betti0", 0),
                cell("refined", "betti0", 0) if fanet else "–", cell("refined_clean", "betti0", 0),
                cell("refined_clean", "dice"), _paired(mine, config, twin, "refined", "dice"),
                _paired(mine, config, resize, "refined", "dice"),
                f"{np.mean([r['train_s'] for r in rs]):.0f}"]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=("vessels", "isbi"), default="vessels")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS,
                        default=["fanet_patch", "basicunet_patch", "resize_area", "basicunet_resize_area"])
    parser.add_argument("--pairs", nargs="+", default=["0:0"], help="FOLD:SEED pairs, e.g. 0:0 1:1 2:2")
    parser.add_argument("--images", type=int, default=20, help="synthetic vessel images (ISBI: its 30 slices)")
    parser.add_argument("--test", type=int, default=5, help="images per fold")
    parser.add_argument("--size", type=int, default=1024, help="synthetic vessel images: size² pixels")
    parser.add_argument("--resize", type=int, default=256)
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--patches", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--channels", type=int, nargs=4, default=[16, 32, 64, 128])
    parser.add_argument("--min-object-size", type=int, default=64, help="speck size (pixels) for the cleaned row")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--report", action="store_true", help="only print the report of WORKDIR/runs.jsonl")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, 1 epoch: every step runs (for CI)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.images, args.test, args.size, args.resize, args.patch, args.pairs = 6, 2, 48, 32, 32, ["0:0", "1:0"]
        args.epochs, args.patches, args.channels, args.configs = 1, 2, [4, 8, 8, 8], list(CONFIGS)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="native-resolution-"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "runs.jsonl"
    if args.report:
        print(report(load_runs(log)))
        return load_runs(log)
    source = prepare(args.data, work / f"data_{args.data}", args.images, args.size)
    done = {(r["data"], r["config"], r["fold"], r["seed"]) for r in load_runs(log)}
    for fold, seed in parse_pairs(args.pairs):
        train, test = fold_folders(source, fold, args.test, work / f"data_{args.data}")
        for config in args.configs:
            if (args.data, config, fold, seed) in done:
                continue
            out = work / args.data / f"{config}-fold{fold}-seed{seed}"
            if config.startswith("monai"):
                row = run_monai(config, train, test, args, seed)
            else:
                row = run_bundle(config, train, test, out, args, seed)
            record = {"data": args.data, "config": config, "fold": fold, "seed": seed, **row}
            with log.open("a") as f:
                f.write(json.dumps(record) + "\n")
            print(f"done: {args.data} {config} fold {fold} seed {seed}: Dice p1 {row['p1']['dice']:.3f}, refined "
                  f"{row['refined']['dice']:.3f}, {row['train_s']:.0f} s", flush=True)
    print(report(load_runs(log)))
    print(f"\nruns: {log}")
    return load_runs(log)


if __name__ == "__main__":
    main()
