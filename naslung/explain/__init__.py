"""Explainability: class activation maps and CBAM attention (:mod:`.maps`), PNG overlays and panels
(:mod:`.render`), the map-mass sanity figure and its controls (:mod:`.sanity`), the test-fold panel (:mod:`.panel`)."""

from naslung.explain.maps import (
    Explanation,
    attention_maps,
    attention_rim,
    cam_maps,
    class_weights,
    explain,
    reinitialised,
)
from naslung.explain.sanity import (
    REFERENCE_SIGMA_MM,
    MassReport,
    centred_reference,
    interior_mask,
    mass_inside,
    mass_report,
    sphere_mask,
)

__all__ = [
    "REFERENCE_SIGMA_MM",
    "Explanation",
    "MassReport",
    "attention_maps",
    "attention_rim",
    "cam_maps",
    "centred_reference",
    "class_weights",
    "explain",
    "interior_mask",
    "mass_inside",
    "mass_report",
    "reinitialised",
    "sphere_mask",
]
