"""Confidence intervals for the simulator's output.

Each metric is reported as a mean with a 95% confidence half-width, either over
independent replications (one value per replication) or, for one long run, over
batch means. The stopping rule asks for more replications while the interval of
the throughput is wider than a target percentage of its mean.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np
from scipy import stats as _sps

CONFIDENCE = 0.95


@dataclass
class Estimate:
    """A mean and its 95% CI half-width over n independent values (nan when n < 2)."""

    mean: float
    halfwidth: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.halfwidth

    @property
    def high(self) -> float:
        return self.mean + self.halfwidth


def _as_array(values, what: str) -> np.ndarray:
    a = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=float)
    if a.ndim != 1:
        raise ValueError(f"{what}: expected a flat sequence of numbers, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{what}: no values")
    return a


def t_quantile(n: int) -> float:
    """Student's t for a 95% two-sided interval over n values (n - 1 degrees of freedom)."""
    return float(_sps.t.ppf(0.5 + CONFIDENCE / 2.0, n - 1))


def estimate(values: Iterable[float]) -> Estimate:
    """Mean and Student-t 95% half-width of independent values (e.g. one per replication)."""
    a = _as_array(values, "estimate")
    n = int(a.size)
    mean = float(a.mean())
    if n < 2:
        return Estimate(mean, math.nan, n)
    sd = float(a.std(ddof=1))
    return Estimate(mean, t_quantile(n) * sd / math.sqrt(n), n)


def relative_halfwidth(est: Estimate) -> float:
    """Half-width as a fraction of |mean|: 0 for an exact zero, inf for a spread around zero."""
    if math.isnan(est.halfwidth) or math.isnan(est.mean):
        return math.nan
    if est.mean == 0.0:
        return 0.0 if est.halfwidth == 0.0 else math.inf
    return est.halfwidth / abs(est.mean)


def batch_means(samples: Iterable[float], n_batches: int = 10) -> Estimate:
    """CI from one long run: the series is cut into n_batches equal contiguous batches.

    Batches must be long compared with the series' correlation time for their
    means to be nearly independent; few large batches are safer than many small
    ones. The remainder that does not fill a batch is dropped from the start of
    the series (the part closest to the warm-up).
    """
    a = _as_array(samples, "batch_means")
    if int(n_batches) != n_batches or n_batches < 2:
        raise ValueError(f"batch_means: n_batches must be an integer >= 2, got {n_batches!r}")
    n_batches = int(n_batches)
    size = a.size // n_batches
    if size < 1:
        raise ValueError(f"batch_means: {a.size} samples cannot fill {n_batches} batches")
    a = a[a.size - size * n_batches:]
    means = a.reshape(n_batches, size).mean(axis=1)
    return estimate(means)


def summarize(replications: list[Mapping[str, float]]) -> dict[str, Estimate]:
    """Each metric over the replications, in the first replication's key order."""
    if not replications:
        raise ValueError("summarize: no replications")
    keys = list(replications[0].keys())
    wanted = set(keys)
    for i, rep in enumerate(replications):
        got = set(rep.keys())
        if got != wanted:
            missing = sorted(wanted - got)
            extra = sorted(got - wanted)
            parts = []
            if missing:
                parts.append(f"missing {', '.join(missing)}")
            if extra:
                parts.append(f"unexpected {', '.join(extra)}")
            raise ValueError(f"summarize: replication {i} has a different set of metrics: {'; '.join(parts)}")
    return {k: estimate([float(rep[k]) for rep in replications]) for k in keys}


def need_more(summary: Mapping[str, Estimate], key: str = "throughput_mbps", target_pct: float = 5.0) -> bool:
    """True while the CI of `key` is wider than target_pct % of its mean (or unknown, n < 2)."""
    if key not in summary:
        raise KeyError(f"need_more: no metric {key!r} in the summary (have: {', '.join(summary) or 'none'})")
    rel = relative_halfwidth(summary[key])
    if math.isnan(rel):
        return True
    return rel * 100.0 > target_pct


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation as numpy.percentile's default."""
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile: q must be within 0..100, got {q!r}")
    a = _as_array(values, "percentile")
    return float(np.percentile(a, q))
