"""Black-box service demands of a live server nobody here wrote (nginx, lighttpd): `simrun blackbox`.

    simrun blackbox --pid PID --port PORT --rates 300,600 [--directories N] [--out nginx.toml]

Given only the server's pid and port: drive it with httperf at a few offered
rates below saturation; read the CPU time of its process tree (/proc/PID/stat,
the workers included), the bytes it read from the disk (/proc/PID/io) and the
replies and bytes httperf got. By the utilisation law (U = X * D) each
resource's demand per reply is its busy time over the replies: CPU seconds per
reply, bytes per reply over the link's rate, disk reads per reply over the
disk's rate. The smallest capacity / demand is the saturation rate. A server's
CPU per reply falls as the load rises (nginx here went from 115 us at 400
replies/s to 31 us near saturation): at light load its threads sleep between
requests and pay a wake-up from idle for many of them, and near saturation they
find work waiting. The kernel counts those sleeps (the voluntary context
switches of the process tree). At saturation nobody sleeps, and the demand per
reply alone sets the rate. A loaded server also batches (several events per
poll, fewer calls per reply), which no light run shows: nginx here cost 35.5 us
a reply at 98 % busy and keeping up, 29.9 us past saturation. So when runs go
past saturation (busy for 90 % of the share and not keeping up), their median
CPU per reply is the demand, and the light runs' CPU beyond it is charged to
their wake-ups. Without such a run, the CPU is split by least squares over the
runs into a demand per reply and a cost per wake-up; with one run, or no sleeps
counted, the busiest run gives the demand, wake-ups included. Give rates up
past the expected peak. The demands become a
profile that an architecture model can run: everything the server does per
reply is charged as one per-request operation (`parse`), since nothing is known
of how the server spends it, and the wake-up as `wakeup`.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import statistics
import sys
from dataclasses import dataclass

from sim.config import Footprint, Hardware, Profile
from sim.operations import OPERATIONS, Cost

from .measure import MeasureError, load_average, measure_run, past_saturation, process_tree, settle, sustained


class BlackboxError(Exception):
    pass


def io_read_bytes(pid: int) -> float:
    """Bytes a process tree has read from storage (/proc/PID/io read_bytes)."""
    total = 0.0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/io") as f:
                for line in f:
                    if line.startswith("read_bytes:"):
                        total += float(line.split()[1])
        except OSError:
            pass
    return total


@dataclass
class Demands:
    cpu_s: float             # CPU seconds per reply
    reply_bytes: float       # bytes per reply (what the link carries)
    disk_bytes: float        # bytes read from the disk per reply
    replies: int
    runs: int
    load_avg: list
    wakeup_s: float = 0.0    # CPU seconds per wake-up from idle (a voluntary context switch), if split off
    basis: str = "utilisation law over the runs"   # how cpu_s was read, for the reports

    def saturation(self, cpu_fraction: float = 1.0, cores: int = 1, link_gbps: float | None = None,
                   disk_mb_s: float | None = None) -> dict[str, float]:
        """Saturation rate (replies/s) of each resource with a demand."""
        out = {"cpu": cpu_fraction * cores / self.cpu_s if self.cpu_s > 0 else float("inf")}
        if link_gbps:
            out["nic"] = link_gbps * 1e9 / 8 / self.reply_bytes if self.reply_bytes > 0 else float("inf")
        if disk_mb_s and self.disk_bytes > 0:
            out["disk"] = disk_mb_s * 1e6 / self.disk_bytes
        return out


def demands_of(runs: list[dict]) -> Demands:
    """Demands per reply from runs measured with `measure_run` (plus `disk_read_bytes` per run)."""
    replies = sum(r["replies"] for r in runs)
    if replies <= 0:
        raise BlackboxError("no replies in the runs: is the server answering on that port?")
    cpu = sum(r["server_cpu_s"] for r in runs)
    nbytes = sum(r["replies"] * r["reply_bytes_mean"] for r in runs)
    disk = sum(r.get("disk_read_bytes", 0.0) for r in runs)
    return Demands(cpu / replies, nbytes / replies, disk / replies, int(replies), len(runs),
                   [r["load_avg"] for r in runs])


def demands_with_wakeups(runs: list[dict], cpu_fraction: float = 1.0) -> Demands:
    """Demands with the CPU split into a part per reply and a part per wake-up (the process tree's
    voluntary context switches).

    Runs past saturation (`past_saturation` on `cpu_fraction`) give the demand per reply: the median
    of their CPU per reply. The wake-up's cost is then the least squares of the other runs' CPU beyond
    that demand on their wake-ups. Without such runs, non-negative least squares of each run's CPU on
    its replies and wake-ups give both. With fewer than two runs, no wake-ups counted, or a split that
    leaves no CPU per reply, the plain utilisation law on the busiest run (`demands_of`). The demand
    per reply is at most the busiest run's CPU per reply, wake-ups and all: a split above it means
    the CPU per reply fell with the load for more than the wake-ups (event calls batching), which a
    line in replies and wake-ups cannot follow, and the run nearest saturation is then the better
    guide."""
    import numpy as np
    from scipy.optimize import nnls
    d = demands_of(runs) if runs else None
    past = [r for r in runs if past_saturation(r, cpu_fraction)]
    if past:
        per_reply = statistics.median(r["server_cpu_s"] / max(1, r["replies"]) for r in past)
        below = [r for r in runs if r not in past and r.get("server_wakeups", 0) > 0]
        wakes = np.array([r["server_wakeups"] for r in below], dtype=float)
        extra = np.array([r["server_cpu_s"] - per_reply * r["replies"] for r in below], dtype=float)
        per_wakeup = max(0.0, float(wakes @ extra / (wakes @ wakes))) if below else 0.0
        return dataclasses.replace(d, cpu_s=float(per_reply), wakeup_s=per_wakeup,
                                   basis=f"median CPU per reply of {len(past)} run(s) past saturation")
    plain = demands_of(sorted(runs, key=lambda r: r["server_cpu_s"] / max(r.get("httperf_wall_s", 1.0), 1e-9))[-1:])
    plain = dataclasses.replace(plain, basis="utilisation law on the busiest run, wake-ups included")
    if len(runs) < 2 or not any(r.get("server_wakeups", 0) for r in runs):
        return plain
    x = np.array([[r["replies"], r.get("server_wakeups", 0)] for r in runs], dtype=float)
    y = np.array([r["server_cpu_s"] for r in runs], dtype=float)
    norms = np.linalg.norm(x, axis=0)
    norms[norms == 0] = 1.0
    sol, _ = nnls(x / norms, y)
    per_reply, per_wakeup = sol / norms
    if per_reply <= 0 or per_reply >= plain.cpu_s:
        return plain
    return dataclasses.replace(d, cpu_s=float(per_reply), wakeup_s=float(per_wakeup),
                               basis="least squares over the runs on replies and wake-ups")


def measure(pid: int, port: int, workload, rates, duration_s: float, *, host: str = "127.0.0.1", seed: int = 0,
            log=print) -> list[dict]:
    """httperf runs at `rates` against a server known only by pid and port, with its CPU and disk reads."""
    runs = []
    for i, rate in enumerate(rates):
        if not os.path.exists(f"/proc/{pid}"):
            raise BlackboxError(f"process {pid} is gone")
        d0 = io_read_bytes(pid)
        r = measure_run(pid, port, workload, rate, duration_s, seed=seed + i, host=host)
        r["disk_read_bytes"] = io_read_bytes(pid) - d0
        r["reply_bytes_mean"] = (r["throughput_mbps"] * 1e6 / 8 / r["reply_rps"]) if r["reply_rps"] > 0 else 0.0
        runs.append(r)
        log(f"  blackbox offered {rate:>7.0f}/s  reply {r['reply_rps']:>7.1f}/s  err {r['errors_pct']:5.2f}%  "
            f"cpu {r['server_cpu_s']:.3f} s for "
            f"{r['replies']} replies = {1e6 * r['server_cpu_s'] / max(1, r['replies']):.1f} us/reply  "
            f"load {r['load_avg']:.1f}")
        settle(port, pid)
    return runs


def profile_of(d: Demands, name: str, hardware: Hardware, description: str = "") -> Profile:
    """A profile charging the CPU demand per request (parse), the wake-up's (wakeup), nothing else."""
    costs = {op: Cost() for op in OPERATIONS}
    costs["parse"] = Cost(d.cpu_s, 0.0)
    costs["wakeup"] = Cost(d.wakeup_s, 0.0)
    return Profile(name=name, costs=costs, hardware=hardware, footprint=Footprint(), description=description)


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise BlackboxError(message)


