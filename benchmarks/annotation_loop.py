"""The annotation loop, measured (issue 22): where-to-look maps as error detectors, refine-my-mask that keeps the
annotator's work, and a simulated correction loop, on trained runs of the other benchmarks.

Every number comes from the product's own objects: the run's ``inference.json`` (plus ``volume.json`` for volume
runs) is parsed with the run's stored settings, and its preprocessing, network and ``refinement_inferer`` (start
mask, passes, sliding windows) are used as ``fanet infer`` uses them. Images are scored in the network's input
frame (2-D patch mode: the native image; volumes: after orientation, spacing and foreground crop).

Per test image:

1. **Error detection.** The product's answer (refinement from the Otsu start) and its three where-to-look maps
   (``instability``: label changes across passes, free; ``starts``: disagreement of the refinements from the Otsu,
   empty and full starts, 3x the passes; ``confidence``: ``1 - |2p - 1|`` / softmax margin, free). For the wrong
   pixels: average precision and AUROC (MONAI's ``compute_average_precision`` / ``compute_roc_auc``), and the share
   of all errors inside the top 1 %, 5 %, 10 % of the image by map value (ties broken at random).
2. **Partial label** (how the annotator's label enters). The annotator's label is the truth in the first 60 % of
   the image along its first axis (reviewed) and nothing elsewhere. Refine-my-mask from it: ``start only`` (the
   label is the start mask, the old route), ``keep drawn`` (its drawn foreground is kept at every pass, the default
   without reviewed information) and ``keep reviewed`` (every reviewed pixel kept: the client sent an "unreviewed"
   value). Dice on the reviewed part, the unreviewed part, and the whole, against the label itself.
   A **rough label** (:func:`~fanet_monai.feedback.sources.degrade_label`, the whole image) shows the other side:
   ``start only`` against ``keep drawn``.
3. **Simulated annotation**, as interactive-segmentation papers simulate clicks: start from the product's mask; at
   each of ``--steps`` steps the annotator corrects one region (a box of side ``--box`` of the image side,
   replaced by the truth and marked reviewed), chosen where a map points most (the box with the largest mean
   value, reviewed pixels excluded). Strategies: ``look+refine`` (instability map, FANet refines from the corrected
   mask with every reviewed pixel kept), ``look+refine, local`` (the same with the product's local refinement,
   ``refine_margin`` = ``--margin`` box sides, default a quarter: pixels farther from every corrected box stay as
   the annotator last saw them),
   ``confidence+refine``, ``random+refine`` (a random box), ``hand, look
   order`` (the first map's boxes, no refinement) and ``hand, oracle`` (the box holding the most errors, no
   refinement: a perfect human eye). A control, ``hand, converged start``: the product's mask first refined again
   and again without any correction (up to 10 more refinements, until it stops changing), then corrected by hand
   in look order (the product's map: a converged mask's own instability is all but 0) — the Dice that more passes
   alone would buy, which a refining strategy must beat to have saved corrections. Per step: corrected pixels so far
   (the pixels the annotator changed), Dice of the corrected mask, Dice after refinement; a refinement that ends
   below its corrected mask is counted.

Sources (``--source NAME=KIND:RUNS:DATA[:CONFIG]``): ``KIND`` ``2d`` with ``RUNS`` a folder of run roots named
``<config>-fold{F}-seed{S}`` (``benchmarks/native_resolution.py``) and ``DATA`` its ``data_*`` folder (``fold{F}/
test/images|masks``), or ``3d`` with ``RUNS`` a folder of ``<config>-fold{F}-seed{S}-<budget>`` runs
(``benchmarks/volumes.py``) and ``DATA`` its fold datalist folder (``fold{F}.json``, ``validation`` = test);
``CONFIG`` picks one configuration (default: every ``fanet*`` run).

    python benchmarks/annotation_loop.py \\
        --source isbi=2d:runs/native/isbi:runs/native/data_isbi \\
                 vessels=2d:runs/native/vessels:runs/native/data_vessels \\
        --images 2 --crop 512 --workdir runs/annotation
    python benchmarks/annotation_loop.py --report --workdir runs/annotation
    python benchmarks/annotation_loop.py --smoke          # a tiny trained run on synthetic images (CI)
    python benchmarks/annotation_loop.py --compare runs/a/records.jsonl runs/b/records.jsonl   # two networks, paired
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repository's benchmarks/

from benchmarks.feedback_study import mean_sd, paired_difference  # noqa: E402
from fanet_monai.bundle import bundle_configs, load_workflow  # noqa: E402
from fanet_monai.checkpoints import latest_intact_checkpoint  # noqa: E402
from fanet_monai.cli.settings import with_run_settings  # noqa: E402
from fanet_monai.data.transforms import BinarizeLabeld  # noqa: E402
from fanet_monai.feedback.masks import discrete_prediction  # noqa: E402
from fanet_monai.feedback.sources import degrade_label  # noqa: E402
from fanet_monai.inferers import AnnotatorConstraint, confidence_map, instability_map, where_to_look  # noqa: E402

MAPS = ("instability", "starts", "confidence")
STRATEGIES = ("look+refine", "look+refine, local", "confidence+refine", "random+refine", "hand, look order",
              "hand, oracle", "hand, converged start")
#: controls: reported where recorded, never part of the common effort and Dice (records before them lack them)
CONTROLS = ("hand, converged start",)
#: the strategies that set the common effort and Dice of the comparisons (random boxes may find almost no errors)
GUIDED = tuple(s for s in STRATEGIES if not s.startswith("random") and s not in CONTROLS)
#: refinements without any correction before the ``hand, converged start`` control corrects by hand
CONVERGE_REFINEMENTS = 10
PARTIAL = ("label", "start only", "keep drawn", "keep reviewed")
TOP = (0.01, 0.05, 0.10)


# ---------------------------------------------------------------------------------------------------- the model
class Model:
    """A trained run as ``fanet infer`` runs it: preprocessing, network, refinement inferer, class count."""

    def __init__(self, run: Path, volume: bool, overrides: dict | None = None) -> None:
        names = ("inference", "volume") if volume else ("inference",)
        overrides = with_run_settings("infer", run, names, {"num_workers": 0, **(overrides or {})})
        ckpt = latest_intact_checkpoint(run / "models")
        self.workflow = load_workflow(bundle_configs(*names), "run", bundle_root=str(run), ckpt_path=str(ckpt),
                                      output_dir=tempfile.mkdtemp(prefix="fanet-loop-"), **overrides)
        parser = self.workflow.parser
        self.preprocessing = parser.get_parsed_content("preprocessing")
        self.network = parser.get_parsed_content("network")
        self.inferer = parser.get_parsed_content("refinement_inferer")
        self.num_classes = int(parser.get_parsed_content("num_classes"))
        self.volume = volume


def dice(pred: torch.Tensor, truth: torch.Tensor, num_classes: int, where: torch.Tensor | None = None) -> float:
    """Foreground Dice (binary) or the mean Dice of classes 1..K, over ``where`` (all pixels by default); an empty
    class in both counts as 1."""
    if where is not None:
        pred, truth = pred[where], truth[where]
    scores = []
    for c in range(1, max(num_classes, 1) + 1):
        p, t = pred == c, truth == c
        total = int(p.sum() + t.sum())
        scores.append(1.0 if total == 0 else 2.0 * float((p & t).sum()) / total)
    return float(np.mean(scores))


# ------------------------------------------------------------------------------------------ 1. error detection
def detection(look: torch.Tensor, errors: torch.Tensor, rng: np.random.Generator) -> dict[str, float]:
    """AP, AUROC and the share of errors in the top 1/5/10 % of ``look`` (flattened, ties broken at random)."""
    from monai.metrics import compute_average_precision, compute_roc_auc

    score = look.flatten().double()
    score = score + torch.as_tensor(rng.random(score.numel()) * 1e-6, dtype=score.dtype)  # random tie-break
    wrong = errors.flatten().double()
    out = {"error_share": float(wrong.mean())}
    if wrong.sum() == 0 or wrong.sum() == wrong.numel():
        return {**out, "ap": float("nan"), "auroc": float("nan"), **{f"top{int(k * 100)}": float("nan") for k in TOP}}
    out["ap"] = float(compute_average_precision(score, wrong))
    out["auroc"] = float(compute_roc_auc(score, wrong))
    order = torch.argsort(score, descending=True)
    for k in TOP:
        top = order[: max(1, int(round(k * score.numel())))]
        out[f"top{int(k * 100)}"] = float(wrong[top].sum() / wrong.sum())
    return out


# --------------------------------------------------------------------------------------------- 2. partial label
def partial_label(model: Model, image: torch.Tensor, truth: torch.Tensor, rng: np.random.Generator) -> dict:
    """Dice of the label and of the three refine-my-mask routes on the reviewed part, the rest and the whole; and
    the rough-label comparison."""
    reviewed = torch.zeros_like(truth, dtype=torch.bool)
    cut = int(round(0.6 * truth.shape[2]))
    reviewed[:, :, :cut] = True
    label = torch.where(reviewed, truth, torch.zeros_like(truth))
    routes = {
        "label": label,
        "start only": refine(model, image, (label > 0).float()),
        "keep drawn": refine(model, image, (label > 0).float(), AnnotatorConstraint(label, label > 0)),
        "keep reviewed": refine(model, image, (label > 0).float(), AnnotatorConstraint(label, reviewed)),
    }
    k = model.num_classes
    out = {name: {"reviewed": dice(p, truth, k, reviewed), "rest": dice(p, truth, k, ~reviewed),
                  "whole": dice(p, truth, k)} for name, p in routes.items()}
    state = np.random.RandomState(int(rng.integers(2**31)))
    rough = torch.as_tensor(degrade_label((truth[0] > 0).numpy(), state)[None].astype(np.float32))
    rough_codes = rough * truth.clamp(min=1)  # multi-class: the true class where drawn (class 1 outside the truth)
    out["rough"] = {
        "label": dice(rough_codes, truth, k) if k > 1 else dice(rough, truth, k),
        "start only": dice(refine(model, image, rough), truth, k),
        "keep drawn": dice(refine(model, image, rough, AnnotatorConstraint(rough_codes, rough > 0)), truth, k),
        "otsu start": dice(refine(model, image), truth, k),
    }
    return out


def refine(model: Model, image: torch.Tensor, mask: torch.Tensor | None = None,
           constraint: AnnotatorConstraint | None = None) -> torch.Tensor:
    with torch.inference_mode():
        logits = model.inferer.refine(image, model.network, mask=mask, constraint=constraint).logits
    return discrete_prediction(logits, model.inferer.threshold)


# ------------------------------------------------------------------------------------------ 3. simulated annotation
def _box_scores(score: torch.Tensor, side: int) -> torch.Tensor:
    """Mean of ``score`` ``(1, 1, *spatial)`` over the box of side ``side`` around every pixel."""
    pool = F.avg_pool3d if score.ndim == 5 else F.avg_pool2d
    pad = side // 2
    padded = F.pad(score, [pad, side - 1 - pad] * (score.ndim - 2))
    return pool(padded, side, stride=1)


def _box(center: tuple[int, ...], side: int, shape: tuple[int, ...]) -> tuple[slice, ...]:
    out = []
    for c, size in zip(center, shape):
        start = min(max(0, c - side // 2), max(0, size - side))
        out.append(slice(start, start + side))
    return tuple(out)


def simulate(model: Model, image: torch.Tensor, truth: torch.Tensor, strategy: str, first, steps: int,
             box_fraction: float, rng: np.random.Generator, margin_fraction: float = 0.25) -> list[dict]:
    """One strategy's correction loop on one image: a row per step (step 0 = the product's mask)."""
    k = model.num_classes
    spatial = tuple(truth.shape[2:])
    side = max(2, int(round(box_fraction * min(spatial))))
    pred = discrete_prediction(first.logits, model.inferer.threshold)
    look = {"look": instability_map(first.passes, model.inferer.threshold),
            "confidence": confidence_map(first.logits)}
    look_key = "confidence" if strategy.startswith("confidence") else "look"
    score_map = look[look_key]
    refines = "+refine" in strategy
    # local: the product's refine_margin, a fraction of the box side (default a quarter) around every reviewed pixel
    inferer = copy.copy(model.inferer)
    inferer.refine_margin = int(margin_fraction * side) if strategy.endswith(", local") else None
    reviewed = torch.zeros_like(truth, dtype=torch.bool)
    if strategy == "hand, converged start":  # the control: what more passes alone buy, then corrections by hand
        for _ in range(CONVERGE_REFINEMENTS):
            with torch.inference_mode():
                result = inferer.refine(image, model.network, mask=(pred > 0).float())
            refined = discrete_prediction(result.logits, model.inferer.threshold)
            if torch.equal(refined, pred):
                break
            pred = refined
    corrected = 0
    start = dice(pred, truth, k)
    rows = [{"step": 0, "corrected": 0, "corrected_dice": start, "dice": start}]
    for step in range(1, steps + 1):
        if strategy == "random+refine":
            center = tuple(int(rng.integers(0, s)) for s in spatial)
        else:
            score = (pred != truth).float() if strategy == "hand, oracle" else score_map.clone()
            score[reviewed] = 0.0
            boxes = _box_scores(score, side)[0, 0]
            center = tuple(int(i) for i in np.unravel_index(int(torch.argmax(boxes)), spatial))
        region = (0, 0, *_box(center, side, spatial))
        corrected += int((pred[region] != truth[region]).sum())
        pred = pred.clone()
        pred[region] = truth[region]
        reviewed[region] = True
        corrected_dice = dice(pred, truth, k)
        if refines:
            # the label as the annotator sends it: the corrected mask (truth on every reviewed pixel)
            constraint = AnnotatorConstraint(pred.clone(), reviewed.clone())
            with torch.inference_mode():
                result = inferer.refine(image, model.network, mask=(pred > 0).float(), constraint=constraint)
            pred = discrete_prediction(result.logits, model.inferer.threshold)
            score_map = (instability_map(result.passes, model.inferer.threshold) if look_key == "look"
                         else confidence_map(result.logits))
        rows.append({"step": step, "corrected": corrected, "corrected_dice": corrected_dice,
                     "dice": dice(pred, truth, k)})
    return rows


# ------------------------------------------------------------------------------------------------------ data
def test_images_2d(model: Model, data: Path, fold: int, count: int, crop: int | None) -> list[tuple]:
    """``(name, image (1, C, W, H), truth (1, 1, W, H))`` of the fold's first ``count`` test images, each cropped
    to its central ``crop`` square when given."""
    from monai.transforms import LoadImage

    from fanet_monai.data.readers import BitmapReader

    load = LoadImage(reader=BitmapReader(), image_only=True, ensure_channel_first=True, dtype=None)
    binarize = BinarizeLabeld(keys="label", num_classes=model.num_classes)
    test = data / f"fold{fold}" / "test"
    out = []
    for path in sorted((test / "images").iterdir())[:count]:
        image = model.preprocessing({"image": str(path)})["image"].as_tensor()[None].float()
        mask = next((test / "masks").glob(path.stem + ".*"))
        truth = torch.as_tensor(binarize({"label": load(str(mask))})["label"])[None].float()
        if crop:
            region = (slice(None), slice(None), *_box(tuple(s // 2 for s in image.shape[2:]), crop, image.shape[2:]))
            image, truth = image[region], truth[region]
        out.append((path.name, image, truth))
    return out


def test_volumes(model: Model, data: Path, fold: int, count: int) -> list[tuple]:
    """``(name, image, truth)`` of the fold's first ``count`` validation volumes, both preprocessed as the product
    preprocesses them (label with nearest interpolation)."""
    from monai.transforms import LoadImage

    items = json.loads((data / f"fold{fold}.json").read_text())["validation"][:count]
    load = LoadImage(image_only=True, ensure_channel_first=True)
    out = []
    for item in items:
        prepared = model.preprocessing({"image": item["image"], "label": load(item["label"])})
        image = prepared["image"].as_tensor()[None].float()
        truth = torch.as_tensor(prepared["label"]).round()[None].float()
        out.append((Path(item["image"]).name, image, truth))
    return out


# ------------------------------------------------------------------------------------------------------ runs
def runs_of(folder: Path, config: str | None = None) -> list[tuple[int, int, Path]]:
    """``(fold, seed, run root)`` of the FANet runs under ``folder`` (``<config>-fold{F}-seed{S}[-budget]``; any
    ``fanet*`` configuration when ``config`` is ``None``)."""
    found = []
    for run in sorted(folder.iterdir()):
        match = re.match(r"(fanet\w*?)-fold(\d+)-seed(\d+)", run.name)
        if match and (run / "models").is_dir() and config in (None, match.group(1)):
            found.append((int(match.group(2)), int(match.group(3)), run))
    return found


def evaluate_source(name: str, kind: str, runs: Path, data: Path, args: argparse.Namespace, log: Path,
                    config: str | None = None) -> None:
    volume = kind == "3d"
    records = {(r["source"], r["fold"], r["seed"], r["image"]): r for r in load_records(log)}
    for fold, seed, run in runs_of(runs, config):
        if args.rerun and not any(k[:3] == (name, fold, seed) for k in records):
            continue  # --rerun only revisits recorded images
        model = Model(run, volume, args.override)
        images = (test_volumes(model, data, fold, args.images) if volume
                  else test_images_2d(model, data, fold, args.images, args.crop))
        for image_name, image, truth in images:
            key = (name, fold, seed, image_name)
            if key in records:
                if args.rerun:  # the recorded image: recompute only these strategies' loops
                    with torch.inference_mode():
                        first = model.inferer.refine(image, model.network)
                    for strategy in args.rerun:
                        records[key]["loop"][strategy] = simulate(model, image, truth, strategy, first, args.steps,
                                                                  args.box, np.random.default_rng(seed), args.margin)
                    log.write_text("".join(json.dumps(r) + "\n" for r in records.values()))
                    print(f"rerun {args.rerun}: {name} fold {fold} seed {seed} {image_name}", flush=True)
                continue
            if args.rerun:
                continue
            started = time.time()
            rng = np.random.default_rng(seed)
            with torch.inference_mode():
                first = model.inferer.refine(image, model.network)
                _, starts = where_to_look(model.inferer, image, model.network, "starts")
            pred = discrete_prediction(first.logits, model.inferer.threshold)
            errors = pred != truth
            maps = {"instability": instability_map(first.passes, model.inferer.threshold), "starts": starts,
                    "confidence": confidence_map(first.logits)}
            record = {"source": name, "fold": fold, "seed": seed, "image": image_name,
                      "shape": list(truth.shape[2:]), "num_classes": model.num_classes,
                      "dice": dice(pred, truth, model.num_classes),
                      "detection": {m: detection(v, errors, rng) for m, v in maps.items()},
                      "partial": partial_label(model, image, truth, rng),
                      "loop": {s: simulate(model, image, truth, s, first, args.steps, args.box, rng, args.margin)
                               for s in STRATEGIES},
                      "seconds": 0.0}
            record["seconds"] = round(time.time() - started, 1)
            with log.open("a") as f:
                f.write(json.dumps(record) + "\n")
            print(f"done: {name} fold {fold} seed {seed} {image_name} ({record['seconds']:.0f} s)", flush=True)


def recorded_strategies(records: list[dict]) -> list[str]:
    """The strategies every record has (controls were added after the first records)."""
    return [s for s in STRATEGIES if all(s in r["loop"] for r in records)]


def load_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


# ------------------------------------------------------------------------------------------------------ report
def _pairs(records: list[dict]) -> dict[tuple[int, int], list[dict]]:
    by: dict[tuple[int, int], list[dict]] = {}
    for r in records:
        by.setdefault((r["fold"], r["seed"]), []).append(r)
    return by


def _per_pair(records: list[dict], value) -> list[float]:
    """``value(record)`` averaged over each (fold, seed) pair's images: one number per pair (the unit of the
    intervals)."""
    return [float(np.nanmean([value(r) for r in rs])) for rs in _pairs(records).values()]


def _cell(values: list[float], digits: int = 3) -> str:
    """mean ± sd of ``values``; NaN (not reached) values are left out and counted."""
    found = [v for v in values if v == v]
    if not found:
        return "not reached"
    text = mean_sd(found, digits) if len(found) > 1 else f"{found[0]:.{digits}f}"
    return text if len(found) == len(values) else f"{text} ({len(found)}/{len(values)} reached)"


def paired_pixels(a: list[float], b: list[float]) -> str:
    """:func:`paired_difference` of two per-pair pixel counts over the pairs where both reached the common Dice
    (NaN: never reached), saying how many pairs that leaves."""
    kept = [(x, y) for x, y in zip(a, b) if x == x and y == y]
    if not kept:
        return "not reached"
    text = paired_difference([x for x, _ in kept], [y for _, y in kept], 0)
    return text if len(kept) == len(a) else f"{text} ({len(kept)} of {len(a)} pairs: the others never reach it)"


def reached(rows: list[dict], target: float) -> float:
    """Corrected pixels at the first step whose Dice reaches ``target`` (NaN when none does)."""
    hit = [r["corrected"] for r in rows if r["dice"] >= target - 1e-9]
    return float(hit[0]) if hit else float("nan")


def dice_at(rows: list[dict], pixels: float) -> float:
    """The Dice of a correction curve at ``pixels`` corrected pixels (linear between its steps)."""
    x = [r["corrected"] for r in rows]
    return float(np.interp(pixels, x, [r["dice"] for r in rows]))


def equal_effort(record: dict, strategy: str) -> float:
    """``strategy``'s Dice at the smallest total of corrected pixels among the guided strategies (the same annotator
    effort for every strategy)."""
    budget = min(record["loop"][s][-1]["corrected"] for s in GUIDED)
    return dice_at(record["loop"][strategy], budget)


def report(records: list[dict]) -> str:
    lines = []
    for source in sorted({r["source"] for r in records}):
        rs = [r for r in records if r["source"] == source]
        pairs = len(_pairs(rs))
        lines += [f"\n## {source}: {len(rs)} images, {pairs} (fold, seed) pairs, mean ± sd over pairs",
                  f"product's mask (Otsu start, refined): Dice {_cell(_per_pair(rs, lambda r: r['dice']))}", "",
                  "| map | passes | AP | AUROC | errors in top 1 % | top 5 % | top 10 % |",
                  "|---|---|---|---|---|---|---|"]
        cost = {"instability": "0 extra", "starts": "3x", "confidence": "0 extra"}
        for m in MAPS:
            cells = [_cell(_per_pair(rs, lambda r, m=m, k=k: r["detection"][m][k]))
                     for k in ("ap", "auroc", "top1", "top5", "top10")]
            lines.append(f"| {m} | {cost[m]} | " + " | ".join(cells) + " |")
        ap = {m: _per_pair(rs, lambda r, m=m: r["detection"][m]["ap"]) for m in MAPS}
        lines.append(f"\nAP instability − confidence: {paired_difference(ap['instability'], ap['confidence'])}; "
                     f"starts − confidence: {paired_difference(ap['starts'], ap['confidence'])}")
        lines += ["", "Partial label (truth in the first 60 %, nothing in the rest): Dice on each part",
                  "| route | reviewed part | unreviewed part | whole |", "|---|---|---|---|"]
        for route in PARTIAL:
            cells = [_cell(_per_pair(rs, lambda r, route=route, part=part: r["partial"][route][part]))
                     for part in ("reviewed", "rest", "whole")]
            lines.append(f"| {route} | " + " | ".join(cells) + " |")
        rough = ", ".join(f"{route} {_cell(_per_pair(rs, lambda r, route=route: r['partial']['rough'][route]))}"
                          for route in ("label", "start only", "keep drawn", "otsu start"))
        lines.append(f"\nRough label (degraded truth): Dice {rough}")
        steps = len(rs[0]["loop"][STRATEGIES[0]]) - 1
        present = recorded_strategies(rs)
        half = steps // 2
        lines += ["", f"Simulated annotation ({steps} boxes): Dice after steps 0 / {half} / {steps}; pixels the "
                  "annotator changed in all; Dice at equal effort (each curve at the smallest total of corrected "
                  "pixels among the map-guided strategies); pixels needed to reach the lowest final Dice of those "
                  "(fewer is better); refinements that ended more than 0.001 Dice below their corrected mask, and "
                  "the largest such drop",
                  f"| strategy | Dice 0 | Dice {half} | Dice {steps} | corrected px | Dice at equal effort | px to "
                  "common Dice | drops (> 0.001) | largest drop |", "|---|---|---|---|---|---|---|---|---|"]
        for strategy in present:
            def target(r):
                common = min(r["loop"][s][-1]["dice"] for s in GUIDED)
                return reached(r["loop"][strategy], common)
            falls = [row["corrected_dice"] - row["dice"] for r in rs for row in r["loop"][strategy][1:]]
            drops = sum(1 for f in falls if f > 1e-3)
            cells = [_cell(_per_pair(rs, lambda r, s=s: r["loop"][strategy][s]["dice"])) for s in (0, half, steps)]
            cells.append(_cell(_per_pair(rs, lambda r: r["loop"][strategy][-1]["corrected"]), 0))
            cells.append(_cell(_per_pair(rs, lambda r: equal_effort(r, strategy))))
            cells.append(_cell(_per_pair(rs, target), 0))
            cells += [f"{drops}/{len(falls)}", f"{max(0.0, max(falls)):.4f}"]
            lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
        px = {s: _per_pair(rs, lambda r, s=s: reached(r["loop"][s], min(r["loop"][t][-1]["dice"] for t in GUIDED)))
              for s in present}
        effort = {s: _per_pair(rs, lambda r, s=s: equal_effort(r, s)) for s in present}
        lines.append(f"\nDice at equal effort, look+refine − hand (look order): "
                     f"{paired_difference(effort['look+refine'], effort['hand, look order'])}; look+refine − "
                     f"confidence+refine: {paired_difference(effort['look+refine'], effort['confidence+refine'])}; "
                     f"look+refine − hand (oracle): {paired_difference(effort['look+refine'], effort['hand, oracle'])}")
        lines.append(f"Pixels to the common Dice, look+refine − hand (look order): "
                     f"{paired_pixels(px['look+refine'], px['hand, look order'])}; look+refine − "
                     f"confidence+refine: {paired_pixels(px['look+refine'], px['confidence+refine'])}; "
                     f"look+refine − hand (oracle): {paired_pixels(px['look+refine'], px['hand, oracle'])}; "
                     f"confidence+refine − hand (oracle): "
                     f"{paired_pixels(px['confidence+refine'], px['hand, oracle'])}")
        if "hand, converged start" in present:
            lines.append(f"Control (more passes, then by hand): look+refine − hand, converged start: Dice at equal "
                         f"effort {paired_difference(effort['look+refine'], effort['hand, converged start'])}, pixels "
                         f"to the common Dice "
                         f"{paired_pixels(px['look+refine'], px['hand, converged start'])}")
        final = {s: _per_pair(rs, lambda r, s=s: r["loop"][s][-1]["dice"]) for s in present}
        lines.append(f"\nDice at step {steps}, look+refine − hand (oracle): "
                     f"{paired_difference(final['look+refine'], final['hand, oracle'])}; look+refine − "
                     f"confidence+refine: {paired_difference(final['look+refine'], final['confidence+refine'])}; "
                     f"look+refine − hand (look order): "
                     f"{paired_difference(final['look+refine'], final['hand, look order'])}")
    return "\n".join(lines)


def _mean_reached(values: list[float]) -> float:
    """Mean of the values that are not NaN (never reached); NaN when none is."""
    found = [v for v in values if v == v]
    return float(np.mean(found)) if found else float("nan")


def compare(first: list[dict], second: list[dict]) -> str:
    """Two networks' records on the same test images (same sources' folds, seeds and images), paired per (fold,
    seed): which network makes the annotator's work smaller. Pixels are counted to a Dice both networks reach: the
    lowest final look+refine Dice of the two on that image."""
    a_name, b_name = first[0]["source"], second[0]["source"]
    theirs = {(r["fold"], r["seed"], r["image"]): r for r in second}
    matched = [(r, theirs[(r["fold"], r["seed"], r["image"])]) for r in first
               if (r["fold"], r["seed"], r["image"]) in theirs]
    if not matched:
        raise SystemExit(f"{a_name} and {b_name} share no test image: compare records of the same folds and seeds.")
    by: dict[tuple[int, int], list[tuple[dict, dict]]] = {}
    for a, b in matched:
        by.setdefault((a["fold"], a["seed"]), []).append((a, b))

    def per_pair(value) -> tuple[list[float], list[float]]:
        return ([_mean_reached([value(a, a, b) for a, b in rs]) for rs in by.values()],
                [_mean_reached([value(b, a, b) for a, b in rs]) for rs in by.values()])

    def common(a: dict, b: dict) -> float:
        return min(a["loop"]["look+refine"][-1]["dice"], b["loop"]["look+refine"][-1]["dice"])

    rows = [("product's Dice", lambda r, a, b: r["dice"], 3),
            ("partial label as the start: reviewed part", lambda r, a, b: r["partial"]["start only"]["reviewed"], 3),
            ("partial label as the start: the rest", lambda r, a, b: r["partial"]["start only"]["rest"], 3)]
    for budget in (500, 1000, 2000):
        rows.append((f"Dice at {budget} corrected px, look+refine",
                     lambda r, a, b, n=budget: dice_at(r["loop"]["look+refine"], n), 3))
    for strategy in ("look+refine", "confidence+refine", "hand, look order", "hand, converged start"):
        if all(strategy in r["loop"] for pair in matched for r in pair):
            rows.append((f"px to the common Dice, {strategy}",
                         lambda r, a, b, s=strategy: reached(r["loop"][s], common(a, b)), 0))
    lines = [f"\n## {b_name} − {a_name}: {len(matched)} images, {len(by)} (fold, seed) pairs, paired per pair",
             f"| measure | {a_name} | {b_name} | {b_name} − {a_name} |", "|---|---|---|---|"]
    for label, value, digits in rows:
        a_values, b_values = per_pair(value)
        diff = paired_pixels(b_values, a_values) if digits == 0 else paired_difference(b_values, a_values, digits)
        lines.append(f"| {label} | {_cell(a_values, digits)} | {_cell(b_values, digits)} | {diff} |")
    return "\n".join(lines)


def plot(records: list[dict], path: Path) -> None:
    """Dice against corrected pixels per strategy, one panel per source (mean over images)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sources = list(dict.fromkeys(r["source"] for r in records))  # in the order the records came
    columns = min(3, len(sources))
    rows = -(-len(sources) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 4 * rows), squeeze=False)
    for ax in axes.flat[len(sources):]:
        ax.set_visible(False)
    for ax, source in zip(axes.flat, sources):
        rs = [r for r in records if r["source"] == source]
        for strategy in recorded_strategies(rs):
            x = np.mean([[row["corrected"] for row in r["loop"][strategy]] for r in rs], axis=0)
            y = np.mean([[row["dice"] for row in r["loop"][strategy]] for r in rs], axis=0)
            ax.plot(x, y, marker="o", markersize=3, label=strategy)
        ax.set_title(f"{source} ({len(rs)} images)")
        ax.set_xlabel("pixels corrected by the annotator")
        ax.set_ylabel("Dice")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------------ main
