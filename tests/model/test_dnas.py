"""Differentiable architecture search: straight-through gradients, convergence on a toy task, derived model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from naslung.params import ModelParams, TrainParams
from naslung.search.dnas import (
    DnasArch,
    DnasNet,
    DnasSpace,
    MixedOp,
    Supernet,
    derive,
    derive_top,
    gumbel_straight_through,
    search,
)
from naslung.train.loop import fit

torch.set_num_threads(1)

SMALL = DnasSpace(stem=4, layers=((4, 1), (8, 2), (8, 2)), head_channels=8, kernels=(3, 5), expansions=(2, 3))


def test_alpha_gets_gradient_through_straight_through_sample() -> None:
    torch.manual_seed(0)
    net = Supernet(SMALL, seed=0)
    x = torch.rand(4, 1, 32, 32, 32)
    loss = F.cross_entropy(net(x), torch.tensor([0, 1, 0, 1]))
    loss.backward()
    for i, a in enumerate(net.alphas):
        assert a.grad is not None, f"layer {i}: α has no gradient"
        assert torch.isfinite(a.grad).all()
        assert (a.grad.abs() > 0).all(), f"layer {i}: zero α gradient entries {a.grad}"
    # the forward really runs one op per layer: the sample is one-hot in value
    h, k = gumbel_straight_through(torch.zeros(5, requires_grad=True), tau=1.0)
    assert torch.equal(h.detach(), F.one_hot(torch.tensor(k), 5).float())
    # the CovidNet3D bug (bool cast of the hard sample) detaches α; ours does not
    assert not h.bool().requires_grad and h.requires_grad


class ToyNet(nn.Module):
    """One searchable layer on dense (N, C, 12, 12, 12) maps; the interface ``search`` needs."""

    def __init__(self, space: DnasSpace) -> None:
        super().__init__()
        c_in, c_out, stride = space.layer_io()[0]
        self.cell = MixedOp(space.candidates(0), c_in, c_out, stride)
        self.alphas = nn.ParameterList([nn.Parameter(torch.zeros(len(self.cell.names)))])
        self.tau, self.generator = 1.0, torch.Generator().manual_seed(0)

    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.alphas)

    def weight_parameters(self) -> list[nn.Parameter]:
        return list(self.cell.parameters())

    def probabilities(self) -> list[np.ndarray]:
        return [F.softmax(a.detach(), 0).numpy() for a in self.alphas]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, k = gumbel_straight_through(self.alphas[0], self.tau, self.generator)
        return self.cell(x, h, k)  # default mixing, as in Supernet


def test_alpha_converges_to_large_receptive_field_op() -> None:
    """Sparse impulses in, each dilated to a 7^3 cube out: only the 7^3 depthwise op reaches that far."""
    space = DnasSpace(stem=2, layers=((2, 1),), kernels=(3, 7), expansions=(2,), skip=True)
    torch.manual_seed(0)
    X = (torch.rand(96, 2, 12, 12, 12) < 0.002).float()
    Y = F.max_pool3d(X, 7, stride=1, padding=3)
    net = ToyNet(space)
    res = search(
        net,
        (X[:64], Y[:64]),
        (X[64:], Y[64:]),
        F.mse_loss,
        epochs=20,
        warmup_epochs=3,
        batch_size=8,
        w_lr=1e-2,
        alpha_lr=5e-2,
        tau_max=2.0,
        tau_min=0.3,
        seed=0,
    )
    p = net.probabilities()[0]
    names = net.cell.names
    assert names[int(p.argmax())] == "k7_e2", dict(zip(names, p.round(3)))
    assert p.max() > 0.6, dict(zip(names, p.round(3)))
    assert res.history[-1]["alpha_entropy"] < res.history[0]["alpha_entropy"]


def test_derived_model_trains_and_predicts() -> None:
    torch.manual_seed(0)
    net = Supernet(SMALL, seed=1)
    with torch.no_grad():
        net.alphas[0][:] = torch.tensor([0.0, 0.0, 0.0, 0.0, 3.0])  # skip clearly most likely in layer 0
    arch = derive(net)
    assert arch.ops[0] == "skip"
    top = derive_top(net, k=3)
    assert top[0][0] == arch and len({a.arch_id for a, _ in top}) == 3
    assert top[0][1] >= top[1][1] >= top[2][1]
    assert DnasArch.from_json(arch.to_json()) == arch
    with pytest.raises(ValueError, match="not a candidate"):
        DnasArch(SMALL, ("k3_e2", "skip", "k3_e2"))  # stride-2 layer has no skip

    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 12)
    X = rng.normal(0.3, 0.05, (24, 1, 32, 32, 32)).astype(np.float32)
    X[y == 1, :, 12:20, 12:20, 12:20] += 0.5  # bright cube in class 1
    tp = TrainParams(batch_size=8, lr=3e-3, patience=5)
    fitres = fit(arch, (X[:16], y[:16]), (X[16:], y[16:]), ModelParams(), tp, epochs=4, seed=0)
    model = fitres.model
    assert isinstance(model, DnasNet) and not model.training
    assert len(fitres.history) >= 1 and 1 <= fitres.best_epoch <= 4
    with torch.no_grad():
        xt = torch.from_numpy(X[:5])
        logits = model(xt)
        maps = model.forward_maps(xt)
    assert logits.shape == (5, 2) and torch.isfinite(logits).all()
    assert maps["feature_maps"].shape == (5, SMALL.head_channels, 4, 4, 4)
    assert torch.allclose(maps["logits"], logits)
    assert isinstance(model.head, nn.Linear)
    assert 0.0 <= fitres.val_metrics["accuracy"] <= 1.0


# --- DNAS-derived models as ordinary specs: training loop, ensemble, explainability -------------------------


def _toy_data(n: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.array([0, 1] * (n // 2))
    X = rng.normal(0.3, 0.05, (n, 1, 32, 32, 32)).astype(np.float32)
    X[y == 1, :, 12:20, 12:20, 12:20] += 0.5  # bright cube in class 1
    return X, y


def test_dnas_arch_is_a_spec() -> None:
    from naslung.models.complexity import count_flops_hooks
    from naslung.models.factory import build, parse_member_spec, spec_flops, spec_from_dict, spec_from_json
    from naslung.models.spec import ArchSpec

    arch = DnasArch(SMALL, ("skip", "k3_e2", "k5_e3"))
    assert arch.spec_id == "d-" + arch.arch_id and arch.head == "linear" and arch.cbam is False
    assert arch.to_dict()["kind"] == "dnas"
    assert spec_from_dict(arch.to_dict()) == arch and spec_from_json(arch.to_json()) == arch
    assert parse_member_spec({"spec": arch.to_dict(), "spec_id": arch.spec_id}) == arch  # a selected.json record
    assert parse_member_spec(arch.to_dict()) == arch
    plain = parse_member_spec("[4, 4, [4], [4], [4]]", cbam=False, head="linear")
    assert isinstance(plain, ArchSpec) and plain.spec_id.startswith("m1-") and plain.spec_id != arch.spec_id
    assert isinstance(build(arch), DnasNet)
    assert spec_flops(arch) == count_flops_hooks(DnasNet(arch)) > 0


@pytest.mark.parametrize("select_by", ["auc", "loss"])
def test_fit_trains_dnas_arch_and_respects_select_by(select_by: str) -> None:
    from naslung.train.loop import predict_proba, selection_key

    arch = DnasArch(SMALL, ("skip", "k3_e2", "k5_e3"))
    X, y = _toy_data()
    tp = TrainParams(batch_size=8, lr=3e-3, patience=10, select_by=select_by)
    res = fit(arch, (X[:16], y[:16]), (X[16:], y[16:]), ModelParams(head="asoftmax"), tp, epochs=3, seed=0)
    assert isinstance(res.model, DnasNet) and not res.model.training
    assert len(res.history) == 3 and all(np.isfinite(r["train_loss"]) for r in res.history)
    assert np.isnan(res.history[0]["lambda"])  # linear head -> cross-entropy, not the A-Softmax of ModelParams
    keys = [selection_key(r, select_by) for r in res.history]
    assert res.best_epoch == 1 + keys.index(max(keys))  # the epoch train.select_by ranks first
    best = res.history[res.best_epoch - 1]
    assert res.val_metrics["auc"] == best["val_auc"] and res.val_metrics["loss"] == best["val_loss"]
    prob = predict_proba(res.model, X[16:])  # the best epoch's weights were restored
    assert ((prob >= 0.5) == y[16:]).mean() == pytest.approx(res.val_metrics["accuracy"])


def test_mixed_ensemble_saves_loads_and_explains(tmp_path) -> None:
    from naslung.ensemble.model import Ensemble
    from naslung.explain.maps import explain
    from naslung.models.factory import build
    from naslung.models.net import NASLungNet
    from naslung.models.spec import ArchSpec

    torch.manual_seed(0)
    specs = [ArchSpec.parse("spcbam[4, 4, [4], [8], [8]]"), DnasArch(SMALL, ("skip", "k3_e2", "k5_e3"))]
    models = [build(s) for s in specs]
    for m in models:  # non-trivial BatchNorm statistics, so a lost buffer would show
        m.train()
        with torch.no_grad():
            m(torch.rand(4, 1, 32, 32, 32))
    ens = Ensemble(models, specs, [s.spec_id for s in specs])
    X, _ = _toy_data(6, seed=3)
    pred = ens.predict(X)
    ens.save(tmp_path / "ens")
    meta = json.loads((tmp_path / "ens" / "members.json").read_text())
    assert [m["spec"].get("kind") for m in meta["members"]] == [None, "dnas"]
    again = Ensemble.load(tmp_path / "ens")  # weights_only=True inside
    assert isinstance(again.members[0], NASLungNet) and isinstance(again.members[1], DnasNet)
    assert again.specs == specs and again.member_names == ens.member_names
    p2 = again.predict(X)
    np.testing.assert_array_equal(p2.member_probs, pred.member_probs)
    assert p2.votes.tolist() == pred.votes.tolist() and p2.label.tolist() == pred.label.tolist()

    ex = explain(again, X)
    assert ex.cam.shape == (6, 32, 32, 32) and np.isfinite(ex.cam).all()
    assert ex.attention is None  # the DnasNet member has no CBAM
    np.testing.assert_allclose(ex.prob, pred.prob, rtol=1e-5, atol=1e-6)


def test_dnas_front_and_selection_follow_the_shared_pareto_rule() -> None:
    """Derived models: the front is the non-dominated set; an overflowing layer is spread along the curve
    (POP's farthest-point rule, :mod:`naslung.search.pareto`), not filled with the most accurate alone."""
    from naslung.search.dnas_run import front_of, op_shape, select_records

    def rec(i: int, acc: float, lat: float, ops: list[str]) -> dict:
        return {"spec_id": f"d-{i}", "score": acc, "accuracy": acc, "latency": lat, "ops": ops, "spec": {"ops": ops}}

    records = [
        rec(1, 0.90, 10.0, ["k5_e3", "k5_e3", "k5_e3"]),
        rec(2, 0.89, 9.0, ["k5_e3", "k5_e3", "k3_e3"]),
        rec(3, 0.88, 8.0, ["k5_e2", "k3_e3", "k3_e3"]),
        rec(4, 0.70, 1.0, ["k3_e2", "skip", "skip"]),
        rec(5, 0.60, 12.0, ["k5_e3", "k5_e3", "k5_e3"]),  # dominated by all of the front
    ]
    assert [r["spec_id"] for r in front_of(records)] == ["d-4", "d-3", "d-2", "d-1"]
    chosen = select_records(records, 2)
    assert [r["spec_id"] for r in chosen] == ["d-4", "d-1"]  # both ends of the curve, sorted by latency
    assert [r["spec_id"] for r in select_records(records, 5)][-1] == "d-5"  # the next layer fills the rest
    assert op_shape(["k3_e2", "skip", "skip"]) == (1.0, pytest.approx(np.log2(3)), 1.0)
    assert op_shape(["skip"]) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        select_records(records, 0)
