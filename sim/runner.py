"""`simrun SCENARIO.toml`: run every server of a scenario at every offered rate, with CIs; sweeps too.

A point is one server configuration at one offered rate in one sweep point (a
scenario without a sweep is a sweep of one point). Each point runs
`run.replications` independent replications, then more, one at a time, while
the 95% CI of its throughput is wider than the target (up to
`run.max_replications`). Replications run on an executor (sim/executor.py:
this process, forked local processes or a Dask cluster) and are looked up in
and stored to a result cache (sim/resultcache.py) first. Which process runs
what, in which order, and what came from the cache never changes a number:
each replication's seed depends only on the scenario's seed, the replication
and the rate, and a point's decision to run one more replication depends only
on its own replications.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

from . import bottleneck, membus
from .analytic import saturation_rates
from .bottleneck import SweepPointResult, is_detail
from .executor import ExecutorError, Task, make_executor
from .profile import profile_to_dict
from .progress import Progress
from .report import PointResult, format_table, write_results
from .resultcache import ResultCache, replication_key
from .scenario import ScenarioError, format_error, load_scenario, scenario_to_dict
from .stats import need_more, summarize
from .sweep import Point, expand, parse_cli_sweeps, plot_sweep, sweep_summary
from .twin import demands

CACHE_DIR = ".simcache"


def _bounds(scenario, spec) -> tuple[dict[str, float], int]:
    """The twin's saturation rates (the memory bus's too when it is on) and the cores the server can use."""
    ds = demands(scenario, spec)
    rates = saturation_rates(ds)
    cpu = next((d for d in ds if d.resource == "cpu"), None)
    if cpu is not None:
        rates.update(membus.bound(scenario.hardware, cpu.seconds_per_request))
    return rates, int(cpu.servers) if cpu is not None else 0


def samples(got: dict[int, dict]) -> list[dict]:
    """The CI's samples: each replication, or with batch means each batch of each replication."""
    out = []
    for r in sorted(got):
        m = got[r]
        out.extend(m["batches"] if "batches" in m else [m])
    return out


def _point_name(params: dict, label: str, rate: float) -> str:
    swept = " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in params.items())
    return f"{label}{' ' + swept if swept else ''} @ {rate:,.0f}"


