"""The simulation environment: SimPy's, with cheap timers that call a function.

Most timers of a run are never waited on by a process: a client's think time, a
NIC's next departure, a SYN retransmission. `call_later` builds a tiny object
instead of a Timeout and gives it the key `env.timeout(delay)` would have (time,
priority, the environment's sequence number), so the order of events, and every
result, is the same as with Timeouts.

Far timers are parked. A run with tens of thousands of thinking clients would
otherwise keep that many entries in SimPy's event heap, and every event pays
log2 of its size. A timer due more than a bucket (`bucket_s`) ahead waits in its
time bucket, a plain list, and the whole bucket moves into the event heap, keys
unchanged, one bucket before it is due. The heap then holds only the near future.
"""
from __future__ import annotations

from heapq import heappush

import simpy
from simpy.core import NORMAL, URGENT

BUCKET_S = 0.01


class Call:
    """What SimPy's `step` needs of an event: `callbacks`, and `_ok` for the failure check."""

    __slots__ = ("callbacks", "arg")
    _ok = True

    def __init__(self, fn, arg):
        self.callbacks = (fn,)
        self.arg = arg


class Environment(simpy.Environment):
    """A SimPy environment with `call_later` and the parking of far timers."""

    def __init__(self, initial_time: float = 0, bucket_s: float = BUCKET_S):
        super().__init__(initial_time)
        self.bucket_s = bucket_s
        self._per_bucket = 1.0 / bucket_s
        self._buckets: dict[int, list] = {}

    def call_later(self, delay: float, fn, arg=None) -> Call:
        """Call `fn(call)` after `delay` simulated seconds; `call.arg` is `arg`."""
        if delay < 0:
            raise ValueError(f"negative delay {delay}")
        c = Call(fn, arg)
        at = self._now + delay
        entry = (at, NORMAL, next(self._eid), c)
        b = int(at * self._per_bucket)
        if b <= int(self._now * self._per_bucket) + 1:     # due within a bucket or so: straight in
            heappush(self._queue, entry)
            return c
        parked = self._buckets.get(b)
        if parked is None:
            self._buckets[b] = [entry]
            # moved in a whole bucket ahead, so that no rounding can make it late
            opener = Call(self._open, b)
            heappush(self._queue, (max(self._now, (b - 1) * self.bucket_s), URGENT, next(self._eid), opener))
        else:
            parked.append(entry)
        return c

    def _open(self, call):
        q = self._queue
        for entry in self._buckets.pop(call.arg):
            heappush(q, entry)
