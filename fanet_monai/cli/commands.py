"""The ``fanet`` commands (:class:`FanetCLI`): thin wrappers over the bundle configs, run by ``fire``.

Every command runs the bundle's own config in-process with ``monai.bundle`` (no second implementation); any
config id can be overridden as a flag, e.g. ``fanet train DIR --max_epochs 50 --network_def#variant B3``. Help,
option checks, the log file and exit codes come from :mod:`fanet_monai.cli.main` for every public method here.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from fanet_monai.cli.configs import bundle_command, config_files, config_ids, data_layers
from fanet_monai.cli.logs import log_to_console
from fanet_monai.cli.settings import NOT_STORED, resume_overrides, with_run_settings
from fanet_monai.errors import EXIT_PARTIAL, InputError

__all__ = ["FanetCLI"]

class FanetCLI:
    """FANet as a MONAI bundle: prepare data, train, evaluate, infer, export, package, DICOM, PACS, ablation, demo."""

    def prepare(self, layout: str, root: str, out_json: str, seed: int = 0, **options: Any):
        """Check a dataset in its native layout and write the MONAI datalist ``out_json`` with the paper's split.

        Layouts: kvasir-seg, cvc-clinicdb, dsb2018, isic2018, em-isbi2012, drive, chase-db1, folder, and msd (a
        Medical Segmentation Decathlon task: ``dataset.json`` + ``imagesTr``/``labelsTr`` volumes; the datalist
        keeps its label names, modality and channels for ``fanet train``); prints a report. Options:
        ``--split_order``, ``--val_from_train N``, ``--offline_copies N|paper``, ``--val_fraction``,
        ``--test_fraction`` (see :func:`fanet_monai.data.layouts.prepare`)."""
        from fanet_monai.data.layouts import prepare

        prepare(layout, root, out_json, seed=seed, **options)

    @bundle_command("train", "volume")
    def train(self, dataset_dir: str, bundle_root: str = ".", bundle_dir: str | None = None, **overrides: Any):
        """Train on ``dataset_dir`` (``images/`` + ``masks/`` folder, or a datalist JSON) into ``bundle_root``.

        One run per ``bundle_root``: a root holding checkpoints needs ``--resume True`` (continue that run, with
        its stored settings) or ``--overwrite True`` (delete them, start afresh). Checkpoints go to
        ``bundle_root/models`` (``model.pt``: best validation Dice), the settings to ``bundle_root/run.json``.
        Returns the per-epoch Dice of the fed and of the stored feedback masks."""
        from fanet_monai.bundle import load_workflow

        names = ("train", *_layers("train", dataset_dir, bundle_root if overrides.get("resume") else None))
        if overrides.get("resume"):
            overrides = resume_overrides(bundle_root, overrides)
        declared = _declared(dataset_dir, overrides, names)
        overrides = {**declared, **overrides}
        workflow = load_workflow(config_files(names, bundle_dir), "training", dataset_dir=dataset_dir,
                                 bundle_root=bundle_root, **overrides)
        owner = workflow.parser.get_parsed_content("run_owner")
        owner.record(
            settings={"network_def": workflow.parser.get("network_def"), "dataset_dir": str(dataset_dir),
                      "config_layers": list(names[1:])},
            overrides={k: v for k, v in {"dataset_dir": dataset_dir, **overrides}.items() if k not in NOT_STORED},
        )
        try:
            workflow.run()
        except BaseException as error:
            cause = _chain(error)[-1]
            owner.release("failed", error=_one_line(f"{type(cause).__name__}: {cause}"))
            mismatch = next((e for e in _chain(error) if "Error(s) in loading state_dict" in str(e)), None)
            if overrides.get("resume") and mismatch is not None:
                path = workflow.parser.get_parsed_content("train#resume_path")
                raise InputError(f"{path}: does not fit the network of this command line ({_one_line(str(mismatch))}"
                                 "); resume without network options, or start a new run.") from error
            raise
        finally:
            workflow.finalize()
        handler = workflow.parser.get_parsed_content("train#feedback_handler")
        return {
            "feedback_mask_dice_per_epoch": [round(v, 4) for v in handler.history],
            "stored_mask_dice_per_epoch": [round(v, 4) for v in handler.stored_history],
        }

    @bundle_command("train", "evaluate", "volume")
    def evaluate(self, dataset_dir: str, bundle_root: str = ".", bundle_dir: str | None = None, **overrides: Any):
        """Refine the validation images pass by pass with ``bundle_root/models/model.pt``; metrics per pass.

        Uses the run's stored settings (split, image size, network, start mask...) unless given. ``--eval_split
        test`` evaluates a datalist's test list. Writes ``metrics_per_pass.csv``, ``metrics_per_pass.png`` and
        ``qualitative.png`` to ``bundle_root/eval``."""
        from fanet_monai.bundle import run_workflow

        names = ("train", "evaluate", *_layers("evaluate", dataset_dir, bundle_root))
        overrides = with_run_settings("evaluate", bundle_root, names, overrides, bundle_dir)
        run_workflow(config_files(names, bundle_dir), "evaluating", dataset_dir=dataset_dir,
                     bundle_root=bundle_root, **overrides)

    @bundle_command("inference", "volume")
    def infer(self, dataset_dir: str, output_dir: str, bundle_root: str = ".", skip_bad: bool = False,
              bundle_dir: str | None = None, **overrides: Any):
        """Write a binary mask for every image of ``dataset_dir`` into ``output_dir``, same size as the input.

        ``dataset_dir``: a folder, its ``images/``, or a datalist JSON. Every image is read before anything is
        written; unreadable ones are all reported (``--skip_bad True`` segments the others and lists them). Uses
        the run's stored settings unless given. PNG masks for bitmaps, NIfTI for NIfTI. Refine-my-mask:
        ``--start_mask_dir MASKS`` starts each image's refinement from the label of the same file stem in
        ``MASKS`` instead of Otsu's threshold and keeps what the annotator drew (``--unreviewed_value 128``: the
        value of pixels not looked at yet, all others are kept too; ``--refine_margin 8``: local refinement, pixels
        farther than 8 from every reviewed pixel come back as sent; ``--keep_annotator_label False``: the label is
        only the start, for a rough label the network should reshape). ``--where_to_look True`` (or ``starts``,
        ``confidence``) also writes where a person should look: ``<name>_where_to_look.png`` (heat map) or a
        float32 volume beside each mask. ``--runtime onnxruntime`` runs the network in ONNX Runtime (exported from
        ``model.pt`` at start; the ``onnx`` extra). Exit code 3 when images were skipped."""
        from fanet_monai.bundle import run_workflow

        names = ("inference", *_layers("infer", dataset_dir, bundle_root))
        overrides = with_run_settings("infer", bundle_root, names, overrides, bundle_dir)
        before = set(Path(output_dir).iterdir()) if Path(output_dir).is_dir() else set()
        try:
            workflow = run_workflow(config_files(names, bundle_dir), "run", dataset_dir=dataset_dir,
                                    output_dir=output_dir, bundle_root=bundle_root, skip_bad=skip_bad, **overrides)
        except BaseException:
            written = set(Path(output_dir).iterdir()) - before if Path(output_dir).is_dir() else set()
            if written:
                print(f"fanet infer: {len(written)} masks were written to {output_dir} before the failure: the folder "
                      "is incomplete.", file=sys.stderr)
            raise
        check = workflow.parser.get_parsed_content("input_check")
        print(f"{len(check.good)} masks written to {output_dir}")
        if check.skipped:
            print(f"skipped {len(check.skipped)} unusable image(s):\n  " + "\n  ".join(check.skipped))
            raise SystemExit(EXIT_PARTIAL)

    @bundle_command("inference")
    def export(self, bundle_root: str = ".", filepath: str | None = None, bundle_dir: str | None = None,
               **overrides: Any):
        """Export ``bundle_root/models/model.pt`` as TorchScript (MONAI ``ckpt_export``, traced) to ``filepath``.

        Default ``bundle_root/models/model.ts``; the network definition and input size come from the run's
        stored settings unless given; written atomically."""
        from monai.bundle import ckpt_export

        from fanet_monai.checkpoints import checked_checkpoint
        from fanet_monai.io import atomic_path

        names = ("inference",)
        overrides = with_run_settings("export", bundle_root, names, overrides, bundle_dir)
        patch = overrides.get("input_mode") == "patch"
        size = list(overrides.get("patch_size" if patch else "image_size") or [256, 256])
        channels = int(overrides.get("image_channels", 3)) + 1  # the image, then the feedback mask
        ckpt = checked_checkpoint(Path(bundle_root) / "models" / "model.pt")
        target = Path(filepath) if filepath else Path(bundle_root) / "models" / "model.ts"
        config = config_files(names, bundle_dir)[0]
        with atomic_path(target) as temp:
            ckpt_export(
                net_id="network_def", filepath=str(temp), ckpt_file=ckpt,
                meta_file=str(Path(config).parent / "metadata.json"), config_file=config, use_trace=True,
                input_shape=[1, channels, *size], bundle_root=bundle_root, **overrides,
            )
        print(f"TorchScript model written to {target}")

    @bundle_command("inference", "volume")
    def package(self, out: str, bundle_root: str = ".", label_name: str | None = None,
                bundle_dir: str | None = None, torchscript: bool = True, **overrides: Any):
        """Write a self-contained model-zoo bundle folder ``out`` from the run ``bundle_root``.

        ``out`` holds configs, models/model.pt (+ model.ts), docs, LICENSE and scripts/ with this package's code:
        it runs where only MONAI is installed (MONAI Label's ``monaibundle`` app, ``python -m monai.bundle run``).
        The network definition and input size come from the run's stored settings unless given;
        ``--label_name polyp`` names the foreground label."""
        from fanet_monai.packaging import package_bundle

        from fanet_monai.run import find_run_root, read_run

        root = find_run_root(bundle_root)
        settings = (read_run(root) or {}).get("settings", {}) if root is not None else {}
        layers = data_layers(None, settings)
        overrides = with_run_settings("package", bundle_root, ("inference", *layers), overrides, bundle_dir)
        path = package_bundle(out, bundle_root, bundle_dir, label_name, torchscript, layers=layers, **overrides)
        print(f"bundle written to {path}")

    @bundle_command("inference")
    def label_app(self, app_dir: str, bundle_root: str = ".", name: str = "fanet", label_name: str | None = None,
                  bundle_dir: str | None = None, **overrides: Any):
        """Write a MONAI Label app folder ``app_dir`` for the run ``bundle_root``: the packaged bundle under
        ``model/<name>`` and a ``main.py`` adding the where-to-look map as its own inference task
        (``<name>_where_to_look``), a scoring method and the ``where_to_look`` active-learning strategy.

        Serve it with ``monailabel start_server --app APP_DIR --studies STUDIES --conf models <name>``."""
        from fanet_monai.packaging import write_label_app

        self.package(str(Path(app_dir) / "model" / name), bundle_root, label_name, bundle_dir, **overrides)
        app = write_label_app(app_dir, name)
        print(f"MONAI Label app written to {app}: monailabel start_server --app {app} --studies STUDIES "
              f"--conf models {name}")

    @bundle_command("inference", "volume")
    def dicom_infer(self, input: str, output_dir: str, bundle_root: str = ".", bundle_dir: str | None = None,
                    fractional: bool = False, **overrides: Any):
        """One DICOM SEG per DICOM image under ``input`` (a file or folder, recursive) into ``output_dir``; for a run
        trained on volumes, one SEG per CT/MR series (a segment per class).

        Same preprocessing, refinement and weights as ``infer`` (and the run's stored settings unless given);
        ``--fractional`` stores probabilities. Exit code 3 if any source failed (one line each, naming file, SOP
        Instance UID and reason)."""
        from fanet_monai.dicom.pipeline import dicom_infer
        from fanet_monai.dicom.series_pipeline import dicom_infer_series

        log_to_console()
        layers = _layers("dicom_infer", None, bundle_root)
        overrides = with_run_settings("dicom_infer", bundle_root, ("inference", *layers), overrides, bundle_dir)
        if "volume" in layers:  # a volume run: one SEG per CT/MR series
            if fractional:
                raise InputError("--fractional is for 2-D instances; a volume run writes one binary SEG per series.")
            summary = dicom_infer_series([input], output_dir, bundle_root, bundle_dir, **overrides)
        else:
            summary = dicom_infer([input], output_dir, bundle_root, bundle_dir, fractional, **overrides)
        if summary.failed:
            raise SystemExit(EXIT_PARTIAL)

    @bundle_command("inference", "volume")
    def pacs(self, url: str, bundle_root: str = ".", bundle_dir: str | None = None, watch: bool = False,
             interval: float = 10.0, credentials: str | None = None, fractional: bool = False, retries: int = 5,
             backoff: float = 0.5, series_stable_for: float = 60.0, **overrides: Any):
        """Segment the PACS's images over DICOMweb (``--url http://host:port/dicom-web``), storing DICOM SEGs.

        QIDO finds instances of the configured modalities without a SEG from this model version, WADO-RS fetches,
        STOW-RS stores the SEG. A run trained on volumes works per CT/MR series: a series is taken once its
        instance count has not changed for ``--series_stable_for`` s, and its SEG and volume report (SR) are stored
        together. ``--watch`` polls every ``--interval`` s until SIGINT/SIGTERM. Credentials:
        FANET_PACS_USERNAME / FANET_PACS_PASSWORD or FANET_PACS_TOKEN, or ``--credentials FILE`` (JSON). Exit code
        3 if a source failed, 2 if the PACS stayed unreachable after ``--retries``."""
        from fanet_monai.dicom.pacs import run_pacs

        log_to_console()
        layers = _layers("pacs", None, bundle_root)
        overrides = with_run_settings("pacs", bundle_root, ("inference", *layers), overrides, bundle_dir)
        if "volume" in layers and fractional:
            raise InputError("--fractional is for 2-D instances; a volume run writes one binary SEG per series.")
        raise SystemExit(run_pacs(url, bundle_root, bundle_dir, watch=watch, interval=interval,
                                  credentials=credentials, fractional=fractional, retries=retries, backoff=backoff,
                                  series="volume" in layers, series_stable_for=series_stable_for, **overrides))

    @bundle_command("train", "evaluate")
    def ablation(self, dataset_dir: str, b1: str, b3: str, b4: str, output_dir: str = "ablation",
                 num_passes: int | None = None, bundle_dir: str | None = None, **overrides: Any):
        """Paper Table IX for trained B1, B3 and B4 checkpoints (B2 = the B4 weights evaluated with one pass).

        The split, image size and network settings come from the B4 run's ``run.json`` unless given."""
        from fanet_monai.ablation import ablation_table

        names = ("train", "evaluate")
        overrides = with_run_settings("ablation", b4, names, overrides, bundle_dir)
        ablation_table(
            {"B1": b1, "B2": b4, "B3": b3, "B4": b4}, dataset_dir, output_dir, num_passes, overrides,
            config_files=config_files(names, bundle_dir),
        )

    def demo(
        self,
        out_dir: str = "demo",
        num_images: int = 48,
        size: int = 64,
        max_epochs: int = 15,
        learning_rate: float = 1e-3,
        seed: int = 0,
        data: str = "blobs",
        **overrides: Any,
    ):
        """Train FANet B4 on a generated synthetic set (CPU or GPU) and refine its validation images.

        ``--data blobs``: shapes resized to ``size``² (resize mode). ``--data vessels``: thin branching vessels at
        their own size ``size``², trained on patches of half that size (patch mode, sliding-window refinement).
        Prints what the feedback did: the Dice of the cached masks fed each epoch climbs from the Otsu start.
        Overrides go to both training and evaluation; the run in ``out_dir`` is replaced."""
        from fanet_monai.data import make_synthetic_dataset, make_vessel_dataset

        start = time.time()
        if data not in ("blobs", "vessels"):
            raise InputError(f"--data {data!r}: choose blobs (resize mode) or vessels (patch mode).")
        if data == "vessels":
            folder = make_vessel_dataset(Path(out_dir) / "data", num_images, size, size, seed=seed)
            overrides = {"input_mode": "patch", "patch_size": [max(32, size // 2)] * 2, **overrides}
        else:
            folder = make_synthetic_dataset(Path(out_dir) / "data", num_images, size, size, seed=seed)
        print(f"synthetic dataset: {num_images} {data} images of {size}x{size} in {folder}")
        data = str(folder)
        result = self.train(
            data, bundle_root=out_dir, image_size=[size, size], max_epochs=max_epochs,
            learning_rate=learning_rate, batch_size=4, show_progress=False, seed=seed, overwrite=True, **overrides,
        )
        print("\ntest-time refinement of the validation images (best checkpoint, Otsu start):")
        self.evaluate(data, bundle_root=out_dir, seed=seed, **overrides)
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


def _layers(command: str, dataset: str | None, bundle_root: str | None) -> tuple[str, ...]:
    """The data layers (``volume.json``) of a command: the run's (``bundle_root``), else detected in ``dataset``;
    says so when it is the volume layer."""
    from fanet_monai.run import find_run_root, read_run

    root = find_run_root(bundle_root) if bundle_root is not None else None
    settings = (read_run(root) or {}).get("settings", {}) if root is not None else {}
    layers = data_layers(dataset, settings)
    if "volume" in layers:
        why = f"the run in {root} was trained on volumes" if "config_layers" in settings else f"{dataset} holds " \
            "3-D volumes"
        print(f"fanet {command}: {why}: the 3-D FANet in patch mode with volume preprocessing "
              "(bundle/configs/volume.json over the command's configs; its ids are options too)")
    return layers


def _declared(dataset: str, overrides: dict, names: tuple[str, ...]) -> dict:
    """What the datalist declares (:func:`fanet_monai.data.decathlon.declared_settings`: classes, channels, label
    names, modality), for the ids the command's configs have, said once; given options win."""
    from fanet_monai.data.decathlon import declared_settings

    ids = config_ids(names)
    declared = {k: v for k, v in declared_settings(dataset).items() if k in ids}
    shown = {k: v for k, v in declared.items() if k not in overrides}
    if shown:
        print(f"fanet train: {dataset} declares " + ", ".join(f"{k}={json.dumps(v)}" for k, v in shown.items()))
    return declared


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and the exceptions it was raised from or during (``__cause__``, ``__context__``)."""
    chain = [error]
    while len(chain) < 50 and (chain[-1].__cause__ or chain[-1].__context__) is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    return chain


def _one_line(text: str, width: int = 300) -> str:
    """``text``'s lines joined with "; ", shortened to ``width`` characters."""
    line = "; ".join(part.strip() for part in text.strip().splitlines() if part.strip())
    return line if len(line) <= width else line[: width - 3] + "..."
