"""The userver with blocking sockets (userver-b): many SYMPED processes whose replies go out
in one blocking sendfile each, so a full socket buffer (or a disk miss) blocks the whole
process and other processes take over. Connections are still waited on for reading with
epoll/poll/select; they never enter a write interest set.
"""
from __future__ import annotations

from .base import Config, make_listener
from .eventloop import run_processes


def run(cfg: Config) -> int:
    return run_processes(cfg, make_listener(cfg), cfg.processes, blocking=True)
