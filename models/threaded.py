"""Thread-per-connection on kernel threads with blocking I/O (Apache's worker MPM, Python's ThreadingHTTPServer).

A listener thread accepts a connection only when a worker thread is free for it
and hands it over; the worker serves that connection until the client closes it:
it blocks in `read` while the client thinks, in `sendfile` on a page-cache miss,
and in `sendfile` until all but the last socket buffer of the reply has left. So
the thread count is the connection limit, and every thread costs memory.

`threads = 0` spawns a thread per connection (ThreadingHTTPServer), up to `max_conns`;
a positive value is a fixed pool (Apache), and connections beyond it wait in the
listen queue.

With `gil` on, the threads share CPython's interpreter lock: the Python part of a
request (parsing, the header and descriptor lookups) runs only while holding it,
and the lock is released around the blocking system calls (read, sendfile, accept,
close), whose kernel work runs in parallel on other cores.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import simpy

from sim.config import knob

OPERATIONS = ("accept", "read", "parse", "open", "stat", "write", "sendfile", "close", "ctx_switch",
              "handoff", "net_tx", "net_conn")


@dataclass(frozen=True)
class Knobs:
    threads: int = knob(256, "worker threads in the pool; 0 = a new thread per connection", min=0, max=1_000_000)
    max_conns: int = knob(30_000, "simultaneous connections allowed (with a pool, at most `threads`)",
                          min=1, max=10_000_000)
    gil: bool = knob(False, "threads share CPython's global interpreter lock")


class GIL:
    """One lock every thread must hold to run Python code; FIFO hand-over when contended."""

    __slots__ = ("env", "holder", "waiters", "handovers")

    def __init__(self, env):
        self.env = env
        self.holder = None
        self.waiters: deque = deque()
        self.handovers = 0

    def acquire(self, thread):
        """None if taken at once, else the event of the hand-over."""
        if self.holder is None:
            self.holder = thread
            return None
        ev = simpy.Event(self.env)
        self.waiters.append((thread, ev))
        return ev

    def release(self) -> None:
        if self.waiters:
            self.holder, ev = self.waiters.popleft()
            self.handovers += 1
            ev.succeed()
        else:
            self.holder = None


class Threaded:
    def __init__(self, server, knobs: Knobs):
        self.server = server
        self.k = knobs
        self.listener = server.entity("listener")
        self.idle: list = []              # threads waiting for a connection
        self.threads: list = []
        self.limit = knobs.threads if knobs.threads else knobs.max_conns
        self.gil = GIL(server.env) if knobs.gil else None

    def spawn(self):
        server = self.server
        w = server.entity(f"thread-{len(self.threads)}")
        self.threads.append(w)
        server.add_footprint(server.profile.footprint.kernel_thread_kb)
        server.env.process(self.serve(w))
        return w

    def free_thread(self):
        """A thread with no connection (spawned if the limit allows), or None."""
        if self.idle:
            return self.idle.pop()
        if len(self.threads) < self.limit:
            return self.spawn()
        return None

    def listen(self):
        """The listener: accept one connection per free thread, and hand it over."""
        server, lst, c = self.server, self.listener, self.server.costs
        while True:
            if not server.can_accept(lst) or (not self.idle and len(self.threads) >= self.limit):
                yield lst.wait()
                continue
            cpu, n = 0.0, 0
            while server.can_accept(lst):
                w = self.free_thread()
                if w is None:
                    break
                server.accept(w, 1)
                cpu += c.accept + c.net_conn + c.handoff
                n += 1
            cpu += c.accept                      # the accept that finds the queue empty (or no thread)
            yield lst.run(cpu)

    def serve(self, w):
        """One worker thread: wait for a connection, serve it until the client closes."""
        server, c, gil = self.server, self.server.costs, self.gil
        cache, sizes, sndbuf, reply_sent = server.cache, server.sizes, server.sndbuf, server.reply_sent
        kernel_fixed = c.read + c.write + c.write_u * server.header_bytes + c.sendfile
        per_byte = c.sendfile_u + c.net_tx_u
        while True:
            if not w.ready:
                yield w.wait()                   # waiting for a connection, or blocked in read
                continue
            conn = w.ready.pop()
            conn.queued = False
            if conn.closed:                      # read returns EOF: close, and wait for the next one
                yield w.run(c.read + c.close)
                server.close(conn)
                self.idle.append(w)
                self.listener.wake()
                continue
            if conn.file < 0:
                continue
            f = conn.file
            python = c.parse + (c.stat if server.header_cached(w, f) else c.open)
            kernel = kernel_fixed + per_byte * conn.size
            if gil is not None:                  # the Python part holds the lock, the system calls do not
                ev = gil.acquire(w)
                if ev is not None:
                    yield ev
                    python += c.handoff
                yield w.run(python)
                gil.release()
                yield w.run(kernel)
            else:
                yield w.run(python + kernel)
            conn.unsent = conn.size
            miss = cache.touch(f, sizes[f])
            if miss is not None:
                yield from server.block(w, miss)
            if conn.closed:
                continue
            if conn.size > sndbuf:               # sendfile blocks until the rest fits the socket buffer
                yield from server.blocking_send(w, conn, conn.size - sndbuf)
                if conn.closed:
                    continue
            server.send(conn, conn.unsent, reply_sent)


def start(server, knobs: Knobs) -> list:
    fp = server.profile.footprint
    t = Threaded(server, knobs)
    server.max_conns = min(knobs.max_conns, t.limit)
    server.add_footprint(fp.process_kb + fp.kernel_thread_kb)
    server.listeners.append(t.listener)
    server.adopt_by = lambda conn: t.free_thread()
    for _ in range(knobs.threads):
        t.idle.append(t.spawn())
    server.env.process(t.listen())
    server.model = t
    return [t.listener] + t.threads


def demand(profile, hw, workload, knobs, mean_bytes: float, pieces: float):
    """CPU seconds per request, usable cores (one, for the Python part, with the GIL), footprint KB."""
    cost = profile.cost
    fp = profile.footprint
    per_request = (cost("read")() + cost("parse")() + cost("stat")() + cost("write")(workload.header_bytes)
                   + cost("sendfile")(mean_bytes) + cost("net_tx")(mean_bytes))
    per_connection = cost("accept")() + cost("net_conn")() + cost("handoff")() + cost("read")() + cost("close")()
    cpu = per_request + per_connection / workload.mean_requests_per_session
    threads = knobs.threads or knobs.max_conns
    cores = min(hw.cores, threads)
    if knobs.gil:   # the Python part is serial: it bounds the rate wherever it is the larger share
        python = cost("parse")() + cost("stat")()
        cores = min(cores, cpu / python) if python > 0 else cores
    return cpu, cores, fp.process_kb + (threads + 1) * fp.kernel_thread_kb
