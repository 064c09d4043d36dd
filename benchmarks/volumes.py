"""Volumes: 3-D FANet against its own first pass, slice-wise FANet and MONAI's 3-D U-Nets, over folds and seeds.

Every configuration is trained by the bundle with the volume layer (``train.json`` + ``volume.json``: RAS, the
training set's median spacing, MR z-score / CT window, foreground crop, cached preprocessing, patches) and
evaluated pass by pass (``evaluate.json``) on a held-out fold, with the Dice and HD95 of every class:

- ``fanet_3d``: the 3-D FANet (default feedback training), refined (``--passes``) and its pass 1;
- ``fanet_3d_head8``: the same with ``head_channels = widths[0]``: the head reads as many channels as BasicUNet's
  last level (the reference's ``widths[0] // 2`` is 4 at widths 8-64);
- ``fanet_3d_annotator``: ``fanet_3d_head8`` trained for annotation: ``corrected`` feedback masks in the mix (the
  previous prediction with the label pasted into random boxes) and one or two passes per step (``unroll_random``),
  as ``fanet_patch_annotator`` of ``benchmarks/native_resolution.py``;
- ``fanet_3d_annotator_input``: ``fanet_3d_annotator`` with the feedback mask also an input channel of the first
  encoder stage (``network_def#mask_input``);
- ``fanet_3d_annotator_errors_input``: ``fanet_3d_annotator_input`` with the corrections on the mask's errors
  (``mask_mix annotator_errors``);
- ``fanet_3d_annotator_errors_reviewed_input``: ``fanet_3d_annotator_errors_input`` with a reviewed channel
  (``reviewed_input``: which voxels of the fed mask an annotator corrected);
- ``fanet_3d_annotator_errors_interactive_input``: ``fanet_3d_annotator_errors_input`` with RITM-style
  corrections within a step (``unroll_corrections``: the label pasted at the errors of the network's own first pass
  before the gradient pass);
- ``fanet_slice``: the 2-D FANet over the slices of the same patches (``volume_mode slice``, axial);
- ``basicunet_3d``, ``unet_3d``, ``dynunet_3d``: MONAI's ``BasicUNet``, ``UNet`` and ``DynUNet`` (kernels and
  strides as nnU-Net's 3d_fullres plans them for small isotropic patches, deep supervision off), one pass, through
  the same bundle (:class:`~fanet_monai.networks.ImageOnlyNetwork`).

Folds are contiguous blocks of ``--fold-size`` cases of the datalist's ``training`` + ``validation`` lists; the
rest train. Training runs without validation; the last epoch is evaluated. A run is one (configuration, fold, seed,
budget), appended to ``WORKDIR/runs.jsonl`` (with its Adam learning rate, ``--learning-rate``: one value for every
network or ``CONFIG=VALUE`` for one) and skipped when started again, so give each learning-rate setting its own
``--workdir``. ``--budget time`` gives the U-Nets the seconds ``fanet_3d`` took on the same fold and seed. The
report gives mean ± sd over the runs and **paired** differences (same fold and seed) with 95 % t-intervals; ``*``
marks one that excludes 0.

Data: ``prepare msd`` of ``../shared/data/msd_hippocampus`` (Decathlon Task04: anterior, posterior), or
``--datalist`` any datalist with ``labels`` (a ``prepare msd`` output). Anchor: nnU-Net on the Decathlon's hidden
test set, Dice 0.90 anterior / 0.89 posterior.

    python benchmarks/volumes.py --pairs 0:0 1:1 2:2 --epochs 30 --workdir runs/volumes
    python benchmarks/volumes.py --report --workdir runs/volumes
    python benchmarks/volumes.py --smoke                   # synthetic blobs, tiny, every step (CI)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repository's benchmarks/

from benchmarks.feedback_study import mean_sd, paired_difference, parse_pairs  # noqa: E402
from fanet_monai.bundle import bundle_configs, run_workflow  # noqa: E402
from fanet_monai.checkpoints import latest_intact_checkpoint  # noqa: E402
from fanet_monai.data import make_volume_dataset  # noqa: E402
from fanet_monai.data.decathlon import declared_settings, prepare_msd  # noqa: E402
from fanet_monai.run import release_claims  # noqa: E402

HIPPOCAMPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "msd_hippocampus"
NEVER = 10**9


def _image_only(network: dict) -> dict:
    return {"_target_": "fanet_monai.networks.ImageOnlyNetwork", "network": network}


def configurations(widths: list[int], num_classes: int) -> dict[str, tuple[str, dict, bool]]:
    """name -> (description, overrides, refined?) at encoder widths ``widths`` (4 stages)."""
    out = num_classes + 1 if num_classes > 1 else 1
    w = list(widths)
    return {
        "fanet_3d": ("FANet 3-D (feedback, refined)", {"network_def#channels": w}, True),
        "fanet_3d_head8": (f"FANet 3-D, head reading {w[0]} channels as BasicUNet's last level (feedback, refined)",
                           {"network_def#channels": w, "network_def#head_channels": w[0]}, True),
        "fanet_3d_annotator": ("FANet 3-D, head 8, trained for annotation (corrected masks in the mix)",
                               {"network_def#channels": w, "network_def#head_channels": w[0],
                                "mask_mix": "annotator", "unroll_random": True}, True),
        "fanet_3d_annotator_input": ("FANet 3-D, head 8, trained for annotation, the mask also an input channel",
                                     {"network_def#channels": w, "network_def#head_channels": w[0],
                                      "network_def#mask_input": True, "mask_mix": "annotator",
                                      "unroll_random": True}, True),
        "fanet_3d_annotator_errors_input": ("FANet 3-D, head 8, trained for annotation with corrections on its "
                                            "errors, the mask also an input channel",
                                            {"network_def#channels": w, "network_def#head_channels": w[0],
                                             "network_def#mask_input": True, "mask_mix": "annotator_errors",
                                             "unroll_random": True}, True),
        "fanet_3d_annotator_errors_reviewed_input": ("FANet 3-D, head 8, trained for annotation with corrections on "
                                                     "its errors, the mask an input channel, a reviewed channel",
                                                     {"network_def#channels": w, "network_def#head_channels": w[0],
                                                      "network_def#mask_input": True, "reviewed_input": True,
                                                      "mask_mix": "annotator_errors", "unroll_random": True}, True),
        "fanet_3d_annotator_errors_interactive_input": ("FANet 3-D, head 8, trained for annotation with corrections "
                                                        "on its errors and on its own first pass (RITM-style), the "
                                                        "mask an input channel",
                                                        {"network_def#channels": w, "network_def#head_channels": w[0],
                                                         "network_def#mask_input": True,
                                                         "mask_mix": "annotator_errors", "unroll_random": True,
                                                         "unroll_corrections": 0.5}, True),
        "fanet_3d_nolast": ("FANet 3-D without the last decoder MixPool (feedback, refined)",
                            {"network_def#channels": w, "network_def#final_mixpool": False}, True),
        "fanet_slice": ("FANet 2-D over axial slices (refined)", {"volume_mode": "slice", "network_def#channels": w},
                        True),
        "basicunet_3d": ("MONAI BasicUNet 3-D", {"network_def": _image_only(
            {"_target_": "BasicUNet", "spatial_dims": 3, "in_channels": 1, "out_channels": out,
             "features": [w[0], w[0], w[1], w[2], w[3], w[0]]})}, False),
        "unet_3d": ("MONAI UNet 3-D (2 residual units)", {"network_def": _image_only(
            {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": out, "channels": w,
             "strides": [2] * (len(w) - 1), "num_res_units": 2})}, False),
        "dynunet_3d": ("MONAI DynUNet 3-D (nnU-Net 3d_fullres kernels/strides)", {"network_def": _image_only(
            {"_target_": "DynUNet", "spatial_dims": 3, "in_channels": 1, "out_channels": out,
             "kernel_size": [3] * len(w), "strides": [1] + [2] * (len(w) - 1), "upsample_kernel_size": [2] *
             (len(w) - 1), "filters": w, "norm_name": "instance", "deep_supervision": False})}, False),
    }


def learning_rates(values: list[str], names: list[str]) -> dict[str, float]:
    """``--learning-rate`` entries to a rate per configuration: ``VALUE`` sets every configuration, then
    ``CONFIG=VALUE`` sets one (``["1e-3", "fanet_3d=3e-4"]``)."""
    rates: dict[str, float] = {}
    for value in values:
        name, sep, number = value.rpartition("=")
        if sep and name not in names:
            raise SystemExit(f"--learning-rate {value!r}: unknown configuration {name!r}; choose from {names}.")
        try:
            rate = float(number)
        except ValueError:
            raise SystemExit(f"--learning-rate {value!r}: {number!r} is not a number.") from None
        if not rate > 0:
            raise SystemExit(f"--learning-rate {value!r}: the learning rate must be > 0.")
        rates.update({name: rate} if sep else dict.fromkeys(names, rate))
    missing = [n for n in names if n not in rates]
    if missing:
        raise SystemExit(f"--learning-rate: no rate for {missing}; give a bare VALUE for every configuration.")
    return rates


def fold_datalist(source: Path, fold: int, fold_size: int, out: Path) -> Path:
    """The datalist ``source`` with cases ``fold*fold_size ..`` of its labelled cases as ``validation``."""
    content = json.loads(source.read_text())
    cases = content.get("training", []) + content.get("validation", [])
    held = range(fold * fold_size, (fold + 1) * fold_size)
    if held.stop > len(cases):
        raise SystemExit(f"fold {fold} of {fold_size} cases needs {held.stop}; {source} has {len(cases)}.")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**content, "training": [c for i, c in enumerate(cases) if i not in held],
                               "validation": [c for i, c in enumerate(cases) if i in held]}))
    return out


def run_one(name: str, config: tuple, datalist: Path, root: Path, common: dict, passes: int,
            seconds: float | None) -> dict:
    """Train and evaluate one run; its record (per-pass rows, training seconds, epochs)."""
    description, overrides, refined = config
    settings = {**common, **declared_settings(datalist), **overrides, "bundle_root": str(root),
                "datalist": str(datalist)}
    settings.pop("label_names", None)
    if seconds:
        settings.update(max_train_seconds=seconds, max_epochs=100 * common["max_epochs"])
    start = time.time()
    training = run_workflow(bundle_configs("train", "volume"), "training", overwrite=True, **settings)
    train_s = time.time() - start
    release_claims()
    epochs = int(training.parser.get_parsed_content("train#trainer").state.epoch)
    recorded = json.loads((root / "run.json").read_text())["settings"]
    evaluation = run_workflow(
        bundle_configs("train", "evaluate", "volume"), "evaluating",
        **{**settings, "target_spacing": recorded["target_spacing"], "ckpt_path": latest_intact_checkpoint(
            root / "models"), "num_passes": passes if refined else 1, "num_qualitative": 0, "check_data": False})
    rows = evaluation.parser.get_parsed_content("evaluate#pass_metrics").rows
    return {"config": name, "description": description, "rows": rows, "train_s": round(train_s, 1),
            "epochs": epochs}


def load_runs(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _value(run: dict, metric: str, which: str) -> float:
    rows = [r for r in run["rows"] if r["pass"] != "early_stop"]
    row = rows[0] if which == "p1" else next(r for r in run["rows"] if r["pass"] == "early_stop")
    return float(row[metric])


def report(runs: list[dict], num_classes: int) -> str:
    """Per budget: mean ± sd of the per-class Dice and HD95 (pass 1, refined), paired differences."""
    lines = []
    classes = range(1, num_classes + 1) if num_classes > 1 else [None]
    dice = [f"dice_class_{k}" if k else "f1" for k in classes]
    hd95 = [f"hd95_class_{k}" if k else "hd95" for k in classes]
    for budget in ("epochs", "time"):
        rs = [r for r in runs if r["budget"] == budget or (budget == "time" and r["config"].startswith("fanet"))]
        if not any(r["budget"] == budget for r in rs):
            continue
        pairs = sorted({(r["fold"], r["seed"]) for r in rs})
        lines += [f"\n### equal {budget}: {len(pairs)} (fold, seed) pairs {pairs}\n",
                  "| configuration | runs | Adam lr | " + " | ".join(f"{m} p1 | {m} refined" for m in dice + hd95)
                  + " | Δ mean Dice refined − p1 | Δ mean Dice vs fanet_3d (refined) | train s (epochs) |",
                  "|---|---|---|" + "---|---|" * len(dice + hd95) + "---|---|---|"]
        keyed = {(r["config"], r["fold"], r["seed"]): r for r in rs}
        for name in dict.fromkeys(r["config"] for r in rs):
            mine = [r for r in rs if r["config"] == name]
            # runs recorded before the rate was: every network trained at the then fixed 1e-3
            cells = [name, str(len(mine)), "/".join(f"{v:g}" for v in sorted({r.get("learning_rate", 1e-3)
                                                                                 for r in mine}))]
            for metric in dice + hd95:
                digits = 3 if metric in dice else 2
                cells += [mean_sd([_value(r, metric, "p1") for r in mine], digits),
                          mean_sd([_value(r, metric, "refined") for r in mine], digits)]
            mean = [np.mean([_value(r, m, "refined") for m in dice]) for r in mine]
            first = [np.mean([_value(r, m, "p1") for m in dice]) for r in mine]
            cells.append(paired_difference(mean, first) if name.startswith("fanet") else "–")
            ref = [keyed.get(("fanet_3d", r["fold"], r["seed"])) for r in mine]
            paired = [(m, np.mean([_value(f, d, "refined") for d in dice])) for m, f in zip(mean, ref) if f]
            cells.append(paired_difference([a for a, _ in paired], [b for _, b in paired])
                         if paired and name != "fanet_3d" else "–")
            cells.append(f"{np.mean([r['train_s'] for r in mine]):.0f} ({np.mean([r['epochs'] for r in mine]):.0f})")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datalist", type=Path, default=None, help="a prepare-msd datalist (default: hippocampus)")
    parser.add_argument("--configs", nargs="+", default=["fanet_3d", "fanet_slice", "basicunet_3d", "unet_3d",
                                                         "dynunet_3d"])
    parser.add_argument("--pairs", nargs="+", default=["0:0"], help="FOLD:SEED pairs")
    parser.add_argument("--fold-size", type=int, default=8)
    parser.add_argument("--budget", choices=["epochs", "time", "both"], default="epochs")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--patch", type=int, nargs=3, default=[32, 48, 32])
    parser.add_argument("--widths", type=int, nargs=4, default=[16, 32, 64, 128])
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--learning-rate", nargs="+", default=["1e-3"],
                        help="Adam's learning rate: VALUE for every network, CONFIG=VALUE for one (e.g. 1e-3 "
                             "fanet_3d=3e-4)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="synthetic blob volumes, 1 epoch, tiny (CI)")
    args = parser.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="fanet-volumes-"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "runs.jsonl"
    if args.smoke:
        data = make_volume_dataset(work / "smoke", num_volumes=6, shape=(20, 20, 16), kind="blobs", seed=0)
        labels = {"0": "background", "1": "one", "2": "two"}
        items = [{"image": str(p), "label": str(data / "masks" / p.name)} for p in sorted((data / "images").iterdir())]
        args.datalist = work / "smoke.json"
        args.datalist.write_text(json.dumps({"labels": labels, "modality": {"0": "MR"}, "training": items}))
        args.pairs, args.fold_size, args.epochs, args.patch, args.widths, args.passes = ["0:0"], 2, 1, \
            [32, 32, 32], [4, 8, 8, 8], 2
        args.budget = "both"
    elif args.datalist is None:
        if not HIPPOCAMPUS.is_dir():
            raise SystemExit(f"{HIPPOCAMPUS}: not found; give --datalist (a prepare-msd output).")
        args.datalist = work / "hippocampus.json"
        if not args.datalist.exists():
            prepare_msd(HIPPOCAMPUS, args.datalist, quiet=True)
    num_classes = declared_settings(args.datalist)["num_classes"]
    if args.report:
        print(report(load_runs(log), num_classes))
        return load_runs(log)
    configs = configurations(args.widths, num_classes)
    unknown = [c for c in args.configs if c not in configs]
    if unknown:
        raise SystemExit(f"unknown configurations {unknown}; choose from {list(configs)}.")
    common = {"max_epochs": args.epochs, "batch_size": args.batch, "patch_size": args.patch, "num_workers": 0,
              "show_progress": False, "val_interval": NEVER}
    rates = learning_rates(args.learning_rate, list(configs))
    done = {(r["config"], r["fold"], r["seed"], r["budget"]) for r in load_runs(log)}
    budgets = ["epochs", "time"] if args.budget == "both" else [args.budget]
    order = sorted(args.configs, key=lambda c: c != "fanet_3d")  # the time reference first
    for fold, seed in parse_pairs(args.pairs):
        datalist = fold_datalist(args.datalist, fold, args.fold_size, work / "folds" / f"fold{fold}.json")
        for budget in budgets:
            for name in order:
                if (name, fold, seed, budget) in done or (budget == "time" and name.startswith("fanet")):
                    continue
                seconds = None
                if budget == "time":
                    ref = [r for r in load_runs(log) if (r["config"], r["fold"], r["seed"], r["budget"]) ==
                           ("fanet_3d", fold, seed, "epochs")]
                    if not ref:
                        raise SystemExit("equal-time runs need fanet_3d on the same fold and seed first.")
                    seconds = ref[-1]["train_s"]
                root = work / "runs" / f"{name}-fold{fold}-seed{seed}-{budget}"
                settings = {**common, "seed": seed, "learning_rate": rates[name]}
                record = {**run_one(name, configs[name], datalist, root, settings, args.passes, seconds),
                          "fold": fold, "seed": seed, "budget": budget, "learning_rate": rates[name]}
                with log.open("a") as f:
                    f.write(json.dumps(record, default=float) + "\n")
                print(f"done: {name} fold {fold} seed {seed} ({budget}): {record['train_s']:.0f} s", flush=True)
    print(report(load_runs(log), num_classes))
    print(f"\nruns: {log}")
    return load_runs(log)


if __name__ == "__main__":
    main()
