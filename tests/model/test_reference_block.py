"""``block: reference``: the public NAS-Lung code's ``ConvRes`` network next to the paper's (issue 14, part 8).

Structure (separate stride-2 conv per stage, stride-1 blocks with an always-present 1x1x1 conv-BN-ReLU
shortcut and no ReLU after the sum, biased convolutions, softmax-channel CBAM applied as ``s·x + x``), its
size figures, and its identity as a spec (distinct id and string, paper ids unchanged).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from naslung.models.blocks import ConvBNReLU, ReferenceResidualBlock, ResidualBlock
from naslung.models.cbam import CBAM, ReferenceCBAM
from naslung.models.complexity import count_flops, count_flops_hooks, count_params
from naslung.models.factory import build, parse_member_spec, spec_from_dict, spec_from_json
from naslung.models.net import build_model
from naslung.models.spec import ArchSpec, SpecError
from naslung.params import Params
from naslung.train.run import default_spec, resolve_spec

MODEL1 = "[4, 4, [4, 4], [4, 8], [8, 8]]"
# spec ids of paper Model-1 computed before the ``block`` field existed: they must not change
PAPER_IDS = {
    ("asoftmax", True): "m1-0bec0cd623",
    ("asoftmax", False): "m1-2cc397a728",
    ("linear", True): "m1-3bcdb30bbd",
    ("linear", False): "m1-0767527346",
}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _ref(cbam: bool = True, head: str = "asoftmax", text: str = MODEL1) -> ArchSpec:
    return ArchSpec.parse(text, cbam=cbam, head=head, block="reference")


# --------------------------------------------------------------------------- structure


def test_reference_net_downsamples_with_a_separate_conv_and_keeps_shapes() -> None:
    torch.manual_seed(0)
    model = build_model(_ref()).eval()
    for stage, widths in zip((model.stage3, model.stage4, model.stage5), ((4, 4), (4, 8), (8, 8))):
        down, *blocks = list(stage)
        assert isinstance(down, ConvBNReLU)
        conv = down[0]
        assert conv.stride == (2, 2, 2) and conv.kernel_size == (3, 3, 3) and conv.bias is None
        assert conv.in_channels == conv.out_channels  # channels kept; the first block changes them
        assert [b.conv1[0].out_channels for b in blocks] == list(widths)
        assert all(isinstance(b, ReferenceResidualBlock) for b in blocks)
        assert all(m.stride == (1, 1, 1) for b in blocks for m in b.modules() if isinstance(m, nn.Conv3d))
    sizes: list[tuple[int, ...]] = []
    for st in (model.stage2, model.stage3, model.stage4, model.stage5):
        st.register_forward_hook(lambda mod, inp, out: sizes.append(tuple(out.shape)))
    x = torch.rand(2, 1, 32, 32, 32)
    with torch.no_grad():
        logits = model(x)
        cos_x, phi_x = model.forward_train(x)
        maps = model.forward_maps(x)
    assert sizes[:4] == [(2, 4, 32, 32, 32), (2, 4, 16, 16, 16), (2, 8, 8, 8, 8), (2, 8, 4, 4, 4)]
    assert logits.shape == cos_x.shape == phi_x.shape == (2, 2)
    assert maps["feature_maps"].shape == (2, 8, 4, 4, 4)
    assert maps["spatial_attention"].shape == (2, 1, 32, 32, 32)
    assert torch.allclose(maps["channel_attention"].sum(dim=1), torch.ones(2, 1, 1, 1))
    # stage 1/2 convs of the reference code carry a bias; the paper's do not
    assert model.stage1[0].bias is not None and model.stage2[0].bias is not None
    assert build_model(ArchSpec.parse(MODEL1)).stage1[0].bias is None


def test_reference_block_always_projects_its_shortcut() -> None:
    for c_in, c_out in ((4, 4), (4, 8)):
        block = ReferenceResidualBlock(c_in, c_out)
        assert not block.is_identity
        conv, bn, relu = block.shortcut
        assert isinstance(conv, nn.Conv3d) and conv.kernel_size == (1, 1, 1) and conv.bias is not None
        assert isinstance(bn, nn.BatchNorm3d) and isinstance(relu, nn.ReLU)
        assert all(m.bias is not None for m in block.modules() if isinstance(m, nn.Conv3d))
    # the shortcut is a real path: silencing it changes a 4 -> 4 block's output (a paper identity would not)
    torch.manual_seed(0)
    block = ReferenceResidualBlock(4, 4).eval()
    x = torch.rand(2, 4, 8, 8, 8)
    with torch.no_grad():
        before = block(x)
        block.shortcut[1].weight.zero_()
        block.shortcut[1].bias.zero_()
        assert not torch.allclose(block(x), before)
        assert torch.allclose(block(x), block.conv2(block.conv1(x)))


def test_reference_block_output_is_the_plain_sum_of_its_branches() -> None:
    torch.manual_seed(1)
    block = ReferenceResidualBlock(4, 8).eval()
    x = torch.randn(2, 4, 6, 6, 6)
    relus: list[nn.Module] = []
    for m in block.modules():
        if isinstance(m, nn.ReLU):
            m.register_forward_hook(lambda mod, inp, out: relus.append(mod))
    with torch.no_grad():
        y = block(x)
        n_relu = len(relus)
        body, short = block.conv2(block.conv1(x)), block.shortcut(x)
    assert n_relu == 3  # body conv1, body conv2, shortcut: none after the sum
    assert torch.equal(y, body + short)
    assert y.shape == (2, 8, 6, 6, 6)
    # the paper block, by contrast, applies ReLU to the sum of a BN output (no ReLU) and its shortcut
    paper = ResidualBlock(4, 4).eval()
    with torch.no_grad():
        pre = paper.bn2(paper.conv2(paper.relu(paper.bn1(paper.conv1(x))))) + x
        assert (pre < 0).any() and torch.equal(paper(x), torch.relu(pre))


def test_reference_cbam_softmax_channel_weights_and_residual_output() -> None:
    torch.manual_seed(0)
    cbam = ReferenceCBAM(8).eval()
    assert isinstance(cbam, CBAM)  # forward_maps and the explainability code see it as CBAM
    assert not any(isinstance(m, nn.ReLU) for m in cbam.channel.mlp)
    assert [m.out_features for m in cbam.channel.mlp] == [2, 8]
    x = torch.rand(3, 8, 5, 5, 5)
    seen: dict[str, torch.Tensor] = {}
    cbam.spatial.register_forward_hook(lambda mod, inp, out: seen.update(sin=inp[0], sw=out))
    with torch.no_grad():
        cw = cbam.channel(x)
        y = cbam(x)
    assert cw.shape == (3, 8, 1, 1, 1)
    assert torch.allclose(cw.sum(dim=1), torch.ones(3, 1, 1, 1), atol=1e-6) and ((cw > 0) & (cw < 1)).all()
    assert torch.allclose(seen["sin"], x * cw)  # spatial attention on the channel-weighted maps ...
    assert torch.allclose(y, seen["sw"] * x + x)  # ... applied to the input, plus the input
    assert ((seen["sw"] > 0) & (seen["sw"] < 1)).all()
    assert all(isinstance(getattr(build_model(_ref()), f"cbam{k}"), ReferenceCBAM) for k in (2, 3, 4, 5))
    assert not any(isinstance(m, ReferenceCBAM) for m in build_model(ArchSpec.parse(MODEL1, cbam=True)).modules())


# --------------------------------------------------------------------------- size


def test_reference_flops_count_the_new_layers() -> None:
    for text in (MODEL1, "[4,4,[8, 16, 16], [16, 32, 64], [128, 128]]", "[8,16,[16], [32], [64, 64]]"):
        for cbam in (False, True):
            spec = _ref(cbam=cbam, text=text)
            assert count_flops(spec) == count_flops_hooks(build_model(spec)), (text, cbam)
    assert count_flops(_ref(), input_size=16) == count_flops_hooks(build_model(_ref()), input_size=16)
    # Model-1, 32^3: the difference to the paper net is the 3 downsampling convs plus the shortcuts that the
    # paper's identity blocks (4->4 in stage 3, 8->8 in stage 5) do not have, at 16^3 and 4^3 voxels
    paper = ArchSpec.parse(MODEL1, cbam=True, head="asoftmax")
    down = 16**3 * 27 * 4 * 4 + 8**3 * 27 * 4 * 4 + 4**3 * 27 * 8 * 8
    shortcuts = 16**3 * 4 * 4 + 4**3 * 8 * 8
    assert count_flops(_ref()) - count_flops(paper) == down + shortcuts


def test_reference_params_are_counted() -> None:
    c, w = 4, 8
    block = ReferenceResidualBlock(c, w)
    # conv3 (weights + bias) + BN (2 per channel) twice, plus the 1x1x1 shortcut conv (+ bias) and its BN
    expected = (27 * c * w + w + 2 * w) + (27 * w * w + w + 2 * w) + (c * w + w + 2 * w)
    assert count_params(block) == expected
    cbam = ReferenceCBAM(8)
    assert count_params(cbam) == 8 * 2 + 2 * 8 + 2 * 27  # MLP (no bias) + spatial conv (2 -> 1, 3^3)
    assert count_params(build_model(_ref())) > count_params(build_model(ArchSpec.parse(MODEL1, True, "asoftmax")))


# --------------------------------------------------------------------------- identity


def test_paper_spec_ids_and_strings_are_unchanged() -> None:
    for (head, cbam), spec_id in PAPER_IDS.items():
        spec = ArchSpec.parse(MODEL1, cbam=cbam, head=head)
        assert spec.block == "paper" and spec.spec_id == spec_id
        assert "block" not in spec.to_dict()
        assert not spec.ref_string().startswith("ref")
    assert ArchSpec.parse("spcbam" + MODEL1).ref_string() == "spcbam[4,4,[4, 4], [4, 8], [8, 8]]"


def test_reference_spec_round_trips_with_a_distinct_id_and_string() -> None:
    ids = set()
    for (head, cbam), paper_id in PAPER_IDS.items():
        spec = _ref(cbam=cbam, head=head)
        text = spec.ref_string()
        assert text.startswith("ref-") and text[4:] == dataclasses.replace(spec, block="paper").ref_string()
        assert spec.spec_id != paper_id and spec.to_dict()["block"] == "reference"
        assert ArchSpec.parse(text, cbam=cbam, head=head) == spec  # same rule as the paper's bare form
        assert ArchSpec.from_dict(spec.to_dict()) == spec and ArchSpec.from_yaml(spec.to_yaml()) == spec
        assert spec_from_json(spec.to_json()) == spec and spec_from_dict(spec.to_dict()) == spec
        assert parse_member_spec(spec.to_dict()) == spec and parse_member_spec({"ref": text}, cbam, head) == spec
        ids.add(spec.spec_id)
    assert len(ids) == 4
    full = _ref()
    assert full.ref_string() == "ref-spcbam[4,4,[4, 4], [4, 8], [8, 8]]"
    assert ArchSpec.parse("ref-spcbam" + MODEL1) == full == ArchSpec.parse("REF:spcbam" + MODEL1)
    assert ArchSpec.parse("spcbam" + MODEL1, block="reference") == full  # no marker: the keyword decides
    assert parse_member_spec(MODEL1, True, "asoftmax", block="reference") == full
    assert parse_member_spec([4, 4, [4, 4], [4, 8], [8, 8]], True, "asoftmax", block="reference") == full
    assert parse_member_spec(MODEL1, True, "asoftmax").block == "paper"
    with pytest.raises(SpecError, match="block"):
        ArchSpec.parse(MODEL1, block="resnet")
    with pytest.raises(SpecError, match="unknown spec key"):
        ArchSpec.from_dict({**full.to_dict(), "blocks": "reference"})
    # weights saved from one build load into a build from the serialised spec
    torch.manual_seed(0)
    model = build(full)
    again = build(spec_from_json(full.to_json()))
    again.load_state_dict(model.state_dict())


def test_params_model_block_reaches_the_default_spec() -> None:
    params = Params()
    assert default_spec(params).block == "paper" and default_spec(params).spec_id == PAPER_IDS[("asoftmax", True)]
    ref_params = params.with_overrides({"model.block": "reference"})
    spec = default_spec(ref_params)
    assert spec.block == "reference" and spec.spec_id == _ref().spec_id
    assert default_spec(ref_params, head="linear").block == "reference"
    assert default_spec(params, block="reference") == spec
    marked = params.with_overrides({"model.spec": "ref-spcbam" + MODEL1})
    assert default_spec(marked).block == "reference"  # the marker wins over model.block = paper
    assert resolve_spec(MODEL1, block="reference").block == "reference"
    assert resolve_spec(full := _ref(), block="paper") == dataclasses.replace(full, block="paper")


def test_reference_net_trains() -> None:
    torch.manual_seed(0)
    model = build_model(_ref(head="linear"))
    x = torch.rand(8, 1, 16, 16, 16) * 0.3
    y = torch.arange(8) % 2
    x[y == 1, :, 4:12, 4:12, 4:12] += 0.6
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(12):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model.forward_train(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]
