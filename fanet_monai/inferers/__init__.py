"""FANet's inferers: test-time iterative refinement and training-time unrolled feedback.

FANet (Tomar et al., IEEE TNNLS 2022) evaluates an image several times: the first pass gets a start mask (Otsu's
threshold of the blurred image), every later pass gets the previous prediction, binarized, as its feedback mask.
The network returns one logit channel (binary, sigmoid) or K + 1 (K classes, softmax, background in channel 0); the
feedback mask is one channel either way, the foreground of any class (:mod:`fanet_monai.feedback.masks`).

Both inferers are called as MONAI calls an inferer, ``inferer(images, network, mask=None)``: ``images`` holds the
image channels only ``(B, C, *spatial)``; ``mask`` ``(B, 1, *spatial)`` is the first pass's mask, ``None`` for the
inferer's configured start mask (:func:`~fanet_monai.feedback.masks.start_mask`). Only the inferers build the
network's one-tensor input ``cat([images, mask], 1)``. The trainer hands each sample's fed mask over with MONAI's
``PrepareBatchExtraInput({"mask": "mask"})``; MONAI Label, MONAI Deploy and the evaluators call
``inferer(images, network)``. The inferers keep no per-call state: :meth:`IterativeRefinementInferer.refine`
returns every pass explicitly.
"""

from fanet_monai.inferers.passes import converged, early_stop_passes
from fanet_monai.inferers.refinement import IterativeRefinementInferer, Refinement
from fanet_monai.inferers.review import (WHERE_TO_LOOK, AnnotatorConstraint, confidence_map, instability_map,
                                         start_disagreement_map, where_to_look)
from fanet_monai.inferers.unrolled import UnrolledFeedbackInferer

__all__ = [
    "WHERE_TO_LOOK",
    "AnnotatorConstraint",
    "IterativeRefinementInferer",
    "Refinement",
    "UnrolledFeedbackInferer",
    "confidence_map",
    "converged",
    "early_stop_passes",
    "instability_map",
    "start_disagreement_map",
    "where_to_look",
]
