"""Throughput of the whole DICOM → SEG path against the bare refinement inferer (images/s, this CPU).

Whole path (``fanet dicom_infer`` minus start-up): header checks, pixel decoding (uncompressed RGB or JPEG
baseline), the bundle's preprocessing, the refinement inferer, postprocessing (``Invertd`` back to the source
size, threshold), highdicom SEG construction and writing. Bare inferer: ``inferer(images, network)`` on the
already-preprocessed batch of one image (the bundle's ``batch_size``). Weights are random (speed does not depend on
training); the images are ``--height`` × ``--width`` ES (VL Endoscopic) instances from MONAI's synthetic blobs.

    python benchmarks/dicom_throughput.py                                  # FANet B4, 256², 10 passes
    python benchmarks/dicom_throughput.py --size 64 --channels 8,16,16,16  # tiny net: the DICOM overhead shows
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fanet_monai.bundle import bundle_configs, load_workflow
from fanet_monai.dicom.pipeline import dicom_infer
from fanet_monai.dicom.predictor import BundlePredictor
from fanet_monai.dicom.samples import make_source, save


def synthetic_rgb(height: int, width: int, seed: int) -> np.ndarray:
    from monai.data.synthetic import create_test_image_2d

    image, _ = create_test_image_2d(height, width, num_objs=6, rad_max=min(height, width) // 8, noise_max=0.2,
                                    num_seg_classes=1, random_state=np.random.RandomState(seed))
    gray = (255 * (image - image.min()) / max(float(np.ptp(image)), 1e-6)).astype(np.uint8)
    return np.stack([gray, (gray * 0.9 + 12).astype(np.uint8), (gray * 0.95).astype(np.uint8)], axis=-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--height", type=int, default=576)
    parser.add_argument("--width", type=int, default=720)
    parser.add_argument("--size", type=int, default=256, help="network input size (image_size)")
    parser.add_argument("--passes", type=int, default=10)
    parser.add_argument("--channels", default=None, help="narrow FANet widths, e.g. 8,16,16,16")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    overrides = {"image_size": [args.size, args.size], "num_passes": args.passes, "num_workers": 0}
    if args.channels:
        overrides["network_def#channels"] = [int(c) for c in args.channels.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "models").mkdir()
        network = load_workflow(bundle_configs("inference"), "run", output_ext=".png", **overrides) \
            .parser.get_parsed_content("network_def")
        torch.save(network.state_dict(), root / "models" / "model.pt")
        predictor = BundlePredictor(root, **overrides)
        rows = []
        for jpeg in (False, True):
            folder = root / ("jpeg" if jpeg else "raw")
            folder.mkdir()
            for i in range(args.images):
                save(make_source(synthetic_rgb(args.height, args.width, i), "ES", jpeg=jpeg), folder / f"{i}.dcm")
            dicom_infer([folder], root / "warmup", predictor=predictor)  # warm-up
            times = []
            for r in range(args.repeats):
                start = time.perf_counter()
                summary = dicom_infer([folder], root / f"out{jpeg}{r}", predictor=predictor)
                times.append(time.perf_counter() - start)
                assert summary.done == args.images and not summary.failed
            rows.append((f"DICOM → SEG, {'JPEG baseline' if jpeg else 'uncompressed RGB'}",
                         args.images / statistics.median(times)))

        item = predictor._load(str(root / "raw" / "0.dcm"), None)
        images = item[predictor.key][None].to(predictor.device)
        with torch.no_grad():
            predictor.inferer(images, predictor.network)
            times = []
            for _ in range(args.repeats * args.images):
                start = time.perf_counter()
                predictor.inferer(images, predictor.network)
                times.append(time.perf_counter() - start)
        rows.insert(0, ("bare refinement inferer (preprocessed tensor)", 1.0 / statistics.median(times)))

    print(f"FANet B4{' channels ' + args.channels if args.channels else ''}, {args.passes} passes at "
          f"{args.size}², sources {args.height}×{args.width} ES, {torch.get_num_threads()} threads, batch 1")
    print("| path | images/s | relative |")
    print("|---|---|---|")
    for name, rate in rows:
        print(f"| {name} | {rate:.2f} | {rate / rows[0][1]:.2f} |")


if __name__ == "__main__":
    main()
