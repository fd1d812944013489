"""Measuring a live server under httperf: runs at offered rates with traces and /proc CPU accounting.

The server is pinned to core 0 and httperf to core 1. For every run we keep
what httperf saw (reply rate, Mbps, mean response time, errors) and what the
server's core did: the CPU of the server's processes (/proc/PID/stat, children
included) and the core's softirq and irq time (/proc/stat, the kernel network
work no process is charged for), and, for a traced Python server, the change in
its trace files over the run (taken between two trace flushes, so the traced
operations and the process's own rusage line up exactly).

The machine may be shared: the 1-minute load average is recorded with each run.
"""
from __future__ import annotations

import copy
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from real.httperf import LoadError, run_httperf
from real.trace import FLUSH_EVERY, Trace, _FIELDS, read_trace

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVER_CORE, LOAD_CORE = 0, 1
CLK_TCK = os.sysconf("SC_CLK_TCK")


class MeasureError(Exception):
    """A measurement that cannot be made as asked, in one line."""


# ---------------------------------------------------------------- /proc accounting

def process_tree(pid: int) -> list[int]:
    """pid and its descendants (the worker processes of a forking server)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(x) for x in f.read().split()]
        except OSError:
            pass
    return out


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process tree (live processes only)."""
    total = 0.0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
        except (OSError, IndexError, ValueError):
            pass
    return total


def context_switches(pid: int) -> tuple[int, int]:
    """Voluntary and involuntary context switches of a process tree, summed over every thread.

    A voluntary switch is a thread that blocked (epoll_wait or poll that slept, a blocking recv,
    a lock) and so, once work comes, a wake-up: the kernel counts what the models call `wakeup`.
    Involuntary ones are preemptions, among them the CFS quota's throttling."""
    vol = invol = 0
    for p in process_tree(pid):
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                with open(f"/proc/{p}/task/{t}/status") as f:
                    for line in f:
                        if line.startswith("voluntary_ctxt_switches:"):
                            vol += int(line.split()[1])
                        elif line.startswith("nonvoluntary_ctxt_switches:"):
                            invol += int(line.split()[1])
            except (OSError, ValueError, IndexError):
                pass
    return vol, invol


def idle_entries(core: int) -> int:
    """How many times `core` has entered an idle state (cpuidle's per-state usage counts; 0 where the
    kernel has no cpuidle). On a core the server has to itself, each entry is followed by a wake-up
    from idle: the VM's halt and wake, then cold caches."""
    total = 0
    base = f"/sys/devices/system/cpu/cpu{core}/cpuidle"
    try:
        states = os.listdir(base)
    except OSError:
        return 0
    for st in states:
        if not st.startswith("state"):
            continue
        try:
            with open(f"{base}/{st}/usage") as f:
                total += int(f.read())
        except (OSError, ValueError):
            pass
    return total


def core_times(core: int) -> dict[str, float]:
    """Seconds per state of one core from /proc/stat (user, system, idle, iowait, irq, softirq, steal...)."""
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{core} "):
                v = [int(x) / CLK_TCK for x in line.split()[1:9]]
                return dict(zip(names, v))
    raise MeasureError(f"/proc/stat has no line for core {core}")


def load_average() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def rss_kb(pid: int) -> float:
    """Resident memory of a process tree, KB."""
    total = 0.0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += float(line.split()[1])
        except OSError:
            pass
    return total


# ---------------------------------------------------------------- traces: snapshots and differences

def read_traces(prefix: str) -> dict[str, Trace]:
    """Every trace file of a prefix, by path (files being renamed into place are skipped)."""
    out = {}
    for path in sorted(glob.glob(f"{prefix}.*.trace")):
        try:
            out[path] = read_trace(path)
        except (OSError, ValueError):
            continue
    return out


def trace_diff(after: Trace, before: Trace | None) -> Trace:
    """The operations and process CPU of `after` that happened since `before` (same file)."""
    t = Trace(after.path, dict(after.meta), {}, [])
    t.times["start"] = (before.times.get("end") or before.times["last"]) if before else after.times["start"]
    t.times["last"] = after.times.get("end") or after.times["last"]
    old = {(s.role, s.op, s.bucket): s for s in (before.ops if before else [])}
    for s in after.ops:
        d = copy.copy(s)
        b = old.get((s.role, s.op, s.bucket))
        if b is not None:
            for f in _FIELDS:
                setattr(d, f, getattr(s, f) - getattr(b, f))
        if d.count > 0:
            t.ops.append(d)
    return t


def wait_flush(prefix: str, timeout_s: float = 3 * FLUSH_EVERY + 2) -> dict[str, Trace]:
    """Traces after every file has flushed once more (so they cover everything up to now)."""
    t0 = time.monotonic()
    first = {p: tr.times.get("last", (0,))[0] for p, tr in read_traces(prefix).items()}
    while time.monotonic() - t0 < timeout_s:
        time.sleep(0.25)
        now = read_traces(prefix)
        if now and all(p in now and now[p].times.get("last", (0,))[0] > m for p, m in first.items()):
            return now
    return read_traces(prefix)


