"""WatPipe: the userver's code cut into a four-stage pipeline of kernel threads (PAPER.md section 4.3).

  stage 1  one thread accepts connections and gives them to stage 2;
  stage 2  one thread selects for readable connections, reads and parses requests;
  stage 3  one thread selects for writable connections and gives them to the writers;
  stage 4  `writers` threads do non-blocking sendfile: a finished reply sends the
           connection back to stage 2, an unfinished one back to stage 3.

There are no event queues and no controllers: each stage keeps its own descriptor
set and merges in what the others handed it at its next select (batching), and a
hand-off costs one `handoff` per batch, not per descriptor. Stages 3 and 4
alternate: stage 3 selects only when the writers have finished its last batch.
On one core the first writer woken runs through the whole batch; when it blocks
on the disk it wakes another writer for the rest, so the number of writers is the
number of page-cache misses the pipeline can wait on at once.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from sim.config import knob

OPERATIONS = ("accept", "read", "parse", "open", "stat", "write", "sendfile", "select", "close",
              "ctx_switch", "handoff", "net_tx", "net_conn")


@dataclass(frozen=True)
class Knobs:
    writers: int = knob(25, "writer threads doing sendfile (stage 4)", min=1, max=100_000)
    max_conns: int = knob(20_000, "simultaneous connections allowed", min=1, max=10_000_000)


class WatPipe:
    """The four stages and the descriptor sets they hand each other."""

    def __init__(self, server, knobs: Knobs):
        self.server = server
        self.k = knobs
        self.acceptor = server.entity("watpipe-accept")
        self.reader = server.entity("watpipe-read")
        self.selector = server.entity("watpipe-wselect")
        self.writers = [server.entity(f"watpipe-writer-{i}") for i in range(knobs.writers)]
        self.to_write: list = []          # stage 2 -> stage 3, merged at stage 3's next select
        self.queue: deque = deque()       # stage 3 -> stage 4: the current batch
        self.idle: list = []              # writers waiting for work
        self.outstanding = 0              # descriptors of the batch not yet done by the writers
        self.batches = 0

    @staticmethod
    def move(conn, entity) -> None:
        """The descriptor changes hands: from now on its readiness is `entity`'s business."""
        conn.owner.nconns -= 1
        entity.nconns += 1
        conn.owner = entity

    def accept_stage(self):
        server, a, c = self.server, self.acceptor, self.server.costs
        while True:
            if not server.can_accept(self.reader):
                yield a.wait()
                continue
            before = self.reader.nconns
            calls = server.accept(self.reader, 0)     # straight into stage 2's set
            new = self.reader.nconns - before
            yield a.run(c.accept * calls + c.net_conn * new + c.handoff)

    def read_stage(self):
        server, r, c = self.server, self.reader, self.server.costs
        request_cpu = c.read + c.parse
        while True:
            if not r.ready:
                yield r.wait()
            ready, r.ready = r.ready, []
            cpu = c.select + c.select_u * (r.nconns + 1)
            moved = []
            for conn in ready:
                conn.queued = False
                if conn.owner is not r:
                    continue
                if conn.closed:
                    cpu += c.read + c.close
                    server.close(conn)
                    self.acceptor.wake()          # below the connection limit again
                elif conn.file >= 0:
                    cpu += request_cpu + (c.stat if server.header_cached(r, conn.file) else c.open)
                    conn.unsent = conn.size
                    conn.state = 1
                    self.move(conn, self.selector)
                    moved.append(conn)
            if moved:
                cpu += c.handoff
            yield r.run(cpu)
            if moved:
                self.to_write.extend(moved)
                self.selector.wake()

    def write_select_stage(self):
        server, s, c = self.server, self.selector, self.server.costs
        while True:
            if not self.to_write and not s.ready:
                yield s.wait()
                continue
            ready, s.ready = s.ready, []
            batch, self.to_write = self.to_write, []
            cpu = c.select + c.select_u * (s.nconns + 1)
            for conn in ready:
                conn.queued = False
                if conn.closed:
                    cpu += c.close
                    server.close(conn)
                    self.acceptor.wake()
                elif conn.owner is s and conn.flow is None and conn.unsent > 0:
                    batch.append(conn)
            batch = [conn for conn in batch if not conn.closed]   # a closed one is closed when its EOF is seen
            if not batch:
                if cpu:
                    yield s.run(cpu)
                continue
            woken = min(len(self.idle), server.hw.cores)
            yield s.run(cpu + c.handoff * woken)
            self.queue.extend(batch)
            self.outstanding = len(batch)
            self.batches += 1
            for _ in range(woken):
                self.idle.pop().wake()
            while self.outstanding:               # stages 3 and 4 alternate
                yield s.wait()

    def writer(self, w):
        server, c = self.server, self.server.costs
        cache, sizes, reply_sent = server.cache, server.sizes, server.reply_sent
        header_cpu = c.write + c.write_u * server.header_bytes
        per_byte = c.sendfile_u + c.net_tx_u
        queue, reader, selector = self.queue, self.reader, self.selector
        while True:
            if not queue:
                self.idle.append(w)
                yield w.wait()
                continue
            cpu, sends, done = 0.0, [], 0
            while queue:
                conn = queue.popleft()
                done += 1
                if conn.closed or conn.owner is None:
                    continue
                chunk = min(conn.unsent, conn.sndbuf)
                cpu += c.sendfile + per_byte * chunk
                miss = None
                if conn.unsent == conn.size:          # the first piece: header, and the file is touched
                    cpu += header_cpu
                    miss = cache.touch(conn.file, sizes[conn.file])
                if miss is not None:                  # sendfile blocks on the disk: another writer goes on
                    yield w.run(cpu)
                    cpu = 0.0
                    self._send(sends, reader, reply_sent)
                    if queue and self.idle:
                        self.idle.pop().wake()
                    yield from server.block(w, miss)
                    if conn.closed:
                        continue
                sends.append((conn, chunk))
            yield w.run(cpu + c.handoff)
            self._send(sends, reader, reply_sent)
            self.outstanding -= done
            if self.outstanding <= 0:
                selector.wake()

    def _send(self, sends, reader, reply_sent) -> None:
        server = self.server
        for conn, chunk in sends:
            if conn.closed or conn.owner is None:
                continue
            if conn.unsent - chunk <= 0:              # the whole reply is in the socket: back to stage 2
                self.move(conn, reader)
            server.send(conn, chunk, reply_sent)
        sends.clear()


