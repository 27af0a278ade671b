"""The GPU-efficient training path, proven on CPU: the CPU results of ``fit`` are those of the plain loop it
replaced (bitwise), host reads do not grow with the optimiser steps, the one-gather augmentation equals a
per-sample one, ``fit_many`` equals ``fit`` of each model alone, reduced precision (bf16 autocast on CPU)
against fp32 within the stated tolerances, the A-Softmax head in fp32 under autocast, and the ensemble's
``train.concurrent`` wiring giving the members of one-by-one training. CUDA streams, the device-resident data
and GPU throughput need a GPU: ``benchmarks/bench_training.py`` (run by ``benchmarks/device_check.sh``)."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from builders import make_project, model1, synthetic_patches

from naslung.metrics import binary_metrics
from naslung.models.asoftmax import AngleLinear, build_loss
from naslung.models.factory import build
from naslung.params import ModelParams, TrainParams, load_params
from naslung.train.augment import AXIS_ORDERS, AugmentDraw, apply_augment, augment_batch, draw_augment
from naslung.train.concurrent import FitJob, fit_many
from naslung.train.loop import (
    eval_batch_size,
    fit,
    predict_proba,
    resolve_memory_format,
    selection_key,
    steps_per_epoch,
)
from naslung.train.parity import PARITY_FORWARD_TOL, PARITY_TRAINED_TOL, precision_parity
from naslung.train.precision import resolve_precision

TP = TrainParams(epochs=2, batch_size=8, lr=3e-3, patience=10)


@pytest.fixture(scope="module")
def data() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    # 37 training rows: batches of 8 leave 5, of 6 leave a singleton (dropped); 70 validation rows: two
    # validation batches of 64 on CPU
    return {"train": synthetic_patches(37, seed=1), "val": synthetic_patches(70, seed=2)}


def _same_rows(a: list[dict[str, float]], b: list[dict[str, float]]) -> bool:
    def eq(x: float, y: float) -> bool:
        return x == y or (math.isnan(x) and math.isnan(y))

    return len(a) == len(b) and all(
        r.keys() == s.keys() and all(eq(r[k], s[k]) for k in r if k != "seconds") for r, s in zip(a, b)
    )


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --- CPU results unchanged -----------------------------------------------------------------------------------


def _reference_fit(
    spec: Any, train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray], tp: TrainParams, seed: int
) -> tuple[torch.nn.Module, list[dict[str, float]], int]:
    """The CPU training loop as it was before the GPU path (per-batch random draws, ``float(loss)`` summed
    in Python, two forwards per validation batch of max(batch_size, 64)), written out plainly."""
    mp = ModelParams()
    Xtr, ytr = torch.as_tensor(train[0]).unsqueeze(1), torch.as_tensor(train[1]).long()
    Xva, yva = torch.as_tensor(val[0]).unsqueeze(1), torch.as_tensor(val[1]).long()
    torch.manual_seed(seed)
    model = build(spec, margin_m=mp.margin_m)
    loss_fn = build_loss(spec, mp, total_steps=tp.epochs * steps_per_epoch(len(Xtr), tp.batch_size))
    opt = torch.optim.Adam(model.parameters(), lr=tp.lr, betas=tuple(tp.betas), weight_decay=tp.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=tp.epochs) if tp.lr_schedule == "cosine" else None
    gen = torch.Generator().manual_seed(seed)
    history, best_key, best_state, best_epoch, since = [], None, None, 0, 0
    for epoch in range(1, tp.epochs + 1):
        model.train()
        perm = torch.randperm(len(Xtr), generator=gen)
        running, seen = 0.0, 0
        for i in range(0, len(perm), tp.batch_size):
            idx = perm[i : i + tp.batch_size]
            if idx.numel() < 2:
                continue
            xb = augment_batch(Xtr[idx], gen, pad=tp.pad, flips=tp.flips, permute_axes=tp.permute_axes)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model.forward_train(xb), ytr[idx])
            loss.backward()
            opt.step()
            loss_fn.step()
            running += float(loss.detach()) * idx.numel()
            seen += idx.numel()
        model.eval()
        total, probs = 0.0, []
        with torch.no_grad():
            bs = max(tp.batch_size, 64)
            for i in range(0, len(Xva), bs):
                xb, yb = Xva[i : i + bs], yva[i : i + bs]
                total += float(loss_fn(model.forward_train(xb), yb)) * len(xb)
                probs.append(torch.softmax(model(xb).float(), dim=1)[:, 1])
        vm = binary_metrics(yva.numpy(), torch.cat(probs).numpy())
        row = {
            "epoch": float(epoch),
            "train_loss": running / seen,
            "val_loss": total / len(Xva),
            **{f"val_{k}": v for k, v in vm.items()},
            "lambda": float(getattr(loss_fn, "lam", math.nan)),
            "margin_weight": float(getattr(loss_fn, "margin_weight", math.nan)),
            "lr": float(opt.param_groups[0]["lr"]),
            "seconds": 0.0,
        }
        history.append(row)
        if sched is not None:
            sched.step()
        key = selection_key(row, tp.select_by)
        if best_key is None or key > best_key:
            best_key, best_epoch, since = key, epoch, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            since += 1
        if since >= tp.patience:
            break
    assert best_state is not None
    model.load_state_dict(best_state)
    return model, history, best_epoch


@pytest.mark.parametrize(
    ("head", "cbam", "tp"),
    [
        ("asoftmax", True, TP),
        ("linear", False, dataclasses.replace(TP, batch_size=6, permute_axes=True, lr_schedule="cosine")),
        ("asoftmax", False, dataclasses.replace(TP, epochs=4, patience=1, select_by="loss")),
    ],
    ids=["asoftmax-cbam", "linear-permute-cosine-singleton", "early-stop"],
)
def test_cpu_fit_is_bitwise_the_plain_loop_it_replaced(data: dict[str, Any], head: str, cbam: bool, tp: Any) -> None:
    """Fails when the CPU path's sequence of operations changes: another order or size of random draws,
    the loss summed in float32 instead of double, another validation batch size (the mean losses of other
    batches round differently), or a forward that is not the plain fp32 one. Checked before this change, too:
    the snapshot of the old code's histories and weights on these three cases equals the new ones."""
    spec = model1(head=head, cbam=cbam)
    ref_model, ref_hist, ref_best = _reference_fit(spec, data["train"], data["val"], tp, seed=3)
    got = fit(
        spec, data["train"], data["val"], ModelParams(), dataclasses.replace(tp, memory_format="contiguous"), seed=3
    )
    assert got.precision == "fp32" and got.best_epoch == ref_best
    assert _same_rows(got.history, ref_hist)
    assert _same_state(got.model, ref_model)