def run_points(points: list[Point], executor, cache: ResultCache | None = None,
               progress: Progress | None = None) -> list[SweepPointResult]:
    """Every server at every rate of every point; results in point, server, rate order."""
    progress = progress or Progress("", enabled=False)
    scenarios = [p.scenario for p in points]
    units = [(pi, si, float(rate)) for pi, s in enumerate(scenarios)
             for si in range(len(s.servers)) for rate in s.run.rates]
    reps: dict[tuple, dict[int, dict]] = {u: {} for u in units}
    outstanding = {u: 0 for u in units}
    results: dict[tuple, SweepPointResult] = {}

    bounds_of: dict[tuple[int, int], tuple[dict[str, float], int]] = {}

    def bounds(pi, si):
        if (pi, si) not in bounds_of:
            bounds_of[pi, si] = _bounds(scenarios[pi], scenarios[pi].servers[si])
        return bounds_of[pi, si]

    def cost(u):
        """Roughly the work of one run: replies simulated (the offered rate, or the twin's bound when
        it is lower), plus the sessions under way set up at the start (about in proportion to the rate)."""
        run = scenarios[u[0]].run
        served = min([u[2]] + [1.2 * r for r in bounds(u[0], u[1])[0].values() if r > 0 and math.isfinite(r)])
        return served * (run.warmup_s + run.duration_s) + 0.4 * u[2]

    def key(u, r):
        s = scenarios[u[0]]
        return replication_key(s, s.servers[u[1]], u[2], r)

    def lookup(u, r):
        if cache is None:
            return None
        return cache.get(key(u, r))

    def finish(u):
        pi, si, rate = u
        s = scenarios[pi]
        spec = s.servers[si]
        got = reps[u]
        summary = summarize(samples(got))
        metrics = {k: v for k, v in summary.items() if not is_detail(k)}
        detail = {k: v for k, v in summary.items() if is_detail(k)}
        b, usable = bounds(pi, si)
        res = SweepPointResult(label=spec.label, architecture=spec.architecture, offered_rps=rate, metrics=metrics,
                               bounds=b, replications=len(got), params=dict(points[pi].params), detail=detail,
                               usable_cores=usable, cpu_quota=s.hardware.cpu_quota)
        results[u] = res
        thr, rps = metrics.get("throughput_mbps"), metrics.get("reply_rps")
        text = f"{len(got)} runs"
        if thr is not None:
            text += f", {thr.mean:.1f} ± {thr.halfwidth:.1f} Mbps"
        if rps is not None:
            text += f", {rps.mean:,.0f} replies/s"
        progress.point_done(u, text)

    def decide(u):
        """Another replication while the CI is too wide (from the cache when it is there), or finish."""
        run = scenarios[u[0]].run
        while True:
            got = reps[u]
            if len(got) >= run.max_replications or not need_more(
                    summarize(samples(got)), "throughput_mbps", run.ci_target_pct):
                finish(u)
                return
            r = len(got)
            progress.plan_more(u)
            m = lookup(u, r)
            if m is None:
                outstanding[u] = 1
                executor.submit(Task(u[0], u[1], u[2], r))
                progress.submitted(u)
                return
            got[r] = m
            progress.run_done(u, cached=True)

    executor.open(scenarios)
    try:
        first: list[tuple] = []
        for u in units:
            s = scenarios[u[0]]
            progress.add_point(u, _point_name(points[u[0]].params, s.servers[u[1]].label, u[2]), s.run.replications)
            for r in range(s.run.replications):
                m = lookup(u, r)
                if m is None:
                    first.append((u, r))
                    outstanding[u] += 1
                else:
                    reps[u][r] = m
                    progress.run_done(u, cached=True)
        # longest runs first, so that no worker idles at the end
        costs = {u: cost(u) for u in units if outstanding[u]}
        first.sort(key=lambda ur: -costs[ur[0]])
        for u, r in first:
            executor.submit(Task(u[0], u[1], u[2], r))
            progress.submitted(u)
        for u in units:
            if outstanding[u] == 0:
                decide(u)
        while any(outstanding.values()):
            task, m = executor.next_done()
            u = (task.point, task.server, task.rate)
            reps[u][task.rep] = m
            if cache is not None:
                s = scenarios[u[0]]
                cache.put(key(u, task.rep), m, {"scenario": s.name, "label": s.servers[u[1]].label,
                                                "rate": u[2], "rep": task.rep, "params": points[u[0]].params})
            outstanding[u] -= 1
            progress.run_done(u)
            if outstanding[u] == 0:
                decide(u)
    finally:
        executor.close()
        progress.close()
    return [results[u] for u in units]


def run_scenario(scenario, jobs: int = 1, progress: bool = True, *, executor=None,
                 cache: ResultCache | None = None) -> list[PointResult]:
    """Simulate every point of `scenario`; results in scenario order (server, then rate)."""
    ex = executor or make_executor(None, jobs)
    return run_points([Point({}, scenario)], ex, cache, Progress(scenario.name, progress))


