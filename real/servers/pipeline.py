"""WatPipe's pipeline: four stages on kernel threads, connections passed between them.

1. accept: one thread, blocking accept; stops at --max-conns.
2. read: one thread waits (select/poll/epoll) for readable connections, reads and
   parses, and hands a connection with a reply to the writers.
3. write-select: one thread waits for writable connections and hands them back to
   the writers.
4. writers: --writers threads doing non-blocking sendfile; a reply that would
   block goes to stage 3; a finished one sends the connection back to stage 2.
A connection belongs to one stage at a time; each hand-off is a queue put (traced
as `handoff`, for a sampled connection) plus an eventfd write to wake a waiting
stage. Each stage has its own trace recorder (role accept, read, wselect,
writer), and a stage that takes a sampled connection points it at that
recorder (`Conn.use`), as a recorder must only be used by the thread that owns it.
"""
from __future__ import annotations

import collections
import errno
import os
import queue
import socket
import threading
import time

from . import events
from ..trace import OP
from .base import Config, Conn, Context, Stopper, announce, log, make_listener, traced_accept
from .events import IN, OUT

OP_HANDOFF = OP['handoff']


class Stage:
    """A waiting stage: an inbox of connections, an eventfd to be woken, an event set."""

    def __init__(self, kind: str, rec, mask: int):
        self.inbox: collections.deque = collections.deque()
        self.wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.ev = events.make(kind, rec)
        self.ev.register(self.wake, IN)
        self.mask = mask
        self.conns: dict[int, Conn] = {}

    def put(self, c: Conn, rec) -> None:
        """Called from another thread."""
        if rec is None:
            self.inbox.append(c)
            os.eventfd_write(self.wake, 1)
            return
        t = rec.begin() if rec.sample() else 0.0
        self.inbox.append(c)
        os.eventfd_write(self.wake, 1)
        if t:
            rec.sampled(OP_HANDOFF + 1, t)
        else:
            rec.n(OP_HANDOFF + 1)

    def drain(self) -> list[Conn]:
        try:
            os.eventfd_read(self.wake)
        except BlockingIOError:
            pass
        out = []
        while self.inbox:
            out.append(self.inbox.popleft())
        return out

    def add(self, c: Conn) -> None:
        self.conns[c.fd] = c
        self.ev.register(c.fd, self.mask)

    def remove(self, c: Conn) -> None:
        del self.conns[c.fd]
        try:
            self.ev.unregister(c.fd)
        except (OSError, KeyError, ValueError):
            pass

    def close(self) -> None:
        for c in list(self.conns.values()):
            c.rec = None          # at exit, from the main thread: not into a stage's recorder
            c.close()
        self.ev.close()
        os.close(self.wake)


