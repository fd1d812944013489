"""SPED: one process, one event loop (the userver with one process)."""
from __future__ import annotations

from .base import Config, announce, make_listener
from .eventloop import serve_loop


def run(cfg: Config) -> int:
    lsock = make_listener(cfg)
    announce(lsock)
    return serve_loop(cfg, lsock, blocking=False, max_conns=cfg.max_conns)
