"""FANet network: fidelity to the reference (parameters, GMac), shapes, gradients, masks, TorchScript."""

from __future__ import annotations

import io
import warnings

import pytest
import torch
import torch.nn.functional as F

from fanet_monai.networks import FANet, MixPool, SEResidualBlock, max_pool_to, mixpool_stage_names

SMALL = (8, 16, 16, 16)  # narrow widths for fast tests


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def net_input(batch: int, height: int, width: int, mask: str = "random", seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, 3, height, width, generator=g)
    if mask == "random":
        m = (torch.rand(batch, 1, height, width, generator=g) > 0.7).float()
    elif mask == "zero":
        m = torch.zeros(batch, 1, height, width)
    else:
        m = torch.ones(batch, 1, height, width)
    return torch.cat([image, m], dim=1)


@pytest.mark.parametrize(
    "variant, expected", [("B1", 5_756_818), ("B2", 7_720_266), ("B3", 5_780_196), ("B4", 7_720_266)]
)
def test_parameter_counts_match_reference(variant, expected):
    assert n_params(FANet(variant=variant)) == expected


def test_per_stage_parameters_match_reference():
    net = FANet()
    encoder = [n_params(s) for s in net.encoder]
    decoder = [n_params(s) for s in net.decoder]
    assert encoder == [48_993, 210_753, 839_297, 3_349_761]
    assert decoder == [2_461_569, 616_385, 154_593, 38_897]
    assert n_params(net.head) == 18
    learned_map = sum(n_params(m.attention_map) for m in net.modules() if isinstance(m, MixPool))
    assert learned_map == 982_088


@pytest.mark.slow
def test_gmac_match_reference_counter():
    ptflops = pytest.importorskip("ptflops")
    expected = {"B1": 57.65, "B3": 63.83, "B4": 82.07}
    for variant, gmac in expected.items():
        macs, _ = ptflops.get_model_complexity_info(
            FANet(variant=variant).eval(),
            (4, 512, 512),
            as_strings=False,
            print_per_layer_stat=False,
            backend="pytorch",
        )
        assert macs / 1e9 == pytest.approx(gmac, rel=0.01), variant


def test_variants_place_mixpool_in_the_right_stages():
    def stages(net):
        return [n for n, s in zip(mixpool_stage_names(), [*net.encoder, *net.decoder]) if s.mixpool is not None]

    assert stages(FANet(channels=SMALL, variant="B1")) == []
    assert stages(FANet(channels=SMALL, variant="B3")) == ["encoder1", "decoder4"]
    assert stages(FANet(channels=SMALL, variant="B4")) == list(mixpool_stage_names())
    assert FANet(channels=SMALL, variant="B2").refinement_passes == 1
    assert FANet(channels=SMALL, variant="B4").refinement_passes == 10
    custom = FANet(channels=SMALL, mixpool_stages=["encoder2", "decoder1"])
    assert stages(custom) == ["encoder2", "decoder1"]
    assert stages(FANet(channels=SMALL, final_mixpool=False)) == list(mixpool_stage_names())[:-1]
    assert stages(FANet(channels=SMALL, variant="B3", final_mixpool=False)) == ["encoder1"]
    three = FANet(3, 1, 3, channels=(4, 8, 8), final_mixpool=False)  # the last stage of any depth
    assert [s.mixpool is None for s in three.decoder] == [False, False, True]
    assert three(torch.rand(1, 2, 16, 16, 16)).shape == (1, 3, 16, 16, 16)


def test_bad_configuration_is_rejected_clearly():
    with pytest.raises(ValueError, match="variant"):
        FANet(variant="B5")
    with pytest.raises(ValueError, match="unknown MixPool stages"):
        FANet(channels=SMALL, mixpool_stages=["encoder9"])
    with pytest.raises(ValueError, match="blocks_per_stage"):
        FANet(channels=SMALL, blocks_per_stage=0)
    net = FANet(channels=SMALL)
    with pytest.raises(ValueError, match="3 image channels \\+ 1 feedback-mask channel = 4"):
        net(torch.zeros(1, 3, 32, 32))


