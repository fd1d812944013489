"""`simrun calibrate`: measure a live architecture here and write a cost profile.

    simrun calibrate [--arch sped] [--rates 300,600,...] [--duration 10] [--directories 4]
                     [--out calibration-here.toml] [--quick]

Runs the live server (traced, pinned to core 0) under httperf (core 1) at
each offered rate, fits every traced operation's cost (fixed + per unit) to
its CPU-sampled calls, gives the CPU the traces do not see (interpreter work
between calls, softirq time on the server's core) to the operations by
regression on the runs' counts (calibration/fit.py), measures what no trace
shows (kernel context switch, thread hand-off; the disk with --disk), and
writes a profile in the format of sim/profiles/study-xeon.toml with its
provenance: kernel, CPU, Python, date, load average, and the fit residuals.
"""
from __future__ import annotations

import argparse
import datetime
import dataclasses
import math
import os
import signal
import statistics
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field

from sim.config import Footprint, Hardware, Profile
from sim.fileset import FileSet
from sim.operations import Cost
from sim.profile import load_profile, write_profile
from sim.workload import Workload

from real.httperf import CONNS_PER_INSTANCE, FD_LIMIT

from . import fit as fitting
from . import micro
from .cgroup import CgroupError, cpu_share
from .measure import (LiveServer, MeasureError, load_average, measure_run, op_totals, rising_sweep, rss_kb, run_counts,
                      settle, sustained, sweep, utilisation)

# the calibration workload: the study's sessions with short think times, so one httperf on one core
# offers enough load to saturate a Python server (the study's 3 s between bursts would need
# thousands of open connections per hundred requests/s)
THINK_WITHIN_S = 0.02
THINK_BETWEEN_S = 0.2
CPU_FRACTION = 0.15
# operations no live trace here measures: taken from this bundled profile, and said so in the provenance
FALLBACK_PROFILE = "study-xeon"
EVENT_OPS = ("epoll_wait", "poll", "select")
# the most a CPU sample may overstate its call by: a few cold clock_gettime system calls
MAX_SAMPLE_OVERSTATEMENT_S = 5e-6
# the busy share below which runs are left out of the fit. 0: every run that kept up. Before the
# wake-ups were counted, only runs at least 60 % busy were fitted, because at light load nearly
# every request paid a wake-up that a constant per pass could not follow; the wake-up regressor now does.
MIN_UTILISATION = 0.0


class CalibrationError(Exception):
    pass


def workload_for(directories: int, think_within=THINK_WITHIN_S, think_between=THINK_BETWEEN_S) -> Workload:
    """The live runs' workload, as the simulator is to replay it: with httperf's descriptor limit
    (past saturation one httperf fills its 1,022 connections and fails the sessions beyond them)."""
    return Workload(fileset=FileSet(directories=directories), think_within_burst_s=think_within,
                    think_between_bursts_s=think_between, generator_fd_limit=FD_LIMIT,
                    generator_sessions_per_process=CONNS_PER_INSTANCE)


