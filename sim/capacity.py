"""`simrun capacity`: the smallest value of a parameter for which a server meets its targets.

    simrun capacity scenarios/4cpu.toml --param hardware.cores --range 1,64 \\
        --target "throughput_mbps>=4000@rate=50000" --target "response_ms_mean<=2000"

A target is `METRIC OP NUMBER[@rate=RATE]`, OP one of >=, <=, >, <. A target with
`@rate=` is checked at that offered rate; one without is checked at every rate
the targets name, or at every rate of the scenario when none names one. The
parameter must be an integer key that only helps as it grows (cores, NICs,
disks, memory in MB, processes): the search probes the top of the range, then the
bottom, then bisects, so it needs about log2(range) probes. Each probe is a full
point with replications and CIs, through the same cache and executors as
`simrun`. A target is met when the mean meets it (`--strict`: when the whole 95%
CI does); a CI that straddles the threshold is flagged. The answer comes with
the evidence: every probe, the answer's metrics and those of the value just
below it, which fails.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import bottleneck
from .executor import ExecutorError, make_executor
from .progress import Progress
from .report import CORE_METRICS, KNOWN_METRICS, _atomic_write, _cell, _jsonable
from .runner import _Counting, add_common_options, cache_note, open_cache, parse_overrides, run_points
from .scenario import ScenarioError, format_error, load_scenario
from .sweep import Point, _expand_key, _server_knobs, file_sweeps

METRICS = CORE_METRICS + KNOWN_METRICS + ("blocked_pct", "ctx_switches_per_s", "membus_util")
_TARGET = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=|>|<)\s*([-+0-9.eE_]+)\s*(?:@\s*rate\s*=\s*([0-9.eE_+]+)\s*)?")
_OPS = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, "<": lambda a, b: a < b}
TARGET_HELP = "METRIC OP NUMBER[@rate=RATE], OP one of >= <= > <, e.g. \"throughput_mbps>=4000@rate=50000\""


class CapacityError(Exception):
    """A bad capacity request: one line for the user."""


@dataclass(frozen=True)
class Target:
    metric: str
    op: str
    value: float
    rate: float | None = None

    def __str__(self):
        at = f"@rate={_cell(self.rate)}" if self.rate is not None else ""
        return f"{self.metric}{self.op}{_cell(self.value)}{at}"

    def check(self, est, strict: bool) -> tuple[bool, bool]:
        """(met, marginal): marginal when the CI holds values on both sides of the threshold."""
        ok = _OPS[self.op]
        mean, hw = est.mean, est.halfwidth
        if math.isnan(mean):
            return False, False
        if math.isnan(hw):
            return ok(mean, self.value), True
        lo_ok, hi_ok = ok(mean - hw, self.value), ok(mean + hw, self.value)
        met = (lo_ok and hi_ok) if strict else ok(mean, self.value)
        return met, lo_ok != hi_ok


def parse_target(text: str) -> Target:
    m = _TARGET.fullmatch(text)
    if not m:
        raise CapacityError(f"--target {text!r}: cannot read it; expected {TARGET_HELP}")
    metric, op, value, rate = m.groups()
    if metric not in METRICS:
        raise CapacityError(f"--target {text!r}: unknown metric {metric!r}; metrics: {', '.join(METRICS)}")
    try:
        v = float(value)
        r = float(rate) if rate is not None else None
    except ValueError:
        raise CapacityError(f"--target {text!r}: {value!r} or the rate is not a number; expected {TARGET_HELP}") from None
    if not math.isfinite(v) or (r is not None and not (math.isfinite(r) and r > 0)):
        raise CapacityError(f"--target {text!r}: the threshold must be finite and the rate above 0")
    return Target(metric, op, v, r)


def parse_range(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*([+-]?\d+)\s*(?:,|\.\.)\s*([+-]?\d+)\s*", text)
    if not m:
        raise CapacityError(f"--range {text!r}: expected LO,HI with integers, e.g. --range 1,64")
    lo, hi = int(m.group(1)), int(m.group(2))
    if lo > hi:
        raise CapacityError(f"--range {text!r}: LO ({lo}) is above HI ({hi})")
    return lo, hi


@dataclass
class Probe:
    value: int
    met: bool
    results: list          # SweepPointResult per probed rate
    checks: list           # (target, rate, estimate, met, marginal)


def _checks(targets, results, strict: bool) -> list:
    by_rate = {r.offered_rps: r for r in results}
    out = []
    for t in targets:
        rates = [t.rate] if t.rate is not None else sorted(by_rate)
        for rate in rates:
            res = by_rate[rate]
            if t.metric not in res.metrics:
                raise CapacityError(f"--target {t}: the run gives no metric {t.metric!r}; "
                                    f"it gives: {', '.join(res.metrics)}")
            est = res.metrics[t.metric]
            met, marginal = t.check(est, strict)
            out.append((t, rate, est, met, marginal))
    return out


def _fmt_check(c) -> str:
    t, rate, est, met, marginal = c
    hw = "" if math.isnan(est.halfwidth) else f" ± {est.halfwidth:.4g}"
    flag = " (CI straddles the target)" if marginal else ""
    return (f"{t.metric} {est.mean:.4g}{hw} {'meets' if met else 'misses'} {t.op} {_cell(t.value)}"
            f" at {rate:,.0f} req/s{flag}")


class Search:
    """Bisection over one server's parameter values, each probe a full point."""

    def __init__(self, path, args, overrides, targets, rates, label_index, executor, cache, out):
        self.path, self.args, self.overrides = path, args, overrides
        self.targets, self.rates = targets, rates
        self.server = label_index
        self.executor, self.cache, self.out = executor, cache, out
        self.probes: dict[int, Probe] = {}
        self.servers = _server_knobs(path) if args.param.startswith("server.*.") else []

    def scenario(self, value: int):
        ov = dict(self.overrides)
        ov.update(_expand_key(self.path, self.args.param, value, self.servers))
        ov["run.rates"] = ",".join(repr(r) for r in self.rates)
        try:
            s = load_scenario(self.path, seed=self.args.seed, overrides=ov)
        except ScenarioError as e:
            raise ScenarioError(e.path, e.line, f"{self.args.param}={value}: {e.key}", e.problem, e.allowed) from None
        return dataclasses.replace(s, servers=(s.servers[self.server],))

    def probe(self, value: int) -> Probe:
        if value in self.probes:
            return self.probes[value]
        s = self.scenario(value)
        label = s.servers[0].label
        results = run_points([Point({self.args.param: value}, s)], self.executor, self.cache,
                             Progress(f"{label} {self.args.param}={value}", not self.args.quiet))
        checks = _checks(self.targets, results, self.args.strict)
        p = Probe(value, all(c[3] for c in checks), results, checks)
        self.probes[value] = p
        print(f"  probe {self.args.param}={value}: {'MEETS' if p.met else 'fails'}"
              f" ({max(r.replications for r in results)} runs per rate)", flush=True)
        for c in checks:
            print(f"      {_fmt_check(c)}", flush=True)
        return p

    def run(self, lo: int, hi: int, step: int) -> tuple[int | None, Probe | None, Probe | None]:
        """(answer, its probe, the probe just below it) ; answer None when even HI fails."""
        values = list(range(lo, hi + 1, step))
        top = self.probe(values[-1])
        if not top.met:
            return None, None, top
        bottom = self.probe(values[0])
        if bottom.met:
            return values[0], bottom, None
        i, j = 0, len(values) - 1          # values[i] fails, values[j] meets
        while j - i > 1:
            mid = (i + j) // 2
            if self.probe(values[mid]).met:
                j = mid
            else:
                i = mid
        return values[j], self.probes[values[j]], self.probes[values[i]]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="simrun capacity",
        description="Find the smallest value of a monotone integer parameter (cores, NICs, disks, memory_mb, "
                    "processes) for which a server meets every target, by bisection over simulated probes.",
        epilog=f"Targets: {TARGET_HELP}. Metrics: {', '.join(METRICS)}. Exit status: 0 when an answer is found, "
               "1 when even the top of the range misses a target, 2 on bad input.")
    ap.add_argument("scenario", help="scenario TOML file")
    ap.add_argument("--param", required=True, help="the key to size, as --set takes it, e.g. hardware.cores, "
                    "hardware.nics, hardware.memory_mb, server.LABEL.processes or server.*.processes")
    ap.add_argument("--range", required=True, metavar="LO,HI", help="integer values to search, inclusive")
    ap.add_argument("--step", type=int, default=1, help="search only LO, LO+STEP, ... (e.g. 256 for memory_mb)")
    ap.add_argument("--target", action="append", required=True, metavar="TARGET", help=TARGET_HELP + " (repeatable)")
    ap.add_argument("--label", help="the server to size (default: each server of the scenario in turn)")
    ap.add_argument("--strict", action="store_true", help="a target is met only when its whole 95%% CI meets it")
    ap.add_argument("--out", help="output folder for capacity.txt/json/csv (default results/<scenario name>/)")
    add_common_options(ap)
    args = ap.parse_args(argv)
    try:
        if args.jobs < 1:
            raise CapacityError("--jobs must be at least 1")
        if args.step < 1:
            raise CapacityError(f"--step {args.step}: must be at least 1")
        lo, hi = parse_range(args.range)
        targets = [parse_target(t) for t in args.target]
        overrides = parse_overrides(args.set)
        if args.param in overrides:
            raise CapacityError(f"--param {args.param} is also given with --set")
        if args.param in ("run.rates", "run.seed"):
            raise CapacityError(f"--param {args.param}: not a capacity; size hardware or server keys")
        base = load_scenario(args.scenario, seed=args.seed, overrides=overrides)
        rates = sorted({t.rate for t in targets if t.rate is not None}) or sorted(float(r) for r in base.run.rates)
        labels = [s.label for s in base.servers]
        if args.label is not None and args.label not in labels:
            raise CapacityError(f"--label {args.label!r}: no such server; labels: {', '.join(labels)}")
        chosen = [labels.index(args.label)] if args.label else list(range(len(labels)))
        executor = make_executor(args.executor, args.jobs)
    except (CapacityError, ValueError, ExecutorError) as e:
        print(f"simrun capacity: {e}", file=sys.stderr)
        return 2
    except ScenarioError as e:
        print(format_error(e), file=sys.stderr)
        return 2
    if file_sweeps(args.scenario):
        print("note: the scenario's [sweep] is not used here; every other key keeps the file's value", flush=True)
    out = Path(args.out) if args.out else Path("results") / base.name
    cache = open_cache(args, out)
    computed = [0]
    executor = _Counting(executor, computed)
    t0 = time.monotonic()
    answers = []
    try:
        for si in chosen:
            label = labels[si]
            print(f"{label}: smallest {args.param} in {lo}..{hi}" + (f" (step {args.step})" if args.step > 1 else "")
                  + " meeting " + ", ".join(str(t) for t in targets), flush=True)
            search = Search(args.scenario, args, overrides, targets, rates, si, executor, cache, out)
            try:
                search.scenario(lo), search.scenario(hi)  # a bad value fails now, not after a probe
                answer, good, below = search.run(lo, hi, args.step)
            except ScenarioError as e:
                print(format_error(e), file=sys.stderr)
                return 2
            except CapacityError as e:
                print(f"simrun capacity: {e}", file=sys.stderr)
                return 2
            answers.append((label, answer, good, below, search))
            print(_verdict(args.param, lo, hi, label, answer, good, below), flush=True)
    finally:
        if hasattr(executor.inner, "shutdown"):
            executor.inner.shutdown()
    try:
        paths = _write(out, args, targets, answers, lo, hi)
    except OSError as e:
        print(f"simrun capacity: {e}", file=sys.stderr)
        return 1
    print(f"wrote {', '.join(str(p) for p in paths)} ({time.monotonic() - t0:.1f}s)")
    print(cache_note(cache, computed[0]))
    return 0 if all(a[1] is not None for a in answers) else 1


