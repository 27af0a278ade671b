"""NASLung model family: spec parsing/identity, network shapes, CBAM order, shortcuts, A-Softmax margin,
complexity figures."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from naslung.models import ArchSpec, NASLungNet, build_loss, build_model
from naslung.models.asoftmax import AngleLinear, ASoftmaxLoss, SoftmaxLoss, phi_theta
from naslung.models.blocks import ResidualBlock
from naslung.models.cbam import CBAM
from naslung.models.complexity import count_flops, count_flops_hooks, count_params
from naslung.models.spec import SpecError
from naslung.params import ModelParams

MODEL1 = "[4, 4, [4, 4], [4, 8], [8, 8]]"
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


# --------------------------------------------------------------------------- spec


@pytest.fixture(scope="module")
def reference_strings(shared_data: Path) -> list[str]:
    path = shared_data / "NAS-Lung" / "model.npy"
    if not path.exists():
        pytest.skip(f"reference model list not found: {path}")
    return [str(s) for s in np.load(path, allow_pickle=True).ravel()]


@pytest.mark.shared
def test_all_reference_specs_parse_build_and_forward(reference_strings: list[str]) -> None:
    assert len(reference_strings) == 40
    x = torch.rand(2, 1, 32, 32, 32)
    ids = set()
    for s in reference_strings:
        spec = ArchSpec.parse(s)
        assert spec.ref_string() == s  # exact round trip of the reference formatting
        prefix = s[: s.index("[")]
        assert spec.cbam == ("cbam" in prefix), s
        assert spec.head == ("asoftmax" if prefix.startswith("sp") else "linear"), s
        ids.add(spec.spec_id)
        torch.manual_seed(0)
        model = build_model(spec)
        with torch.no_grad():
            model.eval()
            out = model(x)
            assert out.shape == (2, 2) and torch.isfinite(out).all(), s
            model.train()
            tr = model.forward_train(x)
        parts = tr if isinstance(tr, tuple) else (tr,)
        assert len(parts) == (2 if spec.head == "asoftmax" else 1)
        assert all(p.shape == (2, 2) and torch.isfinite(p).all() for p in parts), s
    assert len(ids) == 40  # 10 architectures x 4 variants, all distinct


def test_bare_form_takes_flags_from_arguments_and_prefix_wins() -> None:
    plain = ArchSpec.parse(MODEL1)
    assert (plain.cbam, plain.head) == (False, "linear")
    full = ArchSpec.parse(MODEL1, cbam=True, head="asoftmax")
    assert full == ArchSpec.parse("spcbam" + MODEL1)
    assert full.stem == (4, 4) and full.stages == ((4, 4), (4, 8), (8, 8)) and full.depths == (2, 2, 2)
    # an explicit prefix fixes both flags
    assert ArchSpec.parse("cbam" + MODEL1, cbam=False, head="asoftmax") == ArchSpec.parse(MODEL1, cbam=True)
    assert ArchSpec.parse("none" + MODEL1, cbam=True) == plain
    # lists are normalised to tuples, so dataclasses.replace and direct construction agree with parse
    direct = ArchSpec(stem=[4, 4], stages=[[4, 4], [4, 8], [8, 8]], cbam=True, head="asoftmax")
    assert direct == full and dataclasses.replace(plain, cbam=True, head="asoftmax") == full


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[4, 4, [], [4, 8], [8, 8]]", "stage 3: empty stage"),
        ("[4, 4, [4, 4], [4, 0], [8, 8]]", r"stage 4 block 2: width must be > 0"),
        ("[4, -1, [4, 4], [4, 8], [8, 8]]", r"stem \(stage 2\): width must be > 0"),
        ("[4, 4, [4, 4], [4, 8.5], [8, 8]]", "width must be an integer"),
        ("[4, 4, [4, 4], [4, 8]]", "expected 5 items"),
        ("[4, 4, [4, 4], [4, 8], 8]", "stage 5: expected a list"),
        ("xx[4, 4, [4, 4], [4, 8], [8, 8]]", "unknown prefix 'xx'"),
        ("[4, 4, [4, 4], [4, 8], [8, 8]", "not a literal list"),
        ("[4, 4, [4, foo], [4, 8], [8, 8]]", "not a literal list"),
    ],
)
def test_invalid_specs_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        ArchSpec.parse(text)


def test_invalid_fields_and_mappings() -> None:
    with pytest.raises(SpecError, match="head must be one of"):
        ArchSpec.parse(MODEL1, head="arcface")
    with pytest.raises(SpecError, match="unknown spec key"):
        ArchSpec.from_dict({**ArchSpec.parse(MODEL1).to_dict(), "depth": 3})
    with pytest.raises(SpecError, match="stem must hold exactly 2"):
        ArchSpec(stem=(4,), stages=((4,), (4,), (4,)))


def test_json_yaml_round_trip_and_ids() -> None:
    spec = ArchSpec.parse("spcbam[4,4,[8, 8, 8], [16, 16, 16], [32, 32]]")
    assert ArchSpec.from_json(spec.to_json()) == spec
    assert ArchSpec.from_yaml(spec.to_yaml()) == spec
    assert ArchSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert re.fullmatch(r"m1-[0-9a-f]{10}", spec.spec_id)
    # same spec written differently -> same id; any change -> another id
    assert ArchSpec.parse("spcbam[ 4,4 ,[8,8,8],[16,16,16],[32,32] ]").spec_id == spec.spec_id
    assert ArchSpec.from_yaml(spec.to_yaml()).spec_id == spec.spec_id
    variants = [
        dataclasses.replace(spec, cbam=False),
        dataclasses.replace(spec, head="linear"),
        dataclasses.replace(spec, stages=((8, 8, 8), (16, 16, 16), (32, 64))),
        dataclasses.replace(spec, stages=((8, 8), (8, 16, 16), (16, 32, 32))),  # same widths, other split
        dataclasses.replace(spec, stem=(4, 8)),
    ]
    assert len({spec.spec_id, *(v.spec_id for v in variants)}) == 1 + len(variants)


def test_spec_id_stable_across_processes() -> None:
    specs = [MODEL1, "spcbam[4,4,[8, 8, 8], [16, 16, 16], [32, 32]]", "cbam[32,64,[64], [64], [64, 64, 128, 128]]"]
    code = (
        "import json, sys; from naslung.models.spec import ArchSpec; "
        "print(json.dumps([ArchSpec.parse(s).spec_id for s in json.loads(sys.argv[1])]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(specs)],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"},
        cwd=REPO_ROOT,
    )
    assert json.loads(out.stdout) == [ArchSpec.parse(s).spec_id for s in specs]


# --------------------------------------------------------------------------- network


def test_model_structure_shortcuts_and_cbam_placement() -> None:
    model = build_model(ArchSpec.parse(MODEL1, cbam=True, head="asoftmax"))
    assert isinstance(model, NASLungNet) and isinstance(model.head, AngleLinear) and model.head.m == 4
    assert [len(model.stage3), len(model.stage4), len(model.stage5)] == [2, 2, 2]
    # first block of each stage downsamples (projection); 4->4 stride 1 is identity; 4->8 needs projection
    kinds = [[b.is_identity for b in st] for st in (model.stage3, model.stage4, model.stage5)]
    assert kinds == [[False, True], [False, False], [False, True]]
    assert [b.conv1.stride for b in (model.stage3[0], model.stage3[1])] == [(2, 2, 2), (1, 1, 1)]
    assert all(isinstance(getattr(model, f"cbam{k}"), CBAM) for k in (2, 3, 4, 5))
    plain = build_model(ArchSpec.parse(MODEL1))
    assert isinstance(plain.head, nn.Linear)
    assert not any(isinstance(m, CBAM) for m in plain.modules())


def test_residual_block_identity_and_projection() -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 4, 8, 8, 8)
    block = ResidualBlock(4, 4).eval()
    assert block.is_identity
    with torch.no_grad():  # residual branch silenced -> output is relu(x) == x for x >= 0
        block.bn2.weight.zero_()
        block.bn2.bias.zero_()
        assert torch.allclose(block(x), x)
    proj = ResidualBlock(4, 8, stride=2).eval()
    assert not proj.is_identity
    assert isinstance(proj.shortcut[0], nn.Conv3d) and proj.shortcut[0].kernel_size == (1, 1, 1)
    assert proj(x).shape == (2, 8, 4, 4, 4)
    assert not ResidualBlock(4, 8).is_identity and not ResidualBlock(4, 4, stride=2).is_identity


def test_cbam_applies_channel_then_spatial_attention() -> None:
    torch.manual_seed(0)
    cbam = CBAM(8).eval()
    x = torch.rand(2, 8, 6, 6, 6)
    order: list[str] = []
    seen: dict[str, torch.Tensor] = {}

    def on_channel(mod: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        order.append("channel")
        seen["cw"] = out

    def on_spatial(mod: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        order.append("spatial")
        seen["sin"], seen["sw"] = inputs[0], out

    cbam.channel.register_forward_hook(on_channel)
    cbam.spatial.register_forward_hook(on_spatial)
    with torch.no_grad():
        y = cbam(x)
    assert order == ["channel", "spatial"]
    assert seen["cw"].shape == (2, 8, 1, 1, 1) and seen["sw"].shape == (2, 1, 6, 6, 6)
    # spatial attention sees the channel-refined features, and the output is both weights applied
    assert torch.allclose(seen["sin"], x * seen["cw"])
    assert torch.allclose(y, x * seen["cw"] * seen["sw"])
    assert ((seen["sw"] > 0) & (seen["sw"] < 1)).all()
    assert cbam.channel.mlp[0].out_features == 2  # hidden = max(1, C // 4)
    assert CBAM(2).channel.mlp[0].out_features == 1


def test_forward_contract_maps_and_deterministic_init() -> None:
    spec = ArchSpec.parse(MODEL1, cbam=True, head="asoftmax")
    torch.manual_seed(7)
    a = build_model(spec)
    torch.manual_seed(7)
    b = build_model(spec)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    a.eval()
    x = torch.rand(3, 1, 32, 32, 32)
    with torch.no_grad():
        logits = a(x)
        cos_x, phi_x = a.forward_train(x)
        maps = a.forward_maps(x)
        feats = a.features(x)
    assert torch.allclose(logits, cos_x)  # prediction = normalised logits, no margin
    assert not torch.allclose(cos_x, phi_x)
    assert feats.shape == (3, 8) and torch.allclose(maps["features"], feats)
    assert torch.allclose(maps["logits"], logits)
    assert maps["feature_maps"].shape == (3, 8, 4, 4, 4)
    assert maps["spatial_attention"].shape == (3, 1, 32, 32, 32)
    assert maps["channel_attention"].shape == (3, 4, 1, 1, 1)
    prob = torch.softmax(logits, 1)[:, 1]
    assert ((prob >= 0) & (prob <= 1)).all()
    plain_maps = build_model(ArchSpec.parse(MODEL1)).eval().forward_maps(x[:1])
    assert plain_maps["spatial_attention"] is None and plain_maps["logits"].shape == (1, 2)
    with pytest.raises(ValueError, match=r"expects input \(N, 1, D, H, W\)"):
        a(torch.rand(2, 32, 32, 32))


# --------------------------------------------------------------------------- A-Softmax


def _angle_outputs(seed: int = 0, n: int = 64, c: int = 8) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    torch.manual_seed(seed)
    head = AngleLinear(c, 2, m=4)
    feats = torch.randn(n, c).abs() * 3  # ReLU features are non-negative
    y = torch.randint(0, 2, (n,))
    with torch.no_grad():
        return head(feats), y


def test_phi_is_the_sphereface_margin_function() -> None:
    theta = torch.linspace(0, math.pi, 721, dtype=torch.float64)
    cos = torch.cos(theta)
    phi = phi_theta(cos, 4)
    assert torch.allclose(phi[theta <= math.pi / 4], torch.cos(4 * theta[theta <= math.pi / 4]), atol=1e-9)
    assert (phi <= cos + 1e-9).all() and (phi[1:] < cos[1:]).all()
    assert (phi[1:] <= phi[:-1] + 1e-9).all()  # monotone decreasing in θ
    assert abs(float(phi[-1]) - (-7.0)) < 1e-6  # φ(π) = -2m + 1
    assert torch.allclose(phi_theta(cos, 1), cos)


def test_margin_changes_the_loss_only_through_the_target_logit() -> None:
    (cos_x, phi_x), y = _angle_outputs()
    loss = ASoftmaxLoss(fixed_lambda=5.0)
    normalised = F.cross_entropy(cos_x, y)
    with_margin = loss((cos_x, phi_x), y)
    assert float(with_margin) > float(normalised) + 1e-3  # φ <= cos -> target logit lowered
    logits = loss.margin_logits((cos_x, phi_x), y)
    onehot = F.one_hot(y, 2).bool()
    assert torch.equal(logits[~onehot], cos_x[~onehot])
    assert torch.allclose(logits[onehot], (5.0 * cos_x[onehot] + phi_x[onehot]) / 6.0, atol=1e-6)
    # the margin logit really reaches the loss: changing φ changes it
    assert float(loss((cos_x, phi_x - 1.0), y)) > float(with_margin)


def test_margin_changes_gradients_of_a_real_model() -> None:
    spec = ArchSpec.parse(MODEL1, cbam=True, head="asoftmax")
    torch.manual_seed(0)
    model = build_model(spec)
    x, y = torch.rand(4, 1, 16, 16, 16), torch.tensor([0, 1, 0, 1])
    grads = []
    for loss_fn in (ASoftmaxLoss(fixed_lambda=5.0), ASoftmaxLoss(fixed_lambda=1e12)):
        model.zero_grad()
        loss_fn(model.forward_train(x), y).backward()
        grads.append(model.head.weight.grad.clone())
    assert not torch.allclose(grads[0], grads[1])


def test_lambda_follows_the_schedule() -> None:
    mp = ModelParams(lambda_base=1000.0, lambda_floor_at=0.4, lambda_power=1.0, lambda_min=5.0)
    total = 2000
    loss = build_loss(ArchSpec.parse(MODEL1, head="asoftmax"), mp, total_steps=total)
    assert isinstance(loss, ASoftmaxLoss)
    gamma = (1000.0 / 5.0 - 1.0) / (0.4 * total)  # SphereFace form, γ planned so that λ(0.4 T) = λ_min
    assert loss.lambda_gamma == pytest.approx(gamma)
    seen = []
    for it in range(total):
        expected = max(5.0, 1000.0 * (1 + gamma * it) ** -1.0)
        assert loss.lam == pytest.approx(expected)
        assert loss.margin_weight == pytest.approx(1.0 / (1.0 + expected))
        seen.append(loss.lam)
        loss.step()
    assert seen[0] == 1000.0 and seen[-1] == 5.0
    assert seen[int(0.4 * total)] == 5.0 and seen[int(0.4 * total) - 1] > 5.0
    assert all(a >= b for a, b in itertools.pairwise(seen))
    assert loss.it == total
    # the loss uses the current λ: same outputs, later step -> more margin -> larger loss
    (cos_x, phi_x), y = _angle_outputs(1)
    early = build_loss(ArchSpec.parse(MODEL1, head="asoftmax"), mp, total_steps=total)
    first = float(early((cos_x, phi_x), y))
    for _ in range(500):
        early.step()
    assert float(early((cos_x, phi_x), y)) > first


def test_lambda_schedule_needs_a_plan() -> None:
    loss = build_loss(ArchSpec.parse(MODEL1, head="asoftmax"), ModelParams())
    with pytest.raises(RuntimeError, match="plan"):
        _ = loss.lam
    assert loss.plan(100) is loss and loss.lam == ModelParams().lambda_base
    with pytest.raises(ValueError, match="total_steps"):
        loss.plan(0)
    with pytest.raises(ValueError, match="lambda_min"):
        ASoftmaxLoss(lambda_min=0.0).plan(10)


def test_huge_lambda_gives_the_normalised_softmax_loss() -> None:
    (cos_x, phi_x), y = _angle_outputs(2)
    mp = ModelParams(lambda_base=1e12, lambda_min=1e12)
    loss = build_loss(ArchSpec.parse(MODEL1, head="asoftmax"), mp, total_steps=10)
    assert loss.lam == 1e12
    assert float(loss((cos_x, phi_x), y)) == pytest.approx(float(F.cross_entropy(cos_x, y)), abs=1e-6)


def test_linear_head_loss_is_plain_cross_entropy() -> None:
    loss = build_loss(ArchSpec.parse(MODEL1), ModelParams())
    assert isinstance(loss, SoftmaxLoss) and math.isnan(loss.lam)
    logits, y = torch.randn(5, 2), torch.tensor([0, 1, 1, 0, 1])
    loss.step()
    assert float(loss(logits, y)) == pytest.approx(float(F.cross_entropy(logits, y)))
    with pytest.raises(TypeError, match="A-Softmax"):
        ASoftmaxLoss()(logits, y)


def test_asoftmax_model_trains() -> None:
    spec = ArchSpec.parse(MODEL1, cbam=True, head="asoftmax")
    torch.manual_seed(0)
    model = build_model(spec)
    loss_fn = build_loss(spec, ModelParams(), total_steps=12)
    x = torch.rand(8, 1, 16, 16, 16) * 0.3
    y = torch.arange(8) % 2
    x[y == 1, :, 4:12, 4:12, 4:12] += 0.6
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(12):
        opt.zero_grad()
        loss = loss_fn(model.forward_train(x), y)
        loss.backward()
        opt.step()
        loss_fn.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]
    assert loss_fn.it == 12 and loss_fn.lam < 1000.0


# --------------------------------------------------------------------------- complexity


def test_flops_analytic_matches_hooks() -> None:
    for text in ("none" + MODEL1, "spcbam" + MODEL1, "cbam[4,4,[8, 16, 16], [16, 32, 64], [128, 128]]"):
        spec = ArchSpec.parse(text)
        assert count_flops(spec) == count_flops_hooks(build_model(spec)), text
    assert count_flops(ArchSpec.parse(MODEL1), input_size=16) == count_flops_hooks(
        build_model(ArchSpec.parse(MODEL1)), input_size=16
    )


def test_params_and_flops_grow_when_a_width_grows() -> None:
    base = ArchSpec.parse(MODEL1, cbam=True, head="asoftmax")
    p0, f0 = count_params(build_model(base)), count_flops(base)
    d = base.to_dict()
    positions = [("stem", i, None) for i in range(2)] + [
        ("stages", s, b) for s in range(3) for b in range(len(d["stages"][s]))
    ]
    for key, i, j in positions:
        wider = json.loads(json.dumps(d))
        if j is None:
            wider[key][i] *= 2
        else:
            wider[key][i][j] *= 2
        spec = ArchSpec.from_dict(wider)
        assert count_params(build_model(spec)) > p0, (key, i, j)
        assert count_flops(spec) > f0, (key, i, j)
    # adding a block costs too; CBAM costs a little
    deeper = dataclasses.replace(base, stages=((4, 4, 4), (4, 8), (8, 8)))
    assert count_flops(deeper) > f0 and count_params(build_model(deeper)) > p0
    no_cbam = dataclasses.replace(base, cbam=False)
    assert count_flops(no_cbam) < f0 and count_params(build_model(no_cbam)) < p0
