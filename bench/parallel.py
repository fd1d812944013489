"""Parallel speed-up of a sweep on this machine, and what Dask costs per point.

    python bench/parallel.py [--repeats 3] [--points 8] [--skip-dask] [--json OUT]

1. Speed-up: one sweep (a what-if over NIC counts and two servers, runs of
   about a second each) run with --jobs 1 (in this process) and --jobs 2 (two
   forked workers), alternately, `--repeats` times; the speed-up is the ratio of
   the median wall times. Target: at least 1.8x on two cores. The machine may be
   shared, so each timing comes with the CPUs the runs obtained (CPU time of
   this process and its workers over wall time) and the kernel's CPU pressure;
   the ratio of CPU-seconds shows what parallel running costs in extra work, and
   list-scheduling the measured run times in the pool's order gives the best
   speed-up two idle cores would allow.
2. Dask overhead: a sweep of many tiny points (a few milliseconds of simulation
   each) run in this process and on a Dask LocalCluster of one single-threaded
   worker process on 127.0.0.1; the overhead per point is the difference of the
   median wall times divided by the number of runs (a run is one replication of
   one point). The one-time cost of connecting and sending the scenarios is
   timed apart.

Every run checks that the three executors give the same numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from sim.executor import DaskExecutor, InlineExecutor, LocalExecutor  # noqa: E402
from sim.report import csv_text  # noqa: E402
from sim.runner import run_points  # noqa: E402
from sim.sweep import expand  # noqa: E402

SCENARIO = """
[scenario]
name = "bench-parallel"
profile = "study-xeon"

[hardware]
cores = 2
nic_gbps = 0.1

[workload]
directories = 40

[run]
rates = [{rate}]
warmup_s = {warmup}
duration_s = {duration}
replications = 2
max_replications = 2
seed = 3

[sweep]
"hardware.nics" = [{nics}]

[[server]]
label = "sped"
architecture = "sped"

[[server]]
label = "symped-2p"
architecture = "symped"
processes = 2
"""


def write_scenario(folder: Path, name: str, **kw) -> Path:
    p = folder / name
    p.write_text(SCENARIO.format(**kw))
    return p


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed(points, executor, cpus: list | None = None) -> tuple[float, str]:
    """Wall time of one sweep (and, into `cpus`, the CPUs this process and its workers obtained)."""
    c, t = _cpu(), time.perf_counter()
    results = run_points(points, executor)
    wall = time.perf_counter() - t
    if cpus is not None:
        cpus.append((_cpu() - c) / wall)
    return wall, csv_text(results)


def cpu_pressure() -> str:
    """The kernel's CPU pressure: the share of time some runnable task waited for a CPU (Linux PSI)."""
    try:
        with open("/proc/pressure/cpu") as f:
            return f.readline().split()[1].split("=")[1] + "%"
    except (OSError, IndexError):
        return "unknown"


class TimedInline(InlineExecutor):
    """Runs tasks in this process and keeps each one's wall time, in the order they were submitted."""

    def __init__(self):
        super().__init__()
        self.times: list[float] = []

    def next_done(self):
        t = time.perf_counter()
        got = super().next_done()
        self.times.append(time.perf_counter() - t)
        return got


def list_schedule(times: list[float], workers: int) -> float:
    """Makespan of the tasks handed in order to the first free worker (what the process pool does)."""
    free = [0.0] * workers
    for t in times:
        i = free.index(min(free))
        free[i] += t
    return max(free)


