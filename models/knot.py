"""Knot on Capriccio: thread-per-connection on user-level threads (PAPER.md section 4.1).

Capriccio multiplexes every user-level thread on ONE kernel thread. Sockets are
non-blocking underneath: a socket call that would block puts the thread's
descriptor in Capriccio's poll set and switches to another thread; when no
thread is runnable the scheduler calls `poll` on the whole set and resumes the
threads whose descriptors are ready (one `ult_switch` each). File-system calls
(and, in knot-nb and knot-b, sendfile) are handed to kernel worker threads that
may block; the worker hands the thread back to the scheduler when done.

Knot pre-forks `threads` threads (so threads = the connection limit); each loops
accept -> read a request -> serve -> next request -> close -> accept again. With
the Knot-C policy the scheduler serves existing connections before it accepts.

Variants (the `variant` knob):
  knot-c   application cache of `cache_mb` holding header + file data, sent with
           `write` (a copy per byte); a miss is read into it by a worker. The cache
           is resident memory, so the page cache shrinks by as much.
  knot-nb  non-blocking sendfile done by a worker; if the socket is full the worker
           polls that one socket (1 s timeout) and hands the thread back, which
           re-issues sendfile for the next piece.
  knot-b   a worker does one blocking sendfile for the whole file (it may block on
           the disk and on the socket).
knot-nb and knot-b cache only headers and open descriptors, as the userver does.

Capriccio's thread overhead (Table 1: 7-11 % of the CPU) is not a factor here: it
is what the mechanisms charge, the user-level switches, the hand-offs to workers
and back (with the kernel context switches they cause) and the poll calls.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

import numpy as np

from sim.analytic import che_lru_hit_ratio
from sim.config import knob
from sim.operations import data_write

OPERATIONS = ("accept", "read", "parse", "open", "stat", "write", "sendfile", "poll", "close",
              "ctx_switch", "ult_switch", "handoff", "net_tx", "net_conn")

VARIANTS = ("knot-c", "knot-nb", "knot-b")
WORKER_POLL_TIMEOUT_S = 1.0   # knot-nb's worker polls a full socket for at most this long
POLL_EVERY = 10_000           # Capriccio polls after this many thread runs even if threads are runnable

# conn.state: 0 reading the next request, 1 writing a reply from the application cache,
# 2 handed to a worker thread
READING, WRITING, IN_WORKER = 0, 1, 2


@dataclass(frozen=True)
class Knobs:
    variant: str = knob("knot-b", "knot-c: application cache and write; knot-nb: non-blocking sendfile "
                        "by a worker; knot-b: blocking sendfile by a worker", choices=VARIANTS)
    threads: int = knob(20_000, "pre-forked user-level threads = simultaneous connections", min=1, max=10_000_000)
    workers: int = knob(100, "kernel worker threads for file operations (and sendfile)", min=1, max=100_000)
    cache_mb: float = knob(0.0, "knot-c application cache of header + file data, MB", min=0, max=1e7)
    accept_policy: str = knob("knot-c", "knot-c serves existing connections before accepting; knot-a accepts first",
                              choices=("knot-c", "knot-a"))


def warm_application_cache(server, capacity: float):
    """Both caches as a long-running server with its own file cache has them.

    Each is an LRU over whole files, started in its stationary state by Che's
    approximation: file i is in the application cache with probability
    1 - exp(-p_i T1), T1 filling the cache on average, whatever its size. The page
    cache below only sees the application cache's misses, at rates p_i exp(-p_i T1),
    and holds each file with probability 1 - exp(-q_i T2) for those rates q_i. The
    draws are seeded, so a run is repeatable. Returns the application cache (an LRU
    of file -> bytes, most recently used last) and the bytes it holds."""
    fs = server.clients.w.fileset
    p, sizes, header = fs.probabilities, fs.sizes, server.header_bytes
    rng = np.random.default_rng(len(p))
    app_bytes = sizes + header
    t1 = che_lru_hit_ratio(p, app_bytes.astype(float), capacity).char_time
    h1 = -np.expm1(-p * t1) if np.isfinite(t1) else np.ones_like(p)
    in_app = rng.random(len(p)) < h1
    chosen, used = [], 0.0
    for f in np.argsort(-h1, kind="stable"):
        b = float(app_bytes[f])
        if in_app[f] and used + b <= capacity:
            chosen.append((int(f), b))
            used += b
    page = server.cache
    q = p * np.exp(-p * t1) if np.isfinite(t1) else p * 0.0
    page.clear()
    if q.sum() > 0:
        t2 = che_lru_hit_ratio(q, sizes.astype(float), page.capacity).char_time
        h2 = -np.expm1(-(q / q.sum()) * t2) if np.isfinite(t2) else np.ones_like(q)
        in_page = rng.random(len(p)) < h2
        order = np.argsort(-h2, kind="stable")
        page.warm(order[in_page[order]], sizes)
    return OrderedDict(reversed(chosen)), used


class Knot:
    """The Capriccio scheduler (one kernel thread), its worker pool and Knot's cache."""

    def __init__(self, server, knobs: Knobs):
        self.server = server
        self.k = knobs
        self.cap = server.entity("capriccio")
        self.runq: deque = deque()        # threads resumed by workers, run before the next poll
        self.jobs: deque = deque()        # work handed to the workers
        self.idle_workers: list = []
        self.in_workers = 0               # threads whose descriptor is out of the poll set
        self.app_cache: OrderedDict = OrderedDict()
        self.app_used = 0.0
        self.app_capacity = knobs.cache_mb * 2**20 if knobs.variant == "knot-c" else 0.0
        self.app_hits = 0
        self.app_misses = 0
        self.resumes = 0                  # user-level switches, for checking against Table 1
        self.handoffs = 0

    # -- the application cache of knot-c ---------------------------------------------------------
    def cached(self, f: int) -> bool:
        lru = self.app_cache
        if f in lru:
            lru.move_to_end(f)
            self.app_hits += 1
            return True
        self.app_misses += 1
        return False

    def insert(self, f: int, nbytes: float) -> None:
        if nbytes > self.app_capacity or f in self.app_cache:
            return
        self.app_cache[f] = nbytes
        self.app_used += nbytes
        while self.app_used > self.app_capacity:
            _f, b = self.app_cache.popitem(last=False)
            self.app_used -= b

    # -- hand-offs ---------------------------------------------------------------------------------
    def suspend(self, conn) -> None:
        """The thread has called into a worker: its descriptor leaves the poll set."""
        conn.state = IN_WORKER
        self.in_workers += 1
        self.handoffs += 1

    def hand_off(self, conn) -> None:
        self.jobs.append(conn)
        if self.idle_workers:
            self.idle_workers.pop().wake()

    def last_piece_sent(self, conn) -> None:
        """The end of a reply sent by a worker has left: the client has it (the thread's state
        is the scheduler's business, unlike `Server.reply_sent`)."""
        conn.flow = None
        if not conn.closed:
            self.server.clients.reply_done(conn)

    def hand_back(self, conn) -> None:
        self.in_workers -= 1
        self.runq.append(conn)
        self.cap.wake()

    # -- the scheduler -----------------------------------------------------------------------------
    def scheduler(self):
        """Capriccio's scheduling loop on its one kernel thread, one CPU burst per pass."""
        server, cap, k, c = self.server, self.cap, self.k, self.server.costs
        reply_sent = server.reply_sent
        variant = k.variant
        accept_first = k.accept_policy == "knot-a"
        header_cpu = c.write + c.write_u * server.header_bytes
        data = data_write(server.profile.cost)               # knot-c writes from its cache
        write_call, copy_byte = data.fixed, data.per_unit
        request_cpu = c.ult_switch + c.read + c.parse
        runq = self.runq
        if self.app_capacity:
            self.app_cache, self.app_used = warm_application_cache(server, self.app_capacity)
        since_poll = 0
        while True:
            if not runq and not cap.ready and not server.can_accept(cap):
                yield cap.wait()          # poll blocks: no thread can run
            cpu = 0.0
            sends, offload = [], []
            if not runq or since_poll >= POLL_EVERY:
                # every thread would block (or Capriccio's poll count ran out): poll the whole
                # interest set; the idle threads wait on the listen socket
                since_poll = 0
                watched = cap.nconns - self.in_workers + (1 if cap.nconns < k.threads else 0)
                cpu += c.poll + c.poll_u * watched
                if accept_first:
                    cpu += self._accept()
                ready, cap.ready = cap.ready, []
                polled = True
            else:
                ready, polled = (), False
            batch = list(runq)
            runq.clear()
            since_poll += len(batch)
            for conn in ready:                   # threads whose descriptor poll found ready
                conn.queued = False
                if conn.state == IN_WORKER:
                    continue                     # the worker will hand it back
                if conn.closed:                  # the read returns EOF: close, go back to accept
                    cpu += c.ult_switch + c.read + c.close
                    self.resumes += 1
                    server.close(conn)
                elif conn.state == WRITING:      # knot-c: socket writable, write the next piece
                    if conn.flow is None and conn.unsent > 0:
                        chunk = min(conn.unsent, conn.sndbuf)
                        cpu += c.ult_switch + write_call + copy_byte * chunk
                        self.resumes += 1
                        sends.append((conn, chunk))
                elif conn.file >= 0:             # a request has arrived
                    cpu += request_cpu
                    self.resumes += 1
                    conn.unsent = conn.size
                    if variant == "knot-c":
                        if self.cached(conn.file):
                            chunk = min(conn.size, conn.sndbuf)
                            cpu += c.stat + write_call + copy_byte * chunk
                            conn.state = WRITING
                            sends.append((conn, chunk))
                        else:
                            cpu += c.handoff
                            self.suspend(conn)
                            offload.append(conn)
                    else:
                        cpu += (c.stat if server.header_cached(cap, conn.file) else c.open) + header_cpu
                        cpu += c.handoff
                        self.suspend(conn)
                        offload.append(conn)
            for conn in batch:                   # threads handed back by the workers
                cpu += c.ult_switch
                self.resumes += 1
                if conn.closed:
                    cpu += c.read + c.close
                    server.close(conn)
                elif variant == "knot-c":        # the file is in memory now: write it
                    self.insert(conn.file, conn.size)
                    chunk = min(conn.unsent, conn.sndbuf)
                    cpu += write_call + copy_byte * chunk
                    conn.state = WRITING
                    sends.append((conn, chunk))
                elif conn.unsent > 0:            # knot-nb: the socket drained, sendfile the next piece
                    cpu += c.handoff
                    self.suspend(conn)
                    offload.append(conn)
                else:                            # the reply is in the socket: read the next request
                    conn.state = READING
            if polled and not accept_first:      # Knot-C: accept once the ready threads have run
                cpu += self._accept()
            if cpu:
                yield cap.run(cpu)
            for conn in offload:
                self.hand_off(conn)
            for conn, chunk in sends:
                if not conn.closed:
                    server.send(conn, chunk, reply_sent)

    def _accept(self) -> float:
        """Idle threads accept while the listen queue has connections; the CPU it took."""
        server, c = self.server, self.server.costs
        if not server.can_accept(self.cap):
            return 0.0
        before = self.cap.nconns
        calls = server.accept(self.cap, 0)
        new = self.cap.nconns - before
        self.resumes += new
        return c.accept * calls + new * (c.net_conn + c.ult_switch)

    # -- the kernel worker threads -----------------------------------------------------------------
    def worker(self, w):
        server, c, k = self.server, self.server.costs, self.k
        cache, sizes = server.cache, server.sizes
        per_byte = c.sendfile_u + c.net_tx_u
        jobs = self.jobs
        while True:
            if not jobs:
                self.idle_workers.append(w)
                yield w.wait()
                continue
            conn = jobs.popleft()
            if conn.closed:
                yield w.run(c.handoff)
                self.hand_back(conn)
                continue
            f = conn.file
            first = conn.unsent == conn.size
            if k.variant == "knot-c":            # open and read the file into the application cache
                cpu = c.open + c.read + c.write_u * sizes[f] + c.handoff
                miss = cache.touch(f, sizes[f])
                yield w.run(cpu)
                if miss is not None:
                    yield from server.block(w, miss)
            elif k.variant == "knot-b":          # one blocking sendfile for the whole reply
                miss = cache.touch(f, sizes[f])
                yield w.run(c.sendfile + per_byte * conn.size + c.handoff)
                if miss is not None:
                    yield from server.block(w, miss)
                if not conn.closed and conn.size > conn.sndbuf:
                    yield from server.blocking_send(w, conn, server.must_leave(conn, conn.size))
                if not conn.closed:
                    server.send(conn, conn.unsent, self.last_piece_sent)
            else:                                # knot-nb: one non-blocking sendfile, poll if full
                miss = cache.touch(f, sizes[f]) if first else None
                chunk = min(conn.unsent, conn.sndbuf)
                full = conn.unsent > chunk
                yield w.run(c.sendfile + per_byte * chunk + c.handoff + ((c.poll + c.poll_u) if full else 0.0))
                if miss is not None:
                    yield from server.block(w, miss)
                if conn.closed:
                    pass
                elif full:                       # poll this one socket until it drains (1 s timeout)
                    t = server.env.now
                    yield from server.send_and_wait(w, conn, chunk)
                    timeouts = int((server.env.now - t) / WORKER_POLL_TIMEOUT_S)
                    if timeouts:                 # each timeout: back to the thread, which re-issues
                        yield w.run(timeouts * (2 * c.handoff + c.ult_switch + c.sendfile + c.poll + c.poll_u))
                else:
                    server.send(conn, chunk, self.last_piece_sent)
            self.hand_back(conn)


