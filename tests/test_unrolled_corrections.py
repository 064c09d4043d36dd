"""Corrections between unrolled passes (``unroll_corrections``; RITM-style iterative training).

After every pass but the last, the trainer's :class:`UnrolledFeedbackInferer` pastes the label into boxes at the
errors of the network's *current* answer (for a drawn share of the samples) and feeds that corrected mask to the next
pass, holding the corrected pixels; the bundle hands it the batch's label (``feedback_batch_keys``).
"""

from __future__ import annotations

import json

import pytest
import torch

from fanet_monai.cli import run
from fanet_monai.data import make_synthetic_dataset
from fanet_monai.feedback.transforms import feedback_batch_keys
from fanet_monai.inferers import UnrolledFeedbackInferer
from fanet_monai.run import release_claims


class Constant(torch.nn.Module):
    """Logits of a fixed answer (``answer`` 0/1, broadcast over the batch); records every input."""

    def __init__(self, answer: torch.Tensor):
        super().__init__()
        self.answer = answer
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return 4.0 * (2.0 * self.answer.expand(x.shape[0], 1, *x.shape[2:]) - 1.0)


def _label(batch: int, size: tuple[int, ...]) -> torch.Tensor:
    label = torch.zeros(batch, 1, *size)
    label[(slice(None), slice(None)) + tuple(slice(s // 4, 3 * s // 4) for s in size)] = 1
    return label


@pytest.mark.parametrize("size", [(32, 32), (16, 16, 16)])
def test_corrections_paste_the_label_at_the_current_answers_errors_and_hold_them(size):
    torch.manual_seed(0)
    label = _label(3, size)
    images = torch.rand(3, 1, *size)
    net = Constant(torch.zeros(1, 1, *size))  # predicts background everywhere: every label pixel is an error
    inferer = UnrolledFeedbackInferer(num_passes=3, correction_prob=1.0)
    out = inferer(images, net, mask=torch.zeros(3, 1, *size), label=label)
    assert out.shape == (3, 1, *size) and len(net.inputs) == 3
    second, third = net.inputs[1][:, -1:], net.inputs[2][:, -1:]
    # the network's answer is 0 everywhere: whatever the next pass is fed beyond it is the label pasted in
    assert torch.all(second <= label) and torch.all(third <= label)
    assert all(second[b].sum() > 0 for b in range(3))  # every sample was corrected (probability 1)
    assert torch.all(third >= second)  # corrected pixels are held at the later pass; new boxes add to them
    assert torch.any(third > second)  # the second correction found the errors that were left
    assert torch.equal(net.inputs[0][:, :1], images) and all(x.shape[1] == 2 for x in net.inputs)


def test_corrections_leave_right_answers_alone_and_are_off_by_default():
    torch.manual_seed(0)
    size = (24, 24)
    label = _label(2, size)
    right = Constant(label[:1])  # already right: no error to correct, the fed mask is its own answer
    UnrolledFeedbackInferer(num_passes=2, correction_prob=1.0)(torch.rand(2, 1, *size), right, label=label)
    assert torch.equal(right.inputs[1][:, -1:], label)
    wrong = Constant(torch.zeros(1, 1, *size))
    UnrolledFeedbackInferer(num_passes=2)(torch.rand(2, 1, *size), wrong, label=label)  # off: the label is unused
    assert not wrong.inputs[1][:, -1:].any()


def test_corrections_are_drawn_per_sample_and_repeat_with_the_seed():
    size = (16, 16)
    label = _label(64, size)
    fed = []
    for _ in range(2):
        torch.manual_seed(7)
        net = Constant(torch.zeros(1, 1, *size))
        UnrolledFeedbackInferer(num_passes=2, correction_prob=0.5)(torch.rand(64, 1, *size), net, label=label)
        fed.append(net.inputs[1][:, -1:])
    assert torch.equal(fed[0], fed[1])  # torch's generator draws the samples and the boxes
    corrected = int((fed[0].flatten(1).sum(1) > 0).sum())
    assert 16 < corrected < 48  # about half of the 64 samples


def test_a_reviewed_network_sees_the_corrected_boxes_in_its_reviewed_channel():
    torch.manual_seed(0)
    size = (32, 32)
    label = _label(2, size)
    reviewed = torch.zeros(2, 1, *size)
    reviewed[:, :, :4] = 1  # reviewed background at the top: held as fed
    net = Constant(torch.zeros(1, 1, *size))
    UnrolledFeedbackInferer(num_passes=2, correction_prob=1.0)(
        torch.rand(2, 1, *size), net, mask=torch.zeros(2, 1, *size), reviewed=reviewed, label=label
    )
    first, second = net.inputs
    assert first.shape[1] == 3 and torch.equal(first[:, 1:2], reviewed)
    channel, fed = second[:, 1:2], second[:, 2:]
    assert torch.all(channel >= reviewed) and torch.all(channel.flatten(1).sum(1) > reviewed.flatten(1).sum(1))
    assert torch.all(fed <= channel)  # what the corrected mask holds beyond the answer (0) lies in reviewed pixels
    assert torch.equal(fed * channel, label * channel)  # and the label is what the reviewed pixels hold


def test_corrections_refuse_bad_settings_and_a_missing_label():
    images = torch.rand(2, 1, 16, 16)
    net = Constant(torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match="extra_keys must include 'label'"):
        UnrolledFeedbackInferer(num_passes=2, correction_prob=0.5)(images, net)
    with pytest.raises(ValueError, match=r"label must have shape \(2, 1, 16, 16\)"):
        UnrolledFeedbackInferer(num_passes=2, correction_prob=0.5)(images, net, label=torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="needs num_passes >= 2.*set unroll_passes to 2 or more"):
        UnrolledFeedbackInferer(num_passes=1, correction_prob=0.5)
    with pytest.raises(ValueError, match=r"correction_prob must be in \[0, 1\]"):
        UnrolledFeedbackInferer(num_passes=2, correction_prob=1.5)
    with pytest.raises(ValueError, match="correction_boxes >= 1"):
        UnrolledFeedbackInferer(num_passes=2, correction_prob=0.5, correction_side=(0.5, 0.1))
    assert feedback_batch_keys(False, True) == {"mask": "mask", "label": "label"}
    assert feedback_batch_keys(True, True) == {"mask": "mask", "reviewed": "reviewed", "label": "label"}
    assert feedback_batch_keys() == {"mask": "mask"}


def test_bundle_trains_with_corrections_between_passes(tmp_path, capsys):
    """Through the CLI: the trainer hands the inferer the batch's label, the run records the setting, and a bad
    value is refused before anything is written."""
    data = make_synthetic_dataset(tmp_path / "data", num_images=6, height=32, width=32, seed=0)
    root = tmp_path / "run"
    tiny = ["--num_workers", "0", "--num_passes", "2", "--network_def#channels", "[4,8,8,8]", "--max_epochs", "2",
            "--batch_size", "2", "--show_progress", "False", "--image_size", "[32,32]"]
    assert run(["train", str(data), "--bundle_root", str(root), "--unroll_corrections", "0.5",
                "--mask_mix", "annotator_errors", "--network_def#mask_input", "True", *tiny]) == 0
    release_claims()
    assert json.loads((root / "run.json").read_text())["settings"]["unroll_corrections"] == 0.5
    assert (root / "models" / "model.pt").is_file()
    bad = tmp_path / "bad"
    assert run(["train", str(data), "--bundle_root", str(bad), "--unroll_corrections", "1.5", *tiny]) != 0
    assert "unroll_corrections" in capsys.readouterr().err
    assert not bad.exists()
    release_claims()
