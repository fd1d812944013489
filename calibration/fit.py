"""Fitting operation costs from traces, and the CPU the traces do not see.

Two steps, both least squares with non-negative coefficients (scipy):

1. Per operation, `fixed + per_unit * units` on the CPU-sampled calls of the
   traces (real/trace.py). A trace keeps, per (role, operation, unit bucket),
   the count and the sums of units, units^2, CPU, CPU^2 and units*CPU of the
   sampled calls: the sufficient statistics of an ordinary least-squares fit,
   so the fit below is exactly the per-call fit, residuals included. The
   tracing's own cost per sampled call (meta cpu_bias) is taken off first.

2. The CPU seen by /proc but not inside traced calls: the interpreter's work
   between calls (event dispatch, bookkeeping) in the server process, the
   wake-ups of its threads from sleep (the kernel counts them as voluntary
   context switches), and the kernel's softirq work on the server's core. Per
   measured run it is regressed on the run's counts (requests, loop
   iterations, wake-ups, bytes, connections); each coefficient is added to the
   operation that stands for it (parse, the event call, wakeup, net_tx,
   net_conn). A per-call term, which may be
   negative, corrects every traced operation alike: a CPU sample includes the
   sampling clock's own system call, dearer on a contended core than when its
   bias was measured at start, so the samples can overstate. Counts that move together
   over a rate sweep cannot be told apart; non-negative least squares then
   gives the joint amount to one of them, which predicts the same workload
   equally well. The fit reports which coefficients came out zero.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import lsq_linear, nnls

from sim.operations import OPERATIONS, unit_of

# an operation's variable part is fitted only when its unit varies (bytes, descriptors, events)
VARIABLE_UNITS = ("byte", "fd", "event")


@dataclass
class Sums:
    """Sufficient statistics of (units, cpu seconds) pairs: n, Σu, Σu², Σy, Σy², Σuy."""

    n: float = 0.0
    u: float = 0.0
    uu: float = 0.0
    y: float = 0.0
    yy: float = 0.0
    uy: float = 0.0

    def add(self, other: "Sums") -> "Sums":
        return Sums(self.n + other.n, self.u + other.u, self.uu + other.uu, self.y + other.y,
                    self.yy + other.yy, self.uy + other.uy)

    def shifted(self, bias: float) -> "Sums":
        """The statistics of y - bias for every pair (the tracing overhead taken off)."""
        return Sums(self.n, self.u, self.uu, self.y - self.n * bias,
                    self.yy - 2.0 * bias * self.y + self.n * bias * bias, self.uy - bias * self.u)

    @classmethod
    def of_pairs(cls, units, cpu) -> "Sums":
        u = np.asarray(units, dtype=float)
        y = np.asarray(cpu, dtype=float)
        return cls(float(u.size), float(u.sum()), float((u * u).sum()), float(y.sum()), float((y * y).sum()),
                   float((u * y).sum()))


@dataclass
class OpFit:
    """One operation's fitted cost (seconds) and how well it fits the sampled calls."""

    op: str
    unit: str
    fixed: float
    per_unit: float
    calls: int            # calls traced
    sampled: int          # calls with a CPU sample (the fit's data)
    mean_units: float     # mean units per sampled call
    rms_s: float          # root mean square residual per call, seconds
    r2: float             # share of the calls' variance explained (0 for a constant fit)

    def cost(self, units: float) -> float:
        return self.fixed + self.per_unit * units


def fit_sums(s: Sums, per_unit: bool) -> tuple[float, float, float]:
    """(fixed, per_unit, residual sum of squares) of y = a + b u by least squares, a, b >= 0.

    The Gram matrix of the design [1, u] and its right-hand side come from the
    sums; its Cholesky factor R turns the problem into min |R beta - z| with the
    same solution and the same residual up to a constant, so a bounded solver
    (scipy lsq_linear) works on two rows instead of every call.
    """
    if s.n <= 0:
        return 0.0, 0.0, 0.0
    if per_unit:
        var_u = s.uu - s.u * s.u / s.n
        per_unit = var_u > 1e-9 * max(1.0, s.uu)      # units that never vary cannot give a slope
    if not per_unit:
        a = max(0.0, s.y / s.n)
        rss = s.yy - 2 * a * s.y + a * a * s.n
        return a, 0.0, max(0.0, rss)
    # scale units so the two columns have similar size (bytes reach 1e6 and more)
    k = math.sqrt(s.uu / s.n) or 1.0
    gram = np.array([[s.n, s.u / k], [s.u / k, s.uu / (k * k)]])
    rhs = np.array([s.y, s.uy / k])
    r = np.linalg.cholesky(gram).T                  # gram = r.T @ r
    z = np.linalg.solve(r.T, rhs)
    sol = lsq_linear(r, z, bounds=(0.0, np.inf), method="bvls")
    a, b = float(sol.x[0]), float(sol.x[1]) / k
    rss = s.yy - 2 * (a * s.y + b * s.uy) + a * a * s.n + 2 * a * b * s.u + b * b * s.uu
    return a, b, max(0.0, rss)


