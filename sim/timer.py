"""A timer that calls a function: the cheapest event SimPy can process.

Most timers of a run are never waited on by a process: a client's think time, a
NIC's next departure, a SYN retransmission. `call_later` puts a tiny object into
the environment's queue exactly where `env.timeout(delay)` would put a Timeout
(same time, same priority, the same sequence counter), so the order of events,
and every result, is the same; it only skips building a full Timeout.
"""
from __future__ import annotations

from heapq import heappush

from simpy.core import NORMAL


class Call:
    """What SimPy's `step` needs of an event: `callbacks`, and `_ok` for the failure check."""

    __slots__ = ("callbacks", "arg")
    _ok = True

    def __init__(self, fn, arg):
        self.callbacks = (fn,)
        self.arg = arg


def call_later(env, delay: float, fn, arg=None) -> Call:
    """Call `fn(call)` after `delay` simulated seconds; `call.arg` is `arg`."""
    if delay < 0:
        raise ValueError(f"negative delay {delay}")
    c = Call(fn, arg)
    heappush(env._queue, (env._now + delay, NORMAL, next(env._eid), c))
    return c
