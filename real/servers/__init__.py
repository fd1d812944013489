"""Live servers that differ only in their concurrency model.

Every module has `run(cfg: Config) -> int` and shares real/http.py (parsing, safe
paths, descriptor/header cache), real/trace.py and servers/base.py (Conn: the
traced recv/parse/sendfile/close of one connection).
"""
from __future__ import annotations

import importlib

# architecture -> (module, one line, the knobs it takes)
ARCHITECTURES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "sped": ("sped", "one process, one event loop, non-blocking sockets",
             ("max_conns", "accept_limit", "event")),
    "symped": ("symped", "N event-loop processes forked after listen, sharing the listen socket",
               ("processes", "max_conns", "accept_limit", "event")),
    "blocking": ("blocking", "many event-loop processes with blocking sockets: one blocking sendfile per reply",
                 ("processes", "max_conns", "accept_limit", "event")),
    "threaded": ("threaded", "a kernel thread per connection (a pool of --threads = max connections)",
                 ("threads", "max_conns")),
    "green": ("green", "a gevent greenlet per connection (user-level threads)",
              ("max_conns",)),
    "pipeline": ("pipeline", "WatPipe stages: accept, read select, write select, W writer threads",
                 ("max_conns", "writers", "event")),
}


def runner(arch: str):
    return importlib.import_module(f"{__name__}.{ARCHITECTURES[arch][0]}").run
