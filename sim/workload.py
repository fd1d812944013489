"""The client workload: httperf `--wsesslog`-style sessions over the SPECweb99 file set.

One description serves both halves of the project: the simulator draws its
clients from it, and `real/httperf.py` writes it out as an httperf session log.

A session is one persistent HTTP/1.1 connection carrying `requests_per_session`
requests, grouped in bursts. Between two requests of one burst the client thinks
for the active off-period (0.343 s in the study); between bursts for the inactive
off-period (3.0 s). The study gives the two values, not their distributions, nor
the number of requests per session or per burst (PAPER.md section 2): the
defaults below (5 to 15 requests per session, as SPECweb99's keep-alive rule is
usually cited, and bursts of 1 to 7 requests) are our assumptions, and knobs.

Sessions are drawn afresh by default. httperf cannot do that: it holds at most
1,000 sessions per session file and replays them round robin. With
`session_templates = N` both sides use the same N sessions (`templates()`:
files and think times drawn once from `template_seed`), replayed in turn, so
a page cache sees the same repeats in the simulator as live.

Sessions arrive as a Poisson stream. httperf draws its stream from a fixed seed, so
every live run at a rate starts its sessions at the same instants; with `arrivals =
"httperf"` the simulator starts them at those instants too (sim/generator.py), from
an empty start as httperf does, so both sides are offered the very same requests.

The load generator has a limit of its own: httperf waits with `select`, so one
process holds at most FD_SETSIZE descriptors, and a session that finds its
process full fails at once (httperf's `fd_unavail`). `real/httperf.py` starts
enough processes for the concurrency the think times alone imply
(`generator_processes`); past saturation the response times add to it, and
the processes fill. With `generator_fd_limit` set, the simulated clients stop at
the same number of open sessions (`max_open_sessions`); 0, the default, is a
generator without a limit, as the study's eight httperf processes were for its
rates.
"""
from __future__ import annotations

import math

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from .fileset import FileSet


GENERATOR_MAX_TEMPLATES = 1000  # sessions httperf keeps from one session file (MAX_SESSION_TEMPLATES, wsesslog.c)


