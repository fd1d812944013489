"""How fast the simulator runs, as a ratio to bare SimPy on the same machine in the same run.

For each architecture at saturation on the study's workload it measures simulated
replies per wall-clock second while running (one process, so per core; the set-up of
a run, mostly the sessions already under way, is shown apart), and beside it a bare
SimPy M/M/c model (a process per customer, a Resource with c servers), the usual
yardstick of what SimPy itself costs. Runs alternate and medians are quoted, since
these machines are shared and noisy.

    python bench/speed.py [--repeat 3] [--seconds 4] [--all] [--only threaded,knot]
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import simpy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models  # noqa: E402
from sim.config import RunControl, Scenario, ServerSpec  # noqa: E402
from sim.engine import build, gc_paced  # noqa: E402
from sim.profile import load_profile  # noqa: E402
from sim.workload import Workload  # noqa: E402


def bare_mmc(customers: int, c: int = 4, rho: float = 0.9, seed: int = 1) -> float:
    """Customers per wall second of a textbook SimPy M/M/c."""
    env = simpy.Environment()
    servers = simpy.Resource(env, capacity=c)
    rng = np.random.default_rng(seed)
    inter = rng.exponential(1.0, customers)
    service = rng.exponential(c * rho, customers)
    done = [0]

    def customer(s):
        with servers.request() as req:
            yield req
            yield env.timeout(s)
        done[0] += 1

    def source():
        for i in range(customers):
            yield env.timeout(inter[i])
            env.process(customer(service[i]))

    env.process(source())
    t = time.perf_counter()
    env.run()
    return done[0] / (time.perf_counter() - t)


# (label, architecture, knobs, cores, offered requests/s): each above its saturation point
CASES = [
    ("SPED", "sped", {}, 1, 12_000),
    ("SYMPED-4p", "symped", {"processes": 4}, 4, 45_000),
]


# knobs other than the defaults where the default would not serve at this load: 256 threads, one per
# persistent connection, serve about 300 requests/s, and the run would time mostly refused connections
KNOBS = {"threaded": {"threads": 10_000}}


def all_cases():
    extra = []
    for arch in sorted(models.ARCHITECTURES):
        if arch not in ("sped", "symped"):
            extra.append((arch, arch, KNOBS.get(arch, {}), 1, 12_000))
    return CASES + extra


def sim_speed(profile, label, arch, knobs, cores, rate, seconds) -> tuple[float, float]:
    """(replies per wall second while running, seconds to build the run and its sessions under way)."""
    spec = ServerSpec(label, arch, models.knobs_class(arch)(**knobs))
    hw = dataclasses.replace(profile.hardware, cores=cores, nics=max(profile.hardware.nics, 2 * cores))
    sc = Scenario("speed", profile, hw, Workload(), RunControl(rates=(rate,), warmup_s=0.0, duration_s=seconds),
                  (spec,))
    t = time.perf_counter()
    env, _server, clients, _entities = build(sc, spec, rate, 0)
    setup = time.perf_counter() - t
    with gc_paced():                    # as sim/engine.py's simulate() runs
        env.run(until=seconds / 4)      # past the first instants, into saturation
        before, t = clients.replies, time.perf_counter()
        env.run(until=seconds)
    return (clients.replies - before) / (time.perf_counter() - t), setup


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4.0, help="simulated seconds per run")
    ap.add_argument("--all", action="store_true", help="every registered architecture, not only SPED and SYMPED")
    ap.add_argument("--only", help="comma-separated case names (of --all's) to run alone, for an A/B of one model")
    args = ap.parse_args()
    profile = load_profile("study-xeon")
    cases = all_cases() if args.all or args.only else CASES
    if args.only:
        names = [x.strip() for x in args.only.split(",") if x.strip()]
        unknown = [n for n in names if n not in {c[0] for c in cases}]
        if unknown:
            ap.error(f"unknown case {unknown[0]!r}; known: {', '.join(c[0] for c in cases)}")
        cases = [c for c in cases if c[0] in names]
    speeds = {c[0]: [] for c in cases}
    setups = {c[0]: [] for c in cases}
    bare = []
    for _ in range(args.repeat):
        bare.append(bare_mmc(100_000))
        for case in cases:
            speed, setup = sim_speed(profile, *case, args.seconds)
            speeds[case[0]].append(speed)
            setups[case[0]].append(setup)
    mmc = statistics.median(bare)
    print(f"{'model':<14} {'replies/s (wall)':>16} {'ratio to M/M/c':>15} {'set-up s':>9}")
    print(f"{'bare M/M/c':<14} {mmc:16,.0f} {1.0:15.2f}")
    for name, v in speeds.items():
        m = statistics.median(v)
        print(f"{name:<14} {m:16,.0f} {m / mmc:15.2f} {statistics.median(setups[name]):9.2f}")
    main_cases = [statistics.median(speeds[c[0]]) for c in CASES if c[0] in speeds]
    if not main_cases:
        return 0
    n = statistics.median(main_cases)
    print(f"speed: {n:.0f} simulated requests/s per core; ratio to bare SimPy M/M/c customers/s: {n / mmc:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
