"""SPED: the userver's single-process event-driven loop (PAPER.md section 4.2).

(placeholder for the event loop, written next)
"""
from __future__ import annotations

from dataclasses import dataclass

from sim.config import knob


@dataclass(frozen=True)
class Knobs:
    processes: int = knob(1, "server processes sharing the listen socket (SPED is 1)", min=1, max=100_000)
    max_conns: int = knob(30_000, "simultaneous connections allowed, in total over all processes", min=1, max=10_000_000)
    blocking_sockets: bool = knob(False, "blocking socket writes: one sendfile per reply that blocks until sent")
    event_mechanism: str = knob("poll", "how readiness is learnt", choices=("poll", "select", "epoll"))
    accept_limit: int = knob(0, "connections accepted per accept phase; 0 = until EWOULDBLOCK", min=0, max=10_000_000)
    shared_cache: bool = knob(False, "one header/descriptor cache shared by all processes (shared-SYMPED)")