# ---------------------------------------------------------------- live servers

@dataclass
class LiveServer:
    """`simrun serve ARCH` pinned to a core, optionally traced, in a netns or a cgroup; stopped by pid.

    `wrap` is a command prefix (e.g. `ip netns exec NS`); `cgroup_procs` a cgroup's
    cgroup.procs file the server joins before it starts (so its page cache is charged there).
    """

    arch: str
    root: str
    args: list[str] = field(default_factory=list)
    trace_prefix: str | None = None
    host: str = "127.0.0.1"
    wrap: list[str] = field(default_factory=list)
    cgroup_procs: str | list | None = None
    core: int = SERVER_CORE
    proc: subprocess.Popen | None = None
    pid: int = 0
    port: int = 0
    workdir: str = ""

    def start(self, timeout_s: float = 30.0) -> "LiveServer":
        self.workdir = tempfile.mkdtemp(prefix=f"live-{self.arch}-")
        out_path, err_path = os.path.join(self.workdir, "out"), os.path.join(self.workdir, "err")
        cmd = ["taskset", "-c", str(self.core), sys.executable, "-m", "sim.cli", "serve", self.arch,
               "--root", self.root, "--host", self.host, "--port", "0", *self.args]
        if self.trace_prefix:
            cmd += ["--trace", self.trace_prefix]
        procs_files = [self.cgroup_procs] if isinstance(self.cgroup_procs, str) else list(self.cgroup_procs or [])

        def join_cgroup():
            for path in procs_files:
                with open(path, "w") as f:
                    f.write(str(os.getpid()))

        with open(out_path, "w") as out, open(err_path, "w") as err:
            self.proc = subprocess.Popen(self.wrap + cmd, cwd=REPO, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                         start_new_session=True, preexec_fn=join_cgroup if procs_files else None)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with open(out_path) as f:
                line = f.readline()
            if line.endswith("\n") and line.startswith("listening on "):
                words = line.split()
                self.port, self.pid = int(words[2].rsplit(":", 1)[1]), int(words[4])
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        with open(err_path) as f:
            tail = f.read().strip().splitlines()
        raise MeasureError(f"{self.arch} did not start: {tail[-1] if tail else 'no output'}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = ""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def open_connections(port: int, pid: int | None = None) -> int:
    """Server-side TCP connections on `port` still open (ESTABLISHED or CLOSE_WAIT), in the network
    namespace of `pid` (ours by default)."""
    n = 0
    base = f"/proc/{pid}/net" if pid else "/proc/net"
    for table in (f"{base}/tcp", f"{base}/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if int(parts[1].rsplit(":", 1)[1], 16) == port and parts[3] in ("01", "08"):
                        n += 1
        except OSError:
            pass
    return n


def settle(port: int, pid: int | None = None, limit_s: float = 15.0) -> None:
    """Wait (bounded) until the last run's connections are closed, so runs do not overlap."""
    t0 = time.monotonic()
    time.sleep(0.3)
    while open_connections(port, pid) and time.monotonic() - t0 < limit_s:
        time.sleep(0.25)


# ---------------------------------------------------------------- one run, a sweep

def measure_run(pid: int, port: int, workload, rate: float, duration_s: float, *, seed: int = 0,
                host: str = "127.0.0.1", trace_prefix: str | None = None, httperf: str = "httperf",
                warmup_s: float | None = None, core: int = SERVER_CORE) -> dict:
    """One httperf run at `rate` with the server's CPU accounting (and trace difference if traced)."""
    before = wait_flush(trace_prefix) if trace_prefix else {}
    c0, k0, t0, la0 = process_cpu(pid), core_times(core), time.monotonic(), load_average()
    s0, i0 = context_switches(pid), idle_entries(core)
    r = run_httperf(host, port, workload, rate, duration_s, LOAD_CORE, seed=seed, httperf=httperf,
                    warmup_s=warmup_s, stop_after_s=duration_s + 0.5)
    wall_httperf = time.monotonic() - t0
    after = wait_flush(trace_prefix) if trace_prefix else {}
    c1, k1, t1, la1 = process_cpu(pid), core_times(core), time.monotonic(), load_average()
    s1, i1 = context_switches(pid), idle_entries(core)
    wall = max(t1 - t0, 1e-9)
    r["wall_s"] = wall
    r["httperf_wall_s"] = wall_httperf
    r["server_cpu_s"] = c1 - c0
    r["core_softirq_s"] = (k1["softirq"] - k0["softirq"]) + (k1["irq"] - k0["irq"])
    r["core_busy_s"] = sum(k1[k] - k0[k] for k in ("user", "nice", "system", "irq", "softirq", "steal"))
    r["server_cpu_pct"] = 100.0 * r["server_cpu_s"] / wall
    # threads that ended during the run take their counts with them: a lower bound then, exact
    # for the event loops and thread pools here, whose threads live as long as the server
    r["server_wakeups"] = max(0, s1[0] - s0[0])
    r["server_preemptions"] = max(0, s1[1] - s0[1])
    r["core_idle_entries"] = max(0, i1 - i0)
    r["load_avg"] = round((la0 + la1) / 2, 2)
    if trace_prefix:
        r["trace"] = [trace_diff(a, before.get(p)) for p, a in after.items()]
    return r


def sweep(server: LiveServer, workload, rates, duration_s: float, *, seed: int = 0, httperf: str = "httperf",
          log=print) -> list[dict]:
    """Runs at each rate in turn (bounded: each run stops itself); the server must stay alive."""
    runs = []
    for i, rate in enumerate(rates):
        if not server.alive():
            raise MeasureError(f"{server.arch} died before the {rate:g} req/s run")
        try:
            r = measure_run(server.pid, server.port, workload, rate, duration_s, seed=seed + i, host=server.host,
                            trace_prefix=server.trace_prefix, httperf=httperf, core=server.core)
        except LoadError as e:
            raise MeasureError(str(e)) from None
        runs.append(r)
        log(f"  {server.arch:<9} offered {rate:>7.0f}/s  reply {r['reply_rps']:>7.1f}/s  "
            f"{r['throughput_mbps']:>7.1f} Mbps  resp {r['response_ms_mean']:>8.1f} ms  err {r['errors_pct']:5.2f}%  "
            f"cpu {r['server_cpu_pct']:>4.0f}%  wake/reply {r['server_wakeups'] / max(1, r['replies']):.2f}  "
            f"load {r['load_avg']:.1f}")
        settle(server.port, server.pid)
    return runs


def utilisation(run: dict, cpu_fraction: float = 1.0) -> float:
    """The server's CPU over the time httperf ran, as a share of the CPU it may use."""
    return run["server_cpu_s"] / (max(run["httperf_wall_s"], 1e-9) * cpu_fraction)


def sustained(run: dict, kept: float = 0.9) -> bool:
    """The server kept up: errors under 1 % and at least `kept` of the offered rate answered."""
    return run["errors_pct"] < 1.0 and run["reply_rps"] >= kept * run["offered_window_rps"]


# A run saturated the server when it used at least this much of its CPU share.
SATURATED = 0.9


def past_saturation(run: dict, cpu_fraction: float = 1.0) -> bool:
    """The server was saturated and did not keep up: its CPU per reply there is the demand that sets
    its peak (nobody sleeps, and whatever a loaded server saves by batching is in it)."""
    return utilisation(run, cpu_fraction) >= SATURATED and not sustained(run)


def rising_sweep(server, workload, start_rps: float, duration_s: float, *, growth: float = 1.3, max_runs: int = 6,
                 seed: int = 0, httperf: str = "httperf", log=print) -> list[dict]:
    """Runs at start, start x growth, ... until one is not sustained (kept) or `max_runs` are done."""
    runs, rate = [], start_rps
    for i in range(max_runs):
        runs += sweep(server, workload, [float(round(rate, -1))], duration_s, seed=seed + i, httperf=httperf, log=log)
        if not sustained(runs[-1]):
            break
        rate *= growth
    return runs


def op_totals(run: dict) -> dict[str, tuple[float, float]]:
    """Per operation, the (calls, units) of a traced run, summed over its traces and buckets."""
    out: dict[str, tuple[float, float]] = {}
    for tr in run["trace"]:
        for op, s in tr.totals().items():
            c, u = out.get(op, (0.0, 0.0))
            out[op] = (c + s.count, u + s.units)
    return out


def run_counts(run: dict, softirq: bool = False):
    """The regressors of calibration.fit.fit_unseen for one traced run (with the core's softirq time
    in the unseen CPU if `softirq`)."""
    from .fit import RunCounts
    traces = run["trace"]
    totals = op_totals(run)
    none = (0.0, 0.0)
    event_ops = ("poll", "select", "epoll_wait")
    requests = totals.get("parse", none)[0]
    loops = sum(totals.get(o, none)[0] for o in event_ops)
    sent = sum(totals.get(o, none)[1] for o in ("sendfile", "write"))
    conns = 0.0
    for tr in traces:
        conns += sum(s.count for s in tr.ops if s.op == "accept" and s.bucket > 0)
    calls = sum(s.count for tr in traces for s in tr.ops if s.op != "ult_switch")
    traced_cpu = sum(tr.traced_cpu() for tr in traces)
    event_cpu = sum(tr.cost(s)[1] * s.count for tr in traces for s in tr.ops if s.op in event_ops)
    process = sum(tr.process_cpu() for tr in traces)
    extra = run["core_softirq_s"] if softirq else 0.0
    return RunCounts(float(calls), float(requests), float(loops), float(sent), float(conns),
                     process - traced_cpu + extra, f"{run['offered_rps']:g}", traced_cpu, process + extra,
                     float(run.get("server_wakeups", 0)), event_cpu,
                     float(sum(totals.get(o, none)[1] for o in event_ops)))
