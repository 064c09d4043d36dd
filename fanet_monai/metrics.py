"""The paper's per-image segmentation metrics, per refinement pass, on top of MONAI's confusion-matrix metrics.

FANet (Tomar et al., IEEE TNNLS 2022, Table IX) reports, for every test-time feedback pass, seven metrics on the
binarized prediction and ground truth: Jaccard (reported as mIoU), F1 (Dice), recall, precision, specificity,
accuracy and F2. Each metric is computed **per image** and then averaged over the images (not pooled over pixels).

The confusion counts come from :func:`monai.metrics.get_confusion_matrix`, and every ratio MONAI implements is
computed by :func:`monai.metrics.compute_confusion_matrix_metric` (``"threat score"`` is the Jaccard index); F2 is
the F-beta score with beta = 2 on the same counts.

Zero-denominator convention (one rule for every metric):
    MONAI returns ``nan`` for ``0 / 0``. Here a metric whose denominator is zero for an image is **1.0 if the
    prediction equals the ground truth on that image and 0.0 otherwise**. In the binary case this means:

    - empty ground truth and empty prediction: every metric is 1.0 (a correct "nothing here");
    - empty ground truth, non-empty prediction: recall = F1 = F2 = Jaccard = 0.0 (precision = 0 / FP = 0.0 too);
    - non-empty ground truth, empty prediction: precision = 0.0 (and recall = F1 = F2 = Jaccard = 0.0 anyway);
    - ground truth covering the whole image (no negatives): specificity = 1.0 if the prediction also covers the
      whole image, else 0.0.

    The metrics are therefore never ``nan`` and an average over images is always defined.

Multi-class tasks (K classes, label maps 0..K, 0 = background): :func:`per_class_dice` gives the Dice of every
class per image (MONAI's :func:`~monai.metrics.compute_dice` on one-hot maps, background excluded); with
``num_classes=K``, :class:`PassWiseMetrics` reports the paper's metrics on the foreground of any class (label > 0,
the mask the network is fed) plus the Dice of each class and their mean. :func:`segmentation_metrics` stays
binary.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch
from monai.metrics import Cumulative, compute_confusion_matrix_metric, compute_dice, get_confusion_matrix
from monai.networks.utils import one_hot

from fanet_monai.surface import SURFACE_METRICS, Spacing, per_class_surface_metrics, surface_metrics
from fanet_monai.topology import CONNECTIVITY_METRICS, connectivity_metrics

__all__ = [
    "ALL_METRICS",
    "PAPER_METRICS",
    "PassWiseMetrics",
    "class_dice_names",
    "fbeta_from_confusion",
    "per_class_dice",
    "segmentation_metrics",
]

# Paper Table IX column order: mIoU, F1, Rec, Prec, Spec, Acc, F2.
PAPER_METRICS: tuple[str, ...] = ("jaccard", "f1", "recall", "precision", "specificity", "accuracy", "f2")
#: every name :func:`segmentation_metrics` accepts: the paper's, then the connectivity metrics of
#: :mod:`fanet_monai.topology` (clDice, Betti-0 error, components; computed on the CPU with scikit-image), then the
#: boundary metrics of :mod:`fanet_monai.surface` (HD95, surface Dice; MONAI's, in ``spacing`` units).
ALL_METRICS: tuple[str, ...] = PAPER_METRICS + CONNECTIVITY_METRICS + SURFACE_METRICS

# metric name -> MONAI ``compute_confusion_matrix_metric`` name (F2 is computed here, see ``fbeta_from_confusion``)
_MONAI_NAMES: Dict[str, str] = {
    "jaccard": "threat score",
    "f1": "f1 score",
    "recall": "sensitivity",
    "precision": "precision",
    "specificity": "specificity",
    "accuracy": "accuracy",
}


def fbeta_from_confusion(confusion: torch.Tensor, beta: float) -> torch.Tensor:
    """F-beta score ``(1 + b^2) TP / ((1 + b^2) TP + b^2 FN + FP)`` from MONAI confusion counts.

    Args:
        confusion: ``(..., 4)`` counts ``[TP, FP, TN, FN]`` as returned by :func:`monai.metrics.get_confusion_matrix`.
        beta: weight of recall relative to precision (2 for the paper's F2).

    Returns:
        ``(...)`` scores; ``nan`` where the denominator is zero (MONAI's convention, resolved by
        :func:`segmentation_metrics`).
    """
    tp, fp, fn = confusion[..., 0], confusion[..., 1], confusion[..., 3]
    b2 = float(beta) ** 2
    numerator = (1.0 + b2) * tp
    denominator = numerator + b2 * fn + fp
    return torch.where(denominator > 0, numerator / denominator.clamp_min(1e-12), torch.full_like(tp, float("nan")))


def segmentation_metrics(
    pred: torch.Tensor,
    target: torch.Tensor,
    metrics: Sequence[str] = PAPER_METRICS,
    spacing: Spacing = None,
    tolerance: float = 1.0,
) -> Dict[str, torch.Tensor]:
    """Per-image binary segmentation metrics.

    Args:
        pred: ``(B, 1, *spatial)`` prediction; binarized as ``pred > 0.5`` (booleans, {0, 1} masks and probability
            maps are all accepted).
        target: ``(B, 1, *spatial)`` ground truth, binarized the same way.
        metrics: names from :data:`ALL_METRICS` to compute (default: the paper's seven, in the paper's order).
        spacing: voxel size per spatial axis (one list, or one per image) for the boundary metrics (HD95 in these
            units, the surface Dice's ``tolerance`` too); ``None``: voxels.
        tolerance: the surface Dice's tolerance.

    Returns:
        ``{name: (B,) float32 tensor}`` on ``pred``'s device, one value per image. Zero denominators follow the
        module's convention: 1.0 if prediction and ground truth are identical on that image, else 0.0 (empty
        masks in the boundary metrics: :mod:`fanet_monai.surface`).

    Raises:
        ValueError: on shape mismatch, a channel count other than 1, no spatial dimension, or an unknown name.
    """
    unknown = [m for m in metrics if m not in ALL_METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; valid names: {list(ALL_METRICS)}.")
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}."
        )
    if pred.ndim < 3 or pred.shape[1] != 1:
        raise ValueError(f"expected (B, 1, *spatial) binary masks, got shape {tuple(pred.shape)}.")
    y_pred = (pred > 0.5).float()
    y = (target.to(pred.device) > 0.5).float()
    confusion = get_confusion_matrix(y_pred, y, include_background=True)[:, 0]  # (B, 4): TP, FP, TN, FN
    identical = (confusion[:, 1] + confusion[:, 3]) == 0  # no FP and no FN
    fallback = identical.float()

    results: Dict[str, torch.Tensor] = {}
    if any(name in CONNECTIVITY_METRICS for name in metrics):
        topology = connectivity_metrics(y_pred, y)
        results.update({name: v.to(pred.device) for name, v in topology.items() if name in metrics})
    boundary = [name for name in metrics if name in SURFACE_METRICS]
    if boundary:
        results.update(surface_metrics(y_pred, y, boundary, spacing, tolerance))
    for name in metrics:
        if name in CONNECTIVITY_METRICS or name in SURFACE_METRICS:
            continue
        if name == "f2":
            value = fbeta_from_confusion(confusion, beta=2.0)
        else:
            value = compute_confusion_matrix_metric(_MONAI_NAMES[name], confusion)
        results[name] = torch.where(torch.isnan(value), fallback, value).float()
    return {name: results[name] for name in metrics}


def class_dice_names(num_classes: int, metric: str = "dice") -> tuple[str, ...]:
    """Column names of a per-class metric of a ``num_classes``-class task: ``dice_class_1 .. dice_class_K``, then
    ``dice_class_mean`` (the mean over the classes, per image); ``metric="hd95"`` gives ``hd95_class_1 ..``."""
    return (*(f"{metric}_class_{k}" for k in range(1, int(num_classes) + 1)), f"{metric}_class_mean")


def per_class_dice(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_empty: bool = False
) -> torch.Tensor:
    """Per-image, per-class Dice of label maps (MONAI's :func:`~monai.metrics.compute_dice` on one-hot maps).

    Args:
        pred: ``(B, 1, *spatial)`` predicted label map, integer values 0..K (0 = background), e.g. the argmax of
            K + 1 logits (:func:`~fanet_monai.feedback.masks.discrete_prediction`).
        target: ``(B, 1, *spatial)`` ground-truth label map, values 0..K.
        num_classes: K, the number of foreground classes (>= 1).
        ignore_empty: how a class absent from an image's ground truth counts. ``False`` (default, the module's
            zero-denominator rule): 1.0 if the prediction has no pixel of that class either, else 0.0 — never
            ``nan``. ``True`` (MONAI's default): ``nan`` for that image and class (average with ``nanmean``).

    Returns:
        ``(B, K)`` float32 Dice of classes 1..K on ``pred``'s device (background not included).

    Raises:
        ValueError: shapes differ or are not ``(B, 1, *spatial)``, ``num_classes < 1``, or values outside the
            integers 0..K.
    """
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}.")
    target = target.to(pred.device)
    if pred.shape != target.shape or pred.ndim < 3 or pred.shape[1] != 1:
        raise ValueError(
            f"expected (B, 1, *spatial) label maps of the same shape, got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}."
        )
    for name, labels in (("pred", pred), ("target", target)):
        values = labels.float()
        if bool(((values != values.round()) | (values < 0) | (values > num_classes)).any()):
            found = torch.unique(values)[:20].tolist()
            raise ValueError(f"{name} must hold the class codes 0..{num_classes}, found {found}.")
    classes = int(num_classes) + 1
    pred_onehot, target_onehot = one_hot(pred.float(), classes), one_hot(target.float(), classes)
    return compute_dice(pred_onehot, target_onehot, include_background=False, ignore_empty=ignore_empty).float()


class PassWiseMetrics(Cumulative):
    """Accumulates the paper's per-image metrics separately for each refinement pass.

    Built on :class:`monai.metrics.Cumulative`, so under ``torch.distributed`` :meth:`aggregate` gathers the
    per-image values of every rank before averaging.

    Binary (``num_classes=1``): predictions and labels are masks, the columns are ``metrics``. K classes
    (``num_classes=K >= 2``): predictions and labels are label maps 0..K; ``metrics`` are computed on the foreground
    of any class (``> 0``), and the columns :func:`class_dice_names` (Dice of each class, then their mean, per
    image; :func:`per_class_dice` with ``ignore_empty=False``) follow, then the same for each boundary metric among
    ``metrics`` (``hd95_class_1 ..``). :attr:`columns` lists them all.

    Example::

        metric = PassWiseMetrics()
        for batch in loader:
            for k, logits in enumerate(inferer.iterate(batch["image"], net)):
                metric.update(k, logits > 0, batch["label"])
        table = metric.aggregate()  # table[k]["jaccard"] = mean Jaccard after pass k + 1

    Args:
        metrics: names from :data:`ALL_METRICS` (default: the paper's seven, in the paper's order).
        num_classes: 1 (binary) or the number K of foreground classes.
        tolerance: the surface Dice's tolerance in the units of the ``spacing`` given to :meth:`update`.
    """

    def __init__(self, metrics: Sequence[str] = PAPER_METRICS, num_classes: int = 1, tolerance: float = 1.0) -> None:
        unknown = [m for m in metrics if m not in ALL_METRICS]
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; valid names: {list(ALL_METRICS)}.")
        if len(metrics) == 0:
            raise ValueError("metrics must name at least one metric.")
        if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1 (1 = binary), got {num_classes!r}.")
        self.metrics: tuple[str, ...] = tuple(metrics)
        self.num_classes = int(num_classes)
        self.tolerance = float(tolerance)
        self._boundary = tuple(m for m in self.metrics if m in SURFACE_METRICS)
        per_class = ("dice", *self._boundary) if num_classes > 1 else ()
        #: every column :meth:`aggregate` reports: ``metrics``, then (K classes) :func:`class_dice_names` of the
        #: Dice and of each boundary metric
        self.columns: tuple[str, ...] = self.metrics + tuple(n for m in per_class for n in class_dice_names(
            num_classes, m))
        super().__init__()

    def update(self, pass_index: int, pred: torch.Tensor, target: torch.Tensor,
               spacing: Spacing = None) -> Dict[str, torch.Tensor]:
        """Add one batch of predictions made at pass ``pass_index``.

        Args:
            pass_index: 0-based index of the refinement pass that produced ``pred``.
            pred: ``(B, 1, *spatial)`` prediction (binary: binarized as ``> 0.5``; K classes: label map 0..K).
            target: ``(B, 1, *spatial)`` ground truth (the same).
            spacing: voxel size per axis (one list, or one per image) for the boundary metrics; ``None``: voxels.

        Returns:
            the batch's per-image values ``{name: (B,)}``, one per :attr:`columns`.
        """
        if int(pass_index) < 0:
            raise ValueError(f"pass_index must be >= 0, got {pass_index}.")
        if self.num_classes == 1:
            values = segmentation_metrics(pred, target, self.metrics, spacing, self.tolerance)
        else:
            target = target.to(pred.device)
            values = segmentation_metrics((pred > 0).float(), (target > 0).float(), self.metrics, spacing,
                                          self.tolerance)
            per_class = {"dice": per_class_dice(pred, target, self.num_classes)}  # (B, K) each
            if self._boundary:
                per_class.update(per_class_surface_metrics(pred, target, self.num_classes, self._boundary, spacing,
                                                           self.tolerance))
            for metric, table in per_class.items():
                names = class_dice_names(self.num_classes, metric)
                values.update({name: table[:, k].to(pred.device) for k, name in enumerate(names[:-1])})
                values[names[-1]] = table.mean(dim=1).to(pred.device)
        stacked = torch.stack([values[m] for m in self.columns], dim=1).detach().cpu()  # (B, n_columns)
        passes = torch.full((stacked.shape[0],), int(pass_index), dtype=torch.long)
        self.extend(passes, stacked)
        return values

    def aggregate(self) -> List[Dict[str, float]]:  # type: ignore[override]
        """Mean of every metric over the images, for each pass.

        Returns:
            a list indexed by pass (``0 .. max pass_index``); entry ``k`` holds ``{"pass": k, "n_images": N,
            name: mean, ...}`` for every name of :attr:`columns`. A pass that received no image has
            ``n_images = 0`` and ``nan`` means. Empty list when nothing was added.
        """
        buffers = self.get_buffer()
        if buffers is None:
            return []
        passes, values = buffers
        table: List[Dict[str, float]] = []
        for k in range(int(passes.max().item()) + 1):
            rows = values[passes == k]
            entry: Dict[str, float] = {"pass": k, "n_images": int(rows.shape[0])}
            means = rows.mean(dim=0) if rows.shape[0] else torch.full((len(self.columns),), float("nan"))
            entry.update({name: float(means[i]) for i, name in enumerate(self.columns)})
            table.append(entry)
        return table
