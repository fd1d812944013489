"""The output of a run: a terminal table, results.csv, results.json and two plots.

Files are written atomically (a temporary file in the same directory, then
os.replace), so a crash never leaves a half-written result. The same results
give byte-identical CSV and JSON: columns and keys come in a fixed order and
floats are printed with a fixed number of significant digits.

Conventions of the metrics: `*_util` are busy fractions (0..1), `*_pct` are
percentages, `response_ms_*` are milliseconds, `throughput_mbps` is 10^6 bit/s of
reply bytes. Bounds are analytic saturation rates in requests/s per resource.
"""
from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from .atomic import write_via
from .stats import Estimate

# the metrics every point should have, in column order
CORE_METRICS = ("reply_rps", "throughput_mbps", "response_ms_mean", "response_ms_p90", "errors_pct", "cpu_util")
# other metrics a model may give, in the order they appear when present
KNOWN_METRICS = ("nic_util", "disk_util", "cache_hit_pct", "conns_mean", "timeouts_pct", "refused_pct")
KNOWN_RESOURCES = ("cpu", "nic", "disk")
FIRST_COLUMNS = ("architecture", "offered_rps") + CORE_METRICS + ("ci_throughput_mbps",)
FLOAT_FORMAT = ".10g"


@dataclass
class PointResult:
    """One server configuration (label) at one offered request rate."""

    label: str
    architecture: str
    offered_rps: float
    metrics: dict[str, Estimate]
    bounds: dict[str, float]  # resource -> saturation rate, requests/s
    replications: int
    params: dict[str, object] = field(default_factory=dict)  # sweep parameter values

    def bottleneck(self) -> tuple[str, float] | None:
        """The resource with the lowest analytic saturation rate, or None without bounds."""
        if not self.bounds:
            return None
        name = min(self.bounds, key=lambda k: self.bounds[k])
        return name, self.bounds[name]


# ---- ordering -----------------------------------------------------------------


def _ordered(names: Iterable[str], known: Sequence[str]) -> list[str]:
    """Known names in their fixed order, then the rest alphabetically."""
    names = set(names)
    return [n for n in known if n in names] + sorted(names - set(known))


def _metric_names(results: Sequence[PointResult]) -> list[str]:
    return _ordered(itertools.chain.from_iterable(r.metrics for r in results), CORE_METRICS + KNOWN_METRICS)


def _resource_names(results: Sequence[PointResult]) -> list[str]:
    return _ordered(itertools.chain.from_iterable(r.bounds for r in results), KNOWN_RESOURCES)


def _param_names(results: Sequence[PointResult]) -> list[str]:
    seen: dict[str, None] = {}
    for r in results:
        for k in r.params:
            seen.setdefault(k, None)
    return list(seen)


def _varying_params(results: Sequence[PointResult]) -> list[str]:
    """The sweep parameters whose value is not the same at every point."""
    names = _param_names(results)
    return [n for n in names if len({repr(r.params.get(n)) for r in results}) > 1]


def curve_name(r: PointResult, varying: Sequence[str]) -> str:
    """A point's curve: its label, then the values of the swept parameters that vary."""
    if not varying:
        return r.label
    return r.label + " " + " ".join(f"{n.rsplit('.', 1)[-1]}={_cell(r.params.get(n))}" for n in varying)


def _grouped(results: Sequence[PointResult]) -> list[tuple[str, list[PointResult]]]:
    """Points by (label, swept values) in order of first appearance, each group by offered rate."""
    varying = _varying_params(results)
    groups: dict[str, list[PointResult]] = {}
    for r in results:
        groups.setdefault(curve_name(r, varying), []).append(r)
    return [(k, sorted(v, key=lambda r: r.offered_rps)) for k, v in groups.items()]


# ---- terminal table -----------------------------------------------------------------


