"""Thread per connection on user-level threads: a gevent greenlet per connection
(gevent is to Python what Capriccio is to C).

All greenlets run on one kernel thread. Sockets are non-blocking; when a call
would block, the greenlet waits in gevent's hub (gevent.socket.wait_read /
wait_write, libev underneath) and other greenlets run: each such wait is traced
as one `ult_switch`. Replies go out with os.sendfile, a full socket yielding
like any other wait. gevent is imported only here, so the other servers stay
plain CPython; nothing is monkey-patched.
"""
from __future__ import annotations

import errno
import signal
import time

from ..trace import FLUSH_EVERY, OP
from .base import Config, Conn, Context, announce, log, make_listener, traced_accept

OP_ULT_SWITCH = OP['ult_switch']


def run(cfg: Config) -> int:
    import gevent
    import gevent.event
    import gevent.pool
    from gevent.socket import wait_read, wait_write

    lsock = make_listener(cfg)
    lsock.setblocking(False)
    lfd = lsock.fileno()
    ctx = Context(cfg, background_flush=False, threads=False)   # the trace flushes from a greenlet, not a second thread
    rec = ctx.recorder("green")
    clock = time.monotonic
    idle, reqt = cfg.idle_timeout, cfg.request_timeout
    group = gevent.pool.Group()
    stop = gevent.event.Event()
    slot = gevent.event.Event()
    slot.set()
    live = {"n": 0}

    class Expired(Exception):
        pass

    count = rec.n if rec is not None else None

    def wait(fn, fd: int, timeout: float) -> None:
        if count is not None:       # ult_switch: counted only (Recorder.count, inline)
            count(OP_ULT_SWITCH + 1)
        fn(fd, timeout=max(0.0, timeout), timeout_exc=Expired)   # the class: an instance only when it expires

    def handle(s) -> None:
        c = Conn(s, ctx.cache, rec, clock())
        try:
            while True:
                r = c.reply or c.next_reply()
                if r is not None:
                    close = r.close
                    while not c.send(clock()):
                        wait(wait_write, c.fd, idle - (clock() - c.last))
                    if close:
                        return
                    continue
                try:
                    n = c.recv(clock())
                except BlockingIOError:
                    now = clock()
                    left = idle - (now - c.last)
                    if c.started:
                        left = min(left, reqt - (now - c.started))
                    try:
                        wait(wait_read, c.fd, left)
                    except Expired:
                        if c.expired(clock(), idle, reqt) == 2 or c.started:
                            c.send_timeout_reply()
                        return
                    continue
                if n == 0:
                    return
                if c.expired(clock(), idle, reqt) == 2:
                    c.send_timeout_reply()
                    return
        except (OSError, Expired):
            pass
        except Exception as e:
            log(f"connection dropped: {e!r}")
        finally:
            c.close()
            live["n"] -= 1
            slot.set()

    def acceptor() -> None:
        while not stop.is_set():
            if live["n"] >= cfg.max_conns:
                slot.clear()
                slot.wait()
                continue
            try:
                s = traced_accept(lsock, rec)
            except BlockingIOError:
                if count is not None:
                    count(OP_ULT_SWITCH + 1)
                wait_read(lfd)
                continue
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log(f"accept: {e.strerror}")
                    gevent.sleep(0.1)
                continue
            s.setblocking(False)
            live["n"] += 1
            group.spawn(handle, s)

    gevent.signal_handler(signal.SIGTERM, stop.set)
    gevent.signal_handler(signal.SIGINT, stop.set)
    def flusher() -> None:
        while True:
            gevent.sleep(FLUSH_EVERY)
            try:
                ctx.tracer.flush()
            except OSError as e:
                log(f"trace flush: {e.strerror}")

    acc = gevent.spawn(acceptor)
    fl = gevent.spawn(flusher) if ctx.tracer is not None else None
    announce(lsock)
    stop.wait()
    acc.kill()
    if fl is not None:
        fl.kill()
    group.kill(timeout=2.0)
    lsock.close()
    ctx.close()
    return 0