def parse_overrides(items: list[str]) -> dict[str, str]:
    """`--set KEY=VALUE` options; ValueError with the offending item."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def add_common_options(ap: argparse.ArgumentParser) -> None:
    """The options `simrun` and `simrun capacity` share."""
    ap.add_argument("--seed", type=int, help="base seed (overrides run.seed)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                    help="local worker processes (default: all cores; 1 runs in this process)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a scenario value, e.g. hardware.cores=8 or run.rates=1000,2000 (repeatable)")
    ap.add_argument("--executor", default="local", metavar="local|dask://HOST:PORT",
                    help="where runs happen: local processes (default) or a Dask distributed scheduler")
    ap.add_argument("--cache", metavar="DIR", help=f"result cache folder (default: {CACHE_DIR}/ in the output folder)")
    ap.add_argument("--no-cache", action="store_true", help="neither read nor write the result cache")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")


def open_cache(args, out_dir: Path) -> ResultCache | None:
    if args.no_cache:
        return None
    cache = ResultCache(Path(args.cache) if args.cache else out_dir / CACHE_DIR)
    cache.sweep_stale()
    return cache


def cache_note(cache: ResultCache | None, computed: int) -> str:
    if cache is None:
        return f"cache: off, {computed} runs computed"
    return f"cache: {cache.hits} runs reused, {computed} computed ({cache.root})"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="simrun", description="Run a scenario: every server at every offered rate, over every sweep point.",
        epilog="Sweeps: a [sweep] table in the scenario or --sweep KEY=V1,V2 (or KEY=LO..HI), repeatable; "
               "the points are the cross product. Besides results.csv/json and plots, the output folder gets "
               "bottleneck.csv and bottleneck.txt.")
    ap.add_argument("scenario", help="scenario TOML file (for example scenarios/4cpu.toml)")
    ap.add_argument("--out", help="output folder (default results/<scenario name>/)")
    ap.add_argument("--sweep", action="append", default=[], metavar="KEY=VALUES",
                    help="sweep a scenario key over values, e.g. hardware.cores=1,2,4,8 (repeatable: cross product)")
    add_common_options(ap)
    args = ap.parse_args(argv)
    if args.jobs < 1:
        print("simrun: --jobs must be at least 1", file=sys.stderr)
        return 2
    try:
        overrides = parse_overrides(args.set)
    except ValueError as e:
        print(f"simrun: {e}", file=sys.stderr)
        return 2
    try:
        points = expand(args.scenario, seed=args.seed, overrides=overrides,
                        cli_sweeps=parse_cli_sweeps(args.sweep, args.scenario))
        swept = bool(points[0].params)
        base = load_scenario(args.scenario, seed=args.seed, overrides=overrides) if swept else points[0].scenario
    except ScenarioError as e:
        print(format_error(e), file=sys.stderr)
        return 2
    try:
        executor = make_executor(args.executor, args.jobs)
    except ExecutorError as e:
        print(f"simrun: {e}", file=sys.stderr)
        return 2
    out_dir = Path(args.out) if args.out else Path("results") / base.name
    cache = open_cache(args, out_dir)
    computed = [0]
    t = time.monotonic()
    try:
        results = run_points(points, _Counting(executor, computed), cache, Progress(base.name, not args.quiet))
    finally:
        if hasattr(executor, "shutdown"):
            executor.shutdown()
    wall = time.monotonic() - t
    print(format_table(results))
    print()
    print(bottleneck.summary(results))
    meta = {"seed": base.run.seed, "replications_max": base.run.max_replications}
    if swept:
        meta["sweep"] = sweep_summary(points)
    try:
        paths = write_results(out_dir, results, scenario_to_dict(base), profile_to_dict(base.profile), meta)
        paths += bottleneck.write(out_dir, results)
        paths += plot_sweep(out_dir, results, base.name)
    except OSError as e:
        print(f"simrun: {e}", file=sys.stderr)
        return 1
    print(f"wrote {', '.join(str(p) for p in paths)} ({wall:.1f}s)")
    print(cache_note(cache, computed[0]))
    return 0


class _Counting:
    """An executor that counts the runs it is given (for the cache note)."""

    def __init__(self, inner, counter: list):
        self.inner, self.counter = inner, counter

    def open(self, scenarios):
        self.inner.open(scenarios)

    def submit(self, task):
        self.counter[0] += 1
        self.inner.submit(task)

    def next_done(self):
        return self.inner.next_done()

    def close(self):
        self.inner.close()

