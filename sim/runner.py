"""`simrun SCENARIO.toml`: run every server of a scenario at every offered rate, with CIs.

Each (server, rate) point runs `run.replications` independent replications,
then more, one round at a time, while the 95% CI of its throughput is wider
than the target (up to `run.max_replications`). Replications run in parallel
processes; which process runs what never changes a number, since each
replication's seed depends only on the scenario's seed, the replication and the rate.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

from .engine import simulate
from .profile import profile_to_dict
from .report import PointResult, format_table, write_results
from .scenario import ScenarioError, format_error, load_scenario, scenario_to_dict
from .stats import need_more, summarize
from .twin import bounds

_SCENARIO = None  # the scenario in worker processes (inherited through fork)


def _run_one(job):
    i, rate, rep = job
    spec = _SCENARIO.servers[i]
    return job, simulate(_SCENARIO, spec, rate, rep)


class Progress:
    """A one-line progress bar on stderr (a line per 10% when stderr is not a terminal)."""

    def __init__(self, total: int, label: str, enabled: bool = True):
        self.total, self.done, self.label = total, 0, label
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.start = time.monotonic()
        self._last_decile = -1

    def grow(self, n: int):
        self.total += n

    def step(self):
        self.done += 1
        if not self.enabled:
            return
        frac = self.done / max(1, self.total)
        elapsed = time.monotonic() - self.start
        if self.tty:
            bar = "#" * int(30 * frac)
            sys.stderr.write(f"\r{self.label} [{bar:<30}] {self.done}/{self.total} runs {elapsed:5.1f}s")
            if self.done >= self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()
        elif int(frac * 10) > self._last_decile:
            self._last_decile = int(frac * 10)
            print(f"{self.label}: {self.done}/{self.total} runs, {elapsed:.1f}s", file=sys.stderr, flush=True)


def run_scenario(scenario, jobs: int = 1, progress: bool = True) -> list[PointResult]:
    """Simulate every point of `scenario`; results in scenario order (server, then rate)."""
    global _SCENARIO
    _SCENARIO = scenario
    run = scenario.run
    points = [(i, rate) for i in range(len(scenario.servers)) for rate in run.rates]
    reps: dict[tuple, dict[int, dict]] = {p: {} for p in points}
    todo = [(i, rate, r) for (i, rate) in points for r in range(run.replications)]
    bar = Progress(len(todo), scenario.name, progress)
    pool = mp.get_context("fork").Pool(jobs) if jobs > 1 else None
    try:
        while todo:
            results = pool.imap_unordered(_run_one, todo) if pool else map(_run_one, todo)
            for (i, rate, r), metrics in results:
                reps[(i, rate)][r] = metrics
                bar.step()
            todo = []
            for p in points:
                got = reps[p]
                if len(got) < run.max_replications and need_more(
                        summarize([got[r] for r in sorted(got)]), "throughput_mbps", run.ci_target_pct):
                    todo.append((p[0], p[1], len(got)))
            bar.grow(len(todo))
    finally:
        if pool:
            pool.terminate()
            pool.join()
    out = []
    for (i, rate) in points:
        spec = scenario.servers[i]
        got = reps[(i, rate)]
        out.append(PointResult(label=spec.label, architecture=spec.architecture, offered_rps=float(rate),
                               metrics=summarize([got[r] for r in sorted(got)]),
                               bounds=bounds(scenario, spec), replications=len(got)))
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="simrun", description="Run a scenario: every server at every offered rate.")
    ap.add_argument("scenario", help="scenario TOML file (for example scenarios/4cpu.toml)")
    ap.add_argument("--out", help="output folder (default results/<scenario name>/)")
    ap.add_argument("--seed", type=int, help="base seed (overrides run.seed)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel processes (default: all cores)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a scenario value, e.g. hardware.cores=8 or run.rates=1000,2000 (repeatable)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        print("simrun: --jobs must be at least 1", file=sys.stderr)
        return 2
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"simrun: --set {item!r}: expected KEY=VALUE", file=sys.stderr)
            return 2
        overrides[key.strip()] = value.strip()
    try:
        scenario = load_scenario(args.scenario, seed=args.seed, overrides=overrides)
    except ScenarioError as e:
        print(format_error(e), file=sys.stderr)
        return 2
    out_dir = Path(args.out) if args.out else Path("results") / scenario.name
    t = time.monotonic()
    results = run_scenario(scenario, jobs=args.jobs, progress=not args.quiet)
    wall = time.monotonic() - t
    print(format_table(results))
    meta = {"seed": scenario.run.seed, "replications_max": scenario.run.max_replications}
    try:
        paths = write_results(out_dir, results, scenario_to_dict(scenario), profile_to_dict(scenario.profile), meta)
    except OSError as e:
        print(f"simrun: {e}", file=sys.stderr)
        return 1
    print(f"wrote {', '.join(str(p) for p in paths)} ({wall:.1f}s)")
    return 0
