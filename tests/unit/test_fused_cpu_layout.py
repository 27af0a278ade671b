"""The CPU channels-last-3d forward the TorchServe handler switches to: the eager fp32 results within
``CPU_LAYOUT_TOL`` (the handler checks the same bound on probe patches at start-up), members left as they were."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from builders import tiny_ensemble

from naslung.data.patches import window_hu
from naslung.ensemble.fused import CPU_LAYOUT_TOL, FusedEnsemble, parity, probe_patches


def test_cpu_channels_last_matches_eager_within_tolerance(shared_data: Path) -> None:
    ens = tiny_ensemble(0)
    ref = np.load(shared_data / "LIDC-patches-derived" / "lidc_0001-0003_patches_32cube_1mm.npz")
    X = window_hu(ref["images"][:24].astype(np.float32), (-1200.0, 600.0))
    eager = FusedEnsemble.from_ensemble(ens)
    fast = FusedEnsemble.from_ensemble(ens, precision="fp32", channels_last=True)
    assert fast.channels_last and not fast.compiled and fast.dtype is None
    got, want = fast.member_probs(X), eager.member_probs(X)
    assert got.shape == want.shape == (24, len(ens.members))
    assert np.abs(got.astype(np.float64) - want).max() <= CPU_LAYOUT_TOL
    np.testing.assert_array_equal(fast.predict(X).label, eager.predict(X).label)
    check = parity(fast, probe_patches(8), members=ens.members, tol=CPU_LAYOUT_TOL)
    assert check.ok, check.describe()
    # the source members are untouched (the layout works on copies): their conv weights stay contiguous
    weights = [p for p in ens.members[0].parameters() if p.dim() == 5]
    assert weights and all(p.is_contiguous() for p in weights)
    assert fast.module.members[0] is not ens.members[0]
