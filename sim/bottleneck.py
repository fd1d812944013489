"""The bottleneck report: how busy each core, NIC, the disk and the memory bus are, beside the twin.

For every point it gives the utilisation of each resource as the simulation saw
it, the page-cache hit ratio and the time the server's entities spent blocked,
names the busiest resource, and puts the analytic twin's bottleneck (the lowest
saturation rate, sim/twin.py) beside it. The CPU's level is measured against the
cores the architecture can use (a single-process server saturates one core of
four: 25% overall, 100% of what it can use). The server's workers (its
processes or threads) are a resource too: busy on a core or blocked on the disk
or a full socket; a single-process server whose process is always one or the
other is saturated though neither the CPU nor the disk is. For each curve (a server
configuration over the offered rates) it says which resource saturates first
(reaches SATURATED) and at which offered rate.
"""
from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from typing import Sequence

from .report import PointResult, _atomic_write, _cell, _varying_params, curve_name

SATURATED = 0.9
_CORE = re.compile(r"cpu_util_core(\d+)$")
_LINK = re.compile(r"nic_util_link(\d+)$")


def is_detail(metric: str) -> bool:
    """Per-core and per-NIC metrics: kept for this report, not in results.csv."""
    return bool(_CORE.match(metric) or _LINK.match(metric) or metric.startswith("detail_"))


@dataclass
class SweepPointResult(PointResult):
    """A point with the per-core and per-NIC means, and the cores its architecture can use."""

    detail: dict = field(default_factory=dict)
    usable_cores: int = 0
    cpu_quota: float = 1.0          # the share of the cores a CFS quota leaves the server (1: all)


def _mean(r: PointResult, name: str) -> float:
    e = r.metrics.get(name)
    return math.nan if e is None else float(e.mean)


def _indexed(detail: dict, pattern) -> list[float]:
    items = sorted((int(m.group(1)), est.mean) for k, est in detail.items() for m in [pattern.match(k)] if m)
    return [v for _, v in items]


def levels(r: PointResult) -> dict[str, float]:
    """How close each resource is to saturation (0..1) at this point."""
    detail = getattr(r, "detail", {}) or {}
    cores = _indexed(detail, _CORE)
    links = _indexed(detail, _LINK)
    out = {}
    cpu = _mean(r, "cpu_util")
    usable = getattr(r, "usable_cores", 0) or 0
    if cores and usable:
        cpu = min(1.0, cpu * len(cores) / usable)
    quota = getattr(r, "cpu_quota", 1.0) or 1.0
    if quota < 1.0:                 # under a CFS quota the share is what saturates, not the cores
        cpu = min(1.0, cpu / quota)
    out["cpu"] = cpu
    entities = detail.get("detail_entities")
    if entities is not None and entities.mean >= 1 and cores and "blocked_pct" in r.metrics:
        # the server's processes or threads, each either on a core or blocked (disk, full socket)
        out["workers"] = min(1.0, _mean(r, "cpu_util") * len(cores) / entities.mean + _mean(r, "blocked_pct") / 100)
    out["nic"] = max(links) if links else _mean(r, "nic_util")
    out["disk"] = _mean(r, "disk_util")
    if "membus_util" in r.metrics:
        out["membus"] = _mean(r, "membus_util")
    return {k: v for k, v in out.items() if not math.isnan(v)}


def busiest(r: PointResult) -> tuple[str, float] | None:
    """The resource closest to saturation; a saturated device before the workers that wait on it."""
    lv = levels(r)
    if not lv:
        return None
    devices = {k: v for k, v in lv.items() if k != "workers"}
    workers = lv.get("workers")
    if devices.get("membus", 0.0) >= SATURATED:
        return "membus", devices["membus"]  # cores stalled on memory count as busy: the bus explains them
    if devices:
        name = max(devices, key=lambda k: devices[k])
        if workers is None or devices[name] >= SATURATED or devices[name] >= workers:
            return name, devices[name]
    return "workers", workers


