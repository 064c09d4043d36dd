"""Test-time refinement: speed and Dice of FANet with 1 pass, 10 passes and early stop, against MONAI networks.

Every network is trained by the same bundle (``bundle/configs/train.json``) with the same data, augmentation,
loss and epochs (MONAI baselines through :class:`~fanet_monai.networks.ImageOnlyNetwork`, which drops the mask
channel), and evaluated by the same evaluation bundle. Speed: images/s of the inferer on the validation images
resized to ``--speed-size`` (batch ``--batch``), median of ``--repeats`` runs after a warm-up, in the same run.

    python benchmarks/refinement.py                                  # synthetic set, train at 96², speed at 256²
    python benchmarks/refinement.py --data ../shared/data/isbi2012_em --size 128 --epochs 20
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fanet_monai.bundle import bundle_configs, load_workflow, run_workflow
from fanet_monai.data import make_synthetic_dataset
from fanet_monai.inferers import IterativeRefinementInferer

BASELINES = {
    "MONAI BasicUNet": {"_target_": "BasicUNet", "spatial_dims": 2, "in_channels": 3, "out_channels": 1},
    "MONAI AttentionUnet": {
        "_target_": "AttentionUnet", "spatial_dims": 2, "in_channels": 3, "out_channels": 1,
        "channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2],
    },
}


def images_per_second(fn, images: torch.Tensor, repeats: int) -> float:
    fn(images)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(images)
        if images.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return len(images) / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="dataset folder (images/ + masks/); default: synthetic")
    parser.add_argument("--size", type=int, default=96, help="training and evaluation size")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--speed-size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tolerance", type=float, default=0.001, help="early-stop tolerance")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="fanet_refinement_"))
    data = Path(args.data) if args.data else make_synthetic_dataset(work / "data", 48, args.size, args.size, seed=0)
    common = {
        "dataset_dir": str(data), "image_size": [args.size, args.size], "max_epochs": args.epochs,
        "learning_rate": args.learning_rate, "batch_size": 4, "show_progress": False,
        "refine_tolerance": args.tolerance,
    }
    train, evaluate = bundle_configs("train"), bundle_configs("train", "evaluate")
    models = {"FANet B4": None, **BASELINES}
    results, networks = {}, {}
    for name, baseline in models.items():
        root = work / name.replace(" ", "_")
        overrides = dict(common, bundle_root=str(root))
        if baseline is not None:  # no feedback: plain single-pass training
            overrides["network_def"] = {"_target_": "fanet_monai.networks.ImageOnlyNetwork", "network": baseline}
            overrides.update(mask_source="previous", unroll_passes=1)
        start = time.time()
        run_workflow(train, "training", overwrite=True, **overrides)  # a rerun in --workdir replaces the run
        train_time = time.time() - start
        passes = 10 if baseline is None else 1
        workflow = run_workflow(evaluate, "evaluating", **dict(overrides, num_passes=passes, num_qualitative=0))
        rows = workflow.parser.get_parsed_content("evaluate#pass_metrics").rows
        results[name] = {"rows": rows, "train_s": train_time}
        networks[name] = workflow.parser.get_parsed_content("network").eval()
        print(f"trained and evaluated {name} in {train_time:.0f} s", flush=True)

    # speed on the validation images, resized
    workflow = load_workflow(evaluate, **dict(common, bundle_root=str(work / "speed")))
    images = torch.stack([item["image"].as_tensor() for item in workflow.parser.get_parsed_content(
        "evaluate#dataset")][: args.batch])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    images = F.interpolate(images, size=(args.speed_size, args.speed_size), mode="bilinear").to(device)
    fanet = networks["FANet B4"].to(device)
    one, ten = IterativeRefinementInferer(num_passes=1), IterativeRefinementInferer(num_passes=10)
    early = IterativeRefinementInferer(num_passes=10, early_stop=True, tolerance=args.tolerance)
    with torch.inference_mode():
        speed = {
            ("FANet B4", "1 pass"): images_per_second(lambda x: one(x, fanet), images, args.repeats),
            ("FANet B4", "10 passes"): images_per_second(lambda x: ten(x, fanet), images, args.repeats),
            ("FANet B4", "early stop"): images_per_second(lambda x: early(x, fanet), images, args.repeats),
        }
        early_passes_at_speed_size = float(early.refine(images, fanet).num_passes.float().mean())
        for name in BASELINES:
            net = networks[name].to(device)
            speed[(name, "1 pass")] = images_per_second(lambda x: one(x, net), images, args.repeats)

    def row_of(name, which):
        rows = results[name]["rows"]
        if which == "early stop":
            return next(r for r in rows if r["pass"] == "early_stop")
        index = 0 if which == "1 pass" else 9
        return [r for r in rows if r["pass"] != "early_stop"][index]

    where = torch.cuda.get_device_name() if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"\ndevice: {device} ({where}); trained {args.epochs} epochs at {args.size}² on {data}; "
          f"speed at {args.speed_size}², batch {args.batch}\n")
    print(f"| network | procedure | Dice (F1) | mIoU | passes used | images/s at {args.speed_size}² | "
          "speed vs FANet 1 pass | training time (s) |")
    print("|---|---|---|---|---|---|---|---|")
    reference = speed[("FANet B4", "1 pass")]
    for (name, which), ips in speed.items():
        row = row_of(name, which)
        passes = row.get("mean_passes", 1.0) if which == "early stop" else (1 if which == "1 pass" else 10)
        print(f"| {name} | {which} | {row['f1']:.4f} | {row['jaccard']:.4f} | {float(passes):.2f} | {ips:.2f} | "
              f"{ips / reference:.2f} | {results[name]['train_s']:.0f} |")
    gap = row_of("FANet B4", "10 passes")["f1"] - row_of("FANet B4", "early stop")["f1"]
    print(f"\nearly stop vs 10 passes: Dice gap {gap:+.4f} at {row_of('FANet B4', 'early stop')['mean_passes']:.2f} "
          f"passes on average ({early_passes_at_speed_size:.2f} on the resized speed batch); "
          "goal: gap <= 0.002 at <= 3.33 passes")


if __name__ == "__main__":
    main()
