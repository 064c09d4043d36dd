"""Does the feedback pay off? Training-mask sources and test-time options of FANet against MONAI's BasicUNet.

Every configuration is trained by the bundle (``bundle/configs/train.json``) with one budget (epochs, batch, lr,
size, augmentation) and evaluated by the evaluation bundle on the same hold-out, pass by pass. Data: the ISBI 2012
EM slices, 00-23 training and 24-29 hold-out, with the **membranes as foreground** (masks inverted: thin dark
structures, where the paper's "brighter than Otsu" start is poor) and with the paper's polarity (cell interiors).

    python benchmarks/feedback_study.py                         # both polarities, all configurations
    python benchmarks/feedback_study.py --polarity membrane --configs basicunet b4_paper b4_unrolled2
    python benchmarks/feedback_study.py --smoke                 # tiny synthetic run of the whole pipeline (CI)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
from PIL import Image

from fanet_monai.bundle import bundle_configs, run_workflow
from fanet_monai.data import make_synthetic_dataset

SHARED_EM = Path(__file__).resolve().parents[2] / "shared" / "data" / "isbi2012_em"

BASICUNET = {
    "_target_": "fanet_monai.networks.ImageOnlyNetwork",
    "network": {"_target_": "BasicUNet", "spatial_dims": 2, "in_channels": 3, "out_channels": 1},
}

# the paper's procedure, spelled out: the bundle's defaults are the study's winner (mixed masks + unrolled K=2)
PAPER = {"mask_source": "previous", "unroll_passes": 1, "start_mask": "otsu"}

# name -> (description, training/test overrides, evaluation passes)
CONFIGS: Dict[str, tuple] = {
    "basicunet": ("MONAI BasicUNet (no feedback)", dict(PAPER, network_def=BASICUNET), 1),
    "b1": ("FANet B1 (no MixPool)", dict(PAPER, **{"network_def#variant": "B1"}), 1),
    "b4_paper": ("FANet B4, paper: previous-epoch masks, Otsu start", dict(PAPER), 10),
    "b4_straight_through": (
        "B4 paper + straight-through MixPool", dict(PAPER, **{"network_def#straight_through": True}), 10
    ),
    "b4_otsu_inverted": ("B4 paper, Otsu-inverted start (train + test)", dict(PAPER, start_mask="otsu_inverted"), 10),
    "b4_empty_start": ("B4 paper, empty start (train + test)", dict(PAPER, start_mask="empty"), 10),
    "b4_mixed": ("B4, mixed training masks (prev/perturbed/Otsu/empty)", dict(PAPER, mask_source="mixed"), 10),
    "b4_unrolled2": (
        "B4, unrolled K=2 from the start mask", {"mask_source": "initial", "unroll_passes": 2}, 10
    ),
    "b4_unrolled3_all": (
        "B4, unrolled K=3, loss on every pass",
        {"mask_source": "initial", "unroll_passes": 3, "loss_on_every_pass": True},
        10,
    ),
    "b4_mixed_unrolled2": (
        "B4, mixed masks + unrolled K=2 (bundle default)",
        {"mask_source": "mixed", "unroll_passes": 2},
        10,
    ),
    "b4_mixed_st": (
        "B4, mixed masks + straight-through",
        dict(PAPER, mask_source="mixed", **{"network_def#straight_through": True}),
        10,
    ),
}


def prepare_data(source: Path, out: Path, membrane: bool) -> Path:
    """Copy of ``source`` (images/ + masks/) with the masks inverted when ``membrane`` (membranes = foreground)."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    for image in sorted((source / "images").iterdir()):
        target = out / "images" / image.name
        if not target.exists():
            target.symlink_to(image.resolve())
        mask = np.asarray(Image.open(source / "masks" / image.name).convert("L"))
        mask = np.where(mask > 127, 0, 255) if membrane else np.where(mask > 127, 255, 0)
        Image.fromarray(mask.astype(np.uint8)).save(out / "masks" / image.name)
    return out


