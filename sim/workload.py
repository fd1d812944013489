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
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from .fileset import FileSet


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

    def __post_init__(self):
        if not 1 <= self.session_requests_min <= self.session_requests_max:
            raise ValueError("need 1 <= session_requests_min <= session_requests_max")
        if not 1 <= self.burst_requests_min <= self.burst_requests_max:
            raise ValueError("need 1 <= burst_requests_min <= burst_requests_max")
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
