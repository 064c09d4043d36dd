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
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch
from monai.metrics import Cumulative, compute_confusion_matrix_metric, get_confusion_matrix

from fanet_monai.topology import CONNECTIVITY_METRICS, connectivity_metrics

__all__ = ["ALL_METRICS", "PAPER_METRICS", "fbeta_from_confusion", "segmentation_metrics", "PassWiseMetrics"]

# Paper Table IX column order: mIoU, F1, Rec, Prec, Spec, Acc, F2.
PAPER_METRICS: tuple[str, ...] = ("jaccard", "f1", "recall", "precision", "specificity", "accuracy", "f2")
#: every name :func:`segmentation_metrics` accepts: the paper's, then the connectivity metrics of
#: :mod:`fanet_monai.topology` (clDice, Betti-0 error, components; computed on the CPU with scikit-image).
ALL_METRICS: tuple[str, ...] = PAPER_METRICS + CONNECTIVITY_METRICS

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
    pred: torch.Tensor, target: torch.Tensor, metrics: Sequence[str] = PAPER_METRICS
) -> Dict[str, torch.Tensor]:
    """Per-image binary segmentation metrics.

    Args:
        pred: ``(B, 1, *spatial)`` prediction; binarized as ``pred > 0.5`` (booleans, {0, 1} masks and probability
            maps are all accepted).
        target: ``(B, 1, *spatial)`` ground truth, binarized the same way.
        metrics: names from :data:`ALL_METRICS` to compute (default: the paper's seven, in the paper's order).

    Returns:
        ``{name: (B,) float32 tensor}`` on ``pred``'s device, one value per image. Zero denominators follow the
        module's convention: 1.0 if prediction and ground truth are identical on that image, else 0.0.

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
    for name in metrics:
        if name in CONNECTIVITY_METRICS:
            continue
        if name == "f2":
            value = fbeta_from_confusion(confusion, beta=2.0)
        else:
            value = compute_confusion_matrix_metric(_MONAI_NAMES[name], confusion)
        results[name] = torch.where(torch.isnan(value), fallback, value).float()
    return {name: results[name] for name in metrics}


class PassWiseMetrics(Cumulative):
    """Accumulates the paper's per-image metrics separately for each refinement pass.

    Built on :class:`monai.metrics.Cumulative`, so under ``torch.distributed`` :meth:`aggregate` gathers the
    per-image values of every rank before averaging.

    Example::

        metric = PassWiseMetrics()
        for batch in loader:
            for k, logits in enumerate(inferer.iterate(batch["image"], net)):
                metric.update(k, logits > 0, batch["label"])
        table = metric.aggregate()  # table[k]["jaccard"] = mean Jaccard after pass k + 1

    Args:
        metrics: names from :data:`ALL_METRICS` (default: the paper's seven, in the paper's order).
    """

    def __init__(self, metrics: Sequence[str] = PAPER_METRICS) -> None:
        unknown = [m for m in metrics if m not in ALL_METRICS]
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; valid names: {list(ALL_METRICS)}.")
        if len(metrics) == 0:
            raise ValueError("metrics must name at least one metric.")
        self.metrics: tuple[str, ...] = tuple(metrics)
        super().__init__()

    def update(self, pass_index: int, pred: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Add one batch of predictions made at pass ``pass_index``.

        Args:
            pass_index: 0-based index of the refinement pass that produced ``pred``.
            pred: ``(B, 1, *spatial)`` prediction (binarized as ``> 0.5``).
            target: ``(B, 1, *spatial)`` ground truth.

        Returns:
            the batch's per-image values ``{name: (B,)}``.
        """
        if int(pass_index) < 0:
            raise ValueError(f"pass_index must be >= 0, got {pass_index}.")
        values = segmentation_metrics(pred, target, self.metrics)
        stacked = torch.stack([values[m] for m in self.metrics], dim=1).detach().cpu()  # (B, n_metrics)
        passes = torch.full((stacked.shape[0],), int(pass_index), dtype=torch.long)
        self.extend(passes, stacked)
        return values

    def aggregate(self) -> List[Dict[str, float]]:  # type: ignore[override]
        """Mean of every metric over the images, for each pass.

        Returns:
            a list indexed by pass (``0 .. max pass_index``); entry ``k`` holds ``{"pass": k, "n_images": N,
            name: mean, ...}``. A pass that received no image has ``n_images = 0`` and ``nan`` means.
            Empty list when nothing was added.
        """
        buffers = self.get_buffer()
        if buffers is None:
            return []
        passes, values = buffers
        table: List[Dict[str, float]] = []
        for k in range(int(passes.max().item()) + 1):
            rows = values[passes == k]
            entry: Dict[str, float] = {"pass": k, "n_images": int(rows.shape[0])}
            means = rows.mean(dim=0) if rows.shape[0] else torch.full((len(self.metrics),), float("nan"))
            entry.update({name: float(means[i]) for i, name in enumerate(self.metrics)})
            table.append(entry)
        return table
