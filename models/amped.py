"""AMPED: Flash's asymmetric multi-process event-driven server (Pai, Druschel, Zwaenepoel, USENIX 1999).

SPED (models/sped.py) with helper processes for the disk: before sending a file
the event loop asks whether its pages are resident (`mincore`, charged as a
`stat`); if not, it hands the request to an idle helper over a pipe and goes on
with the other connections. The helper reads the file in (blocking on the disk,
which blocks only the helper) and writes back on its pipe, which the event loop
polls like a socket; then the loop sends the now resident file. With no idle
helper the request waits for one. So the main loop never blocks on the disk,
at the price of two hand-offs and a pipe read per miss, and the helpers' memory.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from sim.config import knob

from .sped import event_cost

OPERATIONS = ("accept", "read", "parse", "open", "stat", "write", "sendfile", "poll", "select",
              "epoll_wait", "epoll_ctl", "close", "ctx_switch", "handoff", "net_tx", "net_conn")


@dataclass(frozen=True)
class Knobs:
    max_conns: int = knob(30_000, "simultaneous connections allowed", min=1, max=10_000_000)
    helpers: int = knob(8, "helper processes reading missed files from the disk", min=1, max=100_000)
    event_mechanism: str = knob("poll", "how readiness is learnt", choices=("poll", "select", "epoll"))
    accept_limit: int = knob(0, "connections accepted per accept phase; 0 = until EWOULDBLOCK", min=0, max=10_000_000)


class Amped:
    def __init__(self, server, knobs: Knobs):
        self.server = server
        self.k = knobs
        self.main = server.entity("flash")
        self.helpers = [server.entity(f"flash-helper-{i}") for i in range(knobs.helpers)]
        self.jobs: deque = deque()       # misses waiting for a helper
        self.idle: list = []
        self.done: list = []             # files a helper has read in: their pipes are readable
        self.offloaded = 0

    def event_loop(self):
        server, proc, k, c = self.server, self.main, self.k, self.server.costs
        cache, sizes, reply_sent = server.cache, server.sizes, server.reply_sent
        epoll = k.event_mechanism == "epoll"
        request_cpu = c.read + c.parse + c.write + c.write_u * server.header_bytes + c.stat   # + mincore
        per_byte = c.sendfile_u + c.net_tx_u
        while True:
            if not proc.ready and not self.done and not server.can_accept(proc):
                yield proc.wait()
            ready, proc.ready = proc.ready, []
            done, self.done = self.done, []
            cpu = event_cost(c, k.event_mechanism, proc.nconns + len(self.helpers) + 1,
                             len(ready) + len(done) + 1)
            if server.can_accept(proc):
                before = proc.nconns
                cpu += c.accept * server.accept(proc, k.accept_limit)
                cpu += (proc.nconns - before) * (c.net_conn + (c.epoll_ctl if epoll else 0.0))
                ready, proc.ready = ready + proc.ready, []
            sends, offload = [], []
            for conn in ready:
                conn.queued = False
                if conn.closed:
                    cpu += c.read + c.close + (c.epoll_ctl if epoll else 0.0)
                    server.close(conn)
                elif conn.state == 1:            # writable again: the next piece
                    if conn.flow is None and conn.unsent > 0:
                        chunk = min(conn.unsent, conn.sndbuf)
                        cpu += c.sendfile + per_byte * chunk
                        sends.append((conn, chunk))
                elif conn.state == 0 and conn.file >= 0:   # a request
                    f = conn.file
                    cpu += request_cpu + (c.stat if server.header_cached(proc, f) else c.open)
                    conn.unsent = conn.size
                    if f in cache.lru:           # resident: send at once
                        cache.touch(f, sizes[f])
                        conn.state = 1
                        chunk = min(conn.size, conn.sndbuf)
                        cpu += c.sendfile + per_byte * chunk
                        sends.append((conn, chunk))
                    else:                        # not resident: a helper reads it in
                        conn.state = 2
                        cpu += c.handoff
                        offload.append(conn)
            for conn in done:                    # a helper's pipe is readable: the file is in memory
                cpu += c.read
                if conn.closed or conn.owner is None:
                    continue
                conn.state = 1
                chunk = min(conn.unsent, conn.sndbuf)
                cpu += c.sendfile + per_byte * chunk
                sends.append((conn, chunk))
            if cpu:
                yield proc.run(cpu)
            for conn in offload:
                self.jobs.append(conn)
                self.offloaded += 1
                if self.idle:
                    self.idle.pop().wake()
            for conn, chunk in sends:
                if not conn.closed:
                    server.send(conn, chunk, reply_sent)

    def helper(self, h):
        server, c = self.server, self.server.costs
        cache, sizes = server.cache, server.sizes
        while True:
            if not self.jobs:
                self.idle.append(h)
                yield h.wait()
                continue
            conn = self.jobs.popleft()
            if not conn.closed:
                miss = cache.touch(conn.file, sizes[conn.file])
                yield h.run(c.read + c.handoff)  # the request off the pipe, the reply onto it
                if miss is not None:
                    yield from server.block(h, miss)
            self.done.append(conn)
            self.main.wake()


def start(server, knobs: Knobs) -> list:
    fp = server.profile.footprint
    a = Amped(server, knobs)
    server.max_conns = knobs.max_conns
    server.add_footprint((1 + knobs.helpers) * fp.process_kb)
    server.listeners.append(a.main)
    server.env.process(a.event_loop())
    for h in a.helpers:
        server.env.process(a.helper(h))
    server.model = a
    return [a.main] + a.helpers


def demand(profile, hw, workload, knobs, mean_bytes: float, pieces: float):
    """CPU seconds per request (without the poll call's batched share), usable cores, footprint KB."""
    cost = profile.cost
    per_request = (cost("read")() + cost("parse")() + 2 * cost("stat")() + cost("write")(workload.header_bytes)
                   + cost("sendfile").fixed * pieces + (cost("sendfile").per_unit + cost("net_tx").per_unit) * mean_bytes)
    per_connection = cost("accept")() + cost("net_conn")() + cost("read")() + cost("close")()
    cpu = per_request + per_connection / workload.mean_requests_per_session
    return cpu, 1, (1 + knobs.helpers) * profile.footprint.process_kb