@pytest.mark.parametrize("shape", [(2, 37, 50), (1, 64, 64), (1, 1, 17), (3, 33, 16)])
def test_any_spatial_size_gives_same_size_logits(shape):
    b, h, w = shape
    net = FANet(channels=SMALL).eval()
    out = net(net_input(b, h, w))
    assert out.shape == (b, 1, h, w)
    assert torch.isfinite(out).all()


def test_three_dimensional_network():
    net = FANet(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8, 8, 8)).eval()
    x = torch.cat([torch.randn(1, 1, 17, 20, 18), (torch.rand(1, 1, 17, 20, 18) > 0.5).float()], dim=1)
    assert net(x).shape == (1, 2, 17, 20, 18)


def test_padding_is_cropped_back_consistently():
    """An input already divisible by 16 is not padded, and a crop of the padded output equals the padded run."""
    net = FANet(channels=SMALL).eval()
    x = net_input(1, 30, 30)
    padded = F.pad(x, [1, 1, 1, 1], mode="replicate")  # what the network does internally for 30 -> 32
    with torch.no_grad():
        assert torch.allclose(net(x), net(padded)[..., 1:-1, 1:-1], atol=1e-5)


@pytest.mark.parametrize("blocks", [1, 3, 4])
def test_blocks_per_stage_adds_exactly_one_se_block_per_stage(blocks):
    base = n_params(FANet(channels=SMALL, blocks_per_stage=2))
    per_block = sum(n_params(SEResidualBlock(2, c, c)) for c in (*SMALL, *SMALL[-2::-1], SMALL[0] // 2))
    assert n_params(FANet(channels=SMALL, blocks_per_stage=blocks)) == base + (blocks - 2) * per_block


def test_se_hidden_channels_option():
    widths = (*SMALL, *SMALL[-2::-1], SMALL[0] // 2)
    n_se = 2 * len(widths)  # two SE-residual blocks per stage, one SE each
    extra = sum(2 * 2 * c * (4 - 1) for c in widths)  # 2 blocks x 2 linears x C x (4 - 1 hidden units)
    assert n_se == 16
    assert n_params(FANet(channels=SMALL, se_hidden_channels=4)) == n_params(FANet(channels=SMALL)) + extra


@pytest.mark.parametrize("out_channels", [1, 3])
def test_prior_probability_starts_the_head_at_the_foreground_prior(out_channels):
    torch.manual_seed(0)
    plain = FANet(3, 1, out_channels, channels=(4, 8, 8, 8))
    torch.manual_seed(0)
    net = FANet(3, 1, out_channels, channels=(4, 8, 8, 8), prior_probability=0.05)
    bias = net.head.conv.bias.detach()
    if out_channels == 1:
        assert torch.sigmoid(bias).item() == pytest.approx(0.05)
    else:  # background 1 - p, each of the K = 2 classes p / K
        assert torch.softmax(bias, 0).tolist() == pytest.approx([0.95, 0.025, 0.025])
    # only the head's biases differ from the default initialisation; checkpoints stay interchangeable
    changed = [k for k, v in net.state_dict().items() if not torch.equal(v, plain.state_dict()[k])]
    assert changed == ["head.conv.bias"]
    plain.load_state_dict(net.state_dict())
    # with zero features the network answers the prior everywhere
    x = torch.rand(2, 2, 16, 16, 16)
    net.head.conv.weight.data.zero_()
    probability = torch.sigmoid(net(x)) if out_channels == 1 else torch.softmax(net(x), 1)[:, 1:].sum(1)
    assert torch.allclose(probability, torch.full_like(probability, 0.05), atol=1e-6)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_mask_input_lets_the_mask_reach_beyond_the_pixel(spatial_dims):
    """Without MixPool (B1) the paper's network reads the mask only through the head's 1x1 convolution: changing the
    mask in one corner cannot move the logits anywhere else. With ``mask_input`` the encoder reads it too."""
    size = (16,) * spatial_dims
    torch.manual_seed(0)
    image = torch.rand(1, 1, *size)
    mask = torch.zeros(1, 1, *size)
    changed = mask.clone()
    changed[(0, 0) + (slice(0, 4),) * spatial_dims] = 1
    corner = (slice(None), slice(None)) + (slice(0, 4),) * spatial_dims
    for mask_input in (False, True):
        net = FANet(spatial_dims, 1, 1, variant="B1", channels=(4, 8, 8, 8), mask_input=mask_input).eval()
        first_conv = next(p for n, p in net.named_parameters() if n.startswith("encoder.0") and p.ndim > 2)
        assert first_conv.shape[1] == 1 + int(mask_input)
        with torch.no_grad():
            a, b = net(torch.cat([image, mask], 1)), net(torch.cat([image, changed], 1))
        elsewhere = torch.ones_like(a, dtype=torch.bool)
        elsewhere[corner] = False
        moved = (a - b).abs()[elsewhere].max().item()
        assert (moved > 1e-4) == mask_input, (mask_input, moved)
        assert a.shape == (1, 1, *size)
    with pytest.raises(ValueError, match="mask_input must be true or false, got 'false'"):
        FANet(spatial_dims, 1, 1, channels=(4, 8, 8, 8), mask_input="false")


def test_head_channels_sets_the_width_the_head_reads():
    default = FANet(3, 1, 3, channels=(8, 16, 32, 64))
    wider = FANet(3, 1, 3, channels=(8, 16, 32, 64), head_channels=8)
    assert default.head.conv.in_channels == 4 + 1 and wider.head.conv.in_channels == 8 + 1  # features + mask
    assert wider(torch.rand(1, 2, 16, 16, 16)).shape == (1, 3, 16, 16, 16)
    import numpy as np  # a parsed config gives numpy integers
    assert FANet(3, 1, 3, channels=(8, 16, 32, 64), head_channels=np.int64(8)).head.conv.in_channels == 9
    with pytest.raises(ValueError, match=r"decoder4 \(5\).*odd width.*head_channels even"):
        FANet(3, 1, 3, channels=(8, 16, 32, 64), head_channels=5)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="head_channels must be a whole number >= 1"):
            FANet(3, 1, 3, channels=(8, 16, 32, 64), head_channels=bad)


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, True, "0.05"])
def test_prior_probability_must_lie_strictly_between_0_and_1(bad):
    with pytest.raises(ValueError, match="prior_probability must be a number strictly between 0 and 1"):
        FANet(3, 1, 3, channels=(4, 8, 8, 8), prior_probability=bad)


