"""Where-to-look maps and annotator constraints (issue 22, items 1, 2 and 5): the instability map is 0 where every
pass agrees and 1 where a stub network flips a pixel every pass; the batched multi-start map equals separate
refinements; the confidence baseline; an annotator's reviewed pixels survive refinement exactly (early stop,
sliding windows, multi-class); local refinement changes nothing farther than its margin from the reviewed pixels;
every map has the mask's size and grid, 2-D and 3-D."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.inferers import SlidingWindowInferer
from scipy.ndimage import distance_transform_cdt

from fanet_monai import FANet
from fanet_monai.feedback.masks import discrete_prediction
from fanet_monai.inferers import (AnnotatorConstraint, IterativeRefinementInferer, confidence_map,
                                  start_disagreement_map, where_to_look)
from fanet_monai.inferers.review import check_refine_margin, near


def flipping_network(region: torch.Tensor, classes: int = 1):
    """Logits whose prediction flips inside ``region`` at every pass (the opposite of the fed mask) and is a
    constant foreground elsewhere; ``classes`` K + 1 channels for a multi-class stub."""

    def network(x: torch.Tensor) -> torch.Tensor:
        mask = x[:, -1:]
        binary = torch.where(region.to(x.device), 10.0 - 20.0 * mask, torch.full_like(mask, 10.0))
        if classes == 1:
            return binary
        fg = (binary > 0).float()
        return torch.cat([10 * (1 - fg), 10 * fg, torch.zeros_like(fg).expand(-1, classes - 2, *fg.shape[2:])], 1)

    return network


@pytest.mark.parametrize("spatial", [(16, 12), (8, 10, 6)], ids=["2d", "3d"])
@pytest.mark.parametrize("classes", [1, 3], ids=["binary", "multiclass"])
def test_instability_is_0_where_passes_agree_and_1_where_a_pixel_flips_every_pass(spatial, classes):
    region = torch.zeros(1, 1, *spatial, dtype=torch.bool)
    region[(0, 0, *[slice(2, 5)] * len(spatial))] = True
    images = torch.rand(2, 1, *spatial)
    inferer = IterativeRefinementInferer(num_passes=5, start_mask="empty")
    logits, look = where_to_look(inferer, images, flipping_network(region, classes), "instability")
    assert look.shape == (2, 1, *spatial) and logits.shape == (2, classes, *spatial)
    assert torch.equal(look, region.expand(2, 1, *spatial).float())
    one_pass = IterativeRefinementInferer(num_passes=1, start_mask="empty")
    assert where_to_look(one_pass, images, flipping_network(region, classes))[1].sum() == 0  # no second pass


def echo_network(x: torch.Tensor) -> torch.Tensor:
    """Per pixel (so its answers do not depend on the batch): the fed mask, pulled by the image brightness."""
    return 6.0 * (x[:, -1:] - 0.5) + 10.0 * (x[:, :-1].mean(1, keepdim=True) - 0.5)


def test_batched_multi_start_disagreement_equals_separate_refinements():
    torch.manual_seed(0)
    images = torch.rand(3, 2, 20, 18)
    given = (torch.rand(3, 1, 20, 18) > 0.5).float()
    inferer = IterativeRefinementInferer(num_passes=3, early_stop=True)
    logits, look = where_to_look(inferer, images, echo_network, "starts", mask=given)
    starts = [given, inferer.make_start_mask(images), torch.zeros_like(given), torch.ones_like(given)]
    answers = [discrete_prediction(inferer.refine(images, echo_network, mask=m).logits) for m in starts]
    assert torch.equal(look, start_disagreement_map(torch.stack(answers), 2))
    assert torch.equal(logits, inferer.refine(images, echo_network, mask=given).logits)  # the given start's answer
    assert 0 < look.mean() < 1 and look.min() >= 0 and look.max() <= 1


def test_disagreement_is_scaled_so_an_even_split_is_one():
    answers = torch.tensor([1.0, 1.0, 0.0, 0.0]).view(4, 1, 1, 1)
    assert start_disagreement_map(answers, 2).item() == pytest.approx(1.0)
    assert start_disagreement_map(torch.tensor([1.0, 1.0, 1.0, 0.0]).view(4, 1, 1, 1), 2).item() == pytest.approx(0.5)
    assert start_disagreement_map(torch.ones(4, 1, 1, 1), 2).item() == 0.0
    three = torch.tensor([0.0, 1.0, 2.0]).view(3, 1, 1, 1)  # 3 starts, 3 classes, all different
    assert start_disagreement_map(three, 3).item() == pytest.approx(1.0)


def test_confidence_baseline_is_one_at_the_threshold_and_zero_when_sure():
    logits = torch.tensor([0.0, 50.0, -50.0]).view(1, 1, 3)
    assert torch.allclose(confidence_map(logits).flatten(), torch.tensor([1.0, 0.0, 0.0]), atol=1e-6)
    multi = torch.tensor([[0.0, 0.0, -50.0], [50.0, 0.0, 0.0]]).T.reshape(1, 3, 2)  # a tie, then a sure class 0
    assert torch.allclose(confidence_map(multi).flatten(), torch.tensor([1.0, 0.0]), atol=1e-6)
    _, look = where_to_look(IterativeRefinementInferer(num_passes=2), torch.rand(1, 1, 8, 8), echo_network,
                            "confidence")
    assert look.shape == (1, 1, 8, 8) and 0 <= look.min() and look.max() <= 1


@pytest.mark.parametrize("dims, classes", [(2, 1), (3, 3)], ids=["2d-binary", "3d-multiclass"])
def test_the_annotators_reviewed_pixels_survive_refinement_exactly(dims, classes):
    torch.manual_seed(1)
    spatial = (32, 32) if dims == 2 else (16, 16, 16)
    network = FANet(spatial_dims=dims, in_channels=1, out_channels=classes, channels=(4, 8, 8, 8)).eval()
    images = torch.rand(2, 1, *spatial)
    drawn = torch.randint(0, max(classes, 2), (2, 1, *spatial)).float()
    drawn[(slice(None), slice(None), *[slice(0, 6)] * dims)] = 255  # not reviewed yet
    constraint = AnnotatorConstraint.from_label(drawn, unreviewed_value=255)
    window = SlidingWindowInferer([16] * dims, sw_batch_size=4, overlap=0.25)
    inferer = IterativeRefinementInferer(num_passes=4, early_stop=True, inner=window)
    with torch.no_grad():
        refinement = inferer.refine(images, network, constraint=constraint)
        _, look = where_to_look(inferer, images, network, "starts", constraint=constraint)
    for logits in refinement.passes:
        labels = discrete_prediction(logits)
        assert torch.equal(labels[constraint.reviewed], drawn[constraint.reviewed])  # every pass keeps them
    assert look.shape == (2, 1, *spatial)
    assert look[constraint.reviewed].max() == 0  # the reviewed pixels: every start agrees with the annotator
    unconstrained = discrete_prediction(inferer.refine(images, network).logits)
    assert not torch.equal(unconstrained[constraint.reviewed], drawn[constraint.reviewed])  # it would change them


def chessboard_distance(mask: torch.Tensor) -> np.ndarray:
    """``(1, 1, *spatial)`` bool -> the chessboard distance of every pixel to the nearest set pixel (scipy)."""
    return distance_transform_cdt(~mask[0, 0].numpy(), metric="chessboard")


@pytest.mark.parametrize("spatial", [(23, 17), (9, 12, 10)], ids=["2d", "3d"])
@pytest.mark.parametrize("margin", [0, 1, 3])
def test_near_is_a_chessboard_distance_threshold(spatial, margin):
    torch.manual_seed(margin)
    mask = torch.rand(1, 1, *spatial) > 0.97
    mask[(0, 0, *[0] * len(spatial))] = True
    expected = chessboard_distance(mask) <= margin
    assert np.array_equal(near(mask, margin)[0, 0].numpy(), expected)


def test_refine_margin_is_checked():
    assert check_refine_margin(None) is None and check_refine_margin("none") is None and check_refine_margin("") is None
    assert check_refine_margin("8") == 8 and check_refine_margin(0) == 0 and check_refine_margin(np.int64(3)) == 3
    for bad in (-1, "two", 2.5, True):
        with pytest.raises(ValueError, match="refine_margin must be a whole number"):
            check_refine_margin(bad)
    with pytest.raises(ValueError, match="refine_margin"):
        IterativeRefinementInferer(refine_margin=-3)


@pytest.mark.parametrize("dims, classes", [(2, 1), (3, 3)], ids=["2d-binary", "3d-multiclass"])
def test_local_refinement_changes_nothing_beyond_its_margin(dims, classes):
    torch.manual_seed(2)
    spatial = (40, 40) if dims == 2 else (20, 20, 20)

    def network(x: torch.Tensor) -> torch.Tensor:  # answers class 1 everywhere
        ones = torch.ones_like(x[:, -1:])
        return 10 * ones if classes == 1 else torch.cat([-10 * ones, 10 * ones] + [-10 * ones] * (classes - 2), 1)

    images = torch.rand(1, 1, *spatial)
    label = torch.randint(0, max(classes, 2), (1, 1, *spatial)).float()  # the label the annotator sends
    reviewed = torch.zeros_like(label, dtype=torch.bool)
    reviewed[(0, 0, *[slice(2, 8)] * dims)] = True  # the box they corrected
    constraint = AnnotatorConstraint(label, reviewed)
    margin = 3
    far = torch.from_numpy(chessboard_distance(reviewed) > margin)[None, None]
    close = ~far & ~reviewed
    window = SlidingWindowInferer([16] * dims, sw_batch_size=4, overlap=0.25)
    for inner in (None, window):
        whole = IterativeRefinementInferer(num_passes=3, inner=inner)
        local = IterativeRefinementInferer(num_passes=3, inner=inner, refine_margin=margin)
        free = discrete_prediction(whole.refine(images, network, mask=(label > 0).float(),
                                                constraint=constraint).logits)
        kept = discrete_prediction(local.refine(images, network, mask=(label > 0).float(),
                                                constraint=constraint).logits)
        assert torch.equal(kept[reviewed], label[reviewed]) and torch.equal(free[reviewed], label[reviewed])
        assert torch.equal(kept[far], label[far])  # as the annotator sent it
        assert (kept[close] == 1).all()  # refined next to their correction
        assert (free[~reviewed] == 1).all()  # whole-image refinement changes pixels anywhere
        nothing = AnnotatorConstraint(label, torch.zeros_like(reviewed))
        untouched = discrete_prediction(local.refine(images, network, mask=(label > 0).float(),
                                                     constraint=nothing).logits)
        assert torch.equal(untouched, label)  # nothing reviewed: comes back as sent
