"""The one vocabulary of operations that ties the project together.

The live servers in `real/` trace these operations, `calibration/` fits a cost
for each (a fixed part per call plus a part per unit: per byte, per descriptor
or per ready event), and the models in `models/` charge them to the simulated
CPU. A name here means the same thing on all three sides.

Add an operation only when a mechanism needs it.
"""
from __future__ import annotations

from dataclasses import dataclass

# name -> (unit of the variable part, what it stands for)
OPERATIONS: dict[str, tuple[str, str]] = {
    "accept": ("call", "accept one connection from the listen queue (or fail with EWOULDBLOCK)"),
    "read": ("byte", "read a request from a socket"),
    "parse": ("call", "parse an HTTP request line and headers"),
    "open": ("call", "resolve a path, open the file and build its header (a header-cache miss)"),
    "stat": ("call", "look up a cached descriptor and header (a header-cache hit)"),
    "write": ("byte", "copy bytes from user space into a socket (header, or file data for knot-c)"),
    "sendfile": ("byte", "zero-copy send of file bytes from the page cache to a socket"),
    "poll": ("fd", "one poll() call, its variable part per descriptor in the interest set"),
    "select": ("fd", "one select() call, its variable part per descriptor in the fd sets"),
    "epoll_wait": ("event", "one epoll_wait() call, its variable part per ready event"),
    "epoll_ctl": ("call", "add, change or remove one descriptor in an epoll set"),
    "close": ("call", "close a connection"),
    "ctx_switch": ("call", "kernel context switch between processes or kernel threads"),
    "wakeup": ("call", "a process or thread woken after it slept in poll or a blocking call (scheduler, cold caches)"),
    "ult_switch": ("call", "user-level thread switch (Capriccio, gevent)"),
    "handoff": ("call", "hand a request or descriptor from one thread or stage to another"),
    "net_tx": ("byte", "kernel network stack and driver work per byte transmitted (softirq time)"),
    "net_conn": ("call", "kernel network work per connection set up and torn down (SYN, FIN)"),
    "disk_read": ("byte", "CPU time to start and complete a disk read (not the wait itself)"),
}

OPERATION_NAMES: tuple[str, ...] = tuple(OPERATIONS)

# Operations a profile may leave out (cost 0): added after profiles were written with the others.
OPTIONAL_OPERATIONS = frozenset({"wakeup"})

# The event-notification calls, by the name a scenario uses for the mechanism.
EVENT_MECHANISMS = ("poll", "select", "epoll")


def unit_of(op: str) -> str:
    """The unit of an operation's variable part ('byte', 'fd', 'event' or 'call')."""
    try:
        return OPERATIONS[op][0]
    except KeyError:
        raise KeyError(f"unknown operation {op!r}; known: {', '.join(OPERATION_NAMES)}") from None


@dataclass(frozen=True, slots=True)
class Cost:
    """CPU seconds of one operation: `fixed` per call plus `per_unit` per byte/fd/event."""

    fixed: float = 0.0
    per_unit: float = 0.0

    def __call__(self, units: float = 0.0) -> float:
        return self.fixed + self.per_unit * units


def data_write(cost) -> Cost:
    """A `write` that sends reply data from the server's own memory (knot-c's and Haboob's caches)
    instead of sendfile, per call and per byte; `cost` maps an operation to its Cost (`Profile.cost`).

    The kernel's side of sending the bytes costs what sendfile's does, per call and per byte:
    Table 1 gives memory management + file system 14.4 us a reply in knot-c, which writes, and
    14.6-16.8 us in the six configurations that use sendfile. On top come the copy from user
    memory (`write` per byte) and the network stack (`net_tx` per byte)."""
    send = cost("sendfile")
    return Cost(send.fixed, cost("write").per_unit + send.per_unit + cost("net_tx").per_unit)
