"""MLflow Model Registry adapter for the ensemble: register with lineage, promotion gate, rollback.

The decisions and documents are plain modules (:mod:`naslung.card` — the model card as data,
:mod:`naslung.gate` — the promotion rule, :mod:`naslung.provenance` — search run and validation verdict);
the pyfunc models are :mod:`naslung.pyfunc`. This package talks to MLflow:

* :mod:`~naslung.registry.store` — tracking/registry URI and experiment (:func:`configure`), alias names;
* :mod:`~naslung.registry.versions` — :func:`register` (one run, the pyfunc model, the card's tags,
  description and documents, alias ``challenger``) and :func:`download_ensemble`;
* :mod:`~naslung.registry.promotion` — :func:`promote` (the gate and its record), :func:`rollback`,
  :func:`aliases`;
* :mod:`~naslung.registry.regression` — the stored-output regression check of the champion: scores on a
  fixed set of real patches stored with each version, compared with the champion's at registration and at
  each gate decision (``--rebaseline WHY`` accepts a move, recorded).
"""

from __future__ import annotations

from naslung.gate import GateDecision
from naslung.provenance import search_run_id, validation_status
from naslung.pyfunc import EnsemblePyfunc, input_example
from naslung.pyfunc import ensemble_signature as signature
from naslung.registry.promotion import aliases, promote, rollback
from naslung.registry.store import CHALLENGER, CHAMPION, PREVIOUS, configure
from naslung.registry.versions import Registration, build_card, download_ensemble, register

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "PREVIOUS",
    "EnsemblePyfunc",
    "GateDecision",
    "Registration",
    "aliases",
    "build_card",
    "configure",
    "download_ensemble",
    "input_example",
    "promote",
    "register",
    "rollback",
    "search_run_id",
    "signature",
    "validation_status",
]
