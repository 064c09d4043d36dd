"""What a DICOM series costs beyond the inference itself (issue 21): series → SEG + volume report against the bare
3-D inference of the same volume, side by side in one run.

- **bare**: ``fanet infer`` on the volume already written as NIfTI (``inference.json`` + ``volume.json``: load,
  preprocess, sliding-window refinement, invert, write the label NIfTI);
- **series**: ``fanet dicom_infer`` on the DICOM files of the same volume: find and check the series, decode every
  instance, export it to NIfTI, the same inference, then the SEG (highdicom, frames with foreground only), the TID
  1500 volume report and the JSON, written atomically.

Each runs in its own process, timed end to end (the process start and imports are in both), with its peak
resident memory (the process's own ``ru_maxrss``). The overhead is series / bare. Volumes: the real
20-slice 512² CT of ``../shared/data/ct_dicom_series`` (JPEG 2000 Lossless; skipped without it) and a synthetic
300-slice CT (``--size``² per slice, uncompressed). The network is a 3-D FANet with random weights (the cost does
not depend on what it learnt), widths ``--widths``, ``--passes`` refinement passes, 64³ windows.

    python benchmarks/series_overhead.py               # the table (about 10 minutes on 2 cores)
    python benchmarks/series_overhead.py --smoke       # tiny sizes: every step runs
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fanet_monai import FANet  # noqa: E402
from fanet_monai.dicom.samples import make_ct_series, save  # noqa: E402
from fanet_monai.dicom.series import find_series, read_series  # noqa: E402

CT = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct_dicom_series" / "dicom"


def make_run(root: Path, work: Path, widths: list[int], patch: list[int], passes: int) -> Path:
    """A volume run (``fanet train``, one epoch on two synthetic volumes: ``run.json`` records the volume layer and
    the network), whose weights are then replaced by random ones of the same shape."""
    from fanet_monai.data import make_volume_dataset

    data = make_volume_dataset(work / "train", num_volumes=2, shape=tuple(patch), kind="tubes", seed=0)
    _fanet(["train", str(data), "--bundle_root", str(root), "--max_epochs", "1", "--batch_size", "2",
            "--num_workers", "0", "--show_progress", "False", "--modality", "CT", "--num_passes", str(passes),
            "--patch_size", json.dumps(patch).replace(" ", ""),
            "--network_def#channels", json.dumps(widths).replace(" ", "")], work)
    torch.manual_seed(0)
    network = FANet(spatial_dims=3, in_channels=1, out_channels=1, channels=widths)
    torch.save(network.state_dict(), root / "models" / "model.pt")
    return root


#: runs one fanet command and prints its own peak resident memory (KiB) as the last line of stderr
CHILD = ("import resource, sys; from fanet_monai.cli import run; code = run(sys.argv[1:]); "
         "print('peak_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(code)")


def _fanet(args: list[str], cwd: Path) -> tuple[float, float]:
    """Seconds and peak resident memory (GiB) of ``fanet ARGS`` in a fresh process."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", CHILD, *args], cwd=cwd, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"fanet {args[0]} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    peak_kib = int(result.stderr.strip().splitlines()[-1].split()[-1])
    return seconds, peak_kib / 2**20


def compare(name: str, dicom: Path, work: Path, run: Path, options: list[str]) -> dict:
    (series,) = find_series(dicom).values()
    volume = read_series(series)
    nifti = work / f"{name}_nifti"
    nifti.mkdir()
    nib.save(nib.Nifti1Image(volume.array, volume.affine), nifti / "volume.nii.gz")
    common = ["--bundle_root", str(run), "--num_workers", "0", *options]
    bare, bare_gib = _fanet(["infer", str(nifti), str(work / f"{name}_masks"), *common], work)
    full, full_gib = _fanet(["dicom_infer", str(dicom), str(work / f"{name}_segs"), *common], work)
    return {"series": name, "shape": list(volume.array.shape), "instances": len(volume.datasets),
            "bare_s": bare, "series_s": full, "overhead": full / bare, "bare_gib": bare_gib, "series_gib": full_gib}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--widths", type=int, nargs=4, default=[16, 32, 64, 128])
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: every step runs")
    args = parser.parse_args(argv)
    widths = [4, 8, 8, 8] if args.smoke else args.widths
    slices, size = (12, 32) if args.smoke else (args.slices, args.size)
    patch = [16, 16, 16] if args.smoke else [64, 64, 64]
    rows = []
    with tempfile.TemporaryDirectory(prefix="fanet-series-bench-") as tmp:
        work = Path(tmp)
        run = make_run(work / "run", work, widths, patch, args.passes)
        options: list[str] = []  # the run's own settings (run.json)
        synthetic = work / "synthetic"
        synthetic.mkdir()
        rng = np.random.default_rng(0)
        hounsfield = rng.normal(-100, 200, (size, size, slices)).astype(np.int16)
        for ds in make_ct_series(hounsfield, spacing=(0.8, 0.8, 1.0)):
            save(ds, synthetic / f"{ds.SOPInstanceUID}.dcm")
        spacing = ["--target_spacing", "[0.8,0.8,1.0]"]
        if CT.is_dir() and not args.smoke:
            rows.append(compare("real CT, JPEG 2000", CT, work, run,
                                [*options, "--target_spacing", "[0.9765625,0.9765625,2.0]"]))
        rows.append(compare("synthetic CT", synthetic, work, run, [*options, *spacing]))
    print(f"\nSeries -> SEG + volume report against bare 3-D inference of the same volume; 3-D FANet widths {widths}, "
          f"{args.passes} passes, {patch[0]}³ windows, {torch.get_num_threads()} threads; each a fresh process")
    print("| series | volume (X×Y×Z) | bare infer s | series → SEG + SR s | overhead | peak GiB bare / series |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['series']} | {'×'.join(map(str, r['shape']))} | {r['bare_s']:.1f} | {r['series_s']:.1f} | "
              f"{r['overhead']:.2f}× | {r['bare_gib']:.2f} / {r['series_gib']:.2f} |")
    return rows


if __name__ == "__main__":
    main()
