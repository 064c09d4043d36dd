"""FANet: Feedback Attention Network (Tomar et al., IEEE TNNLS 2022), as a MONAI-style network.

The network takes **one tensor**: the image channels followed by one feedback-mask channel, so that MONAI inferers,
the model-zoo checks and MONAI Label can call ``network(x)`` like any other network.
"""

from __future__ import annotations

import math
import numbers
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Pool

from fanet_monai.networks.blocks import MixPool, SEResidualBlock, check_spatial_dims
from fanet_monai.networks.slicewise import check_slice_axis, slice_wise

__all__ = ["FANet", "FANET_VARIANTS", "mixpool_stage_names"]


def mixpool_stage_names(depth: int = 4) -> Tuple[str, ...]:
    """Names of the stages that can hold a MixPool block: ``encoder1..encoder{depth}, decoder1..decoder{depth}``."""
    return tuple(f"encoder{i}" for i in range(1, depth + 1)) + tuple(f"decoder{i}" for i in range(1, depth + 1))


# Paper Table IX. "stages": which stages hold a MixPool block ("all" = every stage); "passes": the number of
# feedback passes at inference (B2 is B4's network evaluated once, without iterative refinement).
FANET_VARIANTS: Dict[str, Dict] = {
    "B1": {"stages": (), "passes": 1},
    "B2": {"stages": "all", "passes": 1},
    "B3": {"stages": ("encoder1", "decoder{depth}"), "passes": 10},
    "B4": {"stages": "all", "passes": 10},
}


class _EncoderStage(nn.Module):
    """SE-residual blocks, optional MixPool, 2x max-pool. Returns ``(down, skip)``; the skip is taken *before*
    MixPool (reference design), the pooled MixPool output goes down."""

    def __init__(self, blocks: nn.Sequential, mixpool: MixPool | None, pool: nn.Module) -> None:
        super().__init__()
        self.blocks = blocks
        self.mixpool = mixpool
        self.pool = pool

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        skip = self.blocks(x)
        h = skip
        if self.mixpool is not None:
            h = self.mixpool(skip, mask)
        return self.pool(h), skip


