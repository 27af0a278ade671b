"""Realism statistics (:mod:`naslung.data.realism`) and ``naslung data realism``.

(a) the statistics themselves, on hand-built patches with a known answer and on the real LIDC patches of
../shared/data (read in place; skipped when absent); (b) the realism test: a small synthetic set's nodule
patches have every statistic within :data:`~naslung.data.realism.TOLERANCES` of the real figures; (c) the
CLI end to end on a one-scan set.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from naslung.cli import main
from naslung.data.realism import (
    STATISTICS,
    TOLERANCES,
    compare,
    format_table,
    load_real_patches,
    patch_statistics,
    real_reference,
    summarize,
    synthetic_patches,
)
from naslung.params import load_params

REPO_ROOT = Path(__file__).resolve().parents[2]
REAL_NPZ = "LIDC-patches-derived/lidc_0001-0003_patches_32cube_1mm.npz"
S = 32
LUNG_HU, LUNG_SD, SOFT_HU = -850.0, 20.0, 40.0


@pytest.fixture(scope="module")
def real_npz(shared_data: Path) -> Path:
    path = shared_data / REAL_NPZ
    if not path.is_file():
        pytest.skip(f"real patches not found: {path}")
    return path


@pytest.fixture(scope="module")
def real(real_npz: Path) -> dict[str, dict[str, float]]:
    return real_reference(real_npz)


def _lung(seed: int = 0) -> np.ndarray:
    """A pure aerated-lung patch (S^3, z, y, x): -850 HU with white noise of sd 20 HU."""
    rng = np.random.default_rng(seed)
    return (LUNG_HU + LUNG_SD * rng.standard_normal((S, S, S))).astype(np.float32)


def _coords() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    z, y, x = np.indices((S, S, S), dtype=np.float64) - (S - 1) / 2.0
    return z, y, x


def _wall(p: np.ndarray, thickness: int = 6) -> np.ndarray:
    """Soft tissue filling the ``thickness`` voxels next to the x = 0 face (a chest wall seen end on)."""
    q = p.copy()
    q[:, :, :thickness] = SOFT_HU
    return q


def _tube(p: np.ndarray, radius: float = 2.0, y0: float = 0.0, z0: float = 0.0) -> np.ndarray:
    """A soft-tissue cylinder along x, axis at (z, y) = (z0, y0) voxels from the centre, face to face."""
    z, y, _ = _coords()
    q = p.copy()
    q[(z - z0) ** 2 + (y - y0) ** 2 <= radius**2] = SOFT_HU
    return q


def _sphere(p: np.ndarray, radius: float) -> np.ndarray:
    z, y, x = _coords()
    q = p.copy()
    q[z**2 + y**2 + x**2 <= radius**2] = SOFT_HU
    return q


def _stats_of(*patches: np.ndarray) -> dict[str, np.ndarray]:
    return patch_statistics(np.stack(patches))


# --- (a) the statistics -----------------------------------------------------------------------------------


def test_shapes_names_and_ranges() -> None:
    st = _stats_of(_lung(0), _wall(_lung(1)), _tube(_lung(2)))
    assert tuple(st) == STATISTICS
    assert all(v.shape == (3,) for v in st.values())
    for k in STATISTICS:
        if k.startswith(("whole_", "shell_", "touch_")):
            assert np.all((st[k] >= 0) & (st[k] <= 1)), k


def test_band_fractions_and_lung_hu_of_known_patches() -> None:
    const = np.full((S, S, S), -800.0, dtype=np.float32)
    st = _stats_of(const, _wall(const, thickness=S))  # the second: all soft tissue
    assert st["whole_aerated"][0] == 1.0 and st["shell_aerated"][0] == 1.0
    assert st["whole_soft"][0] == 0.0 and st["whole_low"][0] == 0.0
    assert st["lung_hu"][0] == -800.0
    assert st["noise_hu"][0] == 0.0  # no noise at all
    assert st["whole_soft"][1] == 1.0 and st["shell_soft"][1] == 1.0
    assert math.isnan(st["lung_hu"][1]) and math.isnan(st["noise_hu"][1])  # no lung voxel: undefined
    air = np.full((1, S, S, S), -1024.0, dtype=np.float32)
    assert patch_statistics(air)["whole_low"][0] == 1.0
    # The shell is the outer part only: a central sphere of radius 10 < 12 leaves it untouched.
    sph = patch_statistics(_sphere(const, 10.0)[None])
    assert sph["shell_soft"][0] == 0.0 and sph["whole_soft"][0] > 0.1


def test_noise_recovers_white_noise() -> None:
    """White noise of sd s: the residual of a 3x3x3 mean has sd s * sqrt(26/27)."""
    st = patch_statistics(np.stack([_lung(seed) for seed in range(4)]))
    expected = LUNG_SD * math.sqrt(26 / 27)
    assert np.all(np.abs(st["noise_hu"] - expected) < 0.05 * expected), st["noise_hu"]
    assert np.all(np.abs(st["lung_hu"] - LUNG_HU) < 2.0)


def test_touch_pleura_and_vessel_on_built_patches() -> None:
    lung = _lung(3)
    cases = {
        "lung": (lung, 0, 0),
        "wall": (_wall(lung), 1, 0),  # wall at one face, lung centre: nothing central to follow
        "thin wall": (_wall(lung, thickness=4), 1, 0),
        "tube through centre": (_tube(lung), 0, 1),
        "tube off centre": (_tube(lung, y0=9.0, z0=0.0), 0, 0),  # a vessel not joined to the centre
        "isolated nodule": (_sphere(lung, 8.0), 0, 0),
        "big nodule": (_sphere(lung, 15.0), 0, 0),  # 30 mm across: large but not planar, no face cover
        "nodule with vessel": (_tube(_sphere(lung, 6.0), radius=1.6, y0=4.0), 0, 1),
        "juxtapleural nodule": (_sphere(_wall(lung), 9.0), 1, 0),
    }
    st = patch_statistics(np.stack([c[0] for c in cases.values()]))
    got = {name: (int(st["touch_pleura"][i]), int(st["touch_vessel"][i])) for i, name in enumerate(cases)}
    assert got == {name: (c[1], c[2]) for name, c in cases.items()}


def test_windowed_patches_are_refused() -> None:
    with pytest.raises(ValueError, match="windowed"):
        patch_statistics(np.full((2, S, S, S), 0.5, dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        patch_statistics(np.zeros((S, S, S), dtype=np.float32))


def test_real_patches_give_sane_figures(real_npz: Path, real: dict[str, dict[str, float]]) -> None:
    images, is_nodule = load_real_patches(real_npz)
    assert images.shape[1:] == (S, S, S) and int(is_nodule.sum()) == 6 and bool(is_nodule[:6].all())
    nod, non = real["nodules"], real["non_nodules"]
    assert (nod["n"], non["n"], real["all"]["n"]) == (6.0, 76.0, 82.0)
    lung = summarize(_stats_of(_lung(0), _lung(1)))
    for group in (nod, non):
        # Real surroundings hold soft tissue and air-like voxels that a lung-only patch has not.
        assert group["shell_soft"] > lung["shell_soft"] + 0.1
        assert group["whole_low"] > 0.02
        assert -900.0 < group["lung_hu"] < -800.0
        assert 5.0 < group["noise_hu"] < 30.0
        assert 0.4 < group["whole_aerated"] < 0.8
    # The LUNA16 'excluded findings' are mostly on the chest wall and on vessels (seen on their slices).
    assert non["touch_pleura"] > 0.5 and non["touch_vessel"] > 0.4
    assert non["shell_soft"] > nod["shell_soft"]
    st = patch_statistics(images[:6])
    # Rows 1 and 3 are juxtapleural nodules (their slices show the chest wall beside the nodule).
    assert st["touch_pleura"][1] == 1.0 and st["touch_pleura"][3] == 1.0


def test_compare_rows(real: dict[str, dict[str, float]]) -> None:
    rows = compare(real["nodules"], real)
    assert [r["statistic"] for r in rows] == list(STATISTICS)
    assert all(r["within"] for r in rows)  # the real nodules are inside their own band
    far = dict(real["nodules"]) | {"whole_soft": real["nodules"]["whole_soft"] + 1.0, "lung_hu": math.nan}
    bad = {r["statistic"] for r in compare(far, real) if not r["within"]}
    assert bad == {"whole_soft", "lung_hu"}
    row = rows[0]
    assert row["lo"] == pytest.approx(min(row["real_nodules"], row["real_non_nodules"]) - TOLERANCES["whole_soft"])
    assert "12 of 12 statistics within tolerance" in format_table(rows)


# --- (b) the realism test ---------------------------------------------------------------------------------

REALISM_SCANS = 4
"""Scans of the synthetic set of the realism test (~13 nodules a scan)."""


def test_synthetic_nodule_patches_are_realistic(
    real: dict[str, dict[str, float]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Every statistic of the synthetic nodule patches lies within TOLERANCES of the real figures (the band
    spanned by the real nodule and non-nodule means, widened by the tolerance)."""
    params = load_params(REPO_ROOT / "params.yaml")
    synth_params = params.with_overrides({"synth.n_scans": REALISM_SCANS, "synth.workers": 1}).synth
    images = synthetic_patches(synth_params, params.prepare, tmp_path_factory.mktemp("realism-synth"))
    assert images.dtype == np.float32 and images.shape[1:] == (S, S, S) and len(images) >= 2 * REALISM_SCANS
    assert float(images.min()) < -500.0  # HU, not windowed
    rows = compare(summarize(patch_statistics(images)), real)
    outside = [r["statistic"] for r in rows if not r["within"]]
    assert not outside, f"outside tolerance: {outside}\n{format_table(rows)}"


# --- (c) the CLI ------------------------------------------------------------------------------------------


def test_cli_realism_writes_json_and_png(
    real_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """From the repository root without --real: the real patches come from registry.regression_patches."""
    monkeypatch.chdir(REPO_ROOT)
    out = tmp_path / "realism"
    rc = main(["data", "realism", "--scans", "1", "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0
    report = json.loads((out / "realism.json").read_text(encoding="utf-8"))
    assert [r["statistic"] for r in report["rows"]] == list(STATISTICS)
    assert report["real"]["nodules"]["n"] == 6 and report["synthetic"]["n"] >= 1
    assert Path(report["real_path"]).resolve() == real_npz.resolve()
    assert report["n_within"] == sum(r["within"] for r in report["rows"])
    assert (out / "realism.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for s in STATISTICS:
        assert s in printed
    assert "statistics within tolerance" in printed


def test_cli_realism_missing_real_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.npz"
    argv = ["--params", str(REPO_ROOT / "params.yaml"), "data", "realism", "--scans", "1", "--real", str(missing)]
    rc = main([*argv, "--out", str(tmp_path / "out")])
    assert rc == 2
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
