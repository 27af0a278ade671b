"""The DNAS search strategy end to end: supernet search, derive, retrain from scratch, outputs.

:func:`run_dnas_search` is what ``naslung dnas`` and the Prefect flow ``search`` (with
``search.strategy: dnas``) run:

1. Data: the training and validation folds of ``make_split(prepare.n_folds, search.fold, seed)``
   (:func:`naslung.search.candidate.load_dev`; the test fold is never read). The training rows are split
   (stratified, ``dnas.alpha_fraction``) into a weights part and an α part.
2. Supernet search (:func:`naslung.search.dnas.search`) with the ``dnas`` section's settings and the
   training augmentation (``train.pad``, ``train.flips``).
3. The ``dnas.derive_k`` most probable architectures (:func:`~naslung.search.dnas.derive_top`) are each
   retrained from scratch on all training rows for exactly ``dnas.retrain_epochs`` (no early stopping, no
   epoch chosen on the validation folds: :func:`naslung.search.candidate.fit_fixed_epochs`) and scored like
   POP's candidates: ``search.objective`` of the final weights on the pooled ``search.val_folds`` validation
   folds with its 95 % bootstrap interval (``score``, ``score_low``, ``score_high``; validation
   ``accuracy`` kept for information), latency (``search.latency_source``: measured ms per nodule on the
   untrained model with ``train.num_threads`` threads, or M multiply-adds per nodule — the unit POP uses),
   multiply-adds, parameters.
4. Outputs in ``out_dir``, the same files as POP (:mod:`naslung.search.outputs`): ``front.json`` (derived
   models non-dominated in validation score vs latency, with POP's latency tolerance
   :func:`naslung.search.candidate.latency_tolerance`), ``selected.json`` (up to ``search.k_select``
   derived models by POP's rule, :func:`naslung.search.pareto.select_k`: front first, an overflowing layer
   spread by farthest-point choice over log2 latency, score and the :func:`op_shape` of the ops; no
   neighbour fill — the DNAS candidates are the ``dnas.derive_k`` derived models; their
   ``spec`` is the ``{"kind": "dnas", ...}`` dict, so they can be ensemble members), ``pareto.png`` (with
   the POP front of ``pop_front_path`` when that file holds one in the same latency unit), ``summary.json``
   (``strategy: dnas``), plus ``dnas.json`` (softmax(α) per layer, op names, per-epoch supernet history, all
   derived records).

Tracking goes through a :class:`~naslung.tracker.Tracker` (layout :mod:`naslung.search.runs`: one parent
run with the supernet's per-epoch metrics and ``alphas.json``, one nested run per derived model with its
curves, ``candidate.json`` and ``model/weights.pt`` + ``model/arch.json``); this module imports neither
mlflow nor prefect. Derived models already retrained and logged under the same search id (FINISHED runs)
are reused instead of retrained; the supernet search itself runs again (it keeps no checkpoint) and, on the
same device and data, derives the same architectures.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from naslung.artifact_paths import SearchDir
from naslung.models.mbconv import SKIP
from naslung.params import Params
from naslung.search import dnas, pareto, runs
from naslung.search.outputs import read_pop_front, write_dnas_outputs
from naslung.search.plots import latency_axis_label
from naslung.tracker import NULL_TRACKER, Tracker

DNAS_FILE = "dnas.json"


@dataclasses.dataclass
class DnasRunResult:
    """What :func:`run_dnas_search` produced: the summary, all derived records (most probable first),
    the front and the selection (records), softmax(α) per layer and the written files by name."""

    summary: dict[str, Any]
    records: list[dict[str, Any]]
    front: list[dict[str, Any]]
    selected: list[dict[str, Any]]
    probabilities: list[list[float]]
    files: dict[str, Path]


def op_shape(ops: Sequence[str]) -> tuple[float, float, float]:
    """Architecture descriptor of derived ops (``k{K}_e{E}`` or ``skip`` per layer): the number of MBConv
    layers (non-skip), their mean log2 kernel size and mean log2 expansion (0 without MBConv layers)."""
    blocks = [op for op in ops if op != SKIP]
    if not blocks:
        return (0.0, 0.0, 0.0)
    ks = [math.log2(int(op.split("_")[0][1:])) for op in blocks]
    es = [math.log2(int(op.split("_")[1][1:])) for op in blocks]
    return (float(len(blocks)), sum(ks) / len(ks), sum(es) / len(es))


@dataclasses.dataclass(frozen=True, eq=False)
class _Derived:
    """A derived-model record as a :class:`naslung.search.pareto.Candidate` (identity: its spec id)."""

    record: Mapping[str, Any]

    @property
    def score(self) -> float:
        return float(self.record["score"])

    @property
    def latency(self) -> float:
        return float(self.record["latency"])

    @property
    def key(self) -> str:
        return str(self.record["spec_id"])

    @property
    def shape(self) -> tuple[float, ...]:
        return op_shape(self.record.get("ops") or self.record["spec"]["ops"])


def front_of(records: Sequence[Mapping[str, Any]], tolerance: float = 0.0) -> list[dict[str, Any]]:
    """Records not dominated in (validation score up, latency down; relative latency ``tolerance``), sorted
    by latency."""
    return [dict(d.record) for d in pareto.pareto_front((_Derived(r) for r in records), tolerance)]


def select_records(records: Sequence[Mapping[str, Any]], k: int, tolerance: float = 0.0) -> list[dict[str, Any]]:
    """Up to ``k`` records by :func:`naslung.search.pareto.select_k` (front first); sorted by latency."""
    return [dict(d.record) for d in pareto.select_k([_Derived(r) for r in records], k, tolerance)]


def run_dnas_search(
    params: Params,
    artifacts: str | Path,
    out_dir: str | Path,
    search_id: str,
    *,
    tracker: Tracker = NULL_TRACKER,
    pop_front_path: str | Path | None = None,
    progress: bool | Callable[[str], None] = True,
    extra_summary: Mapping[str, Any] | None = None,
) -> DnasRunResult:
    """Run the DNAS strategy with ``params.dnas`` (see the module docstring); returns what it wrote.

    ``pop_front_path`` defaults to ``<search.out_dir>/front.json``; it is read before anything is written,
    so a DNAS run writing into ``search.out_dir`` still draws the POP front that was there.
    ``extra_summary`` entries (e.g. the Prefect flow run id) are added to ``summary.json``.
    """
    from naslung.metrics import binary_metrics
    from naslung.models.complexity import count_params
    from naslung.search.candidate import fit_fixed_epochs, latency_tolerance, latency_unit, load_dev, spec_latency
    from naslung.search.objective import objective_label, score_predictions
    from naslung.train.augment import augment_batch
    from naslung.train.loop import predict_proba, resolve_device

    say = runs.reporter(progress)
    p, sp = params.dnas, params.search
    unit = latency_unit(sp)
    tolerance = latency_tolerance(sp)
    threads = max(1, int(params.train.num_threads))
    torch.set_num_threads(threads)  # before any latency is timed
    device = resolve_device(params.train.device)
    out = Path(out_dir)
    pop_front = read_pop_front(pop_front_path or SearchDir(Path(sp.out_dir)).front, unit, sp.objective)
    parent = runs.open_search(
        tracker, p.experiment, search_id, "dnas", params, tags={"naslung.objective": sp.objective}
    )
    try:
        t0 = time.perf_counter()
        dev = load_dev(str(artifacts), params.prepare.n_folds, sp.fold, params.seed, sp.val_folds)
        (Xw, yw), (Xa, ya) = dnas.split_alpha(dev.train[0], dev.train[1], p.alpha_fraction, params.seed)
        known: dict[str, dict[str, Any]] = {}
        for rec in parent.finished:
            known.setdefault(rec["spec_id"], rec)
        torch.manual_seed(params.seed)
        supernet = dnas.Supernet(dnas.space_from_params(p), mixed=p.mixed, seed=params.seed)

        def on_epoch(row: dict[str, float]) -> None:
            say(
                f"dnas epoch {int(row['epoch'])}: tau {row['tau']:.2f} w_loss {row['w_loss']:.3f} "
                f"alpha_acc {row['alpha_accuracy']:.3f} entropy {row['alpha_entropy']:.3f} ({row['seconds']:.0f} s)"
            )
            tracker.log_epoch(row, run_id=parent.run_id)

        res = dnas.search(
            supernet,
            (torch.from_numpy(Xw), torch.from_numpy(yw)),
            (torch.from_numpy(Xa), torch.from_numpy(ya)),
            epochs=p.epochs,
            warmup_epochs=p.warmup_epochs,
            batch_size=p.batch_size,
            w_lr=p.w_lr,
            alpha_lr=p.alpha_lr,
            alpha_weight_decay=p.alpha_weight_decay,
            tau_max=p.tau_max,
            tau_min=p.tau_min,
            seed=params.seed,
            device=device,
            augment=lambda x, g: augment_batch(
                x, g, pad=params.train.pad, flips=params.train.flips, permute_axes=params.train.permute_axes
            ),
            on_epoch=on_epoch,
        )
        search_seconds = time.perf_counter() - t0
        records: list[dict[str, Any]] = []
        reused = 0
        for arch, logp in dnas.derive_top(supernet, p.derive_k):
            if arch.spec_id in known:
                rec = {**known[arch.spec_id], "log_prob": logp}
                reused += 1
                say(f"derived {arch.ref_string()}: reused run {rec.get('run_id')}")
                records.append(rec)
                continue
            lat, lat_detail = spec_latency(arch, sp, params.latency, device, params.model.margin_m, threads=threads)
            with runs.candidate_run(
                tracker,
                parent.run_id,
                arch,
                search_id=search_id,
                strategy="dnas",
                run_name=f"dnas-{arch.spec_id}",
                params={
                    "epochs": p.retrain_epochs,
                    "seed": params.seed,
                    "device": device,
                    "latency_unit": unit,
                    "objective": sp.objective,
                    "val_folds": sp.val_folds,
                },
                artifacts=artifacts,
            ) as run_id:
                # from scratch, all training rows, the fixed retrain epochs; final weights scored
                fitres, checkpoint = fit_fixed_epochs(
                    arch, dev, params, p.retrain_epochs, device, on_epoch=tracker.log_epoch
                )
                prob = predict_proba(fitres.model, dev.val[0], device)
                sc = score_predictions(dev.val[1], prob, sp.objective, seed=params.seed)
                vm = {k: float(v) for k, v in binary_metrics(dev.val[1], prob).items()}
                rec = {
                    "spec": arch.to_dict(),
                    "spec_id": arch.spec_id,
                    "ref_string": arch.ref_string(),
                    "strategy": "dnas",
                    "ops": list(arch.ops),
                    "log_prob": float(logp),
                    "objective": sc.objective,
                    "score": sc.score,
                    "score_low": sc.score_low,
                    "score_high": sc.score_high,
                    "n_val": sc.n_val,
                    "accuracy": sc.accuracy,
                    "checkpoint": checkpoint,
                    "latency": float(lat),
                    "latency_unit": unit,
                    "flops": int(lat_detail.get("flops") or _flops(arch)),
                    "n_params": int(count_params(fitres.model)),
                    "val_metrics": vm,
                    "history": [{k: float(v) for k, v in row.items()} for row in fitres.history],
                    "best_epoch": int(fitres.best_epoch),
                    "epochs": int(p.retrain_epochs),
                    "seed": int(params.seed),
                    "device": device,
                    "train_seconds": float(fitres.seconds),
                    "latency_detail": lat_detail,
                    "run_id": run_id,
                }
                runs.log_candidate_result(tracker, rec)
                _log_weights(tracker, fitres.model, rec["spec"])
            records.append(rec)
            say(
                f"derived {arch.ref_string()}: val {sp.objective} {rec['score']:.3f} "
                f"[{rec['score_low']:.3f}, {rec['score_high']:.3f}], latency {rec['latency']:.3g} "
                f"{unit}, {rec['n_params']:,} params"
            )
        front = front_of(records, tolerance)
        selected = select_records(records, sp.k_select, tolerance)
        best = max(records, key=lambda r: (r["score"], -r["latency"]))
        summary: dict[str, Any] = {
            "strategy": "dnas",
            "search_id": search_id,
            "parent_run_id": parent.run_id,
            "search_seconds": search_seconds,
            "wall_seconds": time.perf_counter() - t0,
            "trained": len(records),
            "trained_this_run": len(records) - reused,
            "reused": reused,
            "front_size": len(front),
            "selected": len(selected),
            "objective": sp.objective,
            "best_score": best["score"],
            "best_score_low": best.get("score_low", math.nan),
            "best_score_high": best.get("score_high", math.nan),
            "best_accuracy": best.get("accuracy", math.nan),
            "best_latency": best["latency"],
            "best_n_params": best["n_params"],
            "best_spec": best["ref_string"],
            "best_spec_id": best["spec_id"],
            "final_alpha_entropy": res.history[-1]["alpha_entropy"] if res.history else math.nan,
            "n_alpha_rows": len(ya),
            "n_weight_rows": len(yw),
            "n_val_rows": len(dev.val[1]),
            "val_folds": list(dev.split.val_folds),
            "test_fold": sp.fold,
            "latency_unit": unit,
            "latency_device": device,
            "latency_tolerance": tolerance,
            "latency_threads": threads,
            "latency_batch_size": int(params.latency.batch_sizes[0]),
            "seed": params.seed,
            "epochs": p.epochs,
            "retrain_epochs": p.retrain_epochs,
            "derive_k": p.derive_k,
            "pop_front_size": len(pop_front),
            **dict(extra_summary or {}),
        }
        label = latency_axis_label(unit, sp.latency_source, int(params.latency.batch_sizes[0]), threads)
        files = write_dnas_outputs(
            out, records, front, selected, summary, label, pop_front, score_label=objective_label(sp.objective)
        )
        files["dnas"] = out / DNAS_FILE
        files["dnas"].write_text(
            encoding="utf-8",
            data=json.dumps(
                {
                    "summary": summary,
                    "probabilities": res.probabilities,
                    "op_names": [c.names for c in supernet.cells],
                    "history": res.history,
                    "derived": [{k: v for k, v in r.items() if k != "history"} for r in records],
                },
                indent=1,
                default=float,
            ),
        )
        runs.finish_search(
            tracker, parent.run_id, summary, files, {"alphas.json": {"probabilities": res.probabilities}}
        )
    except BaseException:
        tracker.end_run(parent.run_id, "FAILED")
        raise
    say(
        f"done: {summary['trained']} derived model(s) ({reused} reused), front {summary['front_size']}, "
        f"best {summary['best_spec']} val {sp.objective} {summary['best_score']:.3f}"
    )
    return DnasRunResult(summary, records, front, selected, res.probabilities, files)


def _log_weights(tracker: Tracker, model: torch.nn.Module, spec: dict[str, Any]) -> None:
    """``model/weights.pt`` (CPU state dict) and ``model/arch.json`` (the spec) of the current run."""
    with tempfile.TemporaryDirectory() as tmp:
        weights, arch = Path(tmp) / "weights.pt", Path(tmp) / "arch.json"
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, weights)
        arch.write_text(encoding="utf-8", data=json.dumps(spec, indent=1))
        tracker.log_artifact(weights, "model")
        tracker.log_artifact(arch, "model")


def _flops(arch: dnas.DnasArch) -> int:
    from naslung.models.factory import spec_flops

    return int(spec_flops(arch))
