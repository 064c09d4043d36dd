"""``fanet`` command line (``python -m fanet_monai``): thin wrappers over the bundle configs.

Every command runs the bundle's own config in-process with ``monai.bundle`` (no second implementation); any
config id can be overridden as a flag, e.g. ``fanet train DIR --max_epochs 50 --network_def#variant B3``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Optional

import fire

from fanet_monai.bundle import bundle_configs, run_workflow

__all__ = ["FanetCLI", "main"]


class FanetCLI:
    """FANet as a MONAI bundle: prepare, train, evaluate, infer, package, ablation, demo."""

    def prepare(self, layout: str, root: str, out_json: str, seed: int = 0, **options: Any):
        """Check a dataset in its native layout (kvasir-seg, cvc-clinicdb, dsb2018, isic2018, em-isbi2012, drive,
        chase-db1, folder) and write the MONAI datalist ``out_json`` with the paper's split; prints a report.
        Options: ``--split_order``, ``--val_from_train N``, ``--offline_copies N|paper``, ``--val_fraction``,
        ``--test_fraction`` (see :func:`fanet_monai.data.layouts.prepare`)."""
        from fanet_monai.data.layouts import prepare

        prepare(layout, root, out_json, seed=seed, **options)

    def train(self, dataset_dir: str, bundle_root: str = ".", bundle_dir: Optional[str] = None, **overrides: Any):
        """Train on ``dataset_dir`` (``images/`` + ``masks/`` folder, or a datalist JSON); checkpoints go to
        ``bundle_root/models``. Returns the per-epoch Dice of the fed and of the stored feedback masks."""
        workflow = run_workflow(
            bundle_configs("train", bundle_dir=bundle_dir), "training",
            dataset_dir=dataset_dir, bundle_root=bundle_root, **overrides,
        )
        handler = workflow.parser.get_parsed_content("train#feedback_handler")
        return {
            "feedback_mask_dice_per_epoch": [round(v, 4) for v in handler.history],
            "stored_mask_dice_per_epoch": [round(v, 4) for v in handler.stored_history],
        }

    def evaluate(
        self, dataset_dir: str, bundle_root: str = ".", bundle_dir: Optional[str] = None, **overrides: Any
    ):
        """Refine the validation (``--eval_split test`` for a datalist's test list) images pass by pass with
        ``bundle_root/models/model.pt`` and report the paper's metrics per pass and with early stop; writes
        ``metrics_per_pass.csv``, ``metrics_per_pass.png`` and ``qualitative.png`` to ``bundle_root/eval``."""
        run_workflow(  # PassWiseEvaluationHandler prints the table of metrics per pass
            bundle_configs("train", "evaluate", bundle_dir=bundle_dir), "evaluating",
            dataset_dir=dataset_dir, bundle_root=bundle_root, **overrides,
        )

    def infer(self, dataset_dir: str, output_dir: str, bundle_root: str = ".", bundle_dir: Optional[str] = None,
              **overrides: Any):
        """Write a binary mask for every image of ``dataset_dir`` (a folder, its ``images/``, or a datalist JSON)
        into ``output_dir``, same size and geometry as the input (PNG for bitmaps, NIfTI for NIfTI).
        Refine-my-mask: ``--start_mask_dir MASKS`` starts every image's refinement from the mask of the same file
        stem in ``MASKS`` (an existing, rough label) instead of Otsu's threshold."""
        run_workflow(
            bundle_configs("inference", bundle_dir=bundle_dir), "run",
            dataset_dir=dataset_dir, output_dir=output_dir, bundle_root=bundle_root, **overrides,
        )
        print(f"masks written to {output_dir}")

    def dicom_infer(self, input: str, output_dir: str, bundle_root: str = ".", bundle_dir: Optional[str] = None,
                    fractional: bool = False, **overrides: Any):
        """One DICOM SEG per DICOM image under ``input`` (a file or folder, recursive) into ``output_dir``: same
        preprocessing, refinement and weights as ``infer``; ``--fractional`` stores probabilities. Exit code 1 if
        any source failed (one line each, naming file, SOP Instance UID and reason)."""
        from fanet_monai.dicom.pipeline import dicom_infer

        _log_to_console()
        summary = dicom_infer([input], output_dir, bundle_root, bundle_dir, fractional, **overrides)
        if summary.failed:
            raise SystemExit(1)

    def pacs(self, url: str, bundle_root: str = ".", bundle_dir: Optional[str] = None, watch: bool = False,
             interval: float = 10.0, credentials: Optional[str] = None, fractional: bool = False, retries: int = 5,
             backoff: float = 0.5, **overrides: Any):
        """Segment the PACS's images over DICOMweb (``--url http://host:port/dicom-web``): QIDO finds instances
        of the configured modalities without a SEG from this model version, WADO-RS fetches, STOW-RS stores the
        SEG. ``--watch`` polls every ``--interval`` s until SIGINT/SIGTERM. Credentials: FANET_PACS_USERNAME /
        FANET_PACS_PASSWORD or FANET_PACS_TOKEN, or ``--credentials FILE`` (JSON). Exit code 1 if a source
        failed, 2 if the PACS stayed unreachable after ``--retries``."""
        from fanet_monai.dicom.pacs import run_pacs

        _log_to_console()
        raise SystemExit(run_pacs(url, bundle_root, bundle_dir, watch=watch, interval=interval,
                                  credentials=credentials, fractional=fractional, retries=retries, backoff=backoff,
                                  **overrides))

    def package(self, out: str, bundle_root: str = ".", label_name: Optional[str] = None,
                bundle_dir: Optional[str] = None, torchscript: bool = True, **overrides: Any):
        """Write a self-contained model-zoo bundle folder ``out`` (configs, models/model.pt + model.ts, docs,
        LICENSE, scripts/ with this package's code) from the run ``bundle_root``; it runs where only MONAI is
        installed (MONAI Label's ``monaibundle`` app, ``python -m monai.bundle run`` from the folder). Pass the
        overrides the run was trained with (``--image_size "[128,128]"``, ``--network_def#channels ...``) and
        ``--label_name polyp`` to name the foreground label."""
        from fanet_monai.packaging import package_bundle

        path = package_bundle(out, bundle_root, bundle_dir, label_name, torchscript, **overrides)
        print(f"bundle written to {path}")

    def ablation(self, dataset_dir: str, b1: str, b3: str, b4: str, output_dir: str = "ablation",
                 num_passes: Optional[int] = None, bundle_dir: Optional[str] = None, **overrides: Any):
        """Paper Table IX for trained B1, B3 and B4 checkpoints (B2 = the B4 weights evaluated with one pass)."""
        from fanet_monai.ablation import ablation_table

        ablation_table(
            {"B1": b1, "B2": b4, "B3": b3, "B4": b4}, dataset_dir, output_dir, num_passes, overrides,
            config_files=bundle_configs("train", "evaluate", bundle_dir=bundle_dir),
        )

    def demo(
        self,
        out_dir: str = "demo",
        num_images: int = 48,
        size: int = 64,
        max_epochs: int = 15,
        learning_rate: float = 1e-3,
        seed: int = 0,
        **overrides: Any,
    ):
        """Generate a small synthetic set (bright blobs, noise and shading), train FANet B4 on it on the CPU or GPU,
        and print what the feedback did: the Dice of the cached masks fed each epoch climbs from the Otsu start."""
        from fanet_monai.data import make_synthetic_dataset

        start = time.time()
        data = make_synthetic_dataset(Path(out_dir) / "data", num_images, size, size, seed=seed)
        print(f"synthetic dataset: {num_images} images of {size}x{size} in {data}")
        result = self.train(
            str(data), bundle_root=out_dir, image_size=[size, size], max_epochs=max_epochs,
            learning_rate=learning_rate, batch_size=4, show_progress=False, seed=seed, **overrides,
        )
        print("\ntest-time refinement of the validation images (best checkpoint, Otsu start):")
        self.evaluate(str(data), bundle_root=out_dir, image_size=[size, size], seed=seed, **overrides)
        fed, stored = result["feedback_mask_dice_per_epoch"], result["stored_mask_dice_per_epoch"]
        print("\nfeedback masks during training, Dice vs labels (fed: what the network was given; stored: its "
              "prediction, cached for the next epoch):")
        print("| epoch | " + " | ".join(str(i + 1) for i in range(len(fed))) + " |")
        print("|---" * (len(fed) + 1) + "|")
        print("| fed | " + " | ".join(f"{d:.3f}" for d in fed) + " |")
        print("| stored | " + " | ".join(f"{d:.3f}" for d in stored) + " |")
        print(f"\ndemo finished in {time.time() - start:.0f} s; checkpoints in {Path(out_dir) / 'models'}, "
              f"metrics and figures in {Path(out_dir) / 'eval'}")
        return None


def _log_to_console() -> None:
    import logging

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(name)s - %(levelname)s - %(message)s")
    for noisy in ("highdicom", "dicomweb_client"):  # a line per copied module / per request
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    fire.Fire(FanetCLI, name="fanet")


if __name__ == "__main__":
    main()
