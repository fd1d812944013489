"""How much does `--trace` cost at saturation? Peak reply rate and CPU per reply, tracing off and on.

    python bench/trace_overhead.py [--archs sped,green,...] [--rounds 3] [--duration 5]
                                   [--cpu-share 0.5] [--cpu-period-ms 100]
                                   [--method cpu|ladder|both|conn] [--fraction 0.65] [--cpu-rounds 5]

Each architecture runs pinned to core 0 with the knobs of bench/live.py, httperf on
core 1, on one generated file set in memory, with the sessions of bench/live.py's
`capacity` phase (the study's files and requests per session, no think times), so
that one httperf offers far more than a Python server can serve.

CPU (the default method): the untraced server's peak is estimated first (see below);
then fresh servers, tracing off and on in alternating order, are each driven at FRACTION
of that estimate (0.65: a rate both keep up with, clear of the share's cap), and the medians of their CPU per reply are
compared. On a CPU share a server's capacity is its share over its CPU per reply, so
the capacity change is off/on - 1 of those medians. Driving both past their peak
instead measures mostly the overload: the one slightly slower loses clients to
timeouts, and the work spent on them makes it slower still (seen here: -20 % at 1.3 x
the estimate, where the CPU per reply below the peak differed by 5 %). A ladder's peak
(below) jumps by a whole step when one run has 1 % of errors.

Ladder (`--method ladder` or `both`): the highest reply rate of a sustained run (bench/live.py's test: errors
under 1 %, every reply a 200, at least 85 % of what the sessions offered in the
measured window) found by a short ladder of offered rates around a first
estimate: up by STEP from FIRST times the estimate (by STEP^2 after five runs)
until a run is not sustained, then one bisection between the last sustained and the first failed rate. The
estimate comes from the untraced server by bench/live.py's kind of search: rates
doubling from 4,000/s (halving if that fails) until a run is not sustained, then
one bisection. Every (tracing, round) ladder starts a fresh
server; rounds alternate the order off/on, and the medians of ROUNDS peaks are
compared. Beside each peak: the server's CPU over the peak run (its process tree,
/proc) as a share of its core and in microseconds per reply. A server well below
100 % of its core at its peak was held back by something else than its own work.

Also printed, as a cross-check that other load on the machine cannot move: the
calls recorded per reply (from the traces; only a share of the connections record
theirs, see real/trace.py) times the CPU one recorded call adds (timed here, on
core 1, at the loop's timing share), over the untraced CPU per reply.

Conn (`--method conn`): no server and no httperf. The connection code of the
servers (real/servers/base.py's Conn) answers requests on one loopback
connection inside this process, untraced, traced with every connection recorded,
and traced by default; CPU per request, client included. The least noisy view
of what tracing itself costs, without the event loop and its wake-ups.

With `--cpu-share F` (the default, 0.5) each server runs in a cpu cgroup allowed F of
its core per `--cpu-period-ms` (100 ms: a long period, so that a thread is seldom
throttled while it holds the interpreter lock). Then the server's own CPU is what
limits its peak, not httperf on the other core, and the change of peak is the
change of CPU per reply at saturation, which is what tracing must not spoil.
`--cpu-share 1` runs on the whole core (the peak is then often httperf's).

The last line names the architecture whose peak fell most with tracing on.
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import timeit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from bench.live import ARCHS, one_run, settle  # noqa: E402
from calibration.cgroup import CgroupError, cpu_share  # noqa: E402
from calibration.measure import LiveServer, MeasureError  # noqa: E402
from real.fileset import generate  # noqa: E402
from real.httperf import LoadError  # noqa: E402
from sim.fileset import FileSet  # noqa: E402
from sim.workload import Workload  # noqa: E402

STEP = 1.07           # ladder step between offered rates
FIRST = 0.85          # the ladder starts at this share of the estimate
MAX_RUNS = 10         # runs per ladder, bisection included


def loadavg() -> str:
    return "load %.2f %.2f %.2f" % os.getloadavg()


def traced_call_cost(n: int = 20000) -> float:
    """CPU seconds that tracing adds to one call as the servers trace it (the inline pattern of
    real/trace.py's Recorder, sampled at the default rate): the least of 15 batches, on this core."""
    from real.trace import CPU_SAMPLE, OP, Recorder
    rec = Recorder("bench", CPU_SAMPLE)
    code = OP["read"] + 100

    def batch():
        for _ in range(100):
            t = rec.begin() if rec.sample() else 0.0
            if t:
                rec.sampled(code, t)
            else:
                rec.n(code)
        del rec.calls[:], rec.samples[:]

    def empty():
        for _ in range(100):
            pass

    runs = n // 100
    traced = min(timeit.repeat(batch, number=runs, repeat=15, timer=time.thread_time))
    base = min(timeit.repeat(empty, number=runs, repeat=15, timer=time.thread_time))
    return max(0.0, traced - base) / n


def conn_method(tmp: str, rounds: int, requests: int = 3000) -> dict:
    """CPU per request of the shared connection code (real/servers/base.py's Conn: recv, parse, cache
    lookup, header write, sendfile) on one loopback connection in this process, client included:
    untraced, traced with every connection recorded (--trace-conns 1), and traced as the servers are
    by default. No event loop, no other process: what is left is the tracing's own cost, with little
    noise. Medians of `rounds` alternating runs."""
    import socket
    from real import http
    from real.servers.base import Conn
    from real.trace import Tracer
    root = os.path.join(tmp, "conn-root")
    os.makedirs(root, exist_ok=True)
    sizes = (1000, 5000, 20000, 60000)
    for i, size in enumerate(sizes):
        with open(os.path.join(root, f"f{i}"), "wb") as f:
            f.write(os.urandom(size))
    cache = http.FileCache(os.fsencode(root), 64, threads=False)
    tracers = {"every conn": Tracer(os.path.join(tmp, "every"), "bench", background=False, conn_sample=1.0),
               "default": Tracer(os.path.join(tmp, "default"), "bench", background=False)}
    recs = {"off": None, **{k: t.recorder("loop") for k, t in tracers.items()}}
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    reqs = [f"GET /f{i} HTTP/1.1\r\nHost: bench\r\n\r\n".encode() for i in range(len(sizes))]

    def run(rec) -> float:
        cli = socket.create_connection(lsock.getsockname())
        srv = lsock.accept()[0]
        try:
            srv.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            cli.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            total = 0.0
            for k in range(requests // 30):     # a new traced connection every 30 requests
                conn = Conn(srv, cache, rec, 0.0)
                t0 = time.thread_time()
                for i in range(30):
                    cli.sendall(reqs[i % len(reqs)])
                    conn.recv(0.0)
                    while conn.next_reply() is not None and conn.send(0.0):
                        pass
                    want = sizes[i % len(sizes)]
                    got = 0
                    while got < want:
                        got += len(cli.recv(1 << 20))
                total += time.thread_time() - t0
                conn.rec = None
            return total / (requests // 30 * 30)
        finally:
            cli.close()
            srv.close()

    out = {k: [] for k in recs}
    try:
        for i in range(rounds):
            for key in (list(recs) if i % 2 == 0 else list(recs)[::-1]):
                out[key].append(run(recs[key]))
            for t in tracers.values():
                t.flush()
    finally:
        for t in tracers.values():
            t.close()
        lsock.close()
        cache.close_all()
    return {k: statistics.median(v) for k, v in out.items()}


def traced_calls(prefix: str) -> tuple[float, float]:
    """(calls the traces stand for, calls actually recorded): a sampled connection's rows are
    scaled up to all connections on reading, but only the recorded calls cost anything."""
    from real.trace import read_trace
    calls = recorded = 0.0
    for path in glob.glob(f"{prefix}.*.trace"):
        t = read_trace(path)
        for s in t.ops:
            if s.op != "ult_switch":
                calls += s.count
                recorded += s.count / t.conn_scale if s.scaled else s.count
    return calls, recorded


SHARES: dict = {}      # cgroup.procs path -> the share of the core it allows


def share_of(procs) -> float:
    return SHARES.get(procs, 1.0)


class Ladder:
    """One server (traced or not), a ladder of offered rates, its peak."""

    def __init__(self, arch, root, workload, tracing, tmp, duration, seed, log, procs=None):
        self.arch, self.root, self.workload, self.tracing = arch, root, workload, tracing
        self.procs = procs          # the cpu cgroup's cgroup.procs, if the server runs on a share
        self.tmp, self.duration, self.seed, self.log = tmp, duration, seed, log
        self.runs: list[dict] = []

    def run(self, srv, rate) -> dict:
        r = one_run(srv.pid, srv.port, self.workload, rate, self.duration, self.seed + len(self.runs), 0.0)
        r["settle_s"] = settle(srv.port)
        self.runs.append(r)
        self.log(f"  {self.arch:<9} tracing {'on ' if self.tracing else 'off'} offered {rate:>7.0f}/s  "
                 f"reply {r['reply_rps']:>7.0f}/s  err {r['errors_pct']:5.2f}%  "
                 f"cpu {r['server_cpu_pct']:>4.0f}% {r['server_cpu_us_per_reply']:>5.1f} us/reply  "
                 f"{'ok' if r['sustained'] else 'NOT sustained'}  {loadavg()}")
        return r

    def climb(self, estimate: float) -> dict:
        """The ladder from FIRST * estimate; returns the peak run (None if none was sustained)."""
        prefix = os.path.join(self.tmp, f"t{time.monotonic_ns()}") if self.tracing else None
        srv = LiveServer(self.arch, self.root, list(ARCHS[self.arch]), trace_prefix=prefix, core=0,
                         cgroup_procs=self.procs)
        srv.start()
        warm = {"replies": 0}
        try:
            warm = one_run(srv.pid, srv.port, self.workload, 1000.0, 2.0, self.seed, 0.0)   # the file cache
            settle(srv.port)
            good = bad = None
            rate = FIRST * estimate
            while len(self.runs) <= MAX_RUNS and srv.alive():
                if self.run(srv, rate)["sustained"]:
                    good = rate
                    if bad is not None:
                        break
                    rate *= STEP if len(self.runs) < 5 else STEP ** 2   # the estimate was low: longer steps
                else:
                    bad = rate
                    if good is not None:
                        break
                    rate /= STEP ** 2
            if good is not None and bad is not None and srv.alive():
                self.run(srv, (good * bad) ** 0.5)
        finally:
            srv.stop()
        calls, recorded = traced_calls(prefix) if prefix else (0.0, 0.0)
        ok = [r for r in self.runs if r["sustained"]]
        peak = max(ok, key=lambda r: r["reply_rps"]) if ok else None
        replies = warm["replies"] + sum(r["replies"] for r in self.runs)
        return {"peak": peak, "calls_per_reply": calls / replies if replies else 0.0,
                "recorded_per_reply": recorded / replies if replies else 0.0,
                "us_by_rate": [(round(r["offered_rps"]), r["server_cpu_us_per_reply"]) for r in self.runs
                               if r["sustained"]]}


def at_rate(arch, root, workload, tracing, tmp, rate, duration, seed, log, procs=None) -> dict:
    """One fresh server (traced or not) driven at `rate`; its CPU per reply there."""
    prefix = os.path.join(tmp, f"s{time.monotonic_ns()}") if tracing else None
    srv = LiveServer(arch, root, list(ARCHS[arch]), trace_prefix=prefix, core=0, cgroup_procs=procs)
    srv.start()
    try:
        warm = one_run(srv.pid, srv.port, workload, 1000.0, 2.0, seed, 0.0)      # the file cache
        settle(srv.port)
        r = one_run(srv.pid, srv.port, workload, rate, duration, seed + 1, 0.0)
        settle(srv.port)
    finally:
        srv.stop()
    replies = warm["replies"] + r["replies"]
    calls, recorded = traced_calls(prefix) if prefix else (0.0, 0.0)
    r["calls_per_reply"] = calls / replies if replies else 0.0
    r["recorded_per_reply"] = recorded / replies if replies else 0.0
    log(f"  {arch:<9} tracing {'on ' if tracing else 'off'} offered {rate:>7.0f}/s  "
        f"reply {r['reply_rps']:>7.0f}/s  err {r['errors_pct']:5.2f}%  cpu {r['server_cpu_pct']:>4.0f}% "
        f"{r['server_cpu_us_per_reply']:>5.1f} us/reply  {loadavg()}")
    return r


def estimate_peak(arch, root, workload, duration, log, procs=None) -> float:
    """The untraced server's best sustained reply rate over doubling rates and one bisection."""
    srv = LiveServer(arch, root, list(ARCHS[arch]), core=0, cgroup_procs=procs)
    srv.start()
    runs = []

    def attempt(rate):
        r = one_run(srv.pid, srv.port, workload, rate, duration, 1 + len(runs), 0.0)
        settle(srv.port)
        runs.append(r)
        log(f"  {arch:<9} estimate    offered {rate:>7.0f}/s  reply {r['reply_rps']:>7.0f}/s  "
            f"cpu {r['server_cpu_pct']:>4.0f}%  {'ok' if r['sustained'] else 'NOT sustained'}  {loadavg()}")
        return r["sustained"]
    try:
        one_run(srv.pid, srv.port, workload, 1000.0, 2.0, 1, 0.0)
        settle(srv.port)
        good, bad, rate = None, None, 4000.0 * min(1.0, 2 * share_of(procs))
        while len(runs) < 6 and srv.alive():
            if attempt(rate):
                good, rate = rate, rate * 2
            else:
                bad = rate
                if good is not None:
                    break
                rate /= 2
        if good is not None and bad is not None and srv.alive():
            attempt((good + bad) / 2)
    finally:
        srv.stop()
    ok = [r["reply_rps"] for r in runs if r["sustained"]]
    if not ok:
        raise MeasureError(f"{arch}: no sustained run while estimating its peak")
    return max(ok)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archs", default=",".join(ARCHS), help="comma-separated, default all: " + ", ".join(ARCHS))
    ap.add_argument("--rounds", type=int, default=3, help="peak searches per architecture and setting (default 3)")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds of session arrivals per run (default 5)")
    ap.add_argument("--directories", type=int, default=5, help="file-set directories (default 5, 26 MB)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cpu-share", type=float, default=0.5,
                    help="share of core 0 the server may use (default 0.5; 1 = the whole core, no cgroup)")
    ap.add_argument("--cpu-period-ms", type=float, default=100.0, help="CFS period of that share (default 100)")
    ap.add_argument("--method", choices=("cpu", "ladder", "both", "conn"), default="cpu",
                    help="cpu: alternating runs at FRACTION x the untraced peak, CPU per reply compared "
                         "(default); ladder: the best sustained rate of a ladder of offered rates; both; "
                         "conn: the connection code alone, in this process (no server, no httperf)")
    ap.add_argument("--fraction", type=float, default=0.65,
                    help="offered rate over the estimated peak (default 0.65: clear of the share's cap, where a "
                         "server is throttled in bursts and its CPU per reply changes regime)")
    ap.add_argument("--cpu-rounds", type=int, default=5, help="runs per setting of the cpu method (default 5)")
    args = ap.parse_args(argv)
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    bad = [a for a in archs if a not in ARCHS]
    if bad or not archs:
        print(f"trace_overhead: error: unknown architecture(s) {bad}; known: {', '.join(ARCHS)}", file=sys.stderr)
        return 2
    if args.rounds < 1 or not 3.0 <= args.duration <= 30.0:
        print("trace_overhead: error: --rounds must be >= 1 and --duration 3..30 s", file=sys.stderr)
        return 2
    if not 0.05 <= args.cpu_share <= 1.0 or not 1.0 <= args.cpu_period_ms <= 1000.0:
        print("trace_overhead: error: --cpu-share must be in 0.05..1 and --cpu-period-ms in 1..1000",
              file=sys.stderr)
        return 2
    if args.method == "conn":
        os.sched_setaffinity(0, {1})
        tmp = tempfile.mkdtemp(prefix="trace-overhead-")
        try:
            r = conn_method(tmp, max(3, args.cpu_rounds * 2))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        print(f"{'tracing':<11} {'us/request':>10} {'change':>7}")
        for key, us in r.items():
            print(f"{key:<11} {us * 1e6:>10.2f} {us / r['off'] - 1:>+7.1%}")
        print(f"# conn: CPU per request of the connection code on one loopback connection in this process "
              f"(client included), medians of {max(3, args.cpu_rounds * 2)} alternating runs; 'every conn' "
              f"records every connection's calls (--trace-conns 1), 'default' the servers' default share; "
              f"{loadavg()}")
        return 0
    for tool in ("httperf", "taskset"):
        if shutil.which(tool) is None:
            print(f"trace_overhead: error: {tool} not found", file=sys.stderr)
            return 2

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    # SIGTERM unwinds like ^C, so that the servers are stopped and the cgroup removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.sched_setaffinity(0, {1})        # this process (and the cost timing) on the load core
    per_call = traced_call_cost()
    group = None
    if args.cpu_share < 1.0:
        try:
            group = cpu_share(args.cpu_share, int(args.cpu_period_ms * 1000))
        except CgroupError as e:
            print(f"trace_overhead: error: {e}", file=sys.stderr)
            return 2
        SHARES[group.procs] = args.cpu_share
    procs = group.procs if group else None
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    tmp = tempfile.mkdtemp(prefix="trace-overhead-", dir=base)
    rows = []
    t0 = time.monotonic()
    try:
        root = os.path.join(tmp, "www")
        fs = FileSet(directories=args.directories)
        generate(root, fs, seed=0)
        workload = Workload(fileset=fs, think_within_burst_s=0.0, think_between_bursts_s=0.0)
        where = (f"{args.cpu_share:.0%} of core 0 per {args.cpu_period_ms:g} ms" if group else "core 0")
        log(f"file set {fs.total_bytes / 1e6:.0f} MB; server on {where}, httperf core 1; {loadavg()}")
        for arch in archs:
            try:
                est = estimate_peak(arch, root, workload, args.duration, log, procs)
                at = {False: [], True: []}
                for i in range(args.cpu_rounds if args.method != "ladder" else 0):
                    for tracing in ((False, True) if i % 2 == 0 else (True, False)):
                        at[tracing].append(at_rate(arch, root, workload, tracing, tmp, args.fraction * est,
                                                    args.duration, args.seed + 100 * i, log, procs))
                res = {False: [], True: []}
                for i in range(args.rounds if args.method != "cpu" else 0):
                    for tracing in ((False, True) if i % 2 == 0 else (True, False)):
                        lad = Ladder(arch, root, workload, tracing, tmp, args.duration, args.seed + 100 * i, log,
                                     procs)
                        res[tracing].append(lad.climb(est))
            except (LoadError, MeasureError) as e:
                log(f"  {arch:<9} failed: {e}")
                rows.append({"arch": arch, "error": str(e)})
                continue
            row = {"arch": arch, "load": os.getloadavg()[0]}
            if at[False]:
                for tracing, key in ((False, "off"), (True, "on")):
                    row[f"at_{key}"] = statistics.median(r["reply_rps"] for r in at[tracing])
                    row[f"at_cpu_{key}"] = statistics.median(r["server_cpu_pct"] for r in at[tracing])
                    row[f"at_us_{key}"] = statistics.median(r["server_cpu_us_per_reply"] for r in at[tracing])
                row["at_change"] = row["at_us_off"] / row["at_us_on"] - 1    # of the capacity
                row["at_kept_up"] = all(r["sustained"] for t in (False, True) for r in at[t])
                row["at_calls"] = statistics.median(r["calls_per_reply"] for r in at[True])
                row["at_recorded"] = statistics.median(r["recorded_per_reply"] for r in at[True])
                log(f"  {arch}: replies/s off {[round(r['reply_rps']) for r in at[False]]}, "
                    f"on {[round(r['reply_rps']) for r in at[True]]}")
            if not res[False]:
                rows.append(row)
                continue
            for tracing in (False, True):
                peaks = [x["peak"] for x in res[tracing]]
                if any(p is None for p in peaks):
                    row["error"] = "a ladder had no sustained run"
                    break
                key = "on" if tracing else "off"
                row[f"peak_{key}"] = statistics.median(p["reply_rps"] for p in peaks)
                row[f"peaks_{key}"] = [p["reply_rps"] for p in peaks]
                row[f"cpu_{key}"] = statistics.median(p["server_cpu_pct"] for p in peaks)
                row[f"us_{key}"] = statistics.median(p["server_cpu_us_per_reply"] for p in peaks)
            row["calls"] = statistics.median(x["calls_per_reply"] for x in res[True])
            row["recorded"] = statistics.median(x["recorded_per_reply"] for x in res[True])
            # CPU per reply compared at the offered rates both settings sustained (the ladders share them)
            by = {t: {} for t in (False, True)}
            for t in (False, True):
                for x in res[t]:
                    for rate, us in x["us_by_rate"]:
                        by[t].setdefault(rate, []).append(us)
            common = sorted(set(by[False]) & set(by[True]))
            if common:
                row["us_off"] = statistics.median(statistics.median(by[False][k]) for k in common)
                row["us_on"] = statistics.median(statistics.median(by[True][k]) for k in common)
                row["us_change"] = statistics.median(statistics.median(by[True][k]) / statistics.median(by[False][k])
                                                     for k in common) - 1
                row["us_rates"] = len(common)
            rows.append(row)
            log(f"  {arch}: peaks off {row.get('peaks_off')}, on {row.get('peaks_on')}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if group is not None:
            group.close()       # every server has stopped: the ladders stop theirs in `finally`

    where = ('%.0f %% of core 0 per %g ms' % (100 * args.cpu_share, args.cpu_period_ms)) if group else 'core 0'
    worst = None
    if args.method != "ladder":
        print(f"{'arch':<9} {'reply off/s':>11} {'reply on/s':>10} {'cpu% off':>8} {'cpu% on':>8} "
              f"{'us/rep off':>10} {'us/rep on':>10} {'capacity':>8} {'calls/rep':>9} {'est.':>6}  load")
        for r in rows:
            if "at_off" not in r:
                print(f"{r['arch']:<9} {r.get('error', 'no runs')}")
                continue
            d = r["at_change"]
            est = r["at_recorded"] * per_call * 1e6 / r["at_us_off"]
            print(f"{r['arch']:<9} {r['at_off']:>11.0f} {r['at_on']:>10.0f} {r['at_cpu_off']:>8.0f} "
                  f"{r['at_cpu_on']:>8.0f} {r['at_us_off']:>10.1f} {r['at_us_on']:>10.1f} {d:>+8.1%} "
                  f"{r['at_calls']:>9.2f} {est:>+6.1%}  "
                  f"{r['load']:.2f}{'' if r['at_kept_up'] else '  (a run did not keep up)'}")
            if worst is None or d < worst[1]:
                worst = (r["arch"], d)
        print(f"# cpu: medians of {args.cpu_rounds} alternating runs per setting, each on a fresh server offered "
              f"{args.fraction:g} x its untraced peak estimate; replies/s completed, the server's CPU share and "
              f"CPU per reply; capacity = us/rep off / us/rep on - 1, the change of the rate its CPU allows; "
              f"calls/rep = traced calls per reply (the sampled connections' scaled up); est. = the calls recorded "
              f"per reply x {per_call * 1e9:.0f} ns per recorded call (timed here) / untraced us/rep, what the "
              "recording alone should cost; "
              f"server on {where}; {time.monotonic() - t0:.0f} s so far; {loadavg()}")
    if args.method != "cpu":
        print(f"{'arch':<9} {'peak off/s':>10} {'peak on/s':>10} {'change':>7} {'cpu% off':>8} {'cpu% on':>8} "
              f"{'us/rep off':>10} {'us/rep on':>10} {'change':>7} {'calls/rep':>9} {'est.':>6}  load")
        for r in rows:
            if "peak_off" not in r:
                print(f"{r['arch']:<9} {r.get('error', 'no ladder')}")
                continue
            d = r["peak_on"] / r["peak_off"] - 1
            dc = r.get("us_change", r["us_on"] / r["us_off"] - 1)
            est = r["recorded"] * per_call * 1e6 / r["us_off"]
            print(f"{r['arch']:<9} {r['peak_off']:>10.0f} {r['peak_on']:>10.0f} {d:>+7.1%} {r['cpu_off']:>8.0f} "
                  f"{r['cpu_on']:>8.0f} {r['us_off']:>10.1f} {r['us_on']:>10.1f} {dc:>+7.1%} {r['calls']:>9.2f} "
                  f"{est:>+6.1%}  {r['load']:.2f}")
            if worst is None or d < worst[1]:
                worst = (r["arch"], d)
        print(f"# ladder: medians of {args.rounds} alternating peak searches per setting; peak = best sustained "
              f"reply rate of a ladder of offered rates (step {STEP}, one bisection); cpu% = the server's CPU "
              "share of its core in the peak run; us/rep = its CPU per reply, medians over the offered rates both "
              "settings sustained, change = median of the per-rate ratios; calls/rep = traced calls per reply; "
              f"est. = calls recorded per reply x {per_call * 1e9:.0f} ns per recorded call (timed here) / untraced "
              "us/rep; "
              f"server on {where}; {time.monotonic() - t0:.0f} s in all; {loadavg()}")
    if worst is not None:
        print(f"worst change with tracing on: {worst[0]} {worst[1]:+.1%} "
              f"({'within' if worst[1] >= -0.10 else 'NOT within'} the 10 % target)")
    return 0 if worst is not None else 1


if __name__ == "__main__":
    sys.exit(main())