def start(server, knobs: Knobs) -> list:
    fp = server.profile.footprint
    wp = WatPipe(server, knobs)
    server.max_conns = knobs.max_conns
    server.add_footprint(fp.process_kb + (3 + knobs.writers) * fp.kernel_thread_kb)
    server.listeners.append(wp.acceptor)
    server.adopt_by = lambda conn: wp.reader
    env = server.env
    env.process(wp.accept_stage())
    env.process(wp.read_stage())
    env.process(wp.write_select_stage())
    for w in wp.writers:
        env.process(wp.writer(w))
    server.model = wp
    return [wp.acceptor, wp.reader, wp.selector] + wp.writers


def demand(profile, hw, workload, knobs, mean_bytes: float, pieces: float):
    """CPU seconds per request (without the selects' batched share), usable cores, footprint KB."""
    cost = profile.cost
    fp = profile.footprint
    per_request = (cost("read")() + cost("parse")() + cost("stat")() + cost("write")(workload.header_bytes)
                   + cost("sendfile").fixed * pieces
                   + (cost("sendfile").per_unit + cost("net_tx").per_unit) * mean_bytes)
    per_connection = cost("accept")() + cost("net_conn")() + cost("read")() + cost("close")()
    cpu = per_request + per_connection / workload.mean_requests_per_session
    return cpu, min(hw.cores, 3 + knobs.writers), fp.process_kb + (3 + knobs.writers) * fp.kernel_thread_kb
