"""Sweeps: the cross product of scenario parameters, each point a whole scenario.

A sweep is declared in the scenario,

    [sweep]
    "hardware.cores" = [1, 2, 4, 8]
    "server.userver-4p.processes" = [1, 4]

or on the command line, `--sweep hardware.cores=1,2,4,8` (repeatable; `1..16`
is every integer from 1 to 16). A key is any key `--set` accepts
(`SECTION.KEY`, `server[N].KEY`, `server.LABEL.KEY`) or `server.*.KEY`, which
sets KEY on every server whose architecture has it. Keys joined by commas move
together (a zipped sweep: `"hardware.disk_seek_ms,hardware.disk_mb_s" =
[[7.5, 100], [0.1, 400]]`, or `--sweep KEY1,KEY2=7.5:100,0.1:400`), for
variants such as a disk against an SSD. The points are the cross
product, in the order the keys are declared (the file's, then the command
line's; a key given in both takes the command line's values). Every point is
loaded and checked before anything runs, so a bad value fails at once, naming
the key and the value.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

from .config import Scenario
from .scenario import ScenarioError, load_scenario, read_toml

MAX_POINTS = 10_000
_INT = re.compile(r"[+-]?\d+")
_RANGE = re.compile(r"\s*([+-]?\d+)\s*\.\.\s*([+-]?\d+)\s*")


@dataclass
class Point:
    """One point of a sweep: its swept values and the effective scenario."""

    params: dict[str, object]
    scenario: Scenario
    overrides: dict[str, object] = field(default_factory=dict)


def literal(text: str):
    """A command-line value as TOML would type it: integer, float, boolean or string."""
    s = text.strip()
    if _INT.fullmatch(s):
        return int(s)
    try:
        return float(s)
    except ValueError:
        pass
    if s.lower() in ("true", "false"):
        return s.lower() == "true"
    return s


def parse_values(key: str, text: str, where: str) -> list:
    """`1,2,4` or `1..16` (inclusive integers) as a list of values; ScenarioError when empty or repeated."""
    text = text.strip()
    m = _RANGE.fullmatch(text)
    if m:
        lo, hi = int(m.group(1)), int(m.group(2))
        if lo > hi:
            raise ScenarioError(where, None, f"--sweep {key}", f"range {lo}..{hi} is empty", "LO..HI with LO <= HI")
        if hi - lo + 1 > MAX_POINTS:
            raise ScenarioError(where, None, f"--sweep {key}", f"range {lo}..{hi} has over {MAX_POINTS} values",
                                f"at most {MAX_POINTS} values")
        return list(range(lo, hi + 1))
    items = [x for x in (t.strip() for t in text.split(",")) if x]
    if not items:
        raise ScenarioError(where, None, f"--sweep {key}", "no values", "KEY=V1,V2,... or KEY=LO..HI")
    return [literal(x) for x in items]


def parse_cli_sweeps(items: list[str], where: str) -> dict[str, list]:
    """The `--sweep KEY=VALUES` options, in order; a key repeated takes the last values."""
    out: dict[str, list] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ScenarioError(where, None, f"--sweep {item!r}", "expected KEY=V1,V2,... or KEY=LO..HI",
                                "for example --sweep hardware.cores=1,2,4,8")
        if "," in key:
            n = len(_subkeys(key))
            rows = []
            for group in (g for g in values.split(",") if g.strip()):
                parts = [literal(x) for x in group.split(":")]
                if len(parts) != n:
                    raise ScenarioError(where, None, f"--sweep {key}", f"{group.strip()!r} has {len(parts)} values "
                                        f"for {n} keys", "one value per key, joined by ':' (V1:V2,V1:V2)")
                rows.append(parts)
            if not rows:
                raise ScenarioError(where, None, f"--sweep {key}", "no values", "KEY1,KEY2=V1:V2,V1:V2")
            out[key] = _check_values(where, None, f"--sweep {key}", rows)
        else:
            out[key] = parse_values(key, values, where)
    return out


def _subkeys(key: str) -> list[str]:
    return [k.strip() for k in key.split(",")]


def _check_values(path, line, shown: str, values) -> list:
    if not isinstance(values, list) or not values:
        raise ScenarioError(path, line, shown, "is not a non-empty list of values",
                            "an array such as [1, 2, 4, 8]")
    seen = []
    width = len(_subkeys(shown.split(" ", 1)[-1].removeprefix("sweep.")))
    for v in values:
        if width > 1:
            if not isinstance(v, (list, tuple)) or len(v) != width or any(isinstance(x, (dict, list)) for x in v):
                raise ScenarioError(path, line, shown, f"{v!r} is not a list of {width} plain values",
                                    f"a list of [{', '.join(['value'] * width)}] lists, one value per key")
            v = list(v)
        elif isinstance(v, (dict, list)):
            raise ScenarioError(path, line, shown, f"{v!r} is not a plain value", "numbers, strings or booleans")
        if any(type(v) is type(w) and v == w for w in seen):
            raise ScenarioError(path, line, shown, f"{v!r} is listed twice", "each value once")
        seen.append(v)
    return list(values)


def file_sweeps(path) -> dict[str, list]:
    """The [sweep] table of a scenario file (empty when it has none)."""
    data, index = read_toml(path)
    table = data.get("sweep", {})
    if not isinstance(table, dict):
        raise ScenarioError(path, index.line_of("sweep"), "sweep", "is not a table",
                            'a [sweep] table such as "hardware.cores" = [1, 2, 4]')
    out = {}

    def walk(prefix: tuple, table: dict):
        for name, values in table.items():
            parts = prefix + (name,)
            if isinstance(values, dict):  # hardware.cores = [...] unquoted: nested tables
                walk(parts, values)
                continue
            key = ".".join(parts)
            line = index.lines.get(("sweep", key)) or index.lines.get(("sweep",) + parts) or index.line_of("sweep")
            out[key] = _check_values(path, line, f"sweep.{key}", values)

    walk((), table)
    return out


def _server_knobs(path) -> list[tuple[str, set]]:
    """(label, knob names) of each server of the file, for `server.*.KEY`."""
    import dataclasses

    import models

    data, _ = read_toml(path)
    out = []
    for s in data.get("server", []) if isinstance(data.get("server"), list) else []:
        arch = s.get("architecture") if isinstance(s, dict) else None
        try:
            names = {f.name for f in dataclasses.fields(models.knobs_class(arch))}
        except (KeyError, TypeError):
            names = set()
        out.append((s.get("label") if isinstance(s, dict) else None, names))
    return out


def _expand_key(path, key: str, value, servers) -> dict[str, object]:
    """One swept key and value as loader overrides."""
    if key == "run.rates":
        raise ScenarioError(path, None, f"sweep {key}", "the offered rates are every sweep's x axis, not a parameter",
                            "set them with run.rates or --set run.rates=R1,R2")
    if key.startswith("sweep."):
        raise ScenarioError(path, None, f"sweep {key}", "a sweep cannot sweep itself", "a scenario key")
    if key.startswith("server.*."):
        name = key[len("server.*."):]
        chosen = {f"server[{i}].{name}": value for i, (_, knobs) in enumerate(servers) if name in knobs}
        if not chosen:
            raise ScenarioError(path, None, f"sweep {key}", f"no server of the scenario has a knob {name!r}",
                                "server.*.KNOB with a knob of at least one server")
        return chosen
    return {key: value}


def expand(path, *, seed=None, overrides=None, cli_sweeps=None) -> list[Point]:
    """Every point of the scenario's sweep (one point when there is none), loaded and checked."""
    overrides = dict(overrides or {})
    sweeps = file_sweeps(path)
    for key, values in (cli_sweeps or {}).items():
        sweeps[key] = values
    swept = [k for joined in sweeps for k in _subkeys(joined)]
    for i, key in enumerate(swept):
        if key in swept[:i]:
            raise ScenarioError(path, None, f"sweep {key}", "is swept twice", "each key in one sweep entry")
        if key in overrides:
            raise ScenarioError(path, None, f"sweep {key}", "is both set (--set) and swept",
                                "either --set KEY=VALUE or a sweep of KEY")
    size = 1
    for values in sweeps.values():
        size *= len(values)
    if size > MAX_POINTS:
        raise ScenarioError(path, None, "sweep", f"{size} points", f"at most {MAX_POINTS} points")
    servers = _server_knobs(path) if any(k.startswith("server.*.") for k in sweeps) else []
    keys = list(sweeps)
    points = []
    for combo in itertools.product(*(sweeps[k] for k in keys)):
        params = {}
        for k, v in zip(keys, combo):
            if "," in k:
                params.update(zip(_subkeys(k), v))
            else:
                params[k] = v
        ov = dict(overrides)
        for k, v in params.items():
            ov.update(_expand_key(path, k, v, servers))
        try:
            scenario = load_scenario(path, seed=seed, overrides=ov)
        except ScenarioError as e:
            if not params:
                raise
            shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
            line = e.line if e.line is not None else _sweep_line(path, [k for k in keys if k not in (cli_sweeps or {})],
                                                                 e.key)
            raise ScenarioError(e.path, line, f"sweep point {shown}: {e.key}", e.problem, e.allowed) from None
        points.append(Point(params, scenario, ov))
    return points