def _num(x: float | None, fmt: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if math.isinf(x):
        return "inf"
    return format(x, fmt)


def _mean(r: PointResult, name: str) -> float | None:
    e = r.metrics.get(name)
    return None if e is None else e.mean


def format_table(results: Sequence[PointResult]) -> str:
    """A compact aligned table, one block of rows per label, rows by offered rate."""
    header = ["label", "offered", "reply/s", "Mbps ± ci", "mean ms", "p90 ms", "err %", "cpu %", "bound req/s"]
    rows: list[list[str]] = []
    for label, points in _grouped(results):
        for i, r in enumerate(points):
            thr = r.metrics.get("throughput_mbps")
            if thr is None:
                mbps = "-"
            else:
                mbps = f"{_num(thr.mean, '.1f')} ± {_num(thr.halfwidth, '.1f')}"
            cpu = _mean(r, "cpu_util")
            b = r.bottleneck()
            rows.append([
                label if i == 0 else "",
                _num(r.offered_rps, ",.0f"),
                _num(_mean(r, "reply_rps"), ",.0f"),
                mbps,
                _num(_mean(r, "response_ms_mean"), ",.1f"),
                _num(_mean(r, "response_ms_p90"), ",.1f"),
                _num(_mean(r, "errors_pct"), ".2f"),
                _num(None if cpu is None else 100.0 * cpu, ".1f"),
                "-" if b is None else f"{b[0]} {_num(b[1], ',.0f')}",
            ])
    if not rows:
        return "(no results)"
    widths = [max(len(h), *(len(row[j]) for row in rows)) for j, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:]))
        return "  ".join([first, *rest]).rstrip()

    out = [line(header), "  ".join("-" * w for w in widths)]
    out += [line(row) for row in rows]
    return "\n".join(out)


# ---- CSV and JSON --------------------------------------------------------------------


def _cell(x: object) -> str:
    """One CSV cell, the same text for the same value on every run."""
    if x is None:
        return ""
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return format(x, FLOAT_FORMAT)
    return str(x)


def csv_columns(results: Sequence[PointResult]) -> list[str]:
    """The header of results.csv for these results."""
    metrics = _metric_names(results)
    others = [m for m in metrics if m not in CORE_METRICS]
    cols = list(FIRST_COLUMNS)
    cols += [f"ci_{m}" for m in CORE_METRICS if m != "throughput_mbps"]
    cols += [f"ci_{m}" for m in others]
    cols += others
    cols += [f"bound_{r}_rps" for r in _resource_names(results)]
    cols += [f"param_{p}" for p in _param_names(results)]
    cols += ["model", "replications"]
    return cols


def _csv_row(r: PointResult) -> dict[str, object]:
    row: dict[str, object] = {"architecture": r.label, "offered_rps": float(r.offered_rps),
                              "model": r.architecture, "replications": int(r.replications)}
    for name, e in r.metrics.items():
        row[name] = float(e.mean)
        row[f"ci_{name}"] = float(e.halfwidth)
    for name, rate in r.bounds.items():
        row[f"bound_{name}_rps"] = float(rate)
    for name, value in r.params.items():
        row[f"param_{name}"] = value
    return row


def csv_text(results: Sequence[PointResult]) -> str:
    cols = csv_columns(results)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in results:
        row = _csv_row(r)
        w.writerow([_cell(row.get(c)) for c in cols])
    return buf.getvalue()


def _jsonable(x: object) -> object:
    """Plain JSON values: non-finite floats become null (strict JSON has no NaN or Infinity)."""
    if isinstance(x, Estimate):
        return {"mean": _jsonable(x.mean), "halfwidth": _jsonable(x.halfwidth), "n": x.n}
    if is_dataclass(x) and not isinstance(x, type):
        return _jsonable(asdict(x))
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (set, frozenset)):
        return sorted((_jsonable(v) for v in x), key=repr)
    if isinstance(x, bool) or x is None or isinstance(x, (int, str)):
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if hasattr(x, "item"):  # numpy scalars
        return _jsonable(x.item())
    return str(x)


def _json_row(r: PointResult, metric_order: list[str], resource_order: list[str]) -> dict[str, object]:
    return {
        "label": r.label,
        "architecture": r.architecture,
        "offered_rps": float(r.offered_rps),
        "replications": int(r.replications),
        "params": r.params,
        "metrics": {m: r.metrics[m] for m in metric_order if m in r.metrics},
        "bounds": {b: r.bounds[b] for b in resource_order if b in r.bounds},
    }