def smoke(work: Path) -> list[str]:
    """Tiny trained runs in the layouts the other benchmarks write: a 2-D patch-mode run on synthetic images
    (``native_resolution.py``) and a 3-D run on synthetic two-class volumes (``volumes.py``)."""
    from fanet_monai.cli import run
    from fanet_monai.data import make_synthetic_dataset, make_volume_dataset
    from fanet_monai.run import release_claims

    data = work / "data"
    for split, seed in (("train", 0), ("test", 1)):
        make_synthetic_dataset(data / "fold0" / split, num_images=4, height=48, width=48, seed=seed)
    root = work / "runs" / "fanet_patch-fold0-seed0"
    common = ["--batch_size", "2", "--show_progress", "False", "--num_workers", "0", "--num_passes", "2",
              "--network_def#channels", "[4,8,8,8]"]
    assert run(["train", str(data / "fold0" / "train"), "--bundle_root", str(root), "--max_epochs", "2",
                "--input_mode", "patch", "--patch_size", "[32,32]", *common]) == 0
    release_claims()
    volumes = make_volume_dataset(work / "volumes", num_volumes=4, shape=(20, 20, 16), kind="blobs", seed=0)
    items = [{"image": str(p), "label": str(volumes / "masks" / p.name)}
             for p in sorted((volumes / "images").iterdir())]
    labels = {"0": "background", "1": "one", "2": "two"}
    folds = work / "folds"
    folds.mkdir(exist_ok=True)
    (folds / "fold0.json").write_text(json.dumps({"labels": labels, "modality": {"0": "MR"}, "training": items[:2],
                                                 "validation": items[2:]}))
    root3d = work / "runs3d" / "fanet_3d-fold0-seed0-epochs"
    assert run(["train", str(folds / "fold0.json"), "--bundle_root", str(root3d), "--max_epochs", "1",
                "--patch_size", "[16,16,16]", *common]) == 0
    release_claims()
    return [f"smoke=2d:{work / 'runs'}:{data}", f"smoke3d=3d:{work / 'runs3d'}:{folds}"]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", nargs="+", default=[], help="NAME=KIND:RUNS:DATA (see the module doc)")
    parser.add_argument("--images", type=int, default=2, help="test images per (fold, seed) run")
    parser.add_argument("--crop", type=int, default=None, help="2-D: score the central CROP square of each image")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--box", type=float, default=0.125, help="correction box side, fraction of the image side")
    parser.add_argument("--margin", type=float, default=0.25,
                        help="local strategy: refine_margin as a fraction of the box side")
    parser.add_argument("--override", nargs="*", default=[], metavar="ID=JSON",
                        help="config overrides for every run's network (e.g. network_def#channels=[8,16,32,64] for "
                             "runs of benchmarks/volumes.py, whose run.json does not record them)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--rerun", nargs="+", default=[], choices=STRATEGIES, metavar="STRATEGY",
                        help="recompute only these strategies' loops of the images already recorded, nothing else "
                             "(a strategy that draws random boxes starts from a fresh generator, not the recorded one)")
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny synthetic run, 3 steps (CI)")
    parser.add_argument("--compare", nargs=2, default=None, metavar=("RECORDS_A", "RECORDS_B"), type=Path,
                        help="compare two networks' records.jsonl on the same test images (paired) and stop")
    args = parser.parse_args(argv)
    args.override = {k: json.loads(v) for k, _, v in (o.partition("=") for o in args.override)}
    if args.compare:
        records = [load_records(path) for path in args.compare]
        for path, rs in zip(args.compare, records):
            if not rs:
                raise SystemExit(f"{path}: no records (give a records.jsonl written by this benchmark).")
        print(compare(*records))
        return records[1]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="fanet-annotation-"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "records.jsonl"
    if args.smoke:
        args.source, args.steps, args.images = smoke(work), 3, 2
    if not args.report:
        for spec in args.source:
            name, _, rest = spec.partition("=")
            kind, runs, data, *config = rest.split(":")
            if kind not in ("2d", "3d") or len(config) > 1:
                raise SystemExit(f"--source {spec}: expected NAME=KIND:RUNS:DATA[:CONFIG], KIND 2d or 3d.")
            evaluate_source(name, kind, Path(runs), Path(data), args, log, config[0] if config else None)
    records = load_records(log)
    if not records:
        raise SystemExit(f"{log}: no records yet (give --source).")
    print(report(records))
    plot(records, work / "annotation_loop.png")
    print(f"\nrecords: {log}\nplot: {work / 'annotation_loop.png'}")
    return records


if __name__ == "__main__":
    main()