def op_sums(traces, op: str) -> tuple[Sums, int]:
    """The CPU-sampled statistics of one operation over traces (bias taken off), and its call count."""
    total, calls = Sums(), 0
    for tr in traces:
        for st in tr.ops:
            if st.op != op:
                continue
            calls += st.count
            s = Sums(st.cpu_count, st.cpu_units, st.cpu_units2, st.cpu, st.cpu2, st.units_cpu)
            total = total.add(s.shifted(tr.cpu_bias))
    return total, calls


def fit_operations(traces, skip=("ult_switch",)) -> dict[str, OpFit]:
    """Fit every traced operation (CPU-sampled calls of all the traces pooled)."""
    names = sorted({st.op for tr in traces for st in tr.ops if st.op not in skip},
                   key=lambda o: list(OPERATIONS).index(o))
    fits = {}
    for op in names:
        s, calls = op_sums(traces, op)
        if s.n < 1:
            continue
        unit = unit_of(op)
        a, b, rss = fit_sums(s, unit in VARIABLE_UNITS)
        tss = s.yy - s.y * s.y / s.n
        fits[op] = OpFit(op, unit, a, b, calls, int(s.n), s.u / s.n, math.sqrt(rss / s.n),
                         max(0.0, 1.0 - rss / tss) if tss > 0 and b > 0 else 0.0)
    return fits


# ---------------------------------------------------------------- the CPU traces do not see

# regressor -> the operation whose fixed (or per-unit) part absorbs its coefficient
REGRESSORS = {
    "traced": ("*", "scale"),            # the traced CPU itself: its coefficient scales every fitted cost
    "calls": ("*", "fixed"),             # per traced call: what the CPU samples over- or understate
    "requests": ("parse", "fixed"),      # the interpreter's work per request between traced calls
    "loops": ("event", "fixed"),         # per pass of the event loop (poll / select / epoll_wait)
    "wakeups": ("wakeup", "fixed"),      # per voluntary context switch: a thread woken after it slept
    "bytes": ("net_tx", "per_unit"),     # kernel network work per byte sent
    "connections": ("net_conn", "fixed"),  # per connection set up and torn down
}


@dataclass
class RunCounts:
    """What one measured run did and the CPU it used beyond the traced calls (seconds)."""

    calls: float
    requests: float
    loops: float
    bytes: float
    connections: float
    unseen_cpu: float          # process CPU minus traced CPU (plus the core's softirq time, if asked)
    label: str = ""
    traced: float = 0.0        # CPU seconds inside traced calls (bias-corrected samples x counts)
    process: float = 0.0       # the process's CPU seconds (plus softirq, if asked)
    wakeups: float = 0.0       # voluntary context switches of the server's threads (/proc/PID/task/*/status)
    event_traced: float = 0.0  # of `traced`, the CPU inside the event calls (epoll_wait, poll, select)
    event_units: float = 0.0   # their units (ready events, or watched descriptors)


@dataclass
class UnseenFit:
    coef: dict[str, float]                 # per regressor, seconds per count
    zero: list[str]                        # regressors the fit set to zero
    rms_rel: float                         # residual RMS over the mean |unseen CPU|
    runs: int
    residuals: list[float] = field(default_factory=list)


def fit_unseen(runs: list[RunCounts], regressors=tuple(REGRESSORS), lower: dict[str, float] | None = None,
               target: str = "unseen_cpu") -> UnseenFit:
    """Least squares of unseen CPU on the runs' counts, each coefficient >= its lower bound (0 by default).

    A negative bound lets a coefficient take CPU away: the CPU-sampled calls include the
    sampling clock's own system call, which costs more on a contended core than the bias
    measured at start, so the traces can overstate the process's CPU. Columns are scaled
    to unit norm so the solver treats them alike.
    """
    if not runs:
        raise ValueError("no runs to fit the unseen CPU on")
    lower = lower or {}
    x = np.array([[getattr(r, k) for k in regressors] for r in runs], dtype=float)
    y = np.array([getattr(r, target) for r in runs], dtype=float)
    norms = np.linalg.norm(x, axis=0)
    norms[norms == 0] = 1.0
    lo = np.array([lower.get(k, 0.0) for k in regressors]) * norms
    if np.all(lo == 0):
        sol, _ = nnls(x / norms, np.maximum(y, 0.0))
    else:
        sol = lsq_linear(x / norms, y, bounds=(lo, np.inf), method="bvls").x
    coef = sol / norms
    resid = y - x @ coef
    scale = float(np.mean(np.abs(y))) if y.size else 0.0
    rms = float(np.sqrt(np.mean(resid ** 2))) if y.size else 0.0
    return UnseenFit({k: float(c) for k, c in zip(regressors, coef)},
                     [k for k, c in zip(regressors, coef) if c == 0.0],
                     rms / scale if scale > 0 else 0.0, len(runs), [float(v) for v in resid])


