"""The bundle's inference workflow, loaded once and run in-process on DICOM frames: the same preprocessing,
refinement inferer, weights and postprocessing as ``fanet infer`` (one code path), with the loader swapped for
:class:`~fanet_monai.dicom.reader.DicomReader` and ``SaveImaged`` dropped — what MONAI Label and MONAI Deploy do
with a bundle's ``inference.json`` too."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from monai.data import decollate_batch, list_data_collate
from monai.transforms import AsDiscreted, Compose, LoadImage, LoadImaged, SaveImaged
from monai.utils import CommonKeys

from fanet_monai import __version__
from fanet_monai.bundle import bundle_configs, load_workflow
from fanet_monai.dicom.reader import DicomReader
from fanet_monai.label_server import CheckImageRequestd
from fanet_monai.where_to_look import MAP_KEY, WhereToLookImaged

__all__ = ["BundlePredictor", "ModelIdentity", "Prediction"]


@dataclass(frozen=True)
class ModelIdentity:
    """Which model made a result: project name and version, bundle version and the SHA-256 of the weights file.

    ``key`` (``"<bundle version>-<first 16 hex digits of the SHA-256>"``) identifies the model version in SEG
    series descriptions and in the deterministic SEG UIDs that make PACS runs idempotent."""

    project: str
    project_version: str
    bundle_version: str
    weights_sha256: str

    @property
    def key(self) -> str:
        return f"{self.bundle_version}-{self.weights_sha256[:16]}"


@dataclass
class Prediction:
    """One frame's result: ``mask`` ``(Rows, Columns)`` bool (the postprocessing output, nonzero = foreground),
    ``probability`` ``(Rows, Columns)`` float32 in [0, 1] (the postprocessing value before its ``AsDiscreted``) and,
    with ``where_to_look`` on, ``review``: the where-to-look map ``(Rows, Columns)`` float32 in [0, 1]."""

    mask: np.ndarray
    probability: np.ndarray | None
    review: np.ndarray | None = None


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class BundlePredictor:
    """``inference.json`` (plus ``extra_configs``, e.g. ``"dicom"``) as a callable: DICOM frames in, masks out.

    Example::

        predictor = BundlePredictor(bundle_root="runs/kvasir")
        [pred] = predictor([("image.dcm", 0)])  # (file, 0-based frame)
        pred.mask.shape == (ds.Rows, ds.Columns)

    Args:
        bundle_root: holds ``models/model.pt``.
        bundle_dir: the bundle (default: this project's ``bundle/``).
        extra_configs: further config names merged after ``inference`` (``dicom`` holds the SEG settings).
        overrides: config ids to override, as for ``fanet infer`` (``num_passes``, ``image_size``, ...).
    """

    def __init__(self, bundle_root: str | os.PathLike = ".", bundle_dir: str | os.PathLike | None = None,
                 extra_configs: Sequence[str] = ("dicom",), **overrides: Any) -> None:
        files = bundle_configs("inference", *extra_configs, bundle_dir=bundle_dir)
        ckpt = Path(bundle_root) / "models" / "model.pt"
        if "ckpt_path" not in overrides and not ckpt.is_file():
            raise FileNotFoundError(f"{ckpt}: no trained weights; train first (fanet train) or pass --bundle_root.")
        # ``output_ext`` would otherwise be derived from the (unused) dataset; SaveImaged is dropped below.
        self.workflow = load_workflow(files, "run", bundle_root=str(bundle_root), output_ext=".png", **overrides)
        parser = self.workflow.parser
        self.device = torch.device(parser.get_parsed_content("device"))
        self.amp = bool(parser.get_parsed_content("amp"))
        self.batch_size = int(parser.get_parsed_content("batch_size"))
        self.network = parser.get_parsed_content("network")
        self.inferer = parser.get_parsed_content("inferer")
        preprocessing = parser.get_parsed_content("preprocessing")
        # CheckImageRequestd checks bitmap paths for MONAI Label's requests; DICOM sources are read by DicomReader
        loader, *rest = [t for t in preprocessing.transforms if not isinstance(t, CheckImageRequestd)]
        if not isinstance(loader, LoadImaged):
            raise ValueError(f"preprocessing must start with LoadImaged, found {type(loader).__name__}.")
        self.key = loader.keys[0]
        self.reader = DicomReader()
        self.load = LoadImage(reader=self.reader, image_only=True, dtype=loader._loader.dtype,
                              ensure_channel_first=loader._loader.ensure_channel_first)
        self.transform = Compose(rest)
        post = [t for t in parser.get_parsed_content("postprocessing").transforms
                if not isinstance(t, (SaveImaged, WhereToLookImaged))]  # the map stays a float map here
        self.postprocessing = post
        ckpt_path = Path(parser.get_parsed_content("ckpt_path"))
        meta = json.loads((Path(files[0]).parent / "metadata.json").read_text())
        self.identity = ModelIdentity("fanet-monai", __version__, str(meta.get("version", "0")), sha256_of(ckpt_path))

    def config(self, id: str, default: Any = None) -> Any:
        """A parsed config value (``default`` when the id is absent)."""
        parser = self.workflow.parser
        return parser.get_parsed_content(id) if id in parser else default

    def _load(self, path: str, frame: int) -> dict:
        self.reader.frame = frame  # frames are loaded one at a time
        return self.transform({self.key: self.load(path)})

    def __call__(self, frames: Sequence[tuple[str | os.PathLike, int | None]]) -> list[Prediction]:
        """Predictions for ``(file, frame)`` pairs (``frame`` 0-based, ``None`` for single-frame files), in order.

        Frames go through the bundle's preprocessing after the loader, ``inferer(batch, network)`` in batches of
        the config's ``batch_size`` (what ``fanet infer`` uses), then the postprocessing per item. Raises
        :class:`~fanet_monai.dicom.reader.SourceError` for an unreadable file."""
        results: list[Prediction] = []
        for start in range(0, len(frames), self.batch_size):
            items = [self._load(str(p), f) for p, f in frames[start:start + self.batch_size]]
            batch = list_data_collate(items)
            images = batch[self.key].to(self.device)
            with torch.no_grad(), torch.autocast(self.device.type, enabled=self.amp):
                self.network.eval()
                pred = self.inferer(images, self.network)
            output = {self.key: images, CommonKeys.PRED: pred}
            for item in decollate_batch(output, detach=True):
                results.append(self._postprocess(item))
        return results

    def _postprocess(self, item: dict) -> Prediction:
        probability = None
        for transform in self.postprocessing:
            if isinstance(transform, AsDiscreted) and probability is None:
                probability = _rows_columns(item[CommonKeys.PRED], self.reader.reverse_indexing)
            item = transform(item)
        mask = _rows_columns(item[CommonKeys.PRED], self.reader.reverse_indexing) != 0
        if probability is not None:
            probability = np.clip(probability.astype(np.float32), 0.0, 1.0)
        review = item.get(MAP_KEY)
        if review is not None:
            review = np.clip(_rows_columns(review, self.reader.reverse_indexing).astype(np.float32), 0.0, 1.0)
        return Prediction(mask=mask, probability=probability, review=review)


def _rows_columns(pred: torch.Tensor, reverse_indexing: bool) -> np.ndarray:
    """``(1, W, H)`` (reader's reverse indexing) or ``(1, H, W)`` channel-first prediction → ``(H, W)`` array."""
    array = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
    if array.ndim != 3 or array.shape[0] != 1:
        raise ValueError(f"postprocessing must give a (1, *spatial) 2-D prediction, got shape {array.shape}.")
    return array[0].T if reverse_indexing else array[0]
