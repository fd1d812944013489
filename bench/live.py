"""Peak reply rate of each live server architecture beside nginx, under the same httperf session load.

    python bench/live.py [--quick] [--servers sped,...,nginx] [--phases study,capacity] [--json OUT]

Each server runs pinned to core 0 (`taskset -c 0`), httperf to core 1, on one
generated file set kept in memory (/dev/shm when there is one). For each
server a bounded sweep of offered request rates (doubling from a start rate,
then bisecting between the last sustained and the first failed rate) finds
the peak: the highest reply rate of a sustained run, a run being sustained
when errors are under 1 %, every reply is a 200, and the server answered at
least 85 % of what the sessions offered in the measured window (see
real/httperf.py on why the window and not the nominal rate). Runs are cut
when their arrivals end (httperf is interrupted and reports).

Two phases. `study`: the study's sessions with their think times (10 s runs,
replies counted from 5 s on). Sessions then hold their connection ~8 s, so a
few thousand requests/s already need several httperf processes, and httperf
busy-polls: on one load core this phase tops out near 3,000 req/s whatever
the server. `capacity`: the same sessions (files, requests per session)
without think times (6 s runs), which one httperf can offer up to ~20,000
req/s: the server's own limit, as long as it is below that.

The server's CPU use during each run (its processes, from /proc) is reported
beside its reply rate, as a share of its core and per reply: a server well
below 100 % of its core at its "peak" was held back by the load generator or
by other work on core 0, not by its own capacity. CPU per reply is skewed less by such
contention (though it falls as the load rises and work is batched; and the
network softirq work done on the server's behalf is not in it).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from real.fileset import generate  # noqa: E402
from calibration.measure import LiveServer, MeasureError  # noqa: E402
from real.httperf import LoadError, Nginx, atomic_write_text, plan_instances, run_httperf  # noqa: E402
from sim.fileset import FileSet  # noqa: E402
from sim.workload import Workload  # noqa: E402

# live architectures and their knobs: enough connections for the ~8 s sessions at a few thousand req/s
ARCHS = {
    "sped": ["--max-conns", "6000"],
    "symped": ["--processes", "2", "--max-conns", "6000"],
    "blocking": ["--processes", "16", "--max-conns", "6000"],
    "threaded": ["--threads", "2000"],
    "green": ["--max-conns", "6000"],
    "pipeline": ["--writers", "4", "--max-conns", "6000"],
}
SERVER_CORE, LOAD_CORE = 0, 1
KEPT_UP = 0.85
MAX_ERRORS_PCT = 1.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def PythonServer(arch: str, root: str, workdir: str) -> LiveServer:
    """`simrun serve ARCH` pinned to the server core: the launcher calibration uses too."""
    return LiveServer(arch, root, list(ARCHS[arch]), core=SERVER_CORE)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its direct children (the workers of a forking server)."""
    total = 0.0
    pids = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                pids += [int(x) for x in f.read().split()]
    except OSError:
        pass
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
        except (OSError, IndexError, ValueError):
            pass
    return total