def _sweep_line(path, file_keys: list[str], blamed: str) -> int | None:
    """The line of the file's sweep entry an error is about (the [sweep] header when unclear)."""
    if not file_keys:
        return None
    _, index = read_toml(path)
    for key in file_keys:
        if any(k in blamed for k in _subkeys(key)):
            return index.lines.get(("sweep", key)) or index.lines.get(("sweep",) + tuple(key.split("."))) \
                or index.line_of("sweep")
    return index.line_of("sweep")


def sweep_summary(points: list[Point]) -> dict[str, list]:
    """The swept keys and their values, in order (for results.json)."""
    out: dict[str, list] = {}
    for p in points:
        for k, v in p.params.items():
            vals = out.setdefault(k, [])
            if not any(type(v) is type(w) and v == w for w in vals):
                vals.append(v)
    return out


def plot_sweep(out_dir, results, title: str = "") -> list:
    """sweep.png: throughput against the swept value, one curve per server and offered rate.

    Only when exactly one parameter varies and its values are numbers (the
    what-if question "what does one more core buy?"); else nothing.
    """
    from pathlib import Path

    from .report import _atomic_write, _png_writer, _varying_params

    varying = _varying_params(results)
    if len(varying) != 1:
        return []
    key = varying[0]
    if not all(isinstance(r.params.get(key), (int, float)) and not isinstance(r.params.get(key), bool)
               for r in results):
        return []
    from matplotlib import style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curves: dict[str, list] = {}
    for r in results:
        if "throughput_mbps" in r.metrics:
            curves.setdefault(f"{r.label} @ {r.offered_rps:,.0f} req/s", []).append(r)
    with style.context("default"):
        fig = Figure(figsize=(7.0, 5.0), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        for i, (name, pts) in enumerate(curves.items()):
            pts.sort(key=lambda p: p.params[key])
            est = [p.metrics["throughput_mbps"] for p in pts]
            ax.errorbar([p.params[key] for p in pts], [e.mean for e in est],
                        yerr=[e.halfwidth if e.halfwidth == e.halfwidth else 0.0 for e in est],
                        marker="osv^Dx+*"[i % 8], markersize=5, linewidth=1.2, capsize=3, label=name)
        ax.set_xlabel(key)
        ax.set_ylabel("Mbps")
        if title:
            ax.set_title(title)
        ax.set_ylim(bottom=0)
        if curves:
            ax.legend(loc="best", fontsize="small")
        fig.tight_layout()
    return [_atomic_write(Path(out_dir) / "sweep.png", _png_writer(fig), binary=True)]