def _terminate(signum, frame):
    """SIGTERM unwinds like an error, so the httperf processes are stopped on the way out."""
    raise SystemExit(143)


def main(argv=None) -> int:
    from sim.profile import write_profile
    signal.signal(signal.SIGTERM, _terminate)
    from .calibrate import machine, parse_rates, workload_for, CalibrationError
    argv = list(sys.argv[1:] if argv is None else argv)
    p = _Parser(prog="simrun blackbox", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pid", type=int, required=True, help="the server's (master) process id")
    p.add_argument("--port", type=int, required=True, help="its port on --host")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--rates", default="300,600", help="offered rates, rising; give one past the expected peak, "
                                                      "where the demand is read (default 300,600)")
    p.add_argument("--duration", type=float, default=8.0, help="seconds of arrivals per rate (default 8)")
    p.add_argument("--directories", type=int, default=4, help="directories of the file set the server serves")
    p.add_argument("--cpu-fraction", type=float, default=1.0, help="share of its core the server may use (default 1)")
    p.add_argument("--out", help="write the profile here")
    try:
        args = p.parse_args(argv)
        rates = parse_rates(args.rates)
        if not os.path.exists(f"/proc/{args.pid}"):
            raise BlackboxError(f"no process {args.pid}")
        if not 0 < args.port < 65536:
            raise BlackboxError(f"--port must be 1..65535, got {args.port}")
        wl = workload_for(args.directories)
        runs = measure(args.pid, args.port, wl, rates, args.duration, host=args.host)
        # the CPU per reply falls as the load rises (fewer wake-ups, more batching): runs past saturation
        # give the demand; otherwise it is split from the wake-ups over the runs that kept up
        used = [r for r in runs if sustained(r) or past_saturation(r, args.cpu_fraction)]
        d = demands_with_wakeups(used or runs, args.cpu_fraction)
        sat = d.saturation(args.cpu_fraction)
        print(f"CPU demand {d.cpu_s * 1e6:.1f} us/reply ({d.basis}) and {d.wakeup_s * 1e6:.1f} us/wake-up, "
              f"{d.reply_bytes:.0f} bytes/reply, "
              f"{d.disk_bytes:.0f} disk bytes/reply over {d.replies} replies; predicted CPU saturation "
              f"{sat['cpu']:.0f} replies/s (load average {load_average():.1f})")
        if args.out:
            hw = Hardware(cores=1, kernel_mb=0.0, nics=1, nic_gbps=40.0)
            prof = profile_of(d, "blackbox", hw, f"black-box demand of pid {args.pid}")
            write_profile(prof, args.out, {**machine(), "method": f"utilisation law: CPU time over replies ({d.basis})",
                                           "cpu_us_per_reply": d.cpu_s * 1e6, "wakeup_us": d.wakeup_s * 1e6,
                                           "reply_bytes": d.reply_bytes,
                                           "rates": rates, "load_avg": d.load_avg})
            print(f"wrote {args.out}")
    except (BlackboxError, MeasureError, CalibrationError) as e:
        print(f"simrun blackbox: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
