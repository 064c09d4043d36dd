"""Does the feedback earn its cost? FANet training/test options against MONAI baselines, over folds and seeds.

Every configuration is trained by the bundle (``bundle/configs/train.json``) and evaluated pass by pass by the
evaluation bundle on a held-out fold, with Dice and the connectivity metrics (clDice, Betti-0 error; see
:mod:`fanet_monai.topology`). Data sets: the ISBI 2012 EM slices with the **membranes as foreground** (thin dark
structures) and with the paper's polarity (cell interiors), and a synthetic thin-structure set
(:func:`fanet_monai.data.make_thin_structure_dataset`: branching 1-4 px curves with gaps).

Folds are contiguous blocks of ``--fold-size`` images (ISBI: 6 slices; train on the rest). Training runs without
validation and the last epoch's weights are evaluated, so the held-out fold never picks a checkpoint. A *run* is one
(data set, configuration, fold, seed); each finished run is appended to ``WORKDIR/runs.jsonl`` and skipped when the
study is started again, so an interrupted study resumes. The report gives, per data set and configuration, the mean
± sd over runs of Dice / clDice / Betti-0 error per pass and the **paired** difference to BasicUNet and to FANet B1
(same fold and seed) with a 95 % t-interval; an interval that contains 0 is "inside the noise".

Budgets: ``--budget epochs`` trains every configuration for ``--epochs``; ``--budget time`` gives every baseline the
training seconds that the bundle's default FANet took on the same fold and seed (``max_train_seconds``).

    python benchmarks/feedback_study.py --stage screen              # every configuration on fold 0, seed 0
    python benchmarks/feedback_study.py --stage final --configs b4_default b4_probability b4_empty_start \\
        --pairs 0:0 2:1 4:2 --budget both                            # the best + baselines on 3 (fold, seed) pairs
    python benchmarks/feedback_study.py --report --workdir runs/study  # tables + Dice-vs-pass plot from runs.jsonl
    python benchmarks/feedback_study.py --smoke                      # tiny synthetic run of every step (CI)
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterable, List

import numpy as np
from PIL import Image
from scipy import stats

from fanet_monai.bundle import bundle_configs, run_workflow
from fanet_monai.checkpoints import latest_intact_checkpoint
from fanet_monai.data import make_thin_structure_dataset

SHARED_EM = Path(__file__).resolve().parents[2] / "shared" / "data" / "isbi2012_em"
METRICS = ("f1", "cldice", "betti0_error")
NEVER = 10**9  # a validation interval no study reaches


def _image_only(network: dict) -> dict:
    return {"_target_": "fanet_monai.networks.ImageOnlyNetwork", "network": network}


BASICUNET = _image_only({"_target_": "BasicUNet", "spatial_dims": 2, "in_channels": 3, "out_channels": 1})
# BasicUNet widened to FANet B4's parameter count (7.66 M vs 7.72 M): "bigger backbone" vs "feedback"
BASICUNET_WIDE = _image_only({"_target_": "BasicUNet", "spatial_dims": 2, "in_channels": 3, "out_channels": 1,
                              "features": [63, 63, 126, 252, 504, 63]})
ATTENTION_UNET = _image_only({"_target_": "AttentionUnet", "spatial_dims": 2, "in_channels": 3, "out_channels": 1,
                              "channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2]})

# the paper's procedure, spelled out: the bundle's defaults are the previous study's winner
PAPER = {"mask_source": "previous", "unroll_passes": 1, "start_mask": "otsu"}
SINGLE_PASS = dict(PAPER, mask_source="initial")

#: the default mix with a fifth of the masks made from the sample's label degraded (feedback.sources.degrade_label)
DEGRADED_MIX = {"previous": 0.2, "perturbed": 0.2, "initial": 0.2, "empty": 0.2, "degraded": 0.2}

#: name -> (description, training/test overrides, evaluation passes); baselines are single-pass networks
BASELINES: Dict[str, tuple] = {
    "basicunet": ("MONAI BasicUNet (1.98 M)", dict(SINGLE_PASS, network_def=BASICUNET), 1),
    "basicunet_wide": ("MONAI BasicUNet at FANet's size (7.66 M)", dict(SINGLE_PASS, network_def=BASICUNET_WIDE), 1),
    "attention_unet": ("MONAI AttentionUnet (1.99 M)", dict(SINGLE_PASS, network_def=ATTENTION_UNET), 1),
    "b1": ("FANet B1 (no MixPool, 1 pass)", dict(PAPER, **{"network_def#variant": "B1"}), 1),
}
CONFIGS: Dict[str, tuple] = {
    **BASELINES,
    "b4_paper": ("FANet B4, paper procedure (previous-epoch masks)", dict(PAPER), 10),
    "b4_default": ("FANet B4, bundle default (mixed masks + unrolled K=2)", {}, 10),
    "b4_loss_every_pass": ("B4 default + loss on every unrolled pass", {"loss_on_every_pass": True}, 10),
    "b4_unrolled3": ("B4, mixed masks + unrolled K=3", {"unroll_passes": 3}, 10),
    "b4_random_k": ("B4, mixed masks + unrolled K in {1,2,3} per step", {"unroll_passes": 3, "unroll_random": True},
                    10),
    "b4_probability": ("B4 default, probability feedback (train + test)", {"feedback_mode": "probability"}, 10),
    "b4_empty_start": ("B4 default, empty start mask (train + test)", {"start_mask": "empty"}, 10),
    "b4_degraded": ("B4 default + degraded labels (refine-my-mask) in the training mix", {"mask_mix": DEGRADED_MIX},
                    10),
}
#: the run whose training seconds set the equal-time budget of the baselines
TIME_REFERENCE = "b4_default"


def prepare_data(name: str, work: Path, source: Path, num_synthetic: int, size: int) -> Path:
    """``work/data_NAME`` with images/ + masks/: ISBI with either polarity, or the synthetic thin structures."""
    out = work / f"data_{name}"
    if name == "thin":
        return out if (out / "images").is_dir() else make_thin_structure_dataset(out, num_synthetic, size, size)
    if not (source / "images").is_dir():
        raise SystemExit(f"{source}: ISBI data not found (images/ + masks/); pass --data or use --datasets thin.")
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    for image in sorted((source / "images").iterdir()):
        target = out / "images" / image.name
        if not target.exists():
            target.symlink_to(image.resolve())
        mask = np.asarray(Image.open(source / "masks" / image.name).convert("L")) > 127
        mask = ~mask if name == "membrane" else mask
        Image.fromarray(mask.astype(np.uint8) * 255).save(out / "masks" / image.name)
    return out


def fold_datalist(data: Path, fold: int, fold_size: int, out: Path) -> Path:
    """A MONAI datalist JSON: images ``fold*fold_size ..`` (sorted, contiguous) validate, the rest train."""
    images = sorted((data / "images").iterdir())
    if (fold + 1) * fold_size > len(images):
        raise SystemExit(f"fold {fold} of {fold_size} images needs {(fold + 1) * fold_size}; {data} has {len(images)}.")
    items = [{"image": str(p.resolve()), "label": str((data / "masks" / p.name).resolve())} for p in images]
    held = set(range(fold * fold_size, (fold + 1) * fold_size))
    lists = {"training": [it for i, it in enumerate(items) if i not in held],
             "validation": [it for i, it in enumerate(items) if i in held]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(lists, indent=1))
    return out


def run_one(config: str, dataset: str, fold: int, seed: int, datalist: Path, work: Path, common: dict,
            max_passes: int, max_train_seconds: float | None = None) -> dict:
    """Train and evaluate one run (FANet refined for up to ``max_passes``); returns its record (per-pass means,
    training seconds)."""
    description, overrides, passes = CONFIGS[config]
    passes = min(passes, max_passes)
    root = work / dataset / config / f"fold{fold}_seed{seed}" / ("time" if max_train_seconds else "epochs")
    settings = dict(common, bundle_root=str(root), datalist=str(datalist), seed=seed, **overrides)
    if max_train_seconds:
        settings["max_train_seconds"] = max_train_seconds
    start = time.time()
    training = run_workflow(bundle_configs("train"), "training", overwrite=True, **settings)  # a rerun replaces it
    train_s = time.time() - start
    epochs = int(training.parser.get_parsed_content("train#trainer").state.epoch)
    # the last epoch's weights: the held-out fold is never used to pick a checkpoint (no validation in training)
    last = latest_intact_checkpoint(root / "models")
    evaluation = run_workflow(
        bundle_configs("train", "evaluate"), "evaluating",
        **dict(settings, ckpt_path=last, num_passes=passes, num_qualitative=0, check_data=False,
               eval_metrics=["jaccard", "f1", *METRICS[1:]]),
    )
    rows = evaluation.parser.get_parsed_content("evaluate#pass_metrics").rows
    return {"dataset": dataset, "config": config, "fold": fold, "seed": seed, "description": description,
            "budget": "time" if max_train_seconds else "epochs", "epochs": epochs, "train_s": round(train_s, 1),
            "rows": rows}


def parse_pairs(pairs: Iterable[str]) -> List[tuple]:
    """``["0:0", "2:1"]`` -> ``[(0, 0), (2, 1)]`` (fold, seed)."""
    out = []
    for pair in pairs:
        fold, sep, seed = pair.partition(":")
        if not (sep and fold.isdigit() and seed.isdigit()):
            raise SystemExit(f"--pairs takes FOLD:SEED with whole numbers, e.g. 2:1; got {pair!r}.")
        out.append((int(fold), int(seed)))
    return out


def load_runs(path: Path) -> List[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _per_pass(record: dict, metric: str) -> List[float]:
    return [float(r[metric]) for r in record["rows"] if r["pass"] != "early_stop"]


def _early(record: dict, metric: str) -> float:
    return float(next(r[metric] for r in record["rows"] if r["pass"] == "early_stop"))


def mean_sd(values: Iterable[float], digits: int = 3) -> str:
    v = np.asarray(list(values), dtype=float)
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}" if v.size > 1 else f"{v.mean():.{digits}f}"


def paired_difference(a: List[float], b: List[float], digits: int = 3) -> str:
    """Mean of ``a - b`` over paired runs with a 95 % t-interval; ``*`` marks an interval that excludes 0."""
    d = np.asarray(a) - np.asarray(b)
    if d.size < 2:
        return f"{d.mean():+.{digits}f}"
    half = stats.t.ppf(0.975, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size)
    real = "*" if abs(d.mean()) > half else ""
    return f"{d.mean():+.{digits}f} [{d.mean() - half:+.{digits}f}, {d.mean() + half:+.{digits}f}]{real}"


def _cells(config: str, mine: List[dict], keyed: Dict[tuple, dict]) -> List[str]:
    """One table row: per-pass means ± sd, refinement gains (last pass - pass 1) and paired differences."""
    refined = CONFIGS[config][2] > 1
    first = {m: [_per_pass(r, m)[0] for r in mine] for m in METRICS}
    last = {m: [_per_pass(r, m)[-1] for r in mine] for m in METRICS}
    epochs = np.mean([r["epochs"] for r in mine])
    cells = [CONFIGS[config][0], str(len(mine)), mean_sd(first["f1"]),
             mean_sd(last["f1"]) if refined else "–",
             paired_difference(last["f1"], first["f1"]) if refined else "–",
             f"{mean_sd(_early(r, 'f1') for r in mine)} ({np.mean([_early(r, 'mean_passes') for r in mine]):.1f})"
             if refined else "–",
             mean_sd(first["cldice"]), mean_sd(last["cldice"]) if refined else "–",
             paired_difference(last["cldice"], first["cldice"]) if refined else "–",
             mean_sd(first["betti0_error"], 1), mean_sd(last["betti0_error"], 1) if refined else "–",
             paired_difference(last["betti0_error"], first["betti0_error"], 1) if refined else "–"]
    # the final (early-stop) Dice against each baseline's; against the default FANet's *first pass*: do the passes
    # of this configuration beat one pass of the default?
    for baseline, theirs in (("basicunet", _early), ("b1", _early), (TIME_REFERENCE, lambda r, m: _per_pass(r, m)[0])):
        pairs = [(r, keyed.get((baseline, r["fold"], r["seed"]))) for r in mine]
        pairs = [(a, b) for a, b in pairs if b is not None]
        cells.append(paired_difference([_early(a, "f1") for a, _ in pairs], [theirs(b, "f1") for _, b in pairs])
                     if pairs and (config != baseline or refined and baseline == TIME_REFERENCE) else "–")
    cells.append(f"{np.mean([r['train_s'] for r in mine]):.0f} ({epochs:.0f})")
    return cells


HEADER = ("| configuration | runs | Dice p1 | Dice last pass | Δ Dice last − p1 [95 % CI] | Dice early stop (passes) "
          "| clDice p1 | clDice last | Δ clDice last − p1 [95 % CI] | Betti-0 err p1 | Betti-0 err last "
          "| Δ Betti-0 err last − p1 [95 % CI] "
          "| Δ Dice vs BasicUNet [95 % CI] | Δ Dice vs B1 [95 % CI] | Δ Dice vs default FANet p1 [95 % CI] "
          "| train s (epochs) |")


def _groups(runs: List[dict]) -> List[tuple]:
    return sorted({(r["dataset"], r["budget"]) for r in runs if r["config"] in BASELINES or r["budget"] == "epochs"})


def _budget_runs(runs: List[dict], dataset: str, budget: str) -> List[dict]:
    """The runs of one table: at equal time, FANet keeps its epochs and the baselines got its seconds."""
    rs = [r for r in runs if r["dataset"] == dataset and r["budget"] == budget]
    if budget == "time":
        rs += [r for r in runs if r["dataset"] == dataset and r["budget"] == "epochs" and r["config"] not in BASELINES]
    return rs


def report(runs: List[dict], plot: Path | None = None) -> str:
    """Markdown tables per (data set, budget) and, with ``plot``, Dice- and clDice-vs-pass PNGs with sd error bars.

    Differences are paired (same fold and seed) with a 95 % t-interval; ``*`` marks an interval that excludes 0."""
    lines = []
    groups = _groups(runs)
    for dataset, budget in groups:
        rs = _budget_runs(runs, dataset, budget)
        keyed = {(r["config"], r["fold"], r["seed"]): r for r in rs}
        configs = [c for c in CONFIGS if any(r["config"] == c for r in rs)]
        lines += [f"\n### {dataset}, equal {budget} ({len({(r['fold'], r['seed']) for r in rs})} fold×seed pairs)\n",
                  HEADER, "|" + "---|" * HEADER.count(" | ") + "---|"]
        for config in configs:
            lines.append("| " + " | ".join(_cells(config, [r for r in rs if r["config"] == config], keyed)) + " |")
    if plot is not None and runs:
        plot_passes(runs, groups, plot)
        lines.append(f"\nplot: {plot}")
    return "\n".join(lines)


def plot_passes(runs: List[dict], groups: List[tuple], path: Path) -> None:
    """Dice (top row) and clDice (bottom row) against the refinement pass, mean ± sd over runs, per table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    groups = [g for g in groups if g[1] == "epochs"] or groups  # refinement curves do not depend on the budget
    # screen-only configurations (one run) are left out of a data set that has a final stage (several runs)
    most = {d: max(sum(1 for r in _budget_runs(runs, d, b) if r["config"] == c) for c in CONFIGS) for d, b in groups}
    fig, axes = plt.subplots(2, len(groups), figsize=(5 * len(groups), 7.5), squeeze=False)
    for column, (dataset, budget) in enumerate(groups):
        for row, (metric, label) in enumerate((("f1", "Dice"), ("cldice", "clDice"))):
            ax = axes[row][column]
            for index, config in enumerate(CONFIGS):
                mine = [r for r in _budget_runs(runs, dataset, budget) if r["config"] == config]
                if not mine or len(mine) == 1 < most[dataset]:
                    continue
                curves = np.array([_per_pass(r, metric) for r in mine])
                x = np.arange(1, curves.shape[1] + 1)
                sd = curves.std(axis=0, ddof=1) if len(mine) > 1 else np.zeros(curves.shape[1])
                style = dict(marker="o", ms=3, capsize=2) if curves.shape[1] > 1 else dict(marker="s", ms=5, capsize=3)
                ax.errorbar(x, curves.mean(axis=0), yerr=sd, label=f"{config} (n={len(mine)})",
                            color=plt.cm.tab20(index % 20), **style)
            ax.set(title=f"{dataset}: {label} per pass", xlabel="refinement pass", ylabel=f"{label} (mean ± sd)")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        axes[0][column].legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: List[str] | None = None) -> List[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHARED_EM), help="ISBI images/ + masks/ folder")
    parser.add_argument("--datasets", nargs="*", default=["membrane", "paper", "thin"])
    parser.add_argument("--stage", choices=["screen", "final"], default="screen",
                        help="screen: every configuration on the first fold and seed; final: --configs + baselines")
    parser.add_argument("--configs", nargs="*", default=None, help=f"subset of {list(CONFIGS)}")
    parser.add_argument("--folds", type=int, nargs="*", default=[0])
    parser.add_argument("--seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--pairs", nargs="*", default=None,
                        help="FOLD:SEED pairs instead of every fold with every seed, e.g. --pairs 0:0 2:1 4:2")
    parser.add_argument("--fold-size", type=int, default=6)
    parser.add_argument("--budget", choices=["epochs", "time", "both"], default="epochs")
    parser.add_argument("--time-configs", nargs="*", default=["basicunet", "b1"], choices=list(BASELINES),
                        help="baselines also trained for the default FANet's seconds (--budget time/both)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--passes", type=int, default=10, help="refinement passes evaluated for FANet")
    parser.add_argument("--epochs", type=int, default=14)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--report", action="store_true", help="only print the report of WORKDIR/runs.jsonl")
    parser.add_argument("--smoke", action="store_true", help="tiny synthetic run of every step (for CI)")
    args = parser.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="fanet_study_"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "runs.jsonl"
    if args.report:
        print(report(load_runs(log), work / "dice_per_pass.png"))
        return load_runs(log)
    # no validation during training: the held-out fold is the test set, so it must neither pick the checkpoint nor
    # drive the learning-rate schedule (ReduceLROnPlateau steps on the validation loss); the last epoch is evaluated
    common = {"image_size": [args.size, args.size], "max_epochs": args.epochs, "batch_size": args.batch,
              "learning_rate": args.learning_rate, "show_progress": False, "val_interval": NEVER}
    num_synthetic = 30
    if args.smoke:
        args.datasets, args.folds, args.seeds, args.fold_size, num_synthetic = ["thin"], [0, 1], [0], 3, 8
        args.size, args.passes = 32, 2
        common.update(image_size=[32, 32], max_epochs=1, num_workers=0, batch_size=4, num_passes=2,
                      **{"network_def#channels": [8, 16, 16, 16]})
        args.configs = args.configs or ["basicunet", "b1", "b4_default"]
        args.budget = "both"
    if args.stage == "screen" and not args.smoke:
        args.folds, args.seeds, args.pairs = args.folds[:1], args.seeds[:1], None
    pairs = parse_pairs(args.pairs) if args.pairs else [(f, s) for f in args.folds for s in args.seeds]
    configs = args.configs or list(CONFIGS)
    if args.stage == "final":
        configs = list(dict.fromkeys([*BASELINES, *configs]))
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configurations {unknown}; choose from {list(CONFIGS)}.")
    budgets = ["epochs", "time"] if args.budget == "both" else [args.budget]
    done = {(r["dataset"], r["config"], r["fold"], r["seed"], r["budget"]) for r in load_runs(log)}
    # the time reference runs first in each (fold, seed) so the baselines can be given its seconds
    order = sorted(configs, key=lambda c: c != TIME_REFERENCE)
    for dataset in args.datasets:
        data = prepare_data(dataset, work, Path(args.data), num_synthetic, args.size)
        for fold, seed in pairs:
            datalist = fold_datalist(data, fold, args.fold_size, work / "datalists" / f"{dataset}_fold{fold}.json")
            for budget in budgets:
                for config in order:
                    if (dataset, config, fold, seed, budget) in done:
                        continue
                    seconds = None
                    if budget == "time":
                        if config not in args.time_configs:
                            continue  # equal time is the baselines' budget; FANet keeps its epochs
                        ref = [r for r in load_runs(log) if (r["dataset"], r["config"], r["fold"], r["seed"],
                               r["budget"]) == (dataset, TIME_REFERENCE, fold, seed, "epochs")]
                        if not ref:
                            raise SystemExit(f"equal-time runs need {TIME_REFERENCE} on {dataset} fold {fold} "
                                             f"seed {seed} first: include it in --configs.")
                        seconds = ref[-1]["train_s"]  # the latest, should the reference have been re-run
                        common_b = dict(common, max_epochs=100 * args.epochs)  # the clock stops it
                    else:
                        common_b = common
                    record = run_one(config, dataset, fold, seed, datalist, work, common_b, args.passes, seconds)
                    with log.open("a") as f:
                        f.write(json.dumps(record, default=float) + "\n")
                    print(f"done: {dataset} {config} fold {fold} seed {seed} ({budget}): "
                          f"Dice p1 {_per_pass(record, 'f1')[0]:.3f}, {record['train_s']:.0f} s", flush=True)
    print(report(load_runs(log), work / "dice_per_pass.png"))
    print(f"\nruns: {log}")
    return load_runs(log)


if __name__ == "__main__":
    main()
