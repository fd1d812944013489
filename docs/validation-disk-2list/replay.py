"""The page cache alone under the requests a live disk-cgroup run sends, and under the simulator's.

    python docs/validation-disk-2list/replay.py CACHE_MB RATES DURATION_S [--directories 40]

The live validation drives the server with httperf session files (real/httperf.py): each rate
writes at most 1,000 sessions, drawn with seed 0, 1, ... (the warming run: seed 900), and httperf
replays them round robin for all the sessions of the run. This writes the same files, replays
each run's requests in session order through both cache policies (the cache carried from run to
run, empty before the warming run, as after drop_caches), and prints each run's miss ratio. Beside
it, the miss ratios of the simulator's workload (each request drawn afresh from the whole file
set) from the two approximations. Disk reads complete at once: this counts misses, not time.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from real.httperf import MAX_TEMPLATES, parse_wsesslog, write_wsesslog  # noqa: E402
from sim.analytic import che_lru_hit_ratio, two_list_hit_ratio  # noqa: E402
from sim.fileset import FileSet  # noqa: E402
from sim.hardware import PageCache, TwoListCache  # noqa: E402
from sim.workload import Workload  # noqa: E402


class _Read:
    def __init__(self):
        self.callbacks = []


class _Disk:
    def read(self, file, nbytes):
        return _Read()


def requests(wl: Workload, rate: float, duration_s: float, seed: int, workdir: str) -> list[int]:
    """The file indices one live run asks for, in session order."""
    n_total = max(1, round(wl.session_rate(rate) * duration_s))
    path = f"{workdir}/sessions-{seed}.log"
    write_wsesslog(wl, np.random.default_rng([seed, 0]), min(n_total, MAX_TEMPLATES), path)
    sessions = parse_wsesslog(Path(path).read_text())
    index = {wl.fileset.path(i): i for i in range(wl.fileset.n_files)}
    out = []
    for k in range(n_total):
        out += [index[uri.lstrip("/")] for uri, _think in sessions[k % len(sessions)]]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cache_mb", type=float)
    ap.add_argument("rates", help="comma-separated offered rates of the live run")
    ap.add_argument("duration_s", type=float)
    ap.add_argument("--directories", type=int, default=40)
    a = ap.parse_args()
    rates = [float(x) for x in a.rates.split(",")]
    wl = Workload(fileset=FileSet(a.directories), think_within_burst_s=0.02, think_between_bursts_s=0.2)
    cap = a.cache_mb * 2**20
    runs = [(rates[0], 900)] + [(r, i) for i, r in enumerate(rates)]
    with tempfile.TemporaryDirectory() as tmp:
        streams = [requests(wl, r, a.duration_s, s, tmp) for r, s in runs]
    sizes = wl.fileset.sizes.tolist()
    print(f"cache {a.cache_mb:g} MB, file set {wl.fileset.total_bytes / 2**20:.1f} MB")
    for (r, s), st in zip(runs, streams):
        u = set(st)
        print(f"  run {r:.0f}/s{' (warming)' if s == 900 else ''}: {len(st)} requests, {len(u)} distinct files, "
              f"{sum(sizes[f] for f in u) / 2**20:.1f} MB of them")
    for name, cls in (("lru", PageCache), ("two-list", TwoListCache)):
        c = cls(None, _Disk(), cap)
        cells = []
        for (r, s), st in zip(runs, streams):
            m0 = c.misses
            for f in st:
                ev = c.touch(f, sizes[f])
                if ev is not None:
                    for cb in ev.callbacks:
                        cb(ev)
            cells.append(f"{100 * (c.misses - m0) / len(st):.2f}{'w' if s == 900 else ''}")
        print(f"  replayed, {name:8s} miss % per run: {' '.join(cells)}")
    p, s = wl.fileset.probabilities, wl.fileset.sizes.astype(float)
    print(f"  fresh draws (the simulator's workload): lru {100 * (1 - che_lru_hit_ratio(p, s, cap).hit_ratio):.2f} %, "
          f"two-list {100 * (1 - two_list_hit_ratio(p, s, cap).hit_ratio):.2f} % (approximations)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