def test_mixpool_without_feature_branch_keeps_widths():
    full = MixPool(2, 16)
    ablated = MixPool(2, 16, feature_branch=False)
    f, m = torch.randn(2, 16, 8, 8), torch.ones(2, 1, 8, 8)
    assert ablated(f, m).shape == full(f, m).shape == (2, 16, 8, 8)
    assert ablated.feature_branch is None
    net = FANet(channels=SMALL, mixpool_feature_branch=False).eval()
    assert net(net_input(1, 32, 32)).shape == (1, 1, 32, 32)


def test_mixpool_attention_is_union_of_external_and_learned_masks():
    torch.manual_seed(0)
    block = MixPool(2, 4).eval()
    features = torch.randn(1, 4, 4, 4)
    external = torch.zeros(1, 1, 8, 8)
    external[..., :4, :4] = 1  # after 2x2 max pooling: the top-left 2x2 quarter
    with torch.no_grad():
        block.attention_map[1].conv.bias.fill_(-1e4)  # learned map all zero
        out_external_only = block(features, external)
        expected_mask = torch.zeros(1, 1, 4, 4)
        expected_mask[..., :2, :2] = 1
        assert torch.equal(block.masked_branch(features * expected_mask), out_external_only[:, :2])
        assert torch.equal(block.feature_branch(features), out_external_only[:, 2:])
        block.attention_map[1].conv.bias.fill_(1e4)  # learned map all one: union is all one
        assert torch.equal(block(features, external)[:, :2], block.masked_branch(features))


