"""`simrun serve ARCH --root DIR [--port N] [--host H] [knobs]`: start one live server.

Prints exactly one line `listening on HOST:PORT pid PID` to stdout when ready;
SIGTERM or SIGINT stops it (its worker processes too) with exit status 0.
A bad flag or value exits 2 with one line on stderr.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys

from .servers import ARCHITECTURES, runner
from .servers.base import Config
from .servers.events import FD_SETSIZE

# knob -> default per architecture where it differs from Config's
DEFAULTS = {
    "symped": {"processes": 2},
    "blocking": {"processes": 16},
}
KNOB_FLAGS = {"processes": "--processes", "max_conns": "--max-conns", "threads": "--threads",
              "writers": "--writers", "accept_limit": "--accept-limit", "event": "--event"}


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def _count(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {v}")
    return v


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (0.05 <= v <= 86400):
        raise argparse.ArgumentTypeError(f"must be between 0.05 and 86400 seconds, got {text}")
    return v


def _share(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.001 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: a share between 0.001 and 1")
    return v


def _port(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0..65535, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    arches = "\n".join(f"  {a:<9} {d[1]}" for a, d in ARCHITECTURES.items())
    p = _Parser(prog="simrun serve", formatter_class=argparse.RawDescriptionHelpFormatter,
                description="Start a live static-file web server of one architecture.\n\n"
                            "architectures:\n" + arches,
                epilog="It prints 'listening on HOST:PORT pid PID' when ready; stop it with SIGTERM.")
    p.add_argument("arch", choices=list(ARCHITECTURES), metavar="ARCH", help="the architecture (see above)")
    p.add_argument("--root", required=True, help="document root (a directory)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=0, help="port; 0 picks a free one (default)")
    p.add_argument("--processes", type=_positive_int, help="processes (symped default 2, blocking 16)")
    p.add_argument("--max-conns", type=_positive_int,
                   help="simultaneous connections in total (default 1000; threaded: = --threads)")
    p.add_argument("--threads", type=_positive_int, help="threaded: kernel threads = max connections (default 64)")
    p.add_argument("--writers", type=_positive_int, help="pipeline: writer threads (default 4)")
    p.add_argument("--accept-limit", type=_count,
                   help="accepts per accept phase, 0 = until EWOULDBLOCK (default 100)")
    p.add_argument("--event", choices=("epoll", "poll", "select"),
                   help="readiness mechanism of event loops and pipeline stages (default epoll)")
    p.add_argument("--idle-timeout", type=_seconds, default=30.0,
                   help="close a connection idle (nothing received or sent) this long (default 30 s)")
    p.add_argument("--request-timeout", type=_seconds,
                   help="a started request must be complete within this (default: the idle timeout); "
                        "else 408 and close")
    p.add_argument("--cache-entries", type=_positive_int, default=512,
                   help="open descriptors + headers cached per process (default 512)")
    p.add_argument("--backlog", type=_positive_int, default=1024, help="listen queue length (default 1024)")
    p.add_argument("--trace", metavar="PREFIX", help="write traces to PREFIX.<pid>.trace (see real/trace.py)")
    p.add_argument("--trace-conns", type=_share, default=None, metavar="SHARE",
                   help="with --trace: share of the connections whose calls are traced, the rest scaled from "
                        "them (default 0.125; 1 = every connection, exact counts)")
    return p


def config_from_args(argv: list[str]) -> Config:
    a = build_parser().parse_args(argv)
    arch = a.arch
    takes = ARCHITECTURES[arch][2]
    for knob, flag in KNOB_FLAGS.items():
        if getattr(a, knob) is not None and knob not in takes:
            raise UsageError(f"{flag} does not apply to {arch} (it takes: "
                             + ", ".join(KNOB_FLAGS[k] for k in takes) + ")")
    if not os.path.isdir(a.root):
        raise UsageError(f"--root {a.root!r} is not a directory")
    kw = dict(DEFAULTS.get(arch, {}))
    for knob in KNOB_FLAGS:
        if getattr(a, knob) is not None:
            kw[knob] = getattr(a, knob)
    if arch == "threaded":
        t, m = kw.get("threads"), kw.get("max_conns")
        if t is not None and m is not None and t != m:
            raise UsageError("threaded: --threads and --max-conns are the same limit; give one")
        kw["threads"] = kw["max_conns"] = t or m or 64
    cfg = Config(arch=arch, root=a.root, host=a.host, port=a.port, idle_timeout=a.idle_timeout,
                 request_timeout=a.request_timeout or a.idle_timeout, cache_entries=a.cache_entries,
                 backlog=a.backlog, trace=a.trace, **kw)
    if a.trace_conns is not None:
        if not a.trace:
            raise UsageError("--trace-conns needs --trace")
        cfg.trace_conns = a.trace_conns
    if arch == "sped" and cfg.processes != 1:
        raise UsageError("sped has one process")
    per_process = -(-cfg.max_conns // cfg.processes) if arch in ("symped", "blocking") else cfg.max_conns
    need = per_process + cfg.cache_entries + 64
    if cfg.event == "select" and need > FD_SETSIZE:
        raise UsageError(f"--event select handles descriptors below {FD_SETSIZE}: lower --max-conns "
                         f"(per process) plus --cache-entries to {FD_SETSIZE - 64} or less")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if need > soft:
        if hard != resource.RLIM_INFINITY and need > hard:
            raise UsageError(f"--max-conns plus --cache-entries need {need} descriptors; the limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    if a.trace:
        d = os.path.dirname(a.trace) or "."
        if not os.path.isdir(d):
            raise UsageError(f"--trace {a.trace!r}: directory {d!r} does not exist")
    return cfg


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = config_from_args(argv)
    except UsageError as e:
        print(f"simrun serve: error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:        # --help
        return int(e.code or 0)
    try:
        return runner(cfg.arch)(cfg)
    except OSError as e:
        print(f"simrun serve: error: cannot serve on {cfg.host}:{cfg.port}: {e.strerror or e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