def start(server, knobs: Knobs) -> list:
    """Start Knot: the Capriccio kernel thread and its workers; return the entities."""
    fp = server.profile.footprint
    knot = Knot(server, knobs)
    server.max_conns = knobs.threads
    server.add_footprint(fp.process_kb + knobs.threads * fp.user_thread_kb + knobs.workers * fp.kernel_thread_kb
                         + knot.app_capacity / 1024)
    server.listeners.append(knot.cap)
    server.env.process(knot.scheduler())
    workers = []
    for i in range(knobs.workers):
        w = server.entity(f"knot-worker-{i}")
        server.env.process(knot.worker(w))
        workers.append(w)
    server.model = knot
    return [knot.cap] + workers


def demand(profile, hw, workload, knobs, mean_bytes: float, pieces: float):
    """CPU seconds per request (without poll's batched share), usable cores, footprint KB."""
    cost = profile.cost
    fp = profile.footprint
    per_request = cost("read")() + cost("parse")() + cost("stat")() + 2 * cost("ult_switch")()
    if knobs.variant == "knot-c":
        data = data_write(cost)
        per_request += data.fixed * pieces + data.per_unit * mean_bytes
    else:
        handoffs = 2 * (pieces if knobs.variant == "knot-nb" else 1)
        per_request += (cost("write")(workload.header_bytes) + handoffs * cost("handoff")()
                        + cost("sendfile").fixed * (pieces if knobs.variant == "knot-nb" else 1)
                        + (cost("sendfile").per_unit + cost("net_tx").per_unit) * mean_bytes)
    per_connection = cost("accept")() + cost("net_conn")() + cost("read")() + cost("close")()
    cpu = per_request + per_connection / workload.mean_requests_per_session
    # knot-c's cache is resident memory, but the page cache below it holds other files (it sees
    # only the cache's misses), so for the disk bound the two act as one cache of their summed size
    footprint = fp.process_kb + knobs.threads * fp.user_thread_kb + knobs.workers * fp.kernel_thread_kb
    return cpu, min(hw.cores, 1 + knobs.workers), footprint