class _DecoderStage(nn.Module):
    """4x4 stride-2 transposed conv, concat with the skip, SE-residual blocks, optional MixPool."""

    def __init__(self, upsample: nn.Module, blocks: nn.Sequential, mixpool: MixPool | None) -> None:
        super().__init__()
        self.upsample = upsample
        self.blocks = blocks
        self.mixpool = mixpool

    def forward(self, x: torch.Tensor, skip: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.blocks(torch.cat([self.upsample(x), skip], dim=1))
        if self.mixpool is not None:
            h = self.mixpool(h, mask)
        return h


class FANet(nn.Module):
    """Feedback Attention Network.

    Encoder stage ``i`` (widths ``channels``, 32-64-128-256 by default): ``blocks_per_stage`` SE-residual blocks,
    MixPool (if enabled for the stage), 2x max-pool. Decoder stage ``i``: 4x4 stride-2 transposed convolution,
    concatenation with the encoder skip, SE-residual blocks (widths 128-64-32-16 by default), MixPool. Head:
    concatenate the last decoder features with the input mask, 1x1 convolution to ``out_channels`` logits.

    Args:
        spatial_dims: number of spatial dimensions: 2 for images ``(B, C, H, W)``, 3 for volumes ``(B, C, D, H, W)``
            (one code path; any other value is a ``ValueError``).
        in_channels: number of *image* channels. The network input has ``in_channels + 1`` channels: the image,
            then the feedback mask.
        out_channels: number of output channels (logits; apply sigmoid for probabilities).
        variant: paper Table IX configuration: ``"B1"`` (no MixPool), ``"B2"``/``"B4"`` (MixPool in all stages;
            B2 is evaluated with one pass), ``"B3"`` (MixPool in the first encoder and the last decoder stage).
        channels: encoder widths, one per stage; the decoder widths are
            ``channels[-2::-1] + (head_channels,)``, ``head_channels = channels[0] // 2`` by default. Narrow widths
            make small test networks; a stage with MixPool (and its feature branch) needs an even width, so e.g.
            ``(4, 8, 8, 8)``.
        blocks_per_stage: SE-residual blocks per stage (paper: 2; Table XI ablates 1, 3 and 4).
        mixpool_stages: override of the variant's MixPool stages, names from :func:`mixpool_stage_names`.
        final_mixpool: keep a MixPool block in the last decoder stage (the one the head reads) when the variant or
            ``mixpool_stages`` put one there. ``False`` drops it: measured on 3-D two-class MR (Decathlon
            hippocampus, narrow widths) that block stalls training — the head then reads half of a handful of
            channels through the hard mask — while the other seven MixPool blocks train. An option: the volume
            bundle keeps B4 and removes the stall with ``prior_probability`` instead (README, volume study).
        mixpool_feature_branch: keep MixPool's unmasked feature branch (``False``: Table XI "w/o F_l").
        straight_through: straight-through gradient for MixPool's thresholded learned map, so that its
            parameters train (off = reference behaviour: they never receive a gradient).
        se_hidden_channels: width of the SE squeeze layers; ``None`` = 1 unit, as in the reference.
        act: activation type and arguments (MONAI layer factory syntax).
        norm: normalization type and arguments.
        prior_probability: start the head's biases at this foreground prior instead of PyTorch's default
            (about even odds): ``-log((1 - p) / p)`` for a binary head, as MONAI's RetinaNet classification head does
            (Lin et al., ICCV 2017); for ``K`` classes the softmax starts at ``1 - p`` background and ``p / K`` for
            each class. Only the start of training: loaded weights replace it. Why: Adam moves a bias by about the
            learning rate per step, so a head that starts at even odds on a task with a few per cent of foreground
            first spends its steps producing that imbalance through its features; measured on 3-D two-class MR
            (Decathlon hippocampus, widths 8-64, the head reading 4 channels) that phase stalls training or lets one
            class win (README, volume study). ``None`` (default): the reference's initialisation.
        head_channels: width of the last decoder stage, the features the head reads (with the mask);
            ``None`` (default): ``channels[0] // 2`` as in the reference (16 at the default widths, 4 at 8-64).
        mask_input: also give the feedback mask to the first encoder stage as an input channel (its convolutions
            read ``in_channels + 1`` channels), as interactive-segmentation networks take their previous mask or
            guidance (RITM, MONAI Label's DeepEdit). The paper's network sees the mask only through MixPool's hard
            gates and the head's one mask weight, and measured on annotators' corrected masks its output barely
            depends on them (README, annotation loop); with this path, trained on masks corrected on its errors
            (``mask_mix: "annotator_errors"``), it follows a given mask more, though measured it saves no more
            corrections than refining longer before correcting by hand. ``False`` (default): the paper's network.
        reviewed_input: the input carries one more channel between the image and the feedback mask: the pixels an
            annotator reviewed (1: their label, which is the fed mask there, is final; 0: not looked at), read by the
            first encoder stage with the image. The mask alone cannot say which of its pixels a person corrected and
            which are the network's own guess; this channel does, as the guidance channels of interactive
            segmentation do (RITM's clicks, MONAI Label's DeepEdit). Trained with ``FeedbackMaskd(reviewed_key=...)``
            (the boxes of the ``corrected`` sources; bundle option ``reviewed_input``); at test time
            :class:`~fanet_monai.inferers.IterativeRefinementInferer` (``reviewed_channel=True``) feeds an annotator
            constraint's reviewed pixels, zeros without one. Measured on ISBI (README, annotation loop) it makes
            the network follow a given mask less (it learns to trust the mask only where marked reviewed) and saves
            no corrections; an option, not recommended. ``False`` (default): no such channel.
        slice_axis: with ``spatial_dims=2``, take volumes ``(B, in_channels + 1, X, Y, Z)`` and run the 2-D network
            on each slice across this spatial axis (0, 1 or 2; :mod:`fanet_monai.networks.slicewise`, the
            ``slice`` volume mode); ``None`` (default): inputs have ``spatial_dims`` spatial dimensions.

    Input ``(B, in_channels + 1, *spatial)`` (``in_channels + 2`` with ``reviewed_input``) of any spatial size: the
    network pads each spatial dimension to a multiple of ``2 ** len(channels)`` (replicate padding, split evenly on
    both sides) and crops the output back.
    Output ``(B, out_channels, *spatial)`` logits.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 3,
        out_channels: int = 1,
        variant: str = "B4",
        channels: Sequence[int] = (32, 64, 128, 256),
        blocks_per_stage: int = 2,
        mixpool_stages: Sequence[str] | None = None,
        final_mixpool: bool = True,
        mixpool_feature_branch: bool = True,
        straight_through: bool = False,
        se_hidden_channels: int | None = None,
        act: tuple | str = ("relu", {"inplace": True}),
        norm: tuple | str = "batch",
        prior_probability: float | None = None,
        head_channels: int | None = None,
        mask_input: bool = False,
        reviewed_input: bool = False,
        slice_axis: int | None = None,
    ) -> None:
        super().__init__()
        spatial_dims = check_spatial_dims(spatial_dims)
        self.slice_axis = check_slice_axis(slice_axis, spatial_dims)
        if variant not in FANET_VARIANTS:
            raise ValueError(f"variant must be one of {sorted(FANET_VARIANTS)}, got {variant!r}.")
        if blocks_per_stage < 1:
            raise ValueError(f"blocks_per_stage must be >= 1, got {blocks_per_stage}.")
        if prior_probability is not None and (isinstance(prior_probability, bool) or not isinstance(
                prior_probability, numbers.Real) or not 0 < prior_probability < 1):
            raise ValueError(f"prior_probability must be a number strictly between 0 and 1 (the expected share of "
                             f"foreground voxels), got {prior_probability!r}.")
        depth = len(channels)
        if depth < 1 or channels[0] < 2:
            raise ValueError(f"channels must hold at least one width >= 2, got {tuple(channels)}.")
        stage_names = mixpool_stage_names(depth)
        if mixpool_stages is None:
            preset = FANET_VARIANTS[variant]["stages"]
            mixpool_stages = stage_names if preset == "all" else [s.format(depth=depth) for s in preset]
        unknown = sorted(set(mixpool_stages) - set(stage_names))
        if unknown:
            raise ValueError(f"unknown MixPool stages {unknown}; valid names: {list(stage_names)}.")
        if not final_mixpool:
            mixpool_stages = [s for s in mixpool_stages if s != f"decoder{depth}"]
        if head_channels is not None and (isinstance(head_channels, bool) or not isinstance(head_channels,
                                                                                      numbers.Integral)
                                          or head_channels < 1):
            raise ValueError(f"head_channels must be a whole number >= 1, got {head_channels!r}.")
        for name, switch in (("mask_input", mask_input), ("reviewed_input", reviewed_input)):
            if switch not in (True, False):  # a string such as "false" from a hand-edited config is not a switch
                raise ValueError(f"{name} must be true or false, got {switch!r}.")
        decoder_widths = list(channels[-2::-1]) + [int(head_channels or channels[0] // 2)]
        if mixpool_feature_branch:
            widths = dict(zip(stage_names, list(channels) + decoder_widths))
            odd = [f"{name} ({widths[name]})" for name in stage_names if name in mixpool_stages and widths[name] % 2]
            if odd:
                raise ValueError(
                    f"channels={list(channels)} gives MixPool stages {odd} an odd width, but MixPool with its feature "
                    f"branch needs an even one (decoder widths = channels[-2::-1] + [head_channels or channels[0] // 2]"
                    f" = {decoder_widths}): make channels[0] a multiple of 4 and the other widths even, e.g. "
                    "(4, 8, 8, 8), and head_channels even."
                )

        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.mask_input = bool(mask_input)
        self.reviewed_input = bool(reviewed_input)
        #: channels before the feedback mask: the image, then the reviewed channel (``reviewed_input``)
        self.guided_channels = in_channels + int(self.reviewed_input)
        self.variant = variant
        self.depth = depth
        self.divisor = 2**depth
        self.mixpool_stages: List[str] = [s for s in stage_names if s in set(mixpool_stages)]
        # number of feedback passes the paper uses at inference for this variant
        self.refinement_passes: int = int(FANET_VARIANTS[variant]["passes"])

        def se_blocks(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                *[
                    SEResidualBlock(spatial_dims, cin if i == 0 else cout, cout, se_hidden_channels, act, norm)
                    for i in range(blocks_per_stage)
                ]
            )

        def mixpool(name: str, width: int) -> MixPool | None:
            if name not in self.mixpool_stages:
                return None
            return MixPool(spatial_dims, width, mixpool_feature_branch, straight_through, act, norm)

        max_pool = Pool[Pool.MAX, spatial_dims]
        self.mask_pool = max_pool(kernel_size=2, stride=2)
        encoder = []
        cin = self.guided_channels + int(self.mask_input)
        for i, width in enumerate(channels):
            encoder.append(
                _EncoderStage(se_blocks(cin, width), mixpool(f"encoder{i + 1}", width), max_pool(kernel_size=2))
            )
            cin = width
        self.encoder = nn.ModuleList(encoder)

        decoder = []
        for i, (skip_width, width) in enumerate(zip(channels[::-1], decoder_widths)):
            upsample = Convolution(
                spatial_dims,
                cin,
                cin,
                strides=2,
                kernel_size=4,
                padding=1,
                output_padding=0,
                is_transposed=True,
                conv_only=True,
            )
            decoder.append(
                _DecoderStage(upsample, se_blocks(cin + skip_width, width), mixpool(f"decoder{i + 1}", width))
            )
            cin = width
        self.decoder = nn.ModuleList(decoder)
        self.head = Convolution(spatial_dims, cin + 1, out_channels, kernel_size=1, conv_only=True)
        if prior_probability is not None:
            self._start_at_prior(float(prior_probability))

    def _start_at_prior(self, prior: float) -> None:
        """Head biases for the foreground prior ``prior`` (see ``prior_probability``)."""
        classes = self.out_channels - 1
        if classes == 0:
            bias = [-math.log((1 - prior) / prior)]
        else:
            bias = [math.log(1 - prior)] + [math.log(prior / classes)] * classes
        with torch.no_grad():
            self.head.conv.bias.copy_(torch.tensor(bias, dtype=self.head.conv.bias.dtype))

    def _pad(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[int]]:
        """Pad spatial dims to a multiple of ``self.divisor``; returns the padded tensor and the leading pads."""
        pads: List[int] = []
        before: List[int] = []
        for size in x.shape[2:]:
            total = (self.divisor - size % self.divisor) % self.divisor
            before.append(total // 2)
            pads = [total // 2, total - total // 2] + pads  # F.pad lists the last dimension first
        if sum(pads) == 0:
            return x, before
        return F.pad(x, pads, mode="replicate"), before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: ``(B, in_channels + 1, *spatial)``: image channels, then the feedback mask (binary, or a probability
                map); with ``reviewed_input`` ``(B, in_channels + 2, *spatial)``: image channels, the reviewed
                channel, the feedback mask; volumes ``(B, ..., X, Y, Z)`` with ``slice_axis``.

        Returns:
            ``(B, out_channels, *spatial)`` logits.
        """
        if self.slice_axis is not None:
            return slice_wise(self._forward, x, self.slice_axis)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.guided_channels + 1:
            reviewed = " + 1 reviewed channel" if self.reviewed_input else ""
            raise ValueError(
                f"FANet expects {self.in_channels} image channels{reviewed} + 1 feedback-mask channel = "
                f"{self.guided_channels + 1} input channels, got {x.shape[1]} (input shape {list(x.shape)})."
            )
        spatial = x.shape[2:]
        x, offsets = self._pad(x)
        image, mask = x[:, :-1], x[:, -1:]
        masks: List[torch.Tensor] = [mask]
        for _ in range(self.depth - 1):
            masks.append(self.mask_pool(masks[-1]))

        h = x if self.mask_input else image
        skips: List[torch.Tensor] = []
        for i, stage in enumerate(self.encoder):
            h, skip = stage(h, masks[i])
            skips.append(skip)
        for i, stage in enumerate(self.decoder):
            level = self.depth - 1 - i
            h = stage(h, skips[level], masks[level])
        out = self.head(torch.cat([h, mask.to(h.dtype)], dim=1))
        for dim in range(len(offsets)):
            out = out.narrow(dim + 2, offsets[dim], spatial[dim])
        return out