def test_max_pool_to_equals_strided_max_pool():
    mask = (torch.rand(2, 1, 48, 32) > 0.9).float()
    assert torch.equal(max_pool_to(mask, [12, 8]), F.max_pool2d(mask, 4))
    with pytest.raises(ValueError, match="integer multiple"):
        max_pool_to(mask, [10, 8])


def test_learned_map_gets_no_gradient_unless_straight_through():
    x = net_input(2, 32, 32, mask="zero")  # an empty external mask: the attention is the learned map alone
    for straight_through in (False, True):
        torch.manual_seed(0)
        net = FANet(channels=SMALL, straight_through=straight_through).train()
        net(x).square().mean().backward()
        learned = {n: p.grad for n, p in net.named_parameters() if ".attention_map." in n}
        others = {n: p.grad for n, p in net.named_parameters() if ".attention_map." not in n}
        assert len(learned) == 6 * 8  # 8 MixPool blocks x (conv w, b, BN w, b, conv1x1 w, b)
        assert all(g is not None for g in others.values())
        if straight_through:
            assert all(g is not None and g.abs().sum() > 0 for g in learned.values())
        else:
            assert all(g is None for g in learned.values())


def test_mask_changes_output_b4_and_b1_only_through_head():
    zero, full = net_input(1, 32, 32, mask="zero"), net_input(1, 32, 32, mask="one")
    b4 = FANet(channels=SMALL, variant="B4").eval()
    with torch.no_grad():
        assert (b4(zero) - b4(full)).abs().max() > 1e-3
    b1 = FANet(channels=SMALL, variant="B1").eval()
    with torch.no_grad():
        diff = b1(full) - b1(zero)
    # without MixPool the mask enters only through the 1x1 head: a constant shift by the mask channel's weight
    assert torch.allclose(diff, b1.head.conv.weight[0, -1].expand_as(diff), atol=1e-5)


def _roundtrip(module: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["B1", "B3", "B4"])
def test_torchscript_script_and_trace_round_trip(variant):
    net = FANet(channels=SMALL, variant=variant).eval()
    x, odd = net_input(2, 32, 48), net_input(1, 33, 21)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = _roundtrip(torch.jit.script(net))
        traced = _roundtrip(torch.jit.trace(net, x))
    with torch.no_grad():
        assert torch.equal(scripted(x), net(x))
        assert torch.equal(scripted(odd), net(odd))
        assert torch.equal(traced(x), net(x))


def test_mixed_precision_cpu():
    net = FANet(channels=SMALL).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(net_input(1, 32, 32))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_float32_and_amp_match():
    net = FANet(channels=SMALL).eval().cuda()
    x = net_input(2, 32, 32).cuda()
    with torch.no_grad():
        ref = net(x)
        with torch.autocast("cuda", dtype=torch.float16):
            amp = net(x)
    assert ref.device.type == "cuda" and amp.dtype == torch.float16
    assert torch.allclose(ref, amp.float(), atol=5e-2)


@pytest.mark.parametrize("wrap", [None, "network", "model"])
def test_load_for_inference_folds_bn_and_matches_eager(tmp_path, wrap):
    from fanet_monai.networks import fuse_conv_bn, load_for_inference

    torch.manual_seed(0)
    trained = FANet(channels=SMALL).train()
    with torch.no_grad():  # give batch norm non-trivial running statistics
        for _ in range(3):
            trained(net_input(2, 32, 32))
    trained.eval()
    state = trained.state_dict()
    path = tmp_path / "model.pt"
    torch.save(state if wrap is None else {wrap: state, "optimizer": {}}, path)
    fast = load_for_inference(FANet(channels=SMALL), path)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    x = net_input(2, 40, 36)
    with torch.no_grad():
        assert torch.allclose(fast(x), trained(x), atol=1e-4)
    with pytest.raises(ValueError, match="eval"):
        fuse_conv_bn(FANet(channels=SMALL).train())