def test_channels_last_training_changes_only_the_rounding(data: dict[str, Any]) -> None:
    """``train.memory_format`` auto is channels-last-3d on CPU: deterministic (two fits bitwise equal), the
    model comes back in the contiguous layout, and losses and validation probabilities agree with the
    contiguous (bitwise plain-loop) fit to rounding. Fails if the layout leaks out of ``fit``, if a batch
    is laid out unlike the weights in a way that changes values, or if auto stops picking channels-last."""
    spec = model1(head="asoftmax", cbam=True)
    assert resolve_memory_format("auto", "cpu") == torch.channels_last_3d
    assert resolve_memory_format("auto", "cuda") == torch.contiguous_format
    with pytest.raises(ValueError, match="memory_format"):
        resolve_memory_format("nhwc", "cpu")
    plain = fit(
        spec, data["train"], data["val"], ModelParams(), dataclasses.replace(TP, memory_format="contiguous"), seed=3
    )
    runs = [fit(spec, data["train"], data["val"], ModelParams(), TP, seed=3) for _ in range(2)]
    assert TP.memory_format == "auto" and _same_state(runs[0].model, runs[1].model)
    assert _same_rows(runs[0].history, runs[1].history)
    got = runs[0]
    assert all(p.is_contiguous() for p in got.model.parameters())
    assert not _same_state(got.model, plain.model)  # a different layout really ran (other rounding)
    for r, q in zip(got.history, plain.history, strict=True):
        assert abs(r["train_loss"] - q["train_loss"]) <= 2e-3 * q["train_loss"], (r, q)
        assert abs(r["val_loss"] - q["val_loss"]) <= 2e-3 * q["val_loss"], (r, q)
    p, q = predict_proba(got.model, data["val"][0]), predict_proba(plain.model, data["val"][0])
    assert float(np.abs(p - q).max()) <= 1e-3


