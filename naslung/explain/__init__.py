"""Explainability: class activation maps and CBAM attention (:mod:`.maps`), PNG overlays and panels
(:mod:`.render`), and the map-mass sanity figure (:mod:`.sanity`)."""

from naslung.explain.maps import Explanation, attention_maps, cam_maps, class_weights, explain
from naslung.explain.sanity import MassReport, mass_inside, mass_report, sphere_mask

__all__ = [
    "Explanation",
    "MassReport",
    "attention_maps",
    "cam_maps",
    "class_weights",
    "explain",
    "mass_inside",
    "mass_report",
    "sphere_mask",
]
