"""SYMPED: N SPED processes forked after listen, sharing the listen socket.

Each process has its own descriptor/header cache and its share of --max-conns
(as the userver divides it); the kernel wakes the processes waiting on the
listen socket and the losers' accepts fail with EWOULDBLOCK.
"""
from __future__ import annotations

from .base import Config, make_listener
from .eventloop import run_processes


def run(cfg: Config) -> int:
    return run_processes(cfg, make_listener(cfg), cfg.processes, blocking=False)