def machine() -> dict:
    """What the profile was measured on."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_mb = 0.0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_mb = float(line.split()[1]) / 1024
    return {"host": platform.node(), "kernel": platform.release(), "cpu_model": cpu, "cpus": os.cpu_count(),
            "memory_mb": round(mem_mb), "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()}


@dataclass
class Calibration:
    profile: Profile
    provenance: dict
    runs: list = field(default_factory=list)
    fits: dict = field(default_factory=dict)
    unseen: object = None


def file_system_of(path: str, mountinfo: str = "/proc/self/mountinfo") -> str:
    """The model's `hardware.file_system` for the file system holding `path`: "ext3" for ext2 and
    ext3 (indirect blocks), "extents" for the others (ext4, xfs, btrfs, tmpfs with no disk at all)."""
    path = os.path.realpath(path)
    best, fstype = "", ""
    try:
        with open(mountinfo, encoding="utf-8") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                mount = left.split()[4].replace("\\040", " ")
                inside = path == mount or path.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best):
                    best, fstype = mount, right.split()[0]
    except (OSError, IndexError):
        pass
    return "ext3" if fstype in ("ext2", "ext3") else "extents"


def build_profile(fits: dict, unseen, extras: dict, hardware: Hardware, footprint: Footprint, name: str,
                  description: str, event_op: str, softirq: bool = False,
                  event_split: bool = False) -> tuple[Profile, dict]:
    """Costs from the fits, the unseen CPU spread over its operations, the rest measured or fallen back.

    Without `softirq`, the kernel's network work outside the process (net_tx, net_conn) is zero: it
    was not measured into the costs (on a shared core it cannot be told apart from other loads,
    and a CPU quota does not charge it to the server).

    With `event_split`, the regression was fitted with the event calls' fixed part left out of the
    traced CPU (fit.without_event_calls): their fixed cost is then the regression's per-pass CPU
    alone, and the wake-up its own operation, so no CPU is charged twice."""
    fallback = load_profile(FALLBACK_PROFILE)
    # the samples give the split between operations, /proc the level (the regression's scale)
    scale = unseen.coef.get("traced") if unseen is not None else None
    k = 1.0 if scale is None else scale
    costs: dict[str, Cost] = {op: Cost(f.fixed * k, f.per_unit * k) for op, f in fits.items()}
    if not softirq:
        costs.update(net_tx=Cost(), net_conn=Cost())
    if event_split and event_op in costs:
        costs[event_op] = Cost(0.0, costs[event_op].per_unit)
    # the event mechanism actually traced stands for the others' call overhead
    for op in EVENT_OPS:
        if op not in costs and event_op in costs:
            costs[op] = Cost(costs[event_op].fixed, fallback.cost(op).per_unit)
    added = {}
    for reg, (op, part) in fitting.REGRESSORS.items():
        if part == "scale" or reg not in (unseen.coef if unseen is not None else {}):
            continue
        value = unseen.coef.get(reg, 0.0) if unseen is not None else 0.0
        targets = EVENT_OPS if op == "event" else tuple(fits) if op == "*" else (op,)
        for t in targets:
            c = costs.get(t, Cost())
            costs[t] = (Cost(max(0.0, c.fixed + value), c.per_unit) if part == "fixed"
                        else Cost(c.fixed, max(0.0, c.per_unit + value)))
        added[reg] = value
    for op, value in extras.items():
        costs[op] = Cost(value, 0.0)
    fell_back = []
    for op, c in fallback.costs.items():
        if op not in costs:
            costs[op] = c
            fell_back.append(op)
    prof = Profile(name=name, costs=costs, hardware=hardware, footprint=footprint, description=description)
    return prof, {"traced_scale": scale if scale is not None else 1.0,
                  "traced_scale_all_runs": (unseen.coef.get("traced_all_runs", 1.0) if unseen is not None else 1.0),
                  "traced_scale_top_two": (unseen.coef.get("traced_top_two", 1.0) if unseen is not None else 1.0),
                  "unseen_added_us": {k: v * 1e6 for k, v in added.items()}, "from_fallback": fell_back}


def probe_capacity(srv: LiveServer, workload: Workload, cpu_fraction: float, rate: float, duration_s: float,
                   seed: int = 0, log=print) -> tuple[dict, float]:
    """One light run and the capacity the utilisation law gives from it (capacity = CPU available /
    CPU per reply). It underestimates: the CPU per reply falls as the load rises (more requests
    per wake-up), so it only sets where a rising sweep starts."""
    r = measure_run(srv.pid, srv.port, workload, rate, duration_s, seed=seed + 1000, host=srv.host,
                    trace_prefix=srv.trace_prefix, core=srv.core)
    settle(srv.port, srv.pid)
    if r["replies"] <= 0 or r["server_cpu_s"] <= 0:
        raise CalibrationError(f"the probe run at {rate:g} req/s got no replies")
    capacity = cpu_fraction * r["replies"] / r["server_cpu_s"]
    log(f"  probe at {rate:.0f} req/s: {1e6 * r['server_cpu_s'] / r['replies']:.1f} us CPU per reply, "
        f"capacity at least {capacity:.0f} replies/s on {cpu_fraction:g} of the core")
    return r, capacity


def tracing_ratio(pairs) -> float:
    """The median over `pairs` (rate, traced us, untraced us, ...) of untraced over traced CPU per reply.

    The median, not the mean: a host whose speed drifts can slow one pair down by itself, and one
    pair that met a slow spell (2026-11-27 04:51: 48.8 us traced, 61.7 untraced, where the pair
    beside it agreed) would otherwise set every cost by itself."""
    return statistics.median(b / a for _, a, b, *_ in pairs) if pairs else 1.0


def abba_pairs(rates, run_traced, run_untraced) -> list:
    """(rate, traced runs, untraced runs) at each rate, run as traced, untraced, untraced, traced:
    a drift of the host that is linear over the four runs then weighs both sides alike.

    Why: the host's speed drifts by 10 % and more over minutes (calibration/drift.py). Until
    2026-11-27 the pairs compared the traced sweep with untraced runs minutes after it, and in the
    08:34 run all three read the untraced server 14-25 % dearer, so every cost rose by x1.167. Side
    by side (09:23, live sped at 15 % of a core, both servers up, four pairs alternated), untraced
    over traced was 0.92-0.99 at the busiest sustained rate, and past saturation the second run of
    each pair was the dearer one by 2-9 %, whichever server it was."""
    pairs = []
    for rate in rates:
        t1 = run_traced(rate)
        u1 = run_untraced(rate)
        u2 = run_untraced(rate)
        t2 = run_traced(rate)
        pairs.append((rate, (t1, t2), (u1, u2)))
    return pairs


def per_reply(runs, key: str = "server_cpu_s") -> float:
    """A run figure (the server's CPU seconds by default) per reply over `runs` together (0 with no replies)."""
    replies = sum(r["replies"] for r in runs)
    return sum(r.get(key, 0) for r in runs) / replies if replies else 0.0


def untraced_ratio(arch, root, server_args, workload, rates, duration_s, seed, cgroup_procs, log,
                   wakeup_s: float = 0.0):
    """Median over `rates` of (untraced CPU per reply) / (traced CPU per reply), from /proc, the same
    server and settings traced and not, both running and driven in turn (`abba_pairs`,
    `tracing_ratio`); the mean ratio with the wake-ups (`wakeup_s` each) taken off both sides, for
    the record; and the pairs they came from.

    The plain ratio is the one used. Taking the wake-ups off looks right (tracing adds to the calls,
    not to a wake-up), but at one offered rate the traced server may be saturated and the
    untraced one not, so their wake-ups per reply differ 3 to 20 times and the comparison then
    rests on the wake-up's fitted cost: it gave 0.67-0.77 on 2026-11-26, where the tracer's own cost
    per call (about 0.2 us a call, some ten calls a reply) is a few per cent."""
    tracedir = tempfile.mkdtemp(prefix="calib-pair-")
    traced = LiveServer(arch, root, list(server_args), trace_prefix=os.path.join(tracedir, arch),
                        cgroup_procs=cgroup_procs)
    untraced = LiveServer(arch, root, list(server_args), cgroup_procs=cgroup_procs)
    pairs = []
    try:
        with traced, untraced:
            time.sleep(0.5)

            def run(srv):
                return lambda rate: sweep(srv, workload, [rate], duration_s, seed=seed + 2000, log=log)[0]

            for rate, t, u in abba_pairs(rates, run(traced), run(untraced)):
                a, b = per_reply(t), per_reply(u)
                if a > 0 and b > 0:
                    pairs.append((rate, 1e6 * a, 1e6 * b, per_reply(t, "server_wakeups"),
                                  per_reply(u, "server_wakeups")))
    finally:
        shutil.rmtree(tracedir, ignore_errors=True)
    if not pairs:
        return 1.0, 1.0, pairs
    ratio = tracing_ratio(pairs)
    off = [(b - 1e6 * wakeup_s * wb) / (a - 1e6 * wakeup_s * wa) for _, a, b, wa, wb in pairs
           if a > 1e6 * wakeup_s * wa and b > 1e6 * wakeup_s * wb]
    ratio_off = sum(off) / len(off) if off else math.nan
    log("  tracing overhead: CPU per reply traced / untraced, side by side " + ", ".join(
        f"{a:.1f} / {b:.1f} us ({wa:.3f} / {wb:.3f} wake-ups) at {rate:g} req/s" for rate, a, b, wa, wb in pairs)
        + f": costs x{ratio:.3f} (wake-ups taken off both: x{ratio_off:.3f}, not used)")
    return ratio, ratio_off, pairs


def run_figures(runs, counts, fitted, cpu_fraction: float, residual: list) -> dict:
    """Per run, the figures the regression saw (columns, one entry per run, in run order)."""
    def per_reply(x, r):
        return round(x / r["replies"], 4) if r["replies"] else 0.0
    return {
        "offered_rps": [float(r["offered_rps"]) for r in runs],
        "reply_rps": [round(r["reply_rps"], 1) for r in runs],
        "utilisation": [round(utilisation(r, cpu_fraction), 3) for r in runs],
        "fitted": [i in fitted for i in range(len(runs))],
        "replies": [int(r["replies"]) for r in runs],
        "wakeups": [int(r.get("server_wakeups", 0)) for r in runs],
        "passes": [int(c.loops) for c in counts],
        "process_cpu_s": [round(c.process, 5) for c in counts],
        "traced_cpu_s": [round(c.traced, 5) for c in counts],
        "event_call_cpu_s": [round(c.event_traced, 5) for c in counts],
        "event_units": [int(c.event_units) for c in counts],
        "proc_cpu_per_reply_us": [per_reply(1e6 * r["server_cpu_s"], r) for r in runs],
        "wakeups_per_reply": [per_reply(r.get("server_wakeups", 0), r) for r in runs],
        "passes_per_reply": [per_reply(c.loops, r) for c, r in zip(counts, runs)],
        "preemptions_per_reply": [per_reply(r.get("server_preemptions", 0), r) for r in runs],
        "core_idle_entries_per_reply": [per_reply(r.get("core_idle_entries", 0), r) for r in runs],
        "load_avg": [r["load_avg"] for r in runs],
        "residual_s": [round(v, 5) for v in residual],
    }


def charged_counts(runs, raw_counts, fits) -> list:
    """The runs' regressors with `traced` the CPU the profile will charge for their calls
    (fit.charged_cpu), so that the scale fitted on it is the scale of the profile's costs."""
    return [dataclasses.replace(c, traced=fitting.charged_cpu(op_totals(r), fits, EVENT_OPS))
            for c, r in zip(raw_counts, runs)]


def process_cpu_fits(counts, raw_counts, base: tuple, wake_s: float) -> tuple[str, dict]:
    """The process CPU regressions: the measured wake-up (`wake_s` a voluntary switch) taken off
    first, then the traced CPU's scale, with a cost per loop pass where it lowers the leave-one-out
    error. Returns the chosen fit's name and every fit, the wake-up's coefficient set to `wake_s`
    in the candidates; the fits with the wake-up fitted, and the old fit, are added for the record."""
    woken = [dataclasses.replace(c, process=c.process - wake_s * c.wakeups) for c in counts]
    chosen, fits = fitting.choose_unseen(woken, {"passes": base + ("loops",), "no passes": base})
    for m in fits.values():
        m["fit"].coef["wakeups"] = wake_s
    fits["wake-ups fitted (not chosen)"] = fitting.choose_unseen(counts, {"w": base + ("wakeups",)})[1]["w"]
    fits["wake-ups and passes fitted (not chosen)"] = fitting.choose_unseen(
        counts, {"wp": base + ("wakeups", "loops")})[1]["wp"]
    fits["old: passes, event calls traced (not chosen)"] = fitting.choose_unseen(
        raw_counts, {"old": base + ("loops",)})[1]["old"]
    return chosen, fits


def calibrate(arch: str, root: str, workload: Workload, rates, duration_s: float, *, seed: int = 0,
              server_args=(), disk_dir: str | None = None, log=print, name: str = "calibrated-here",
              cpu_fraction: float = 1.0, cgroup_procs: str | None = None, softirq: bool = False,
              probe_rps: float = 400.0, max_runs: int = 8, min_util: float = MIN_UTILISATION,
              growth: float = 1.3, untraced_check: bool = True, pair_rates: int = 3) -> Calibration:
    """Measure `arch` at `rates` and fit a profile.

    With rates None: a light probe run, then a rising sweep from the capacity the probe suggests
    (an underestimate), x`growth` each run, until the server no longer keeps up. The costs are
    fitted on the runs that kept the server at least `min_util` busy and on which it still kept up
    (in overload every call costs more: see `busy` below). Light runs are fitted too: the CPU per
    reply they add is mostly wake-ups, which the regression counts apart (the kernel's voluntary
    context switches); the level is then taken again on the run that served the most replies, nearest
    the saturation that sets the peak."""
    tracedir = tempfile.mkdtemp(prefix="calib-trace-")
    try:
        srv = LiveServer(arch, root, list(server_args), trace_prefix=os.path.join(tracedir, arch),
                         cgroup_procs=cgroup_procs)
        with srv:
            time.sleep(0.5)
            if rates is None:
                probe, capacity = probe_capacity(srv, workload, cpu_fraction, probe_rps, duration_s, seed, log)
                runs = [probe] + rising_sweep(srv, workload, capacity, duration_s, growth=growth, max_runs=max_runs,
                                              seed=seed, log=log)
            else:
                runs = sweep(srv, workload, rates, duration_s, seed=seed, log=log)
            rates = [r["offered_rps"] for r in runs]
            footprint_kb = rss_kb(srv.pid)
    finally:
        shutil.rmtree(tracedir, ignore_errors=True)
    all_runs = runs
    # busy but still keeping up: in overload (a full listen queue, timeouts) every call costs more,
    # which no operation of the vocabulary stands for
    busy = [r for r in runs if utilisation(r, cpu_fraction) >= min_util and sustained(r)]
    if len(busy) < 2:
        busy = sorted((r for r in runs if sustained(r)), key=lambda r: -r["reply_rps"])[:2]
    runs = busy if len(busy) >= 2 else runs
    chosen = ", ".join(f"{r['offered_rps']:g}" for r in runs)
    log(f"  fitting on {len(runs)} of {len(all_runs)} runs ({chosen} req/s; "
        + (f"sustained, the server busiest)" if runs is busy else "fewer than two sustained: all)"))
    traces = [t for r in runs for t in r["trace"]]
    fits = fitting.fit_operations(traces)
    if "parse" not in fits:
        raise CalibrationError(f"the {arch} traces hold no parsed requests: did the load reach the server?")
    event_op = next((op for op in EVENT_OPS if op in fits), "epoll_wait")
    raw_counts = [run_counts(r, softirq) for r in runs]
    # The process's CPU = traced CPU x scale + per wake-up + per loop pass. A sampled poll that slept
    # holds the kernel's wake-up path in its CPU, so the event call's fixed part is taken out of the
    # traced CPU and left to the regression: CPU per pass of the loop (the call that returns at once,
    # the dispatch around it). The wake-up (a voluntary context switch: the call slept) is measured
    # apart (micro.wakeup_s) and taken off the process's CPU first: fitted beside the passes it is
    # not identified, since nearly every pass that sleeps is one wake-up (on 2026-11-26 the fits gave
    # it 0, 67 and 92 us on similar runs, and the threaded model, whose threads wake without passes,
    # moved 40 % with it). Per byte and per connection kernel work outside the process only when
    # the core's softirq time is counted. The fits with the wake-up fitted, and the old fit (event
    # calls in the traced CPU, a cost per pass), are kept in the provenance for comparison.
    per_event = fits[event_op].per_unit if event_op in fits else 0.0
    counts = fitting.without_event_calls(raw_counts, per_event)
    charged = charged_counts(runs, raw_counts, fits)
    base = ("traced", "bytes", "connections") if softirq else ("traced",)
    if not any(c.wakeups for c in counts):
        raise CalibrationError(f"no wake-ups counted for the {arch} server: is /proc/PID/task readable?")
    wake_s = micro.wakeup_s()
    log(f"  wake-up from an idle core (a blocked recv woken from the other core): {wake_s * 1e6:.1f} us")
    chosen_name, fitted_models = process_cpu_fits(counts, raw_counts, base, wake_s)
    # On the CPU the profile charges (the same per reply at every load) the fall of the CPU per
    # reply with the load goes to the passes alone: 67 us a pass at 18:25 on 2026-11-26, a scale of
    # 0.21 and twice the leave-one-out error. So the shape is fitted on each run's own samples,
    # which fall with the load too, and only the level (below) on what the profile charges.
    record = fitting.choose_unseen([dataclasses.replace(c, process=c.process - wake_s * c.wakeups) for c in charged],
                                   {"c": base + ("loops",)})[1]["c"]
    record["fit"].coef["wakeups"] = wake_s
    fitted_models["passes, on the CPU the profile charges (not chosen)"] = record
    unseen = fitted_models[chosen_name]["fit"]
    raw_coef = {n: dict(m["fit"].coef) for n, m in fitted_models.items()}   # as fitted, before the level
    log("  process CPU regressions (residual rms / leave-one-out rms, % of the mean): " + "; ".join(
        f"{n}{' (chosen)' if n == chosen_name else ''}: "
        + ", ".join(f"{k} x{v:.3f}" if k.startswith("traced") else f"{k} {v * 1e6:.1f} us"
                    for k, v in m["fit"].coef.items())
        + f", {100 * m['rms_rel']:.1f} / {100 * m['loo_rms_rel']:.1f}" for n, m in fitted_models.items()))
    # the regression's own prediction error for every run, the runs left out of the fit too
    all_raw = [run_counts(r, softirq) for r in all_runs]
    all_counts = fitting.without_event_calls(all_raw, per_event)
    residual = [c.process - sum(v * getattr(c, k) for k, v in unseen.coef.items()) for c in all_counts]
    # The CPU per reply falls as the load rises, right up to saturation (on 2026-11-26: 42 us at 94 %
    # busy, 33 us at 96 %, 27 us at 100 %), more than the fewer passes and wake-ups explain, and
    # the peak is set by the CPU per reply at saturation. So the level is taken again on the
    # busiest run that kept up, the other coefficients held, and on the CPU the profile will charge
    # for that run's calls: the scale multiplies the pooled per-call fits, not the run's own samples
    # (the two busiest runs' samples, as before, for the record). The busiest is the one that served
    # the most replies: on a shared host a run the host slowed down looks busier (at 19:36 on
    # 2026-11-26 a run of 3,810 replies/s was 100 % busy at 40.9 us a reply, the next one 97 % busy
    # at 5,281/s and 29.3 us) and would set the level a third too high.
    top = sorted(range(len(runs)), key=lambda i: -runs[i]["reply_rps"])
    unseen.coef["traced_all_runs"] = unseen.coef["traced"]
    unseen.coef["traced_top_two"] = fitting.refit_scale([counts[i] for i in top[:2]], unseen.coef)
    unseen.coef["traced"] = fitting.refit_scale([charged[top[0]]], unseen.coef)
    # tracing has a cost of its own (a record per call, CPU samples, flushes): the busiest rates run
    # again, traced and untraced side by side, and the CPU per reply of the untraced server over the
    # traced one scales every cost but the wake-up, so the profile is that of the server as it runs
    # when not measured
    overhead, overhead_off, pairs = 1.0, math.nan, []
    if untraced_check:
        busiest = [runs[i]["offered_rps"] for i in top[:pair_rates]]
        overhead, overhead_off, pairs = untraced_ratio(arch, root, server_args, workload, busiest, duration_s, seed,
                                                       cgroup_procs, log, wakeup_s=unseen.coef.get("wakeups", 0.0))
        unseen.coef = {k: (v * overhead if k in ("traced", "loops", "bytes", "connections") else v)
                       for k, v in unseen.coef.items()}
    extras = {"ctx_switch": micro.ctx_switch_s(), "handoff": micro.handoff_s()}
    info = machine()
    hw_extra = micro.disk(disk_dir) if disk_dir else {}
    # largest single sendfile seen: how much of a reply one call moves (the socket buffer the model needs)
    big = max((s.units / s.count for t in traces for s in t.ops if s.op == "sendfile" and s.count), default=65536)
    hardware = Hardware(cores=1, memory_mb=float(info["memory_mb"]), kernel_mb=0.0, nics=1, nic_gbps=40.0,
                        sndbuf_kb=max(16.0, round(big / 1024.0)), listen_backlog=1024,
                        file_system=file_system_of(disk_dir or root),
                        **{k: round(v, 4) for k, v in hw_extra.items()})
    footprint = Footprint(process_kb=round(footprint_kb), kernel_thread_kb=64.0, user_thread_kb=16.0,
                          connection_kb=8.0)
    prof, how = build_profile(fits, unseen, extras, hardware, footprint, name,
                              f"live {arch} on {info['cpu_model']}, one core, loopback; calibrated {info['date']}",
                              event_op, softirq, event_split=True)
    replies = sum(r["replies"] for r in runs)
    cpu = sum(r["server_cpu_s"] for r in runs)
    softirq_us = 1e6 * sum(r["core_softirq_s"] for r in runs) / replies if replies else 0.0
    provenance = {
        **info, "method": f"simrun calibrate: live {arch} traced under httperf, per-call CPU fits + NNLS of "
                          "unseen CPU (calibration/fit.py)",
        "architecture": arch, "server_args": " ".join(server_args), "directories": workload.fileset.directories,
        "think_within_s": workload.think_within_burst_s, "think_between_s": workload.think_between_bursts_s,
        "rates": [float(r) for r in rates], "duration_s": duration_s,
        "load_avg": [r["load_avg"] for r in all_runs], "reply_rps": [round(r["reply_rps"], 2) for r in all_runs],
        "utilisation": [round(utilisation(r, cpu_fraction), 3) for r in all_runs],
        "fitted_on_rates": [r["offered_rps"] for r in runs], "min_utilisation": min_util,
        "cpu_per_reply_us": round(1e6 * cpu / replies, 2) if replies else 0.0,
        "core_softirq_per_reply_us": round(softirq_us, 2), "softirq_in_fit": softirq,
        "cpu_fraction_during_measurement": cpu_fraction,
        "fit_rms_us": {op: round(f.rms_s * 1e6, 3) for op, f in fits.items()},
        "fit_r2": {op: round(f.r2, 4) for op, f in fits.items()},
        "fit_sampled_calls": {op: f.sampled for op, f in fits.items()},
        "unseen_rms_rel": round(unseen.rms_rel, 4), "unseen_zero": unseen.zero,
        "unseen_residual_s": [round(v, 4) for v in unseen.residuals],
        "unseen_model": chosen_name,
        "unseen_candidates": {n: {"coef_us": {k: round(v * 1e6, 3) if not k.startswith("traced") else round(v, 4)
                                              for k, v in raw_coef[n].items()},
                                  "residual_rms_pct": round(100 * m["rms_rel"], 2),
                                  "residual_s": [round(v, 5) for v in m["fit"].residuals],
                                  **({"loo_rms_pct": round(100 * m["loo_rms_rel"], 2)}
                                     if math.isfinite(m["loo_rms_rel"]) else {})}
                              for n, m in fitted_models.items()},
        "wakeup_us": round(1e6 * unseen.coef.get("wakeups", 0.0), 3),
        "per_pass_us": round(1e6 * unseen.coef.get("loops", 0.0), 3),
        "runs": run_figures(all_runs, all_raw, {i for i, r in enumerate(all_runs) if any(r is x for x in runs)},
                            cpu_fraction, residual),
        "measured_us": {k: round(v * 1e6, 3) for k, v in extras.items()},
        "hardware_measured": {k: round(v, 4) for k, v in hw_extra.items()},
        "server_rss_kb": round(footprint_kb), "untraced_over_traced_cpu": round(overhead, 4),
        **({"untraced_over_traced_cpu_wakeups_off": round(overhead_off, 4)} if math.isfinite(overhead_off) else {}),
        "untraced_pairs": {"offered_rps": [p[0] for p in pairs],
                           "traced_cpu_per_reply_us": [round(p[1], 2) for p in pairs],
                           "untraced_cpu_per_reply_us": [round(p[2], 2) for p in pairs],
                           "traced_wakeups_per_reply": [round(p[3], 4) for p in pairs],
                           "untraced_wakeups_per_reply": [round(p[4], 4) for p in pairs]}, **how,
    }
    return Calibration(prof, provenance, runs, fits, unseen)


def format_fits(cal: Calibration) -> str:
    lines = [f"{'operation':<11} {'unit':<6} {'fixed us':>9} {'per unit us':>12} {'calls':>8} {'sampled':>8} "
             f"{'rms us':>8} {'r2':>6}"]
    for op, f in cal.fits.items():
        lines.append(f"{op:<11} {f.unit:<6} {f.fixed * 1e6:>9.3f} {f.per_unit * 1e6:>12.6f} {f.calls:>8d} "
                     f"{f.sampled:>8d} {f.rms_s * 1e6:>8.2f} {f.r2:>6.3f}")
    u = cal.unseen
    lines.append("process CPU regression: " + ", ".join(
        f"{k} x{v:.3f}" if k.startswith("traced") else f"{k} {v * 1e6:.4g} us" for k, v in u.coef.items())
        + f"; residual rms {100 * u.rms_rel:.1f}% of the mean over {u.runs} runs")
    pv = cal.provenance or {}
    for name, m in pv.get("unseen_candidates", {}).items():
        lines.append(f"  {'chosen ' if name == pv.get('unseen_model') else 'other  '}{name:<15} "
                     + ", ".join(f"{k} x{v:.3f}" if k.startswith("traced") else f"{k} {v:.1f} us"
                                 for k, v in m["coef_us"].items())
                     + f"; residual rms {m['residual_rms_pct']:.1f} %, leave-one-out "
                     + (f"{m['loo_rms_pct']:.1f} %" if "loo_rms_pct" in m else "n/a (too few runs)"))
    runs = pv.get("runs")
    if runs:
        lines.append(f"{'offered/s':>9} {'reply/s':>8} {'busy':>5} {'CPU us/reply':>12} {'wake/reply':>10} "
                     f"{'pass/reply':>10} {'preempt/reply':>13} {'idle/reply':>10} {'fitted':>6} {'resid ms':>8} "
                     f"{'load':>5}")
        for i in range(len(runs["offered_rps"])):
            lines.append(f"{runs['offered_rps'][i]:>9.0f} {runs['reply_rps'][i]:>8.1f} {runs['utilisation'][i]:>5.2f} "
                         f"{runs['proc_cpu_per_reply_us'][i]:>12.1f} {runs['wakeups_per_reply'][i]:>10.3f} "
                         f"{runs['passes_per_reply'][i]:>10.3f} {runs['preemptions_per_reply'][i]:>13.3f} "
                         f"{runs['core_idle_entries_per_reply'][i]:>10.3f} "
                         f"{'yes' if runs['fitted'][i] else 'no':>6} {1e3 * runs['residual_s'][i]:>8.1f} "
                         f"{runs['load_avg'][i]:>5.1f}")
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise CalibrationError(message)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="simrun calibrate", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="sped", help="live architecture to calibrate on (default sped)")
    p.add_argument("--server-args", default="", help="extra flags for simrun serve, e.g. \"--max-conns 4000\"")
    p.add_argument("--rates", help="offered request rates (default: a light probe run, then rates rising x1.3 "
                                   "from the capacity it suggests until the server no longer keeps up)")
    p.add_argument("--cpu-fraction", type=float, default=CPU_FRACTION,
                   help=f"share of core 0 the server may use, by a CFS quota (default {CPU_FRACTION}: a whole "
                        "core answers faster than one httperf can ask); the profile's costs are the core's own")
    p.add_argument("--softirq", action="store_true",
                   help="give the core's softirq time to the operations too (only on an otherwise idle machine)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of arrivals per rate (default 10)")
    p.add_argument("--directories", type=int, default=4, help="file-set directories (default 4, ~20 MB)")
    p.add_argument("--root", help="an existing generated file set (else one is generated in a temporary folder)")
    p.add_argument("--disk", action="store_true", help="also measure the disk under the file set (O_DIRECT)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="calibrated-here", help="the profile's name")
    p.add_argument("--out", default="calibrated-here.toml", help="profile file to write (default calibrated-here.toml)")
    p.add_argument("--quick", action="store_true", help="a probe and at most four rates rising x1.5, 5 s each")
    return p


def parse_rates(text: str) -> list[float]:
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CalibrationError(f"--rates must be numbers separated by commas, got {text!r}") from None
    if not rates or any(not r > 0 for r in rates):
        raise CalibrationError(f"--rates must be positive, got {text!r}")
    return rates


def prepare_root(root: str | None, directories: int, workdir: str) -> str:
    from real.fileset import FileSetError, check, generate
    if root:
        try:
            check(root)
        except FileSetError as e:
            raise CalibrationError(str(e)) from None
        return root
    path = os.path.join(workdir, "files")
    generate(path, FileSet(directories=directories), seed=1)
    return path


def _terminate(signum, frame):
    """SIGTERM unwinds like an error, so servers, namespaces and cgroups are removed on the way out."""
    raise SystemExit(143)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _terminate)
    workdir = None
    try:
        args = parser().parse_args(argv)
        rates = parse_rates(args.rates) if args.rates else None
        duration = 5.0 if args.quick and args.duration == 10.0 else args.duration
        if not duration > 0 or args.directories < 1:
            raise CalibrationError("--duration and --directories must be positive")
        out = os.path.abspath(args.out)
        if not os.path.isdir(os.path.dirname(out)):
            raise CalibrationError(f"--out: directory {os.path.dirname(out)} does not exist")
        workdir = tempfile.mkdtemp(prefix="calibrate-", dir="/var/tmp" if os.path.isdir("/var/tmp") else None)
        root = prepare_root(args.root, args.directories, workdir)
        directories = args.directories
        if args.root:
            from real.fileset import check
            directories = check(args.root)["directories"]
        wl = workload_for(directories)
        print(f"# calibrating {args.arch} at {', '.join(f'{r:g}' for r in rates) if rates else 'automatic'} req/s, "
              f"{duration:g} s each, {args.cpu_fraction:g} of core 0; "
              f"load average {load_average():.1f}", flush=True)
        group = cpu_share(args.cpu_fraction) if args.cpu_fraction < 1.0 else None
        try:
            cal = calibrate(args.arch, root, wl, rates, duration, seed=args.seed, server_args=args.server_args.split(),
                            disk_dir=root if args.disk else None, name=args.name, log=lambda s: print(s, flush=True),
                            cpu_fraction=args.cpu_fraction, cgroup_procs=group.procs if group else None,
                            softirq=args.softirq, max_runs=4 if args.quick else 8,
                            growth=1.5 if args.quick else 1.3, pair_rates=1 if args.quick else 3)
        finally:
            if group:
                group.close()
        print(format_fits(cal))
        write_profile(cal.profile, out, cal.provenance)
        print(f"wrote {out}")
    except (CalibrationError, MeasureError, CgroupError) as e:
        print(f"simrun calibrate: error: {e}", file=sys.stderr)
        return 2
    finally:
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
