"""SEDA / Haboob: a pipeline of stages, each an event queue with its own thread pool (PAPER.md section 7.3).

  asocket  one thread: polls every connection, accepts, reads requests, and writes
           replies piece by piece (SEDA's aSocket layer; read and write share its poll);
  parse    parses a request;
  cache    looks the file up in Haboob's own page cache (header + data in the heap);
  file     reads a missed file (asyncFile: blocking reads in a thread pool);
then back to asocket, which writes the reply with `write` (a copy per byte).

The thread-pool controller samples each pool stage's queue every
`controller_interval_s`: a queue longer than `queue_threshold` gets one more
thread, up to `max_threads`; a thread idle for `idle_timeout_s` exits. The
batching controller sets how many events a thread takes per iteration: it lowers
the batch while the stage's output rate holds, raises it a little when the rate
slips, and resets it to `batch_max` when the rate drops sharply. A batch costs one
`handoff` (the queue lock and the wake-up), so large batches save CPU.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

from sim.config import knob
from sim.operations import data_write
from sim.server import Entity

from .knot import warm_application_cache

OPERATIONS = ("accept", "read", "parse", "open", "stat", "write", "sendfile", "poll", "close",
              "ctx_switch", "handoff", "net_tx", "net_conn")

READING, WRITING, STAGED = 0, 1, 2


@dataclass(frozen=True)
class Knobs:
    max_conns: int = knob(30_000, "simultaneous connections allowed", min=1, max=10_000_000)
    cache_mb: float = knob(200.0, "Haboob's own page cache (header + file data), MB", min=0, max=1e7)
    controller_interval_s: float = knob(2.0, "the thread-pool controller samples the queues this often, s",
                                        min=0.001, max=3600)
    queue_threshold: int = knob(100, "a queue longer than this at a sample gets one more thread", min=1, max=10**9)
    max_threads: int = knob(20, "threads per stage at most", min=1, max=100_000)
    idle_timeout_s: float = knob(5.0, "a thread idle this long exits (the stage keeps one)", min=0.001, max=1e6)
    batching: bool = knob(True, "the batching controller adapts the events taken per iteration")
    batch_max: int = knob(100, "events a thread takes per iteration at most", min=1, max=100_000)


class StageThread(Entity):
    __slots__ = ("stage", "alive", "idle_since")


class Stage:
    """An event queue, its thread pool and its batching factor."""

    def __init__(self, seda, name: str, handler):
        self.seda = seda
        self.name = name
        self.handler = handler
        self.q: deque = deque()
        self.threads: list = []
        self.idle: list = []
        self.batch = seda.k.batch_max
        self.processed = 0
        self.last_processed = 0
        self.rate_avg = None
        self.peak_threads = 0
        self.added = 0
        self.removed = 0

    def enqueue(self, conn) -> None:
        self.q.append(conn)
        if self.idle:
            self.idle.pop().wake()

    def add_thread(self) -> None:
        seda = self.seda
        server = seda.server
        t = StageThread(server, f"{self.name}-{len(self.threads)}")
        t.stage, t.alive, t.idle_since = self, True, server.env.now
        self.threads.append(t)
        self.added += 1
        self.peak_threads = max(self.peak_threads, len(self.threads))
        seda.entities.append(t)
        server.add_footprint(server.profile.footprint.kernel_thread_kb)
        server.env.process(self.loop(t))

    def loop(self, t):
        env = self.seda.server.env
        while t.alive:
            if not self.q:
                t.idle_since = env.now
                self.idle.append(t)
                yield t.wait()
                continue
            n = min(self.batch, len(self.q))
            items = [self.q.popleft() for _ in range(n)]
            self.processed += n
            yield from self.handler(t, items)


class Seda:
    def __init__(self, server, knobs: Knobs):
        self.server = server
        self.k = knobs
        self.entities: list = []
        self.asocket = server.entity("asocket")
        self.writes: list = []               # replies ready to be written (the write stage's queue)
        self.app_cache: OrderedDict = OrderedDict()
        self.app_used = 0.0
        self.app_capacity = knobs.cache_mb * 2**20
        self.parse = Stage(self, "parse", self.on_parse)
        self.cache = Stage(self, "cache", self.on_cache)
        self.file = Stage(self, "file", self.on_file)
        self.pools = (self.parse, self.cache, self.file)

    # -- the pool stages ------------------------------------------------------------------------
    def on_parse(self, t, conns):
        c = self.server.costs
        yield t.run(c.handoff + c.parse * len(conns))
        for conn in conns:
            if not conn.closed:
                self.cache.enqueue(conn)

    def on_cache(self, t, conns):
        c = self.server.costs
        yield t.run(c.handoff + c.stat * len(conns))
        lru = self.app_cache
        for conn in conns:
            if conn.closed:
                continue
            if conn.file in lru:
                lru.move_to_end(conn.file)
                self.reply(conn)
            else:
                self.file.enqueue(conn)

    def on_file(self, t, conns):
        server, c = self.server, self.server.costs
        for conn in conns:
            if conn.closed:
                continue
            f, size = conn.file, server.sizes[conn.file]
            miss = server.cache.touch(f, size)
            yield t.run(c.handoff + c.open + c.read + c.write_u * size)
            if miss is not None:
                yield from server.block(t, miss)
            self.insert(f, float(conn.size))
            if not conn.closed:
                self.reply(conn)

    def insert(self, f, nbytes) -> None:
        if nbytes > self.app_capacity or f in self.app_cache:
            return
        self.app_cache[f] = nbytes
        self.app_used += nbytes
        while self.app_used > self.app_capacity:
            _f, b = self.app_cache.popitem(last=False)
            self.app_used -= b

    def reply(self, conn) -> None:
        self.writes.append(conn)
        self.asocket.wake()

    # -- the aSocket thread ---------------------------------------------------------------------
    def asocket_loop(self):
        server, a, c = self.server, self.asocket, self.server.costs
        reply_sent = server.reply_sent
        data = data_write(server.profile.cost)
        write_call, copy_byte = data.fixed, data.per_unit
        if self.app_capacity:
            self.app_cache, self.app_used = warm_application_cache(server, self.app_capacity)
        while True:
            if not a.ready and not self.writes and not server.can_accept(a):
                yield a.wait()
            cpu = c.poll + c.poll_u * (a.nconns + 1)
            if server.can_accept(a):             # accepted connections join the ready list
                before = a.nconns
                cpu += c.accept * server.accept(a, 0)
                cpu += c.net_conn * (a.nconns - before)
            ready, a.ready = a.ready, []
            writes, self.writes = self.writes, []
            parsed, sends = [], []
            for conn in ready:
                conn.queued = False
                if conn.closed:
                    cpu += c.read + c.close
                    server.close(conn)
                elif conn.state == WRITING:
                    if conn.flow is None and conn.unsent > 0:
                        writes.append(conn)
                elif conn.state == READING and conn.file >= 0:
                    cpu += c.read
                    conn.state = STAGED
                    parsed.append(conn)
            for conn in writes:
                if conn.closed or conn.owner is None:
                    continue
                if conn.state == STAGED:          # a new reply
                    conn.state = WRITING
                    conn.unsent = conn.size
                chunk = min(conn.unsent, conn.sndbuf)
                cpu += write_call + copy_byte * chunk
                sends.append((conn, chunk))
            yield a.run(cpu)
            for conn in parsed:
                self.parse.enqueue(conn)
            for conn, chunk in sends:
                if not conn.closed:
                    server.send(conn, chunk, reply_sent)

    # -- the controllers ------------------------------------------------------------------------
    def controller(self):
        env, k = self.server.env, self.k
        while True:
            yield env.timeout(k.controller_interval_s)
            now = env.now
            for st in self.pools:
                if len(st.q) > k.queue_threshold and len(st.threads) < k.max_threads:
                    st.add_thread()
                for t in list(st.idle):           # threads idle too long exit; one stays
                    if len(st.threads) > 1 and now - t.idle_since > k.idle_timeout_s:
                        st.idle.remove(t)
                        st.threads.remove(t)
                        st.removed += 1
                        t.alive = False
                        t.wake()
                        self.server.add_footprint(-self.server.profile.footprint.kernel_thread_kb)
                if k.batching:
                    self.tune_batch(st, k)

    @staticmethod
    def tune_batch(st: Stage, k: Knobs) -> None:
        rate = (st.processed - st.last_processed) / k.controller_interval_s
        st.last_processed = st.processed
        avg = st.rate_avg
        st.rate_avg = rate if avg is None else 0.7 * avg + 0.3 * rate
        if avg is None or avg <= 0:
            return
        if rate < 0.5 * avg:                      # a sudden drop: back to the largest batch
            st.batch = k.batch_max
        elif rate < 0.95 * avg:                   # slipping: a little more batching
            st.batch = min(k.batch_max, st.batch + max(1, st.batch // 4))
        else:                                     # holding: try a smaller batch
            st.batch = max(1, st.batch - max(1, st.batch // 4))


def start(server, knobs: Knobs) -> list:
    fp = server.profile.footprint
    s = Seda(server, knobs)
    server.max_conns = knobs.max_conns
    server.add_footprint(fp.process_kb + fp.kernel_thread_kb + s.app_capacity / 1024)
    server.listeners.append(s.asocket)
    s.entities.append(s.asocket)
    server.env.process(s.asocket_loop())
    for st in s.pools:
        st.add_thread()
    server.env.process(s.controller())
    server.model = s
    return s.entities


def demand(profile, hw, workload, knobs, mean_bytes: float, pieces: float):
    """CPU seconds per request (batching and poll shares left out), usable cores, footprint KB."""
    cost = profile.cost
    fp = profile.footprint
    data = data_write(cost)
    per_request = cost("read")() + cost("parse")() + cost("stat")() + data.fixed * pieces + data.per_unit * mean_bytes
    per_connection = cost("accept")() + cost("net_conn")() + cost("read")() + cost("close")()
    cpu = per_request + per_connection / workload.mean_requests_per_session
    threads = 1 + 3 * knobs.max_threads
    # Haboob's cache and the page cache below it hold different files: one cache for the disk bound
    return cpu, min(hw.cores, threads), fp.process_kb + threads * fp.kernel_thread_kb