def refit_scale(runs: list[RunCounts], coef: dict[str, float]) -> float:
    """The traced-CPU scale alone, by least squares on `runs`, the other coefficients held at `coef`."""
    t = np.array([r.traced for r in runs], dtype=float)
    rest = np.array([r.process - sum(c * getattr(r, k) for k, c in coef.items()
                                     if k in REGRESSORS and REGRESSORS[k][1] != "scale") for r in runs])
    denom = float(t @ t)
    return max(0.0, float(t @ rest) / denom) if denom > 0 else coef.get("traced", 1.0)


def loo_rms(runs: list[RunCounts], regressors, target: str = "process", lower: dict[str, float] | None = None) -> float:
    """Leave-one-out prediction error of `fit_unseen`: each run predicted by the fit on the others,
    the RMS of the errors over the mean |target|. Unlike the residual, it grows when a regressor
    only fits noise, so it tells whether a regressor earns its place (inf with fewer runs than
    regressors + 1, or than 3)."""
    if len(runs) < max(3, len(regressors) + 1):
        return math.inf
    errs = []
    for i in range(len(runs)):
        rest = runs[:i] + runs[i + 1:]
        u = fit_unseen(rest, regressors, lower, target)
        errs.append(getattr(runs[i], target) - sum(u.coef[k] * getattr(runs[i], k) for k in regressors))
    scale = float(np.mean([abs(getattr(r, target)) for r in runs]))
    return float(np.sqrt(np.mean(np.square(errs)))) / scale if scale > 0 else 0.0


def choose_unseen(runs: list[RunCounts], models: dict[str, tuple], target: str = "process") -> tuple[str, dict]:
    """Fit each candidate set of regressors; pick the one whose leave-one-out error is lowest (ties,
    and too few runs to tell: the first listed). Returns its name and every candidate's fit, with
    its residual RMS and leave-one-out RMS (relative to the mean target)."""
    out = {}
    for name, regs in models.items():
        u = fit_unseen(runs, regs, target=target)
        out[name] = {"fit": u, "regressors": regs, "rms_rel": u.rms_rel, "loo_rms_rel": loo_rms(runs, regs, target)}
    best = min(out, key=lambda n: (out[n]["loo_rms_rel"], list(models).index(n)))
    return best, out


def charged_cpu(totals: dict, fits: dict[str, "OpFit"], event_ops=()) -> float:
    """The CPU the profile charges for one run's traced calls: each operation's fitted cost
    (pooled over the runs) x its calls and units; for the event calls, the per-unit part alone
    (their fixed part is the regression's per pass). `totals` maps an operation to (calls, units).

    This, not the run's own sampled CPU, is what the traced scale multiplies in the profile. The
    sampled CPU per call falls as the load rises (a warmer core, fuller batches): on 2026-11-26 the
    busiest run's calls sampled 42 us a reply against 52-89 us on the lighter runs. A level taken
    on the sampled CPU then scales costs that are above those it was measured on, and the model
    charged 33 us a reply at saturation where the server had used 26.6."""
    cpu = 0.0
    for op, (calls, units) in totals.items():
        f = fits.get(op)
        if f is None:
            continue
        cpu += f.per_unit * units + (0.0 if op in event_ops else f.fixed * calls)
    return cpu


def without_event_calls(runs: list[RunCounts], per_unit: float) -> list[RunCounts]:
    """The runs with `traced` standing for the traced CPU outside the event calls, plus the event
    calls' variable part at `per_unit` a unit: their fixed part is then left to the regression,
    split between every pass (`loops`) and the passes whose call slept (`wakeups`). A CPU sample of
    a poll that slept holds the kernel's wake-up path, so the per-call fit of the event call mixes
    the two kinds of pass in proportions that change with the load."""
    return [dataclasses.replace(r, traced=r.traced - r.event_traced + per_unit * r.event_units) for r in runs]