def _verdict(param, lo, hi, label, answer, good, below) -> str:
    lines = []
    if answer is None:
        lines.append(f"ANSWER {label}: no {param} in {lo}..{hi} meets the targets; at {hi}:")
        lines += [f"    {_fmt_check(c)}" for c in below.checks]
        lines.append("    bottleneck: " + bottleneck.summary(below.results).split(": ", 1)[-1])
        return "\n".join(lines)
    lines.append(f"ANSWER {label}: {param} = {answer}")
    lines += [f"    {_fmt_check(c)}" for c in good.checks]
    lines.append("    bottleneck: " + bottleneck.summary(good.results).split(": ", 1)[-1])
    if below is None:
        lines.append(f"    {answer} is the bottom of the range: a smaller value was not tried")
    else:
        lines.append(f"  and {param} = {below.value} fails:")
        lines += [f"    {_fmt_check(c)}" for c in below.checks]
        lines.append("    bottleneck: " + bottleneck.summary(below.results).split(": ", 1)[-1])
    return "\n".join(lines)


def _write(out: Path, args, targets, answers, lo, hi) -> list:
    import csv
    import io

    out.mkdir(parents=True, exist_ok=True)
    doc = {"param": args.param, "range": [lo, hi], "step": args.step, "strict": args.strict,
           "targets": [str(t) for t in targets], "servers": []}
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["label", "param", "value", "met", "target", "offered_rps", "mean", "ci_halfwidth", "target_met",
                "marginal", "replications", "answer"])
    text = []
    for label, answer, good, below, search in answers:
        probes = []
        for value in sorted(search.probes):
            p = search.probes[value]
            probes.append({"value": value, "met": p.met,
                           "checks": [{"target": str(t), "offered_rps": rate, "estimate": est, "met": m,
                                       "marginal": mg} for t, rate, est, m, mg in p.checks],
                           "replications": max(r.replications for r in p.results)})
            for t, rate, est, m, mg in p.checks:
                w.writerow([label, args.param, value, _cell(p.met), str(t), _cell(rate), _cell(est.mean),
                            _cell(est.halfwidth), _cell(m), _cell(mg), max(r.replications for r in p.results),
                            _cell(answer)])
        doc["servers"].append({"label": label, "answer": answer,
                               "fails_below": below.value if (below is not None and answer is not None) else None,
                               "probes": probes})
        text.append(_verdict(args.param, lo, hi, label, answer, good, below))
    body_json = json.dumps(_jsonable(doc), indent=2, allow_nan=False) + "\n"
    body_csv = buf.getvalue()
    body_txt = "\n".join(text) + "\n"
    return [_atomic_write(out / "capacity.csv", lambda f: f.write(body_csv), binary=False),
            _atomic_write(out / "capacity.json", lambda f: f.write(body_json), binary=False),
            _atomic_write(out / "capacity.txt", lambda f: f.write(body_txt), binary=False)]
