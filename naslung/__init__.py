"""NASLung: search, train, register and serve 3D CNNs that classify pulmonary nodules on CT.

Importing the package sets the engines' process defaults (telemetry off, Prefect's start-up wait):
see :mod:`naslung.environment`.
"""

from naslung.environment import apply_defaults

apply_defaults()
