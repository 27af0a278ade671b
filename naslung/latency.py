"""Inference latency of a model on one device: warmed up, median of many timed calls, in ms per nodule.

One measurement times ``model(x)`` for a random input x of shape (batch, 1, 32, 32, 32) float32
``repeats`` times after ``warmup`` untimed calls, in eval mode under ``torch.inference_mode``; on CUDA each
call is bracketed by ``torch.cuda.synchronize``. The reported figure is the median call time divided by
the batch size (ms per nodule), together with the thread count (``torch.get_num_threads()``; callers set
it, e.g. to ``train.num_threads``, before timing), the spread of the timed calls (interquartile range /
median) and the machine's 1-minute load average before and after timing (``os.getloadavg``; NaN where the
platform has none). This is the latency the architecture search optimises.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn


def load_average() -> float:
    """The 1-minute load average of the machine (runnable processes), NaN where the platform has none."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return math.nan


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.inference_mode()
def measure_latency(
    model: nn.Module,
    batch_size: int = 1,
    device: str = "cpu",
    warmup: int = 5,
    repeats: int = 30,
    input_size: int = 32,
) -> dict[str, Any]:
    """Time ``model(x)`` at ``batch_size`` on ``device``; returns ms per nodule and spread statistics.

    Keys: ms_per_nodule (median call / batch), ms_per_call_median, ms_per_call_q1, ms_per_call_q3,
    iqr_over_median, batch_size, device, threads, warmup, repeats, load_1min_before, load_1min_after.
    """
    if batch_size < 1 or repeats < 1 or warmup < 0:
        raise ValueError(f"measure_latency: bad batch_size={batch_size}, repeats={repeats}, warmup={warmup}")
    load_before = load_average()
    was_training = model.training
    model.eval()
    try:
        x = torch.rand((batch_size, 1, input_size, input_size, input_size), generator=torch.Generator().manual_seed(0))
        x = x.to(device)
        for _ in range(warmup):
            model(x)
        _sync(device)
        times = []
        for _ in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            model(x)
            _sync(device)
            times.append((time.perf_counter() - t0) * 1000.0)
    finally:
        model.train(was_training)
    q1, med, q3 = (float(v) for v in np.percentile(times, [25, 50, 75]))
    return {
        "ms_per_nodule": med / batch_size,
        "ms_per_call_median": med,
        "ms_per_call_q1": q1,
        "ms_per_call_q3": q3,
        "iqr_over_median": (q3 - q1) / med if med > 0 else float("nan"),
        "batch_size": int(batch_size),
        "device": str(device),
        "threads": int(torch.get_num_threads()),
        "warmup": int(warmup),
        "repeats": int(repeats),
        "load_1min_before": load_before,
        "load_1min_after": load_average(),
    }


def same_setting(detail: Mapping[str, Any], batch_size: int, device: str, warmup: int, repeats: int) -> bool:
    """Whether ``detail`` (a :func:`measure_latency` result) was taken at this batch size, device, warmup,
    repeats and the current torch thread count, so it stands for a measurement made now."""
    return (
        detail.get("batch_size") == int(batch_size)
        and str(detail.get("device")) == str(device)
        and detail.get("threads") == torch.get_num_threads()
        and detail.get("warmup") == int(warmup)
        and detail.get("repeats") == int(repeats)
        and detail.get("unit", "ms_per_nodule") == "ms_per_nodule"
        and isinstance(detail.get("ms_per_nodule"), (int, float))
    )


def measure_batches(
    model: nn.Module,
    batch_sizes: Sequence[int],
    device: str = "cpu",
    warmup: int = 5,
    repeats: int = 30,
    known: Mapping[int, Mapping[str, Any]] | None = None,
) -> dict[int, dict[str, Any]]:
    """:func:`measure_latency` for each batch size (e.g. ``params.latency.batch_sizes``).

    ``known``: batch size -> an earlier measurement of the same architecture (latency does not depend on
    the weights), e.g. the search's ``latency_detail`` in ``selected.json``. It is reused as it is, with
    ``"reused": true``, when :func:`same_setting` holds, so the search's Pareto plot, the member's run and the
    model card show one figure for one architecture; other batch sizes are measured.
    """
    out: dict[int, dict[str, Any]] = {}
    for b in (int(v) for v in batch_sizes):
        k = (known or {}).get(b)
        if k is not None and same_setting(k, b, device, warmup, repeats):
            out[b] = {**dict(k), "reused": True}
        else:
            out[b] = measure_latency(model, b, device, warmup, repeats)
    return out


def repeatability(
    model: nn.Module, batch_size: int = 1, device: str = "cpu", warmup: int = 5, repeats: int = 30, trials: int = 5
) -> dict[str, Any]:
    """Repeat :func:`measure_latency` ``trials`` times; spread of the per-trial ms-per-nodule figures.

    Returns the per-trial values, their median and ``rel_range`` = (max - min) / median.
    """
    values = [measure_latency(model, batch_size, device, warmup, repeats)["ms_per_nodule"] for _ in range(trials)]
    med = statistics.median(values)
    return {
        "trials_ms_per_nodule": values,
        "median_ms_per_nodule": med,
        "rel_range": (max(values) - min(values)) / med if med > 0 else float("nan"),
        "batch_size": int(batch_size),
        "device": str(device),
        "threads": int(torch.get_num_threads()),
    }