def speedup(folder: Path, repeats: int, npoints: int) -> dict:
    path = write_scenario(folder, "speed.toml", rate=5000, warmup=0.5, duration=2.5,
                          nics=", ".join(str(n) for n in range(1, npoints // 2 + 1)))
    points = expand(path)
    runs = sum(len(p.scenario.servers) * len(p.scenario.run.rates) * 2 for p in points)
    t1, t2, csvs = [], [], set()
    cpus = {1: [], 2: []}
    for i in range(repeats):
        for jobs, into in ((1, t1), (2, t2)) if i % 2 == 0 else ((2, t2), (1, t1)):
            ex = TimedInline() if jobs == 1 else LocalExecutor(jobs)
            wall, text = timed(points, ex, cpus[jobs])
            if jobs == 1:
                task_times = ex.times
            into.append(wall)
            csvs.add(text)
            print(f"  --jobs {jobs}: {wall:6.2f} s, {cpus[jobs][-1]:.2f} CPUs obtained, "
                  f"CPU pressure (10 s) {cpu_pressure()}", flush=True)
    m1, m2 = statistics.median(t1), statistics.median(t2)
    c1, c2 = statistics.median(cpus[1]), statistics.median(cpus[2])
    balance = sum(task_times) / list_schedule(task_times, 2)
    return {"points": len(points) * 2, "runs": runs, "jobs1_s": t1, "jobs2_s": t2, "median_jobs1_s": m1,
            "median_jobs2_s": m2, "speedup": m1 / m2, "identical_csv": len(csvs) == 1,
            "cpus_obtained_jobs1": cpus[1], "cpus_obtained_jobs2": cpus[2],
            "cpu_seconds_ratio": (m1 * c1) / (m2 * c2), "load_balance_bound": balance}


def dask_overhead(folder: Path, repeats: int) -> dict:
    from distributed import LocalCluster

    path = write_scenario(folder, "tiny.toml", rate=200, warmup=0.05, duration=0.05,
                          nics=", ".join(str(n) for n in range(1, 21)))
    points = expand(path)
    runs = sum(len(p.scenario.servers) * len(p.scenario.run.rates) * 2 for p in points)
    local, remote, csvs = [], [], set()
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        t = time.perf_counter()
        ex = DaskExecutor(cluster.scheduler_address.replace("tcp://", "dask://"))
        connect = time.perf_counter() - t
        t = time.perf_counter()
        ex.open([p.scenario for p in points])
        scatter = time.perf_counter() - t
        ex.close()
        try:
            timed(points, ex)  # warm the worker (imports, first scenario)
            for _ in range(repeats):
                wall, text = timed(points, InlineExecutor())
                local.append(wall)
                csvs.add(text)
                wall, text = timed(points, ex)
                remote.append(wall)
                csvs.add(text)
                print(f"  in process {local[-1]:6.3f} s, dask {remote[-1]:6.3f} s", flush=True)
        finally:
            ex.shutdown()
    ml, mr = statistics.median(local), statistics.median(remote)
    return {"runs": runs, "local_s": local, "dask_s": remote, "connect_s": connect, "scatter_s": scatter,
            "overhead_ms_per_run": 1e3 * (mr - ml) / runs, "identical_csv": len(csvs) == 1}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="timings per configuration (medians are reported)")
    ap.add_argument("--points", type=int, default=8, help="sweep points of the speed-up sweep (even)")
    ap.add_argument("--skip-dask", action="store_true", help="only the local speed-up")
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.points < 2:
        print("parallel.py: --repeats >= 1 and --points >= 2", file=sys.stderr)
        return 2
    print(f"cpus: {os.cpu_count()}, load average: {', '.join(f'{x:.2f}' for x in os.getloadavg())}, "
          f"CPU pressure (10 s): {cpu_pressure()}")
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print(f"speed-up: {args.points} points x 2 replications, --jobs 1 against --jobs 2")
        s = out["speedup"] = speedup(folder, args.repeats, args.points)
        print(f"speed-up {s['speedup']:.2f}x (median {s['median_jobs1_s']:.2f} s -> {s['median_jobs2_s']:.2f} s, "
              f"{s['runs']} runs; target >= 1.8x), identical results: {s['identical_csv']}; CPUs obtained, median: "
              f"{statistics.median(s['cpus_obtained_jobs1']):.2f} with --jobs 1, "
              f"{statistics.median(s['cpus_obtained_jobs2']):.2f} with --jobs 2 (below 2: the machine is shared)")
        print(f"CPU-seconds of the sweep, --jobs 1 over --jobs 2: {s['cpu_seconds_ratio']:.2f} (1.0: running in "
              f"parallel costs no extra work); the pool's order of the measured run times allows at most "
              f"{s['load_balance_bound']:.2f}x on two idle cores")
        if not args.skip_dask:
            print("dask overhead: 40 tiny points x 2 replications, in this process against one Dask worker process")
            d = out["dask"] = dask_overhead(folder, args.repeats)
            print(f"dask overhead {d['overhead_ms_per_run']:.1f} ms per run (one replication of one point); "
                  f"connect {d['connect_s'] * 1e3:.0f} ms, scenarios to the worker {d['scatter_s'] * 1e3:.0f} ms "
                  f"once per sweep; identical results: {d['identical_csv']}")
    print(f"load average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
