"""SYMPED: several SPED processes sharing one listen socket (PAPER.md section 4.2).

The processes are forked after `listen`, so they share the listen queue and the
kernel's page cache but nothing else: when one blocks on the disk (or, with
blocking sockets, on a full socket) the others go on. With `shared_cache` they
also share one header/descriptor cache (the study's shared-SYMPED); otherwise
each process opens and caches files on its own.
"""
from __future__ import annotations

from dataclasses import dataclass

from sim.config import knob

from . import sped
from .sped import OPERATIONS  # noqa: F401  (the same operations as SPED)


@dataclass(frozen=True)
class Knobs(sped.Knobs):
    processes: int = knob(4, "server processes sharing the listen socket", min=1, max=100_000)
    shared_cache: bool = knob(False, "one header/descriptor cache shared by all processes (shared-SYMPED)")


def start(server, knobs: Knobs) -> list:
    return sped.start(server, knobs, processes=knobs.processes, shared_cache=knobs.shared_cache)


def demand(profile, hw, workload, knobs, mean_bytes, pieces):
    return sped.demand(profile, hw, workload, knobs, mean_bytes, pieces, processes=knobs.processes)
