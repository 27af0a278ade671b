"""Behavioural tests of the ensemble's probability on real LIDC patches (../shared/data/LIDC-patches-derived).

Properties a scorer must have whatever the weights: a patch's probability does not depend on which other
patches share its batch or on their order, the mean and the majority vote do not depend on member order, and
the vote agrees with the member probabilities. Members are seeded, untrained NASLung nets in eval mode
(BatchNorm uses its running statistics, so batch statistics cannot leak between patches).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from naslung.data.patches import window_hu
from naslung.ensemble.model import Ensemble
from naslung.models.net import build_model
from naslung.models.spec import ArchSpec

SPECS = ["[4, 4, [4], [4], [4]]", "[4, 4, [4], [8], [8]]", "[4, 4, [4, 4], [4], [8]]"]


@pytest.fixture(scope="module")
def patches(shared_data: Path) -> np.ndarray:
    """(82, 32, 32, 32) float32 in [0, 1], (z, y, x): the real patches, HU window [-1200, 600]."""
    ref = np.load(shared_data / "LIDC-patches-derived" / "lidc_0001-0003_patches_32cube_1mm.npz")
    return window_hu(ref["images"].astype(np.float32), (-1200.0, 600.0)).astype(np.float32)


def _ensemble(order: list[int]) -> Ensemble:
    members, specs = [], []
    for i in order:
        torch.manual_seed(100 + i)
        members.append(build_model(ArchSpec.parse(SPECS[i])))
        specs.append(members[-1].spec)
    return Ensemble(members, specs, [f"m{i}" for i in order])


def test_probability_does_not_depend_on_batch_order_or_company(patches: np.ndarray) -> None:
    ens = _ensemble([0, 1, 2])
    whole = ens.predict(patches[:24])
    perm = np.random.default_rng(0).permutation(24)
    shuffled = ens.predict(patches[:24][perm])
    np.testing.assert_allclose(shuffled.member_probs, whole.member_probs[perm], atol=1e-5)
    for i in (0, 7, 23):
        alone = ens.predict(patches[i : i + 1])
        np.testing.assert_allclose(alone.member_probs[0], whole.member_probs[i], atol=1e-5)
    assert whole.member_probs.std() > 0, "members must produce patch-dependent outputs for the test to mean anything"


def test_mean_and_vote_do_not_depend_on_member_order(patches: np.ndarray) -> None:
    a = _ensemble([0, 1, 2]).predict(patches)
    b = _ensemble([2, 0, 1]).predict(patches)
    np.testing.assert_allclose(a.prob, b.prob, atol=1e-6)
    np.testing.assert_array_equal(a.label, b.label)
    np.testing.assert_array_equal(a.votes, b.votes)


def test_vote_agrees_with_member_probabilities(patches: np.ndarray) -> None:
    pred = _ensemble([0, 1, 2]).predict(patches)
    votes = (pred.member_probs >= 0.5).sum(axis=1)
    np.testing.assert_array_equal(pred.votes, votes)
    np.testing.assert_array_equal(pred.label, (votes > 1).astype(np.int64))
    np.testing.assert_allclose(pred.prob, pred.member_probs.mean(axis=1), atol=1e-6)
    assert np.all((pred.prob >= 0) & (pred.prob <= 1))


def test_wrong_patch_shapes_are_refused(patches: np.ndarray) -> None:
    ens = _ensemble([0])
    with pytest.raises(ValueError, match="expected patches"):
        ens.predict(patches[0])  # one (32, 32, 32) patch without its batch axis
    with pytest.raises(ValueError, match="empty batch"):
        ens.predict(patches[:0])


def test_uncertainty_and_refer_follow_the_member_spread_whatever_the_order(patches: np.ndarray) -> None:
    from naslung.calibration import Calibrator

    a = _ensemble([0, 1, 2]).predict(patches)
    b = _ensemble([2, 0, 1]).predict(patches)
    np.testing.assert_allclose(a.uncertainty, b.uncertainty, atol=1e-6)
    np.testing.assert_allclose(a.uncertainty, a.member_probs.std(axis=1), atol=1e-6)
    assert np.all((a.uncertainty >= 0) & (a.uncertainty <= 0.5))
    assert a.refer.tolist() == (a.uncertainty > 0.2).tolist()  # the default refer_spread
    # a calibrator changes the probability but not the vote, the spread or the ranking (temperature)
    ens = _ensemble([0, 1, 2]).with_calibrator(Calibrator("temperature", temperature=2.0, refer_spread=0.0))
    c = ens.predict(patches)
    np.testing.assert_array_equal(c.label, a.label)
    np.testing.assert_allclose(c.raw_prob, a.prob, atol=1e-6)
    order = np.argsort(c.raw_prob, kind="stable")
    assert np.all(np.diff(c.prob[order].astype(np.float64)) >= -1e-6)  # monotone (float32 ties aside)
    assert np.all(np.abs(c.prob - 0.5) <= np.abs(c.raw_prob - 0.5) + 1e-6)  # T > 1 pulls towards 0.5
    assert c.refer.tolist() == (c.uncertainty > 0).tolist()