def test_host_reads_do_not_grow_with_the_steps(data: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA every read of a device value into Python is a sync; the loop reads once per epoch, so the count
    of reads is the same at 2 and at 18 optimiser steps an epoch (counted on CPU tensors here). Adam's own
    ``step`` counter reads are left out: torch keeps that counter on the host also on CUDA (not capturable,
    not fused), so reading it is no device sync."""
    counts = {"n": 0}
    for name in ("item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__", "__index__"):
        original = getattr(torch.Tensor, name)

        def counted(self: torch.Tensor, *a: Any, _f: Any = original, **k: Any) -> Any:
            caller = sys._getframe(1).f_code
            if not (caller.co_name == "_get_value" and caller.co_filename.endswith("optimizer.py")):
                counts["n"] += 1
            return _f(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    spec = model1(head="asoftmax", cbam=False)
    reads = []
    for bs in (2, 20):
        counts["n"] = 0
        fit(spec, data["train"], data["val"], ModelParams(), dataclasses.replace(TP, batch_size=bs), seed=1)
        reads.append(counts["n"])
    assert reads[0] == reads[1], reads


def test_eval_batch_size_auto_and_explicit() -> None:
    assert eval_batch_size(TrainParams(batch_size=8), "cpu") == 64
    assert eval_batch_size(TrainParams(batch_size=100), "cpu") == 100
    assert eval_batch_size(TrainParams(batch_size=8), "cuda") == 256
    assert eval_batch_size(TrainParams(batch_size=8, eval_batch_size=32), "cpu") == 32


def test_explicit_eval_batch_size_changes_only_the_rounding(data: dict[str, Any]) -> None:
    spec = model1(head="linear", cbam=False)
    a = fit(spec, data["train"], data["val"], ModelParams(), TP, seed=2)
    b = fit(spec, data["train"], data["val"], ModelParams(), dataclasses.replace(TP, eval_batch_size=256), seed=2)
    assert _same_state(a.model, b.model)  # validation does not touch the weights
    for r, s in zip(a.history, b.history):
        assert r["val_loss"] == pytest.approx(s["val_loss"], rel=1e-5) and r["val_auc"] == s["val_auc"]


# --- augmentation ---------------------------------------------------------------------------------------------


def _augment_one_by_one(x: torch.Tensor, draw: AugmentDraw, pad: int) -> torch.Tensor:
    out = []
    d = x.shape[2]
    for i in range(len(x)):
        p = F.pad(x[i : i + 1], (pad,) * 6, mode="replicate")[0]
        oz, oy, ox = (int(v) for v in draw.offsets[i])
        s = p[:, oz : oz + d, oy : oy + x.shape[3], ox : ox + x.shape[4]]
        dims = [1 + a for a in range(3) if bool(draw.flip[i, a])]
        s = s.flip(dims) if dims else s
        if draw.order is not None:
            s = s.permute(0, *(1 + a for a in AXIS_ORDERS[int(draw.order[i])]))
        out.append(s)
    return torch.stack(out)


@pytest.mark.parametrize(
    ("pad", "flips", "permute"), [(2, True, True), (0, True, True), (3, False, True), (2, True, False)]
)
def test_one_gather_augmentation_equals_the_per_sample_one(pad: int, flips: bool, permute: bool) -> None:
    x = torch.rand(48, 2, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    draw = draw_augment(48, torch.Generator().manual_seed(5), pad, flips, permute)
    assert draw is not None
    assert torch.equal(apply_augment(x, draw, pad), _augment_one_by_one(x, draw, pad))
    assert torch.equal(
        augment_batch(x, torch.Generator().manual_seed(5), pad, flips, permute), apply_augment(x, draw, pad)
    )
    assert set(draw.order.tolist()) == set(range(6)) if permute else draw.order is None
    # an epoch's draws as one, sliced per batch, are the per-batch draws
    g, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    parts = [draw_augment(n, g, pad, flips, permute) for n in (4, 6, 3)]
    whole = AugmentDraw.cat([p for p in parts if p is not None])
    start = 0
    for n in (4, 6, 3):
        ref = draw_augment(n, g2, pad, flips, permute)
        assert ref is not None
        assert torch.equal(apply_augment(x[:n], whole.rows(start, start + n), pad), apply_augment(x[:n], ref, pad))
        start += n
    assert draw_augment(5, torch.Generator(), 0, False, False) is None


# --- fit_many --------------------------------------------------------------------------------------------------


def test_fit_many_equals_fit_of_each_model_alone(data: dict[str, Any]) -> None:
    other = synthetic_patches(21, seed=4)
    jobs = [
        FitJob(model1(), data["train"], data["val"], ModelParams(), TP, seed=3),
        FitJob(
            model1(head="linear", cbam=False),
            data["train"],
            data["val"],
            ModelParams(),
            dataclasses.replace(TP, epochs=4, patience=1, select_by="loss", permute_axes=True),
            seed=4,
        ),
        FitJob(
            model1(cbam=False),
            other,
            data["val"],
            ModelParams(),
            dataclasses.replace(TP, batch_size=5),
            3,
            7,
            keep="last",
        ),
    ]
    rows: list[list[dict[str, float]]] = [[], [], []]
    jobs = [dataclasses.replace(j, on_epoch=rows[i].append) for i, j in enumerate(jobs)]
    many = fit_many(jobs)
    assert [len(r) for r in rows] == [len(m.history) for m in many]
    for j, m, r in zip(jobs, many, rows):
        alone = fit(j.spec, j.train, j.val, j.model_params, j.train_params, epochs=j.epochs, seed=j.seed, keep=j.keep)
        assert m.best_epoch == alone.best_epoch and _same_rows(m.history, alone.history) and _same_rows(r, m.history)
        assert _same_state(m.model, alone.model) and not m.model.training
    assert len(many[1].history) < 4  # it stopped early while the others went on
    assert len(many[2].history) == 3


# --- precision ------------------------------------------------------------------------------------------------


def test_resolve_precision() -> None:
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("int8", "cpu")


def _cpu_bf16() -> bool:
    from naslung.ensemble.fused import cpu_autocast_supported

    return cpu_autocast_supported(torch.bfloat16)[0]


@pytest.mark.skipif(not _cpu_bf16(), reason="conv3d under CPU bf16 autocast not supported here")
def test_asoftmax_head_stays_fp32_under_autocast() -> None:
    head = AngleLinear(16, 2, m=4)
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(0))
    ref = head(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = head(x.bfloat16())
        logits = head.logits(x)
    assert all(g.dtype == torch.float32 for g in got) and logits.dtype == torch.float32
    assert torch.equal(logits, ref[0])
    # from a bf16 input only the input's own rounding remains (no bf16 cos(4θ) polynomial)
    exact = head(x.bfloat16().float())
    assert torch.equal(got[0], exact[0]) and torch.equal(got[1], exact[1])


@pytest.mark.slow
@pytest.mark.skipif(not _cpu_bf16(), reason="conv3d under CPU bf16 autocast not supported here")
def test_bf16_training_against_fp32_within_tolerance() -> None:
    """The parity check: the same A-Softmax model trained in fp32 and in bf16 from one seed (CPU autocast).
    Tolerances: one bf16 forward moves a probability by at most PARITY_FORWARD_TOL (0.02), the two trained
    models' probabilities differ by at most PARITY_TRAINED_TOL (0.05); the AUC difference counts where the
    probabilities spread enough to rank (PARITY_AUC_TOL)."""
    train, val = synthetic_patches(16, seed=1), synthetic_patches(24, seed=2)
    spec = model1(cbam=False)
    tp = dataclasses.replace(TP, epochs=2)
    rep = precision_parity(spec, train, val, ModelParams(), tp, "bf16", seed=3)
    assert rep.precision == "bf16" and rep.n_val == 24
    assert rep.max_abs_prob_forward <= PARITY_FORWARD_TOL, rep.describe()
    assert rep.max_abs_prob_trained <= PARITY_TRAINED_TOL, rep.describe()
    assert rep.ok, rep.describe()
    assert rep.max_abs_prob_forward > 0  # bf16 really ran
    res = fit(spec, train, val, ModelParams(), dataclasses.replace(tp, precision="bf16", epochs=1), seed=3)
    assert res.precision == "bf16" and all(math.isfinite(h["train_loss"]) for h in res.history)
    assert next(res.model.parameters()).dtype == torch.float32  # master weights stay fp32


# --- ensemble wiring ------------------------------------------------------------------------------------------


def test_ensemble_concurrent_members_equal_one_by_one(tmp_path: Path) -> None:
    from naslung.ensemble.training import member_params_hash, train_ensemble

    one = load_params(make_project(tmp_path / "one", folds=[1], extra={"ensemble": {"epochs": 2}}))
    two = load_params(
        make_project(tmp_path / "two", folds=[1], extra={"ensemble": {"epochs": 2}, "train": {"concurrent": 2}})
    )
    assert member_params_hash(one) == member_params_hash(two)  # concurrency is no part of a member's identity
    bf16 = dataclasses.replace(one, train=dataclasses.replace(one.train, precision="bf16"))
    assert member_params_hash(bf16) != member_params_hash(one)
    a, b = train_ensemble(one, progress=False), train_ensemble(two, progress=False)
    assert [m["name"] for m in a["members"]] == [m["name"] for m in b["members"]]
    for ma, mb in zip(a["members"], b["members"]):
        assert ma["key"] == mb["key"] and ma["val"] == mb["val"] and ma["best_epoch"] == mb["best_epoch"]
        pa = json.loads((Path(ma["dir"]) / "member.json").read_text())
        pb = json.loads((Path(mb["dir"]) / "member.json").read_text())
        assert pa["val_predictions"] == pb["val_predictions"] and pa["test_predictions"] == pb["test_predictions"]


def test_search_candidates_trained_concurrently_equal_one_by_one(tmp_path: Path) -> None:
    from builders import TINY

    from naslung.search.candidate import CandidateJob, load_dev, run_candidates
    from naslung.train.run import resolve_spec

    extra = {"search": {"epochs": 2, "val_folds": 1, "out_dir": str(tmp_path / "search")}}
    one = load_params(make_project(tmp_path / "p", extra=extra))
    two = dataclasses.replace(one, train=dataclasses.replace(one.train, concurrent=2))
    jobs = [CandidateJob(resolve_spec(s, head="linear", cbam=False), 1.0, {}, "s", 1) for s in TINY]
    load_dev.cache_clear()
    a = run_candidates(jobs, one, one.paths.artifacts)
    b = run_candidates(jobs, two, two.paths.artifacts)
    assert [r.spec_id for r in a] == [r.spec_id for r in b]
    for ra, rb in zip(a, b):
        assert ra.score == rb.score and ra.val_metrics == rb.val_metrics and ra.n_params == rb.n_params
        assert _same_rows(ra.history, rb.history) and len(ra.history) == 2