def run_config(name: str, data: Path, work: Path, common: dict) -> dict:
    description, overrides, passes = CONFIGS[name]
    root = work / name
    settings = dict(common, bundle_root=str(root), **overrides)
    start = time.time()
    run_workflow(bundle_configs("train"), "training", **settings)
    train_s = time.time() - start
    workflow = run_workflow(
        bundle_configs("train", "evaluate"), "evaluating",
        **dict(settings, num_passes=passes, num_qualitative=0, check_data=False),  # checked before training
    )
    rows = workflow.parser.get_parsed_content("evaluate#pass_metrics").rows
    return {"name": name, "description": description, "rows": rows, "train_s": train_s,
            "total_s": time.time() - start}


def print_table(title: str, results: List[dict]) -> None:
    passes = max(len([r for r in res["rows"] if r["pass"] != "early_stop"]) for res in results)
    print(f"\n### {title}\n")
    header = ["configuration"] + [f"Dice p{k}" for k in range(1, passes + 1)]
    header += ["Dice early stop (passes)", "IoU last", "Rec last", "Prec last", "train s"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for res in results:
        per_pass = [r for r in res["rows"] if r["pass"] != "early_stop"]
        early = next(r for r in res["rows"] if r["pass"] == "early_stop")
        last = per_pass[-1]
        cells = [res["description"]]
        cells += [f"{per_pass[k]['f1']:.3f}" if k < len(per_pass) else "–" for k in range(passes)]
        cells += [f"{early['f1']:.3f} ({early['mean_passes']:.1f})", f"{last['jaccard']:.3f}",
                  f"{last['recall']:.3f}", f"{last['precision']:.3f}", f"{res['train_s']:.0f}"]
        print("| " + " | ".join(cells) + " |")


def main(argv: List[str] | None = None) -> List[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHARED_EM), help="images/ + masks/ folder (default: ISBI 2012 EM)")
    parser.add_argument("--polarity", choices=["membrane", "paper", "both"], default="both")
    parser.add_argument("--configs", nargs="*", default=None, help=f"subset of {list(CONFIGS)}")
    parser.add_argument("--paper-configs", nargs="*", default=["basicunet", "b4_paper", "b4_mixed", "b4_unrolled2"],
                        help="configurations also run with the paper's polarity")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--smoke", action="store_true", help="tiny synthetic run of every step (for CI)")
    args = parser.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="fanet_study_"))
    common = {
        "image_size": [args.size, args.size], "max_epochs": args.epochs, "batch_size": args.batch,
        "learning_rate": args.learning_rate, "show_progress": False, "split_mode": "last", "val_fraction": 0.2,
    }
    configs = args.configs or list(CONFIGS)
    source = Path(args.data)
    if args.smoke:
        source = make_synthetic_dataset(work / "synthetic", 10, 32, 32, seed=0)
        common.update(image_size=[32, 32], max_epochs=1, num_workers=0, num_passes=2, batch_size=4,
                      **{"network_def#channels": [8, 16, 16, 16]})
        configs = args.configs or ["b4_paper", "b4_unrolled2"]
    elif not (source / "images").is_dir():
        raise SystemExit(f"{source}: dataset not found (images/ + masks/); pass --data.")
    polarities = ["membrane", "paper"] if args.polarity == "both" else [args.polarity]
    all_results = []
    for polarity in polarities:
        data = prepare_data(source, work / f"data_{polarity}", membrane=polarity == "membrane")
        names = configs if polarity == "membrane" or args.polarity != "both" else [
            c for c in args.paper_configs if c in configs]
        results = []
        for name in names:
            overrides = dict(common, dataset_dir=str(data))
            if args.smoke and name in ("basicunet",):
                overrides.pop("network_def#channels")
            results.append(run_config(name, data, work / polarity, overrides))
            print(f"done: {polarity} / {name} in {results[-1]['total_s']:.0f} s", flush=True)
        print_table(f"{polarity} polarity: {args.epochs} epochs at {args.size}², batch {args.batch}, "
                    f"lr {args.learning_rate}, hold-out = last 20 % of slices", results)
        all_results += [dict(r, polarity=polarity) for r in results]
    (work / "study.json").write_text(json.dumps(all_results, indent=1, default=str))
    print(f"\nresults: {work / 'study.json'}")
    return all_results


if __name__ == "__main__":
    main()
