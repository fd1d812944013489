"""Thread per connection on kernel threads (Knot's shape on NPTL instead of Capriccio).

A pool of --threads threads, each looping: blocking accept on the shared listen
socket, then serve that connection (blocking recv, one blocking sendfile per
reply) until it closes, then accept again; so --threads is also the connection
limit (further connections wait in the listen queue). Timeouts come from the
kernel: SO_RCVTIMEO of one tick lets a thread check the idle and request
deadlines, SO_SNDTIMEO (Config.send_timeout) ends a send that makes no progress.
"""
from __future__ import annotations

import errno
import socket
import threading
import time

from .base import Config, Conn, Context, Stopper, announce, log, make_listener, set_timeouts, traced_accept


def serve_conn(c: Conn, cfg: Config, stop: threading.Event) -> None:
    clock = time.monotonic
    idle, reqt = cfg.idle_timeout, cfg.request_timeout
    try:
        while not stop.is_set():
            r = c.reply or c.next_reply()
            if r is not None:
                close = r.close
                if not c.send(clock()) or close:
                    return
                continue
            try:
                n = c.recv(clock())
            except BlockingIOError:      # SO_RCVTIMEO tick
                n = -1
            if n == 0:
                return
            e = c.expired(clock(), idle, reqt)
            if e:
                if e == 2:
                    c.send_timeout_reply()
                return
    except OSError:
        pass
    except Exception as e:          # a bug must cost one connection, not a thread of the pool
        log(f"connection dropped: {e!r}")
    finally:
        c.close()


def run(cfg: Config) -> int:
    lsock = make_listener(cfg)
    ctx = Context(cfg)
    stop = threading.Event()

    def on_signal():
        stop.set()
        try:
            lsock.shutdown(socket.SHUT_RDWR)   # wakes the threads blocked in accept
        except OSError:
            pass

    stopper = Stopper(on_signal)

    def worker() -> None:
        rec = ctx.recorder("conn")
        while not stop.is_set():
            try:
                s = traced_accept(lsock, rec)
            except OSError as e:
                if stop.is_set():
                    return
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log(f"accept: {e.strerror}")
                    time.sleep(0.1)
                continue
            try:
                set_timeouts(s, cfg.tick, cfg.send_timeout)
            except OSError:
                s.close()
                continue
            serve_conn(Conn(s, ctx.cache, rec, time.monotonic()), cfg, stop)

    threads = [threading.Thread(target=worker, name=f"conn-{i}", daemon=True) for i in range(cfg.threads)]
    for t in threads:
        t.start()
    announce(lsock)
    while not stopper.stop:
        stop.wait(0.5)
    deadline = time.monotonic() + 2.0
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    lsock.close()
    ctx.close()
    return 0
