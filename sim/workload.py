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
"""
from __future__ import annotations

from dataclasses import dataclass, field

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

    def __post_init__(self):
        if not 1 <= self.session_requests_min <= self.session_requests_max:
            raise ValueError("need 1 <= session_requests_min <= session_requests_max")
        if not 1 <= self.burst_requests_min <= self.burst_requests_max:
            raise ValueError("need 1 <= burst_requests_min <= burst_requests_max")
        if self.think_distribution not in ("exponential", "fixed"):
            raise ValueError("think_distribution must be 'exponential' or 'fixed'")

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