@dataclass(frozen=True)
class Workload:
    fileset: FileSet = field(default_factory=FileSet)
    session_requests_min: int = 5
    session_requests_max: int = 15
    burst_requests_min: int = 1
    burst_requests_max: int = 7
    think_within_burst_s: float = 0.343
    think_between_bursts_s: float = 3.0
    think_distribution: str = "exponential"  # or "fixed"
    timeout_s: float = 15.0
    header_bytes: int = 250          # HTTP response header sent before each file
    session_templates: int = field(default=0, metadata={
        "min": 0, "max": 1_000_000,
        "help": "0: every session drawn afresh; N: the same N sessions replayed in turn, as httperf replays "
                "its session files"})
    template_seed: int = field(default=0, metadata={"min": 0, "max": 2**32 - 1,
                                                    "help": "seed of the session templates"})
    generator_fd_limit: int = field(default=0, metadata={
        "min": 0, "max": 1_000_000,
        "help": "connections one load-generator process can hold (0: no limit); a session that finds its "
                "process full fails at once. httperf: 1,022, its own count of open connections at overload here "
                "(select's FD_SETSIZE is 1,024)"})
    generator_tick_s: float = field(default=0.001, metadata={
        "min": 0.0, "max": 1.0,
        "help": "timer granularity of the load generator: sessions start and think times end on its ticks "
                "(httperf's TIMER_INTERVAL, 1 ms); 0: at the exact drawn instants"})
    arrivals: str = field(default="poisson", metadata={
        "choices": ("poisson", "httperf"),
        "help": "poisson: sessions arrive as a Poisson stream drawn from the run's seed, and the run starts with "
                "sessions under way; httperf: the instants httperf's own seeded generator starts them at in a run "
                "of warmup_s + duration_s, from none under way, as `simrun load` offers them"})
    generator_sessions_per_process: int = field(default=800, metadata={
        "min": 1, "max": 1_000_000,
        "help": "mean open sessions the load is planned for per load-generator process (think times only); "
                "real/httperf.py starts as many processes as this needs"})

    def __post_init__(self):
        if not 1 <= self.session_requests_min <= self.session_requests_max:
            raise ValueError("need 1 <= session_requests_min <= session_requests_max")
        if not 1 <= self.burst_requests_min <= self.burst_requests_max:
            raise ValueError("need 1 <= burst_requests_min <= burst_requests_max")
        if self.arrivals not in ("poisson", "httperf"):
            raise ValueError("arrivals must be 'poisson' or 'httperf'")
        if self.think_distribution not in ("exponential", "fixed"):
            raise ValueError("think_distribution must be 'exponential' or 'fixed'")
        if self.session_templates < 0:
            raise ValueError("session_templates must be 0 (fresh sessions) or a count of templates")

    @property
    def mean_requests_per_session(self) -> float:
        return (self.session_requests_min + self.session_requests_max) / 2.0

    @property
    def mean_burst_requests(self) -> float:
        return (self.burst_requests_min + self.burst_requests_max) / 2.0

    def session_rate(self, offered_rps: float) -> float:
        """Sessions per second that offer `offered_rps` requests per second."""
        return offered_rps / self.mean_requests_per_session

    @property
    def mean_session_think_s(self) -> float:
        """Expected think time summed over one session (exact, from the request and burst count rules)."""
        lo, hi = self.burst_requests_min, self.burst_requests_max
        f = [0.0] * (self.session_requests_max + 1)  # f[m]: expected bursts to cover m requests
        for m in range(1, len(f)):
            f[m] = 1.0 + sum(f[max(m - b, 0)] for b in range(lo, hi + 1)) / (hi - lo + 1)
        ns = range(self.session_requests_min, self.session_requests_max + 1)
        bursts = sum(f[n] for n in ns) / len(ns)
        return (bursts - 1.0) * self.think_between_bursts_s + (self.mean_requests_per_session - bursts) * \
            self.think_within_burst_s

    def generator_processes(self, offered_rps: float) -> int:
        """Load-generator processes for `offered_rps`: enough for the sessions the think times keep
        open, and for the session templates (httperf holds at most 1,000 per session file)."""
        concurrency = self.session_rate(offered_rps) * self.mean_session_think_s
        k = max(1, math.ceil(concurrency / self.generator_sessions_per_process))
        if self.session_templates:
            k = max(k, math.ceil(self.session_templates / GENERATOR_MAX_TEMPLATES))
        return k

    def max_open_sessions(self, offered_rps: float) -> int:
        """Most sessions the load generator keeps open at `offered_rps` (0: no limit)."""
        return self.generator_fd_limit * self.generator_processes(offered_rps) if self.generator_fd_limit else 0

    def think(self, rng: np.random.Generator, mean: float) -> float:
        return float(rng.exponential(mean)) if self.think_distribution == "exponential" else mean

    def session(self, rng: np.random.Generator) -> list[list[int]]:
        """One session as bursts of file indices."""
        n = int(rng.integers(self.session_requests_min, self.session_requests_max + 1))
        files = self.fileset.sample(rng, n).tolist()
        bursts = []
        while files:
            b = int(rng.integers(self.burst_requests_min, self.burst_requests_max + 1))
            bursts.append(files[:b])
            files = files[b:]
        return bursts

    def template(self, rng: np.random.Generator) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """One session as httperf's session file gives it: its files, and after each request the
        think time that follows (within or between bursts, to the millisecond; 0 after the last)."""
        files, thinks = [], []
        bursts = self.session(rng)
        for b, burst in enumerate(bursts):
            for j, index in enumerate(burst):
                files.append(int(index))
                last_of_burst = j == len(burst) - 1
                if last_of_burst and b == len(bursts) - 1:
                    thinks.append(0.0)
                    continue
                mean = self.think_between_bursts_s if last_of_burst else self.think_within_burst_s
                thinks.append(round(self.think(rng, mean), 3))
        return tuple(files), tuple(thinks)

    def templates(self) -> tuple:
        """The `session_templates` sessions both the simulator and httperf replay (empty if 0)."""
        return _templates(self)


@lru_cache(maxsize=8)
def _templates(w: Workload) -> tuple:
    # the generator `simrun load --seed S` writes its first session file with: an earlier live run's
    # sessions can be simulated again with template_seed = S
    rng = np.random.default_rng([w.template_seed, 0])
    return tuple(w.template(rng) for _ in range(w.session_templates))