def run(cfg: Config) -> int:
    lsock = make_listener(cfg)
    ctx = Context(cfg)
    stop = threading.Event()

    def on_signal():
        stop.set()
        try:
            lsock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    stopper = Stopper(on_signal)
    slots = threading.BoundedSemaphore(cfg.max_conns)
    rrec, wsrec = ctx.recorder("read"), ctx.recorder("wselect")
    reader = Stage(cfg.event, rrec, IN)
    wselect = Stage(cfg.event, wsrec, OUT)
    work: queue.SimpleQueue = queue.SimpleQueue()
    idle, reqt, tick = cfg.idle_timeout, cfg.request_timeout, cfg.tick
    clock = time.monotonic

    def finish(c: Conn) -> None:
        c.close()
        slots.release()

    def to_writers(c: Conn, rec) -> None:
        if rec is None:
            work.put(c)
            return
        t = rec.begin() if rec.sample() else 0.0
        work.put(c)
        if t:
            rec.sampled(OP_HANDOFF + 1, t)
        else:
            rec.n(OP_HANDOFF + 1)

    def accept_stage() -> None:
        rec = ctx.recorder("accept")
        while not stop.is_set():
            if not slots.acquire(timeout=tick):
                continue
            try:
                s = traced_accept(lsock, rec)
            except OSError as e:
                slots.release()
                if stop.is_set():
                    return
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log(f"accept: {e.strerror}")
                    time.sleep(0.1)
                continue
            s.setblocking(False)
            c = Conn(s, ctx.cache, rec, clock())
            reader.put(c, c.rec)

    def sweep(stage: Stage, now: float, rec) -> None:
        for c in list(stage.conns.values()):
            e = c.expired(now, idle, reqt)
            if e:
                c.use(rec)
                stage.remove(c)
                if e == 2:
                    c.send_timeout_reply()
                finish(c)

    def read_stage() -> None:
        rec = rrec
        next_sweep = clock() + tick
        while not stop.is_set():
            ready = reader.ev.wait(tick)
            now = clock()
            for fd, mask in ready:
                if fd == reader.wake:
                    for c in reader.drain():
                        c.use(rec)
                        # back from the writers: a pipelined request may be buffered already
                        try:
                            if c.next_reply() is not None:
                                to_writers(c, c.rec)
                                continue
                            reader.add(c)
                        except Exception as e:
                            if not isinstance(e, OSError):
                                log(f"connection dropped: {e!r}")
                            reader.conns.pop(c.fd, None)
                            finish(c)
                    continue
                c = reader.conns.get(fd)
                if c is None:
                    continue
                try:
                    n = c.recv(now)
                    if n == 0:
                        reader.remove(c)
                        finish(c)
                        continue
                    if c.next_reply() is not None:
                        reader.remove(c)
                        to_writers(c, c.rec)
                except BlockingIOError:
                    pass
                except Exception as e:
                    if not isinstance(e, OSError):
                        log(f"connection dropped: {e!r}")
                    reader.remove(c)
                    finish(c)
            if now >= next_sweep:
                next_sweep = now + tick
                sweep(reader, now, rec)

    def wselect_stage() -> None:
        rec = wsrec
        next_sweep = clock() + tick
        while not stop.is_set():
            ready = wselect.ev.wait(tick)
            now = clock()
            for fd, mask in ready:
                if fd == wselect.wake:
                    for c in wselect.drain():
                        c.use(rec)        # a recorder is only ever used by its own thread
                        try:
                            wselect.add(c)
                        except (OSError, ValueError) as e:
                            log(f"cannot watch a connection: {e}")
                            wselect.conns.pop(c.fd, None)
                            finish(c)
                    continue
                c = wselect.conns.get(fd)
                if c is not None:
                    wselect.remove(c)
                    to_writers(c, c.rec)
            if now >= next_sweep:
                next_sweep = now + tick
                sweep(wselect, now, rec)

    def writer() -> None:
        rec = ctx.recorder("writer")
        while not stop.is_set():
            try:
                c = work.get(timeout=tick)
            except queue.Empty:
                continue
            c.use(rec)
            try:
                close = c.reply.close
                if not c.send(clock()):
                    wselect.put(c, c.rec)
                elif close:
                    finish(c)
                else:
                    reader.put(c, c.rec)
            except Exception as e:
                if not isinstance(e, OSError):
                    log(f"connection dropped: {e!r}")
                finish(c)

    threads = [threading.Thread(target=accept_stage, name="accept", daemon=True),
               threading.Thread(target=read_stage, name="read", daemon=True),
               threading.Thread(target=wselect_stage, name="wselect", daemon=True)]
    threads += [threading.Thread(target=writer, name=f"writer-{i}", daemon=True) for i in range(cfg.writers)]
    for t in threads:
        t.start()
    announce(lsock)
    while not stopper.stop:
        stop.wait(0.5)
    deadline = clock() + 2.0
    for t in threads:
        t.join(max(0.0, deadline - clock()))
    lsock.close()
    reader.close()
    wselect.close()
    ctx.close()
    return 0
