"""The binary results that multi-class support must leave unchanged, bit for bit (``tests/test_multiclass.py``).

:func:`binary_reference` uses only the binary API that existed before multi-class support, so the same function
wrote ``tests/fixtures/binary_reference.pt`` with the code before that change (commit ``cd279e6``)::

    mkdir /tmp/old && git archive cd279e6 fanet_monai | tar -x -C /tmp/old
    cd /tmp/old && PYTHONPATH=/tmp/old python "$REPO/tests/binary_reference.py" reference.pt  # then copy it

and the test recomputes it with today's code from the fixture's own weights and inputs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from monai.data import DataLoader, MetaTensor
from monai.engines import SupervisedEvaluator
from monai.losses import DiceCELoss
from monai.transforms import Compose, RandFlipd

from fanet_monai import FANet
from fanet_monai.evaluation import PassWiseEvaluationHandler, PassWiseInferer
from fanet_monai.feedback import FeedbackMaskCache
from fanet_monai.feedback.handler import FeedbackMaskHandler
from fanet_monai.feedback.transforms import FeedbackMaskd
from fanet_monai.inferers import IterativeRefinementInferer, UnrolledFeedbackInferer, early_stop_passes
from fanet_monai.losses import PassAveragedLoss

__all__ = ["binary_reference"]


def _network(inputs: dict[str, Any] | None) -> tuple[FANet, torch.Tensor, torch.Tensor]:
    """A narrow 2-D FANet (``channels=(4, 8, 8, 8)``, one output channel) whose untrained logits are spread around
    0, its images ``(2, 3, 32, 32)`` and start masks ``(2, 1, 32, 32)``; with ``inputs`` (the fixture) their weights
    (one flat vector) and tensors, independent of this torch's random generator."""
    torch.manual_seed(0)
    network = FANet(in_channels=3, out_channels=1, channels=(4, 8, 8, 8)).eval()
    images = torch.rand(2, 3, 32, 32)
    mask = (torch.rand(2, 1, 32, 32) > 0.5).float()
    with torch.no_grad():  # spread the logits around 0, so masks and early stop have something to show
        median = network(torch.cat([images, mask], 1)).median()
        network.head.conv.weight.mul_(40.0)
        network.head.conv.bias.mul_(40.0).sub_(40.0 * median)
    if inputs is not None:
        images, mask, flat, offset = inputs["images"], inputs["mask"], inputs["state"], 0
        state = network.state_dict()
        for name, value in state.items():
            state[name] = flat[offset : offset + value.numel()].view_as(value).to(value.dtype)
            offset += value.numel()
        network.load_state_dict(state)
    return network, images, mask


def binary_reference(inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every binary result the multi-class change touches: refinement with early stop (binary and probability
    feedback), unrolled training with the pass-averaged Dice-CE loss, pass-wise evaluation rows and the early-stop
    rule, and the feedback cache stored through a flipped view by the handler.

    Args:
        inputs: the fixture (weights, images, masks), or ``None`` to make them from ``torch.manual_seed(0)``.

    Returns:
        ``{name: tensor or list of rows}``, with the weights (``"state"``, one flat vector) and inputs.
    """
    network, images, mask = _network(inputs)
    label = torch.zeros(2, 1, 32, 32)
    label[:, :, 8:24, 6:20] = 1.0
    state = torch.cat([v.flatten().float() for v in network.state_dict().values()])
    out: dict[str, Any] = {"state": state, "images": images, "mask": mask, "label": label}
    with torch.no_grad():
        for feedback in ("binary", "probability"):
            inferer = IterativeRefinementInferer(num_passes=4, feedback=feedback, early_stop=True, tolerance=0.9935)
            refinement = inferer.refine(images, network, mask=mask)
            out[f"refine_{feedback}"] = torch.stack(refinement.passes)
            out[f"refine_{feedback}_used"] = refinement.num_passes
        unrolled = UnrolledFeedbackInferer(num_passes=3, loss_on_every_pass=True)(images, network, mask=mask)
        out["unrolled"] = unrolled
        loss = DiceCELoss(sigmoid=True, batch=True, smooth_nr=1.0, smooth_dr=1.0, lambda_dice=0.5, lambda_ce=0.5)
        out["loss"] = PassAveragedLoss(loss)(unrolled, label)
        passwise = PassWiseInferer(num_passes=3, start_mask="otsu")(images, network)
        out["passwise"] = passwise
        out["passwise_used"] = early_stop_passes((torch.sigmoid(passwise) > 0.5).movedim(1, 0)[:, :, None], 0.9925)
    # the cache: a flipped view, three passes stacked, stored through the handler
    cache = FeedbackMaskCache()
    transform = Compose([FeedbackMaskd("image", cache, initial="empty"),
                         RandFlipd(["image", "label", "mask"], prob=1.0, spatial_axis=0)])
    handler = FeedbackMaskHandler(cache, transform)
    items = []
    for b in range(2):
        meta = {"filename_or_obj": f"/data/case{b}.png"}
        sample = {"image": MetaTensor(images[b], meta=dict(meta)), "label": MetaTensor(label[b], meta=dict(meta))}
        items.append(transform(sample))
    preds = [out["unrolled"][b, :, :, :].flip(1) for b in range(2)]  # as the network saw the flipped view
    handler.store(SimpleNamespace(state=SimpleNamespace(batch=items, output=[{"pred": p} for p in preds])))
    out["cache"] = torch.stack([torch.as_tensor(cache.get(f"case{b}.png")) for b in range(2)])
    out["stored_dice_sum"] = torch.tensor(handler._stored_sum)
    # the pass-wise evaluation rows
    evaluation = PassWiseEvaluationHandler(output_dir=None)
    samples = [{"image": images[b], "label": label[b]} for b in range(2)]
    evaluator = SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=DataLoader(samples, batch_size=2),
                                    network=network, inferer=PassWiseInferer(num_passes=3, tolerance=0.9925),
                                    val_handlers=[evaluation])
    evaluator.run()
    out["rows"] = [{k: v for k, v in row.items() if k not in ("seconds", "images_per_s")} for row in evaluation.rows]
    return out


if __name__ == "__main__":
    torch.save(binary_reference(), Path(sys.argv[1]))
