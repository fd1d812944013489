"""Readiness notification behind one small interface: epoll, poll or select.

`wait()` returns [(fd, mask)] with the masks of select.epoll (IN=1, OUT=4,
ERR=8, HUP=16; poll uses the same values). Traced: epoll_wait (units: ready
events), epoll_ctl (each add/modify/remove), poll and select (units: descriptors
in the interest set). poll's and select's interest sets live in user space, so
changing them costs no system call and is not traced.
"""
from __future__ import annotations

import select

from ..trace import OP, Recorder

IN = select.EPOLLIN
OUT = select.EPOLLOUT
ERR = select.EPOLLERR
HUP = select.EPOLLHUP

# select.select refuses descriptors >= FD_SETSIZE
FD_SETSIZE = 1024

OP_EPOLL_CTL = OP['epoll_ctl']
OP_EPOLL_WAIT = OP['epoll_wait']
OP_POLL = OP['poll']
OP_SELECT = OP['select']


class EpollSet:
    name = "epoll"

    def __init__(self, rec: Recorder | None):
        self.ep = select.epoll()
        self.rec = rec
        self.n = 0

    def _ctl(self, fn, *args) -> None:
        rec = self.rec
        if rec is None:
            fn(*args)
            return
        t = rec.begin() if rec.sample() else 0.0
        try:
            fn(*args)
        finally:
            rec.add(OP_EPOLL_CTL + 1, t)

    def register(self, fd: int, mask: int) -> None:
        self._ctl(self.ep.register, fd, mask)
        self.n += 1

    def modify(self, fd: int, mask: int) -> None:
        self._ctl(self.ep.modify, fd, mask)

    def unregister(self, fd: int) -> None:
        self._ctl(self.ep.unregister, fd)
        self.n -= 1

    def forget(self, fd: int) -> None:
        """`fd` is about to be closed, which takes it out of the epoll set: no system call."""
        self.n -= 1

    def wait(self, timeout: float) -> list:
        rec = self.rec
        if rec is None:
            return self.ep.poll(timeout)
        t = rec.begin() if rec.sample() else 0.0
        ev = []
        try:
            ev = self.ep.poll(timeout)
        finally:
            if t:
                rec.sampled(OP_EPOLL_WAIT + len(ev), t)
            else:
                rec.n(OP_EPOLL_WAIT + len(ev))
        return ev

    def close(self) -> None:
        self.ep.close()


class PollSet:
    name = "poll"

    def __init__(self, rec: Recorder | None):
        self.p = select.poll()
        self.rec = rec
        self.n = 0

    def register(self, fd: int, mask: int) -> None:
        self.p.register(fd, mask)
        self.n += 1

    def modify(self, fd: int, mask: int) -> None:
        self.p.modify(fd, mask)

    def unregister(self, fd: int) -> None:
        self.p.unregister(fd)
        self.n -= 1

    forget = unregister         # the set is in user space: forget it before the close

    def wait(self, timeout: float) -> list:
        ms = max(0, int(timeout * 1000))
        rec = self.rec
        if rec is None:
            return self.p.poll(ms)
        t = rec.begin() if rec.sample() else 0.0
        try:
            return self.p.poll(ms)
        finally:
            rec.add(OP_POLL + self.n, t)

    def close(self) -> None:
        pass


class SelectSet:
    name = "select"

    def __init__(self, rec: Recorder | None):
        self.r: set[int] = set()
        self.w: set[int] = set()
        self.rec = rec

    def register(self, fd: int, mask: int) -> None:
        if fd >= FD_SETSIZE:
            raise OSError(f"descriptor {fd} beyond FD_SETSIZE for select")
        self.modify(fd, mask)

    def modify(self, fd: int, mask: int) -> None:
        (self.r.add if mask & IN else self.r.discard)(fd)
        (self.w.add if mask & OUT else self.w.discard)(fd)

    def unregister(self, fd: int) -> None:
        self.r.discard(fd)
        self.w.discard(fd)

    forget = unregister         # the set is in user space: forget it before the close

    @property
    def n(self) -> int:
        return len(self.r | self.w)

    def wait(self, timeout: float) -> list:
        rec = self.rec
        r = list(self.r)
        w = list(self.w)
        if rec is None:
            rr, ww, _ = select.select(r, w, [], timeout)
        else:
            t = rec.begin() if rec.sample() else 0.0
            rr = ww = ()
            try:
                rr, ww, _ = select.select(r, w, [], timeout)
            finally:
                rec.add(OP_SELECT + len(r) + len(w), t)
        if not ww:
            return [(fd, IN) for fd in rr]
        out: dict[int, int] = {fd: IN for fd in rr}
        for fd in ww:
            out[fd] = out.get(fd, 0) | OUT
        return list(out.items())

    def close(self) -> None:
        pass


def make(kind: str, rec: Recorder | None):
    return {"epoll": EpollSet, "poll": PollSet, "select": SelectSet}[kind](rec)
