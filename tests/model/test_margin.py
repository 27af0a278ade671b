"""The A-Softmax margin is in force at the pipeline's real run lengths (issue 14, part 1).

λ is planned over the run (``fit``: epochs × steps per epoch of its loader), so λ reaches ``lambda_min`` at
``lambda_floor_at`` of the run and the margin weight 1 / (1 + λ) is 1 / (1 + λ_min) for the rest, whatever
the number of epochs; the loss then really differs from the normalised-softmax loss.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from builders import model1, synthetic_patches

from naslung.metrics import binary_metrics
from naslung.models.asoftmax import ASoftmaxLoss, build_loss
from naslung.models.net import build_model
from naslung.params import ModelParams, TrainParams
from naslung.train.loop import fit, predict_proba, steps_per_epoch

# Embedded default data: 10 folds of ~35 nodules; a run trains on 6-8 of them (test fold and 2 validation
# folds held out) -> ~210-282 training nodules. 225 and 257 leave a last batch of one, which the loop skips.
N_TRAIN = (210, 225, 245, 257, 282)
EPOCHS = (10, 20, 30, 50)
BATCH = TrainParams().batch_size  # the default (8)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_steps_per_epoch_counts_the_loaders_batches() -> None:
    assert steps_per_epoch(282, 32) == 9 and steps_per_epoch(256, 32) == 8 and steps_per_epoch(210, 32) == 7
    assert steps_per_epoch(225, 32) == 7  # 7 full batches + a singleton the loop drops
    assert steps_per_epoch(1, 32) == 1 and steps_per_epoch(2, 32) == 1
    with pytest.raises(ValueError):
        steps_per_epoch(0, 32)


@pytest.mark.parametrize("n_train", N_TRAIN)
@pytest.mark.parametrize("epochs", EPOCHS)
def test_lambda_reaches_its_floor_at_the_planned_fraction(n_train: int, epochs: int) -> None:
    mp = ModelParams()
    spe = steps_per_epoch(n_train, BATCH)
    total = epochs * spe
    loss = build_loss(model1(), mp, total_steps=total)
    assert isinstance(loss, ASoftmaxLoss)
    floor_it = math.ceil(mp.lambda_floor_at * total)
    lams = []
    for _ in range(total + 1):
        lams.append(loss.lam)
        loss.step()
    assert lams[0] == mp.lambda_base
    assert all(a >= b for a, b in itertools.pairwise(lams))
    assert lams[floor_it - 1] > mp.lambda_min  # still annealing just before the planned point ...
    assert lams[floor_it] == mp.lambda_min  # ... and at the floor from there on
    assert all(v == mp.lambda_min for v in lams[floor_it:])
    # per epoch (what fit's history logs: λ after the epoch's steps): last half at the full margin weight
    weights = {e: 1.0 / (1.0 + lams[e * spe]) for e in range(1, epochs + 1)}
    floor_weight = 1.0 / (1.0 + mp.lambda_min)
    assert all(weights[e] >= floor_weight - 1e-12 for e in range(epochs // 2 + 1, epochs + 1))
    assert weights[epochs] == pytest.approx(floor_weight)
    # the old fixed γ = 0.12 at the old batch 32 left λ far above its floor at the end of such runs (weight <= ~5 %)
    old_total = epochs * steps_per_epoch(n_train, 32)
    old_final = max(mp.lambda_min, mp.lambda_base / (1.0 + 0.12 * old_total))
    assert 1.0 / (1.0 + old_final) < 0.6 * floor_weight


def test_fit_plans_lambda_over_its_loader_steps_and_logs_the_margin_weight() -> None:
    X, y = synthetic_patches(9, seed=3)  # batch 4: 2 full batches + a dropped singleton -> 2 steps per epoch
    Xva, yva = synthetic_patches(6, seed=4)
    tp = TrainParams(epochs=4, batch_size=4, lr=3e-3, patience=10)
    mp = dataclasses.replace(ModelParams(), lambda_floor_at=0.5)
    res = fit(model1(), (X, y), (Xva, yva), mp, tp, seed=0, keep="last")
    ref = ASoftmaxLoss(mp.lambda_base, mp.lambda_power, mp.lambda_min, mp.lambda_floor_at, total_steps=4 * 2)
    assert len(res.history) == 4
    for row in res.history:
        e = int(row["epoch"])
        assert row["lambda"] == pytest.approx(ref.lambda_at(2 * e))
        assert row["margin_weight"] == pytest.approx(1.0 / (1.0 + row["lambda"]))
    assert [r["lambda"] for r in res.history[1:]] == [mp.lambda_min] * 3  # floor at 2 of 4 epochs (step 4 of 8)
    # keep="last": the returned weights are the last epoch's (its validation AUC is what the model gives)
    assert res.best_epoch == 4
    assert binary_metrics(yva, predict_proba(res.model, Xva))["auc"] == pytest.approx(res.history[-1]["val_auc"])
    linear = fit(model1(head="linear"), (X, y), (Xva, yva), mp, dataclasses.replace(tp, epochs=1), seed=0)
    assert math.isnan(linear.history[0]["lambda"]) and math.isnan(linear.history[0]["margin_weight"])


def test_margin_at_the_floor_really_changes_the_loss_of_a_batch() -> None:
    torch.manual_seed(0)
    model = build_model(model1()).train()
    X, y = synthetic_patches(16, seed=5)
    with torch.no_grad():
        out = model.forward_train(torch.as_tensor(X).unsqueeze(1))
    cos_x, phi_x = out
    normalised = float(F.cross_entropy(cos_x, torch.as_tensor(y)))
    mp = ModelParams()
    total = 30 * steps_per_epoch(245, BATCH)
    loss = build_loss(model1(), mp, total_steps=total)
    start = float(loss(out, torch.as_tensor(y)))  # λ = 1000: margin weight 0.1 %
    for _ in range(math.ceil(mp.lambda_floor_at * total)):
        loss.step()
    floor = float(loss(out, torch.as_tensor(y)))  # λ = λ_min: margin weight 1/6
    assert start == pytest.approx(normalised, abs=0.02)
    assert floor > normalised + 0.05  # the margin shapes the loss, not a rounding of it
    # same difference as the blended target logit implies: (φ - cos) weighted by 1 / (1 + λ_min)
    w = 1.0 / (1.0 + mp.lambda_min)
    onehot = F.one_hot(torch.as_tensor(y), 2).bool()
    manual = torch.where(onehot, cos_x + w * (phi_x - cos_x), cos_x)
    assert floor == pytest.approx(float(F.cross_entropy(manual, torch.as_tensor(y))), rel=1e-5)