def core_seconds(core: int) -> tuple[float, float]:
    """(busy, irq + softirq) seconds of one core: busy is everything but idle and iowait, softirq
    included (the network work no process is charged for), whoever ran there."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{core} "):
                v = [int(x) for x in line.split()[1:]]
                return (sum(v[:8]) - v[3] - v[4]) / CLK_TCK, (v[5] + v[6]) / CLK_TCK
    return 0.0, 0.0


def open_server_connections(port: int) -> int:
    """Server-side TCP connections on `port` not yet closed by the server (ESTABLISHED or CLOSE_WAIT)."""
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] in ("01", "08"):
                        n += 1
        except OSError:
            pass
    return n


def settle(port: int, limit_s: float = 20.0) -> float:
    """Wait (bounded) until the server has closed the connections of the last run; seconds waited.

    httperf, interrupted, closes its sessions all at once; a server still working through them would
    start the next run behind."""
    t0 = time.monotonic()
    time.sleep(0.5)
    while open_server_connections(port) and time.monotonic() - t0 < limit_s:
        time.sleep(0.25)
    return time.monotonic() - t0


def one_run(pid, port, workload, rate, duration, seed, warmup_s=5.0) -> dict:
    c0, (b0, s0), t0 = cpu_seconds(pid), core_seconds(SERVER_CORE), time.monotonic()
    r = run_httperf("127.0.0.1", port, workload, rate, duration, LOAD_CORE, seed=seed, warmup_s=warmup_s,
                    stop_after_s=duration + 0.5)
    wall = max(time.monotonic() - t0, 1e-9)
    cpu = cpu_seconds(pid) - c0
    b1, s1 = core_seconds(SERVER_CORE)
    r["server_cpu_pct"] = 100.0 * cpu / wall
    r["server_cpu_us_per_reply"] = 1e6 * cpu / r["replies"] if r["replies"] else 0.0
    r["server_core_busy_pct"] = 100.0 * (b1 - b0) / wall
    r["server_core_softirq_pct"] = 100.0 * (s1 - s0) / wall
    r["sustained"] = (r["errors_pct"] < MAX_ERRORS_PCT and r["replies_not_2xx"] == 0
                      and r["reply_rps"] >= KEPT_UP * r["offered_window_rps"])
    return r


def find_peak(name, pid, port, alive, workload, *, start, duration, warmup_s, bisect_steps, budget_s, seed,
              log, label) -> dict:
    """Doubling then bisecting over offered rates; every run bounded, the sweep bounded by budget_s."""
    runs = []
    t_end = time.monotonic() + budget_s
    good, bad = None, None
    rate = start

    def attempt(rate):
        r = one_run(pid, port, workload, rate, duration, seed + len(runs), warmup_s)
        runs.append(r)
        log(f"  {name:<9} {label:<8} offered {rate:>7.0f}/s  window {r['offered_window_rps']:>7.0f}/s  "
            f"reply {r['reply_rps']:>7.0f}/s  {r['throughput_mbps']:>6.0f} Mbps  err {r['errors_pct']:5.2f}%  "
            f"resp {r['response_ms_mean']:>7.1f} ms  server cpu {r['server_cpu_pct']:>4.0f}% "
            f"{r['server_cpu_us_per_reply']:>4.0f} us/reply "
            f"(core {r['server_core_busy_pct']:>3.0f}%, softirq {r['server_core_softirq_pct']:>2.0f}%)  "
            f"httperf x{r['instances']} {r['client_cpu_pct']:>3.0f}%  {'ok' if r['sustained'] else 'NOT sustained'}  "
            f"load {os.getloadavg()[0]:.1f}")
        r["settle_s"] = round(settle(port), 1)
        return r["sustained"]

    notes = []

    def have_time():
        if time.monotonic() < t_end:
            return True
        notes.append("time budget used before the search ended")
        return False

    # doubling up from the start rate (halving down if the start rate already fails)
    while have_time():
        try:
            plan_instances(workload, rate)
        except LoadError:
            notes.append(f"load generator limit at {rate:.0f}/s")
            break
        if attempt(rate):
            good = rate
            if bad is not None:
                break
            rate *= 2
        else:
            bad = rate
            if good is not None or len(runs) >= 4:
                break
            rate /= 2
        if not alive():
            notes.append("server died")
            break
    if good is not None and bad is not None:
        for _ in range(bisect_steps):
            if not alive() or not have_time():
                break
            mid = (good + bad) / 2
            if attempt(mid):
                good = mid
            else:
                bad = mid
    stop_reason = "; ".join(notes)
    ok = [r for r in runs if r["sustained"]]
    best = max(ok, key=lambda r: r["reply_rps"]) if ok else None
    return {"server": name, "peak_reply_rps": best["reply_rps"] if best else 0.0,
            "peak_mbps": best["throughput_mbps"] if best else 0.0,
            "peak_offered_rps": best["offered_rps"] if best else 0.0,
            "server_cpu_pct_at_peak": best["server_cpu_pct"] if best else 0.0,
            "server_cpu_us_per_reply_at_peak": best["server_cpu_us_per_reply"] if best else 0.0,
            "server_core_busy_pct_at_peak": best["server_core_busy_pct"] if best else 0.0,
            "server_core_softirq_pct_at_peak": best["server_core_softirq_pct"] if best else 0.0,
            "httperf_cpu_pct_at_peak": best["client_cpu_pct"] if best else 0.0,
            "first_failed_rps": bad, "note": stop_reason, "runs": runs}


def like_rate_efficiency(x: dict, ref: dict) -> tuple[float, float] | None:
    """(offered rate, nginx's CPU per reply over the server's) at the highest offered rate both sustained."""
    mine = {round(r["offered_rps"]): r for r in x.get("runs", []) if r["sustained"] and r["server_cpu_us_per_reply"]}
    theirs = {round(r["offered_rps"]): r for r in ref.get("runs", []) if r["sustained"]}
    common = sorted(set(mine) & set(theirs))
    if not common:
        return None
    rate = common[-1]
    return rate, theirs[rate]["server_cpu_us_per_reply"] / mine[rate]["server_cpu_us_per_reply"]


PHASES = {
    # name: (think times kept?, run seconds, warm-up seconds, first rate, first rate in --quick)
    "study": (True, 10.0, 5.0, 1000.0, 2000.0),
    "capacity": (False, 6.0, 0.0, 2000.0, 4000.0),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="fewer, coarser steps (about 6 minutes for all servers, against about 9)")
    p.add_argument("--servers", default=",".join([*ARCHS, "nginx"]),
                   help="comma-separated: " + ", ".join([*ARCHS, "nginx"]))
    p.add_argument("--phases", default="study,capacity",
                   help="study (the study's think times) and/or capacity (the same sessions without think "
                        "times, so that one httperf can offer more); default both")
    p.add_argument("--directories", type=int, default=5, help="file-set directories (default 5, 26 MB)")
    p.add_argument("--budget-scale", type=float, help="scale the time cap of each sweep (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write all runs to this JSON file (atomically)")
    args = p.parse_args(argv)
    names = [s.strip() for s in args.servers.split(",") if s.strip()]
    phases = [s.strip() for s in args.phases.split(",") if s.strip()]
    unknown = [s for s in names if s not in ARCHS and s != "nginx"] + [f for f in phases if f not in PHASES]
    if unknown or not names or not phases:
        print(f"bench/live.py: error: unknown server(s) or phase(s) {unknown}; servers: "
              f"{', '.join([*ARCHS, 'nginx'])}; phases: {', '.join(PHASES)}", file=sys.stderr)
        return 2
    if not 1 <= args.directories <= 200:
        print("bench/live.py: error: --directories must be 1..200 (the set is kept in memory)", file=sys.stderr)
        return 2
    for tool in ("httperf", "taskset", "nginx"):
        if shutil.which(tool) is None:
            print(f"bench/live.py: error: {tool} not found (make system installs it)", file=sys.stderr)
            return 2
    bisect_steps = 1 if args.quick else 2
    # a cap per phase and server, about twice what a sweep normally takes; the sweeps usually end first
    budget_each = (45.0 if args.quick else 90.0) * (args.budget_scale or 1.0)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    workdir = tempfile.mkdtemp(prefix="bench-live-", dir=base)
    results = []
    t0 = time.monotonic()
    try:
        root = os.path.join(workdir, "www")
        fs = FileSet(directories=args.directories)
        generate(root, fs, seed=0)
        workloads = {"study": Workload(fileset=fs),
                     "capacity": Workload(fileset=fs, think_within_burst_s=0.0, think_between_bursts_s=0.0)}
        log(f"file set: {fs.directories} directories, {fs.total_bytes / 1e6:.0f} MB in {root}; "
            f"server on core {SERVER_CORE}, httperf on core {LOAD_CORE}")
        for name in names:
            server = Nginx(root, cpu=SERVER_CORE) if name == "nginx" else PythonServer(name, root, workdir)
            try:
                server.start()
            except (LoadError, MeasureError) as e:
                log(f"  {name:<9} unavailable: {e}")
                results.append({"server": name, "unavailable": str(e)})
                continue
            entry = {"server": name}
            try:
                if name == "nginx":
                    pid, port, alive = server.proc.pid, server.port, lambda: server.proc.poll() is None
                else:
                    pid, port, alive = server.pid, server.port, server.alive
                for phase in phases:
                    keep_think, duration, warmup, first, first_quick = PHASES[phase]
                    entry[phase] = find_peak(name, pid, port, alive, workloads[phase],
                                             start=first_quick if args.quick else first, duration=duration,
                                             warmup_s=warmup, bisect_steps=bisect_steps, budget_s=budget_each,
                                             seed=args.seed, log=log, label=phase)
            except LoadError as e:
                log(f"  {name:<9} load run failed: {e}")
                entry["unavailable"] = f"load run failed: {e}"
            finally:
                server.stop()
            results.append(entry)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'server':<10} " + " ".join(f"{ph + ' peak/s':>14} {'Mbps':>7} {'/nginx':>6} {'cpu%':>5} {'core%':>5} "
                                         f"{'sirq%':>5} {'hperf%':>6} {'us/rep':>6} {'eff':>5} {'eff@rate':>13}"
                                         for ph in phases)
          + "  notes")
    ref = next((r for r in results if r["server"] == "nginx"), {})
    for r in results:
        cells, notes = [], []
        for ph in phases:
            x = r.get(ph)
            if not x:
                cells.append(f"{'-':>14} {'-':>7} {'-':>6} {'-':>5} {'-':>5} {'-':>5} {'-':>6} {'-':>6} {'-':>5} "
                             f"{'-':>13}")
                continue
            base = ref.get(ph, {}) if ref else {}
            ratio = f"{x['peak_reply_rps'] / base['peak_reply_rps']:.2f}" if base.get("peak_reply_rps") else "-"
            us = x["server_cpu_us_per_reply_at_peak"]
            eff = f"{base['server_cpu_us_per_reply_at_peak'] / us:.2f}" if us and base.get(
                "server_cpu_us_per_reply_at_peak") else "-"
            like = like_rate_efficiency(x, base) if base else None
            like = f"{like[1]:.2f}@{like[0]:.0f}" if like else "-"
            cells.append(f"{x['peak_reply_rps']:>14.0f} {x['peak_mbps']:>7.1f} {ratio:>6} "
                         f"{x['server_cpu_pct_at_peak']:>5.0f} {x.get('server_core_busy_pct_at_peak', 0):>5.0f} "
                         f"{x.get('server_core_softirq_pct_at_peak', 0):>5.0f} {x.get('httperf_cpu_pct_at_peak', 0):>6.0f} "
                         f"{us:>6.1f} {eff:>5} {like:>13}")
            if x["note"]:
                notes.append(f"{ph}: {x['note']}")
        if "unavailable" in r:
            notes.append(r["unavailable"])
        print(f"{r['server']:<10} " + " ".join(cells) + "  " + "; ".join(notes))
    print(f"# {time.monotonic() - t0:.0f} s in all. In each server's peak run: cpu% = CPU of the server's own "
          "processes as a share of its core, and us/rep the same per reply (network softirq work is not in it); "
          "core% = the server core's busy time, whoever used it (other programs too), sirq% its irq+softirq "
          "part; hperf% = httperf's own CPU share on the load core (near 100 %: the load generator, not the "
          "server, was the limit; cpu% near 100 %: the server was). eff = nginx's us/rep over the server's "
          "(replies per CPU-second relative to nginx), less skewed than the peak ratio by other work on the "
          "machine; but CPU per reply falls as the load rises, so eff@rate compares like with like: the same "
          "ratio at the highest offered rate (after @) that both the server and nginx sustained")
    if args.json:
        doc = {"directories": args.directories, "quick": args.quick, "kept_up_ratio": KEPT_UP,
               "max_errors_pct": MAX_ERRORS_PCT, "phases": {k: PHASES[k] for k in phases}, "results": results}
        atomic_write_text(args.json, json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