def rows(results: Sequence[PointResult]) -> tuple[list[str], list[list[str]]]:
    """The columns and rows of bottleneck.csv."""
    params = []
    for r in results:
        for k in r.params:
            if k not in params:
                params.append(k)
    ncores = max((len(_indexed(getattr(r, "detail", {}) or {}, _CORE)) for r in results), default=0)
    nlinks = max((len(_indexed(getattr(r, "detail", {}) or {}, _LINK)) for r in results), default=0)
    has_bus = any("membus_util" in r.metrics for r in results)
    cols = (["label"] + [f"param_{p}" for p in params]
            + ["offered_rps", "reply_rps", "busiest", "busiest_level", "analytic_bottleneck", "analytic_bound_rps",
               "cpu_util", "cpu_usable_util", "usable_cores", "workers_level", "nic_util", "disk_util"]
            + (["membus_util"] if has_bus else [])
            + ["cache_hit_pct", "blocked_pct"]
            + [f"core{i}_util" for i in range(ncores)] + [f"nic{i}_util" for i in range(nlinks)])
    out = []
    for r in results:
        detail = getattr(r, "detail", {}) or {}
        cores, links = _indexed(detail, _CORE), _indexed(detail, _LINK)
        b = busiest(r)
        a = r.bottleneck()
        lv = levels(r)
        row = ([r.label] + [_cell(r.params.get(p)) for p in params]
               + [_cell(float(r.offered_rps)), _cell(_mean(r, "reply_rps")),
                  b[0] if b else "", _cell(b[1]) if b else "",
                  a[0] if a else "", _cell(a[1]) if a else "",
                  _cell(_mean(r, "cpu_util")), _cell(lv.get("cpu", math.nan)),
                  _cell(getattr(r, "usable_cores", 0) or None), _cell(lv.get("workers")),
                  _cell(_mean(r, "nic_util")),
                  _cell(_mean(r, "disk_util"))]
               + ([_cell(_mean(r, "membus_util"))] if has_bus else [])
               + [_cell(_mean(r, "cache_hit_pct")), _cell(_mean(r, "blocked_pct"))]
               + [_cell(cores[i]) if i < len(cores) else "" for i in range(ncores)]
               + [_cell(links[i]) if i < len(links) else "" for i in range(nlinks)])
        out.append(row)
    return cols, out


def csv_body(results: Sequence[PointResult]) -> str:
    cols, body = rows(results)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    w.writerows(body)
    return buf.getvalue()


def _pct(x: float) -> str:
    return "-" if x is None or math.isnan(x) else f"{100 * x:.0f}%"


def curves(results: Sequence[PointResult]) -> list[tuple[str, list[PointResult]]]:
    varying = _varying_params(results)
    groups: dict[str, list[PointResult]] = {}
    for r in results:
        groups.setdefault(curve_name(r, varying), []).append(r)
    return [(k, sorted(v, key=lambda p: p.offered_rps)) for k, v in groups.items()]


def summary(results: Sequence[PointResult]) -> str:
    """For each curve: which resource saturates first and where, beside the analytic bottleneck."""
    lines = []
    for name, pts in curves(results):
        first = None
        for p in pts:
            b = busiest(p)
            if b and b[1] >= SATURATED:
                first = (p, b)
                break
        a = pts[0].bottleneck()
        twin = f"twin: {a[0]} saturates at {a[1]:,.0f} req/s" if a and math.isfinite(a[1]) else "twin: no bound"
        if first:
            p, (res, lv) = first
            text = f"first to saturate: {res} ({_pct(lv)}) at {p.offered_rps:,.0f} req/s"
        else:
            top = busiest(pts[-1])
            text = (f"nothing saturated up to {pts[-1].offered_rps:,.0f} req/s"
                    + (f" (busiest: {top[0]} {_pct(top[1])})" if top else ""))
        lines.append(f"{name}: {text}; {twin}")
    return "\n".join(lines)


def point_lines(results: Sequence[PointResult]) -> str:
    """One line per point: every resource's level, cache hits and blocked time."""
    out = []
    for name, pts in curves(results):
        for p in pts:
            lv = levels(p)
            detail = getattr(p, "detail", {}) or {}
            cores, links = _indexed(detail, _CORE), _indexed(detail, _LINK)
            parts = [f"cpu {_pct(lv.get('cpu', math.nan))}"]
            if cores:
                parts.append("cores " + " ".join(_pct(c) for c in cores))
            parts.append("nics " + (" ".join(_pct(x) for x in links) if links else _pct(lv.get("nic", math.nan))))
            parts.append(f"disk {_pct(lv.get('disk', math.nan))}")
            if "membus" in lv:
                parts.append(f"membus {_pct(lv['membus'])}")
            if "workers" in lv:
                parts.append(f"workers busy or blocked {_pct(lv['workers'])}")
            parts.append(f"cache hits {_mean(p, 'cache_hit_pct'):.1f}%")
            parts.append(f"blocked {_mean(p, 'blocked_pct'):.1f}%")
            b = busiest(p)
            out.append(f"{name} @ {p.offered_rps:,.0f}: " + ", ".join(parts)
                       + (f"; busiest {b[0]}" if b else ""))
    return "\n".join(out)


def write(out_dir, results: Sequence[PointResult]) -> list:
    """bottleneck.csv and bottleneck.txt, atomically."""
    from pathlib import Path

    out = Path(out_dir)
    body = csv_body(results)
    text = summary(results) + "\n\n" + point_lines(results) + "\n"
    return [_atomic_write(out / "bottleneck.csv", lambda f: f.write(body), binary=False),
            _atomic_write(out / "bottleneck.txt", lambda f: f.write(text), binary=False)]