def json_text(results: Sequence[PointResult], scenario: Mapping, profile: Mapping, meta: Mapping) -> str:
    metrics, resources = _metric_names(results), _resource_names(results)
    doc = {
        "results": [_json_row(r, metrics, resources) for r in results],
        "scenario": scenario,
        "profile": profile,
        "meta": meta,
    }
    return json.dumps(_jsonable(doc), indent=2, allow_nan=False, ensure_ascii=False) + "\n"


def load_results(path: str | os.PathLike) -> tuple[list[PointResult], dict]:
    """Read a results.json back: the points (nulls as nan) and the whole document."""
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)

    def num(x):
        return math.nan if x is None else float(x)

    points = []
    for row in doc["results"]:
        metrics = {k: Estimate(num(v["mean"]), num(v["halfwidth"]), int(v["n"])) for k, v in row["metrics"].items()}
        bounds = {k: (math.inf if v is None else float(v)) for k, v in row["bounds"].items()}
        points.append(PointResult(row["label"], row["architecture"], float(row["offered_rps"]), metrics, bounds,
                                  int(row["replications"]), dict(row.get("params", {}))))
    return points, doc


# ---- atomic files --------------------------------------------------------------------

def _atomic_write(path: Path, write: Callable[[io.IOBase], None], binary: bool) -> Path:
    return write_via(path, write, binary)


# ---- plots --------------------------------------------------------------------------

MARKERS = ("o", "s", "^", "v", "D", "x", "+", "*", "p", "h", "<", ">")


def _plot(results: Sequence[PointResult], metric: str, ylabel: str, title: str):
    """One curve per label against the offered rate, with CI error bars (Figures 7 and 8 of the study)."""
    from matplotlib import style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with style.context("default"):
        fig = Figure(figsize=(7.0, 5.0), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        drawn = 0
        for i, (label, points) in enumerate(_grouped(results)):
            pts = [p for p in points if metric in p.metrics]
            if not pts:
                continue
            x = [p.offered_rps for p in pts]
            y = [p.metrics[metric].mean for p in pts]
            err = [0.0 if not math.isfinite(p.metrics[metric].halfwidth) else p.metrics[metric].halfwidth
                   for p in pts]
            ax.errorbar(x, y, yerr=err, marker=MARKERS[i % len(MARKERS)], markersize=5, linewidth=1.2,
                        capsize=3, label=label)
            drawn += 1
        ax.set_xlabel("Requests/s")
        ax.set_ylabel(ylabel)
        if title:
            ax.set_title(title)
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        if drawn:
            ax.legend(loc="best", fontsize="small")
        fig.tight_layout()
    return fig


def _png_writer(fig) -> Callable[[io.IOBase], None]:
    def write(f):
        fig.savefig(f, format="png", metadata={"Software": None})
    return write


def write_results(out_dir: str | os.PathLike, results: Sequence[PointResult], scenario_dict: Mapping,
                  profile_dict: Mapping, meta: Mapping) -> list[Path]:
    """Write results.csv, results.json, throughput.png and response.png into out_dir.

    The tables come first, so a failure while plotting loses no numbers.
    Rows keep the order of `results`; plots group them by label.
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"cannot create output directory {str(out)!r}: {e.strerror or e}") from None
    results = list(results)
    csv_body = csv_text(results)
    json_body = json_text(results, scenario_dict, profile_dict, meta)
    paths = [
        _atomic_write(out / "results.csv", lambda f: f.write(csv_body), binary=False),
        _atomic_write(out / "results.json", lambda f: f.write(json_body), binary=False),
    ]
    title = str(scenario_dict.get("name", "")) if isinstance(scenario_dict, Mapping) else ""
    for name, metric, ylabel in (("throughput.png", "throughput_mbps", "Mbps"),
                                 ("response.png", "response_ms_mean", "Mean response time (ms)")):
        fig = _plot(results, metric, ylabel, title)
        paths.append(_atomic_write(out / name, _png_writer(fig), binary=True))
    return paths
