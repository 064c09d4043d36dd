"""Refine-my-mask: what starting FANet's refinement from a degraded existing label buys, next to the Otsu start.

For each dataset a FANet B4 is trained by the bundle with its default feedback training (small, quick budget), then
every hold-out image is refined for 10 passes from (a) the Otsu start mask and (b) its own label degraded the way a
rough or half-edited annotation is: eroded / dilated by 2 and 5 px, 30 % of its connected components dropped, a
coarse polygon per component (Douglas-Peucker, 4 px tolerance) and a bounding box per component. Degradations are
made at the label's stored resolution (scikit-image), then resized to the network size like the bundle does
(bilinear, > 0.5), which is also where Dice is measured (per image, averaged).

    python benchmarks/refine_label.py                       # ISBI 2012 EM (both polarities) + synthetic
    python benchmarks/refine_label.py --datasets synthetic --epochs 6
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import torch
from monai.transforms import LoadImage, Resize
from skimage import morphology

from fanet_monai.bundle import bundle_configs, load_workflow, run_workflow
from fanet_monai.data import BitmapReader, make_synthetic_dataset
from fanet_monai.feedback.sources import box_per_component, drop_components, polygon_per_component
from fanet_monai.inferers import IterativeRefinementInferer
from fanet_monai.networks import load_for_inference
from feedback_study import prepare_data

ISBI = Path(__file__).resolve().parents[2] / "shared" / "data" / "isbi2012_em"
PASSES = (1, 3, 10)


def degradations(rng: np.random.Generator) -> Dict[str, Callable[[np.ndarray], np.ndarray]]:
    return {
        "eroded 2 px": lambda m: morphology.erosion(m, morphology.disk(2)),
        "eroded 5 px": lambda m: morphology.erosion(m, morphology.disk(5)),
        "dilated 2 px": lambda m: morphology.dilation(m, morphology.disk(2)),
        "dilated 5 px": lambda m: morphology.dilation(m, morphology.disk(5)),
        "30 % components dropped": lambda m: drop_components(m, 0.3, rng),
        "coarse polygon per component": polygon_per_component,
        "bounding box per component": box_per_component,
    }


def dice(pred: torch.Tensor, label: torch.Tensor) -> float:
    inter, total = float((pred & label).sum()), float(pred.sum() + label.sum())
    return 1.0 if total == 0 else 2.0 * inter / total


def evaluate(name: str, data: Path, work: Path, size: int, epochs: int, seed: int) -> Dict[str, List[float]]:
    overrides = {
        "dataset_dir": str(data), "bundle_root": str(work), "image_size": [size, size], "max_epochs": epochs,
        "learning_rate": 1e-3, "batch_size": 4, "show_progress": False, "num_workers": 0, "split_mode": "last",
    }
    start = time.time()
    run_workflow(bundle_configs("train"), "training", **overrides)
    print(f"{name}: trained {epochs} epochs at {size}² in {time.time() - start:.0f} s", flush=True)
    workflow = load_workflow(bundle_configs("train"), **overrides)
    network = load_for_inference(workflow.parser.get_parsed_content("network_def"), work / "models" / "model.pt")
    items = workflow.parser.get_parsed_content("validate#dataset")
    raw = workflow.parser.get_parsed_content("validate#dataset#data")
    loader, resize = LoadImage(reader=BitmapReader(), image_only=True, ensure_channel_first=True), Resize((size, size))
    inferer = IterativeRefinementInferer(num_passes=max(PASSES))
    rng = np.random.default_rng(seed)
    rows: Dict[str, List[List[float]]] = {}
    with torch.inference_mode():
        for item, entry in zip(items, raw):
            image = item["image"].as_tensor()[None]
            label = item["label"].as_tensor()[0] > 0.5
            native = np.asarray(loader(entry["label"]))[0]
            native = native > (native.max() / 2 if native.max() > 1 else 0.5)
            starts = {"Otsu (default)": None}
            for kind, degrade in degradations(rng).items():
                degraded = torch.as_tensor(degrade(native)[None].astype(np.float32))
                starts[kind] = (torch.as_tensor(resize(degraded)) > 0.5).float()[None]
            for kind, mask in starts.items():
                refinement = inferer.refine(image, network, mask=mask)
                start_mask = inferer.make_start_mask(image) if mask is None else mask
                values = [dice(start_mask[0, 0] > 0.5, label)]
                values += [dice(refinement.passes[p - 1][0, 0] > 0, label) for p in PASSES]
                rows.setdefault(kind, []).append(values)
    return {kind: list(np.mean(values, axis=0)) for kind, values in rows.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["isbi-membrane", "isbi-paper", "synthetic"],
                        choices=["isbi-membrane", "isbi-paper", "synthetic"])
    parser.add_argument("--isbi", default=str(ISBI))
    parser.add_argument("--size", type=int, default=128, help="ISBI training/evaluation size (synthetic: 64)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="fanet_refine_label_"))
    tables = {}
    for name in args.datasets:
        if name == "synthetic":
            data, size = make_synthetic_dataset(work / "synthetic", 48, 64, 64, seed=args.seed), 64
        else:
            data, size = prepare_data(Path(args.isbi), work / name, membrane=name == "isbi-membrane"), args.size
        tables[name] = evaluate(name, data, work / f"run_{name}", size, args.epochs, args.seed)
    for name, table in tables.items():
        print(f"\n**{name}** (hold-out, Dice per image, averaged)\n")
        print("| start mask | start | pass 1 | pass 3 | pass 10 |")
        print("|---|---|---|---|---|")
        for kind, values in table.items():
            print(f"| {kind} | " + " | ".join(f"{v:.3f}" for v in values) + " |")


if __name__ == "__main__":
    main()
