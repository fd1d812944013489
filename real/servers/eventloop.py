"""The userver's event loop, shared by SPED, SYMPED and the blocking-socket variant.

One process: wait for readiness (epoll, poll or select), accept until EWOULDBLOCK
or the accept limit, read once per readable connection, parse, answer. With
non-blocking sockets a reply that does not fit the socket buffer moves the
connection to the write interest set until it is sent; with blocking sockets
(userver-b) one blocking sendfile sends the whole reply, so a connection is
only ever waited on for reading, and SO_SNDTIMEO bounds a stuck send.
At its connection limit the loop stops waiting on the listen socket.
"""
from __future__ import annotations

import errno
import os
import signal
import socket
import time

from . import events
from .base import Config, Conn, Context, log, set_timeouts, traced_accept
from .events import IN, OUT

READING, WRITING = 0, 1


class Stop(BaseException):
    """Raised from the signal handler to leave a blocking send (the only long wait but one)."""


def serve_loop(cfg: Config, lsock: socket.socket, blocking: bool, max_conns: int) -> int:
    """Run one event-loop process until SIGTERM/SIGINT; returns the exit status."""
    # A signal sets `stop`, seen within one tick; it raises only inside a blocking send, which
    # could otherwise last the idle timeout (raising elsewhere could lose a traced call).
    flags = {"stop": False, "in_send": False}

    def on_signal(signum, frame):
        flags["stop"] = True
        if flags["in_send"]:
            raise Stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    ctx = Context(cfg, background_flush=False, threads=False)
    rec = ctx.recorder("loop")
    cache = ctx.cache
    tracer = ctx.tracer
    ev = events.make(cfg.event, rec)
    lsock.setblocking(False)
    lfd = lsock.fileno()
    conns: dict[int, Conn] = {}
    idle, reqt, tick = cfg.idle_timeout, cfg.request_timeout, cfg.tick
    limit = cfg.accept_limit
    state = {"accepting": True}
    clock = time.monotonic

    def drop(c: Conn) -> None:
        try:
            ev.forget(c.fd)          # closed just below (connections are never shared)
        except (OSError, KeyError, ValueError):
            pass
        del conns[c.fd]
        c.close()
        if not state["accepting"] and len(conns) < max_conns:
            ev.register(lfd, IN)
            state["accepting"] = True

    def respond(c: Conn, now: float) -> None:
        while True:
            r = c.reply or c.next_reply()
            if r is None:
                return
            close = r.close
            if blocking:
                flags["in_send"] = True
                if flags["stop"]:
                    raise Stop()
                try:
                    sent = c.send(now)
                finally:
                    flags["in_send"] = False
            else:
                sent = c.send(now)
            if not sent:
                if blocking:            # SO_SNDTIMEO expired without progress
                    drop(c)
                elif c.state != WRITING:
                    ev.modify(c.fd, OUT)
                    c.state = WRITING
                return
            if close:
                drop(c)
                return
            if c.state == WRITING:
                ev.modify(c.fd, IN)
                c.state = READING

    def accept_phase(now: float) -> None:
        k = 0
        while limit == 0 or k < limit:
            if len(conns) >= max_conns:
                ev.unregister(lfd)
                state["accepting"] = False
                return
            try:
                s = traced_accept(lsock, rec)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log(f"accept: {e.strerror}; pausing accepts")
                    ev.unregister(lfd)
                    state["accepting"] = False
                return
            k += 1
            if blocking:
                set_timeouts(s, cfg.tick, cfg.send_timeout)   # a recv never blocks for long, even if woken wrongly
            else:
                s.setblocking(False)
            c = Conn(s, cache, rec, now)
            try:
                ev.register(c.fd, IN)
            except (OSError, ValueError) as e:      # e.g. select's FD_SETSIZE
                log(f"cannot watch a new connection: {e}")
                c.close()
                continue
            conns[c.fd] = c

    ev.register(lfd, IN)
    next_sweep = clock() + tick
    try:
        while not flags["stop"]:
            ready = ev.wait(tick)
            now = clock()
            for fd, mask in ready:
                if fd == lfd:
                    accept_phase(now)
                    continue
                c = conns.get(fd)
                if c is None:
                    continue
                try:
                    if c.state == WRITING:
                        respond(c, now)
                    else:
                        if c.recv(now) == 0:
                            drop(c)
                            continue
                        respond(c, now)
                except BlockingIOError:
                    pass
                except OSError:
                    if not c.closed:
                        drop(c)
                except Exception as e:          # a bug must cost one connection, not the server
                    log(f"connection dropped: {e!r}")
                    if not c.closed:
                        drop(c)
            if now >= next_sweep:
                next_sweep = now + tick
                for c in list(conns.values()):
                    e = c.expired(now, idle, reqt)
                    if e:
                        if e == 2:
                            c.send_timeout_reply()
                        drop(c)
                if not state["accepting"] and len(conns) < max_conns:
                    ev.register(lfd, IN)
                    state["accepting"] = True
                if tracer is not None:
                    tracer.maybe_flush(now)
    except Stop:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for c in list(conns.values()):
            c.close()
        ev.close()
        ctx.close()
    return 0


def run_processes(cfg: Config, lsock: socket.socket, n: int, blocking: bool) -> int:
    """Fork n event-loop processes after listen (SYMPED); the parent waits and relays signals."""
    from .base import announce
    per = -(-cfg.max_conns // n)
    children: list[int] = []
    stopping = {"on": False}

    def relay(signum, frame):
        stopping["on"] = True
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, relay)
    signal.signal(signal.SIGINT, relay)
    for _ in range(n):
        if stopping["on"]:
            break
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = serve_loop(cfg, lsock, blocking, per)
            except BaseException as e:       # a child must never return into the parent's code
                log(f"worker failed: {e!r}")
            finally:
                os._exit(code)
        children.append(pid)
    announce(lsock)
    lsock.close()
    worst = 0
    alive = set(children)
    while alive:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        alive.discard(pid)
        code = os.waitstatus_to_exitcode(status)
        if code != 0 and not stopping["on"]:
            log(f"worker {pid} exited with {code}")
            worst = 1
    return 0 if stopping["on"] else worst
