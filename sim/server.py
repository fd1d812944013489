"""The server machine as the models see it: hardware, costs, the listen socket and connections.

A model (see models/sped.py) is a set of entities, processes or kernel threads,
each a SimPy process that charges operations to the CPU through `Entity.charge`
and moves reply bytes through the socket helpers here. Everything the
architectures have in common lives here, once.
"""
from __future__ import annotations

from collections import deque

import simpy

from .config import Hardware, Profile
from .operations import OPTIONAL_OPERATIONS, Cost
from .hardware import CPU, Disk, Link, ThrottledDisk, page_cache

# Linux 2.6.16's send-buffer autotuning (tcp_new_space in net/ipv4/tcp_input.c): the buffer becomes
# 2 x cwnd x (one segment's memory: 1,460 B of MSS + TCP/IP headroom + the sk_buff, about 1.8 KB).
# A connection starts with cwnd = 3 segments (RFC 3390 for a 1,460 B MSS), and in slow start it
# gains one segment per ACK, i.e. one per two full segments with delayed ACKs. After an idle period
# cwnd starts again from 3 (RFC 2861), but the buffer keeps the size it reached.
SEGMENT_MEMORY = 1822
SEGMENT_PAYLOAD = 1448
INITIAL_CWND = 3


def autotuned_sndbuf(sent: float) -> float:
    """The send buffer autotuning asks for once `sent` bytes of one reply have been acknowledged."""
    return 2 * SEGMENT_MEMORY * (INITIAL_CWND + sent / (2 * SEGMENT_PAYLOAD))


class Costs:
    """The profile's operation costs as plain attributes (fixed seconds, `_b` per unit), for the hot path."""

    def __init__(self, profile: Profile, needed: tuple[str, ...]):
        for op in needed:
            c = profile.costs.get(op, Cost()) if op in OPTIONAL_OPERATIONS else profile.cost(op)
            setattr(self, op, c.fixed)
            setattr(self, op + "_u", c.per_unit)


class Entity:
    """A schedulable entity (process or kernel thread) with the descriptors it watches."""

    __slots__ = ("server", "name", "ready", "waiting", "nconns", "opened", "blocked_s")

    def __init__(self, server: "Server", name: str):
        self.server = server
        self.name = name
        self.ready: list = []      # connections with something to do
        self.waiting = None        # event while blocked waiting for readiness
        self.nconns = 0
        self.opened = None         # its header/descriptor cache (a set of files), if private
        self.blocked_s = 0.0

    def signal(self, conn) -> None:
        """`conn` became readable or writable (or was closed by the client)."""
        if not conn.queued:
            conn.queued = True
            self.ready.append(conn)
            self.wake()

    def wake(self) -> None:
        ev = self.waiting
        if ev is not None:
            self.waiting = None
            ev.succeed()

    def wait(self) -> simpy.Event:
        self.waiting = simpy.Event(self.server.env)
        return self.waiting

    def run(self, seconds: float) -> simpy.Event:
        return self.server.cpu.run(self, seconds)

    def __repr__(self):
        return self.name


class Server:
    """The machine under test: CPU, NICs, disk, page cache, listen socket and connection limit."""

    def __init__(self, env: simpy.Environment, hw: Hardware, profile: Profile, workload, ops: tuple[str, ...]):
        fileset = workload.fileset
        self.env = env
        self.header_bytes = workload.header_bytes
        self.hw = hw
        self.profile = profile
        self.costs = Costs(profile, ops)
        self.sizes = fileset.sizes.tolist()   # plain ints: indexing a list is cheaper than an array
        self.cpu = CPU(env, hw.cores, profile.cost("ctx_switch").fixed, hw.cpu_quota, hw.cpu_period_ms / 1e3)
        self.links = [Link(env, hw.nic_gbps * 1e9 / 8, hw.nic_queue_flows) for _ in range(hw.nics)]
        if hw.disk_throttle_iops > 0:
            self.disk = ThrottledDisk(env, hw.disks, hw.disk_seek_ms / 1e3, hw.disk_mb_s * 1e6,
                                      hw.disk_readahead_kb * 1024, hw.disk_throttle_iops,
                                      hw.disk_throttle_mb_s * 1e6, hw.disk_throttle_slice_ms / 1e3)
        else:
            self.disk = Disk(env, hw.disks, hw.disk_seek_ms / 1e3, hw.disk_mb_s * 1e6, hw.disk_readahead_kb * 1024,
                             indirect=hw.file_system == "ext3")
        self.cache = page_cache(env, self.disk, hw)
        self.sndbuf = hw.sndbuf_kb * 1024              # the autotuned ceiling, tcp_wmem[2]
        self.sndbuf_start = min(self.sndbuf, hw.sndbuf_initial_kb * 1024) or self.sndbuf
        self.backlog: deque = deque()
        self.listeners: list[Entity] = []
        self.max_conns = 1 << 62
        self.max_conns_per_entity = 1 << 62
        self.open_conns = 0
        self.accepted = 0
        self.clients = None        # set by the run loop
        self.shared_opened: set = set()
        self.adopt_by = None
        self._rr = 0
        self._adopted = 0

    def entity(self, name: str) -> Entity:
        return Entity(self, name)

    def block(self, entity: Entity, ev):
        """`entity` waits for `ev` (a disk read, a full socket) off the CPU."""
        if not ev.processed:
            t = self.env.now
            yield ev
            entity.blocked_s += self.env.now - t

    # -- memory ---------------------------------------------------------------------------------
    def add_footprint(self, kb: float) -> None:
        """Resident memory taken by the servers; the page cache shrinks to make room."""
        cache = self.cache
        cache.footprint += kb * 1024
        if kb > 0 and cache.used > cache.memory - cache.footprint:
            cache.shrink()

    # -- the listen socket ----------------------------------------------------------------------
    def syn(self, conn) -> bool:
        """A client's SYN: queued if the listen backlog has room (the kernel completes the handshake)."""
        if len(self.backlog) >= self.hw.listen_backlog:
            return False
        self.backlog.append(conn)
        for e in self.listeners:   # every entity polling the listen socket is woken
            e.wake()
        return True

    def can_accept(self, entity: Entity) -> bool:
        return (bool(self.backlog) and self.open_conns < self.max_conns
                and entity.nconns < self.max_conns_per_entity)

    def accept(self, entity: Entity, limit: int) -> int:
        """Accept up to `limit` connections (0: until EWOULDBLOCK); returns how many accept calls ran."""
        calls = 0
        backlog = self.backlog
        cap = min(self.max_conns - self.open_conns, self.max_conns_per_entity - entity.nconns)
        while backlog and calls < cap and (limit == 0 or calls < limit):
            conn = backlog.popleft()
            calls += 1
            self.accepted += 1
            self._attach(entity, conn)
            entity.signal(conn)   # its first request (or its EOF) is already waiting
        if not backlog and (limit == 0 or calls < limit):
            calls += 1            # the accept that returns EWOULDBLOCK
        return calls

    def adopt(self, conn) -> bool:
        """Take over a connection opened before the run began (no accept is charged).

        Models whose connections are not owned by the listening entities set `adopt_by`.
        """
        if self.open_conns >= self.max_conns:
            return False
        if self.adopt_by is not None:
            entity = self.adopt_by(conn)
        else:
            entity = self.listeners[self._adopted % len(self.listeners)]
        if entity is None or entity.nconns >= self.max_conns_per_entity:
            return False
        self._adopted += 1
        self._attach(entity, conn)
        return True

    def _attach(self, entity: Entity, conn) -> None:
        conn.accepted = True
        conn.owner = entity
        self._rr = (self._rr + 1) % len(self.links)
        conn.link = self.links[self._rr]
        conn.sndbuf = self.sndbuf_start
        entity.nconns += 1
        self.open_conns += 1
        self.add_footprint(self.profile.footprint.connection_kb)

    def close(self, conn) -> None:
        entity = conn.owner
        entity.nconns -= 1
        self.open_conns -= 1
        self.add_footprint(-self.profile.footprint.connection_kb)
        if conn.flow is not None:
            self.abort_send(conn)
        conn.owner = None
        conn.accepted = False

    # -- files ----------------------------------------------------------------------------------
    def header_cached(self, entity: Entity, file: int) -> bool:
        """Look the file up in the header/descriptor cache; True on a hit (else it is opened now)."""
        opened = entity.opened if entity.opened is not None else self.shared_opened
        if file in opened:
            return True
        opened.add(file)
        return False

    # -- sockets --------------------------------------------------------------------------------
    def send(self, conn, nbytes: float, on_done) -> None:
        """Hand `nbytes` of the reply to the socket; `on_done(conn)` when they have left the NIC."""
        conn.unsent -= nbytes
        conn.flow = conn.link.send(nbytes, on_done, conn)
        if conn.sndbuf < self.sndbuf:              # the window opens as these bytes are acknowledged
            conn.sndbuf = min(self.sndbuf, max(conn.sndbuf, autotuned_sndbuf(conn.size - conn.unsent)))

    def must_leave(self, conn, nbytes: float) -> float:
        """Bytes of a blocking send of `nbytes` that must leave before the rest fits the socket buffer.

        The send starts a reply, and the buffer grows while its bytes leave: the sender wakes at
        the first x with nbytes - x <= min(ceiling, max(buffer now, autotuned_sndbuf(x))).
        With a buffer at its ceiling that is nbytes - buffer.
        """
        fixed = nbytes - conn.sndbuf
        if conn.sndbuf >= self.sndbuf:
            return max(0.0, fixed)
        growing = (nbytes - autotuned_sndbuf(0)) / (1 + SEGMENT_MEMORY / SEGMENT_PAYLOAD)
        return max(0.0, nbytes - self.sndbuf, min(fixed, growing))

    def reply_sent(self, conn) -> None:
        """A piece of a reply has left the NIC: the socket is writable again, or the reply is complete."""
        conn.flow = None
        if conn.closed:
            return
        if conn.unsent > 0:
            conn.owner.signal(conn)
        else:
            conn.state = 0
            self.clients.reply_done(conn)

    def send_and_wait(self, entity: Entity, conn, nbytes: float):
        """`entity` hands `nbytes` to the socket and sleeps until they have left (a poll on it)."""
        conn.waiter = ev = simpy.Event(self.env)
        self.send(conn, nbytes, self._unblock)
        yield from self.block(entity, ev)

    def blocking_send(self, entity: Entity, conn, nbytes: float):
        """A blocking send: `entity` sleeps until `nbytes` have left and the rest fits the socket buffer.

        The kernel wakes a sender sleeping on a full socket each time a third of the buffer has
        drained (sk_stream_write_space: queued <= 2/3 of the buffer); the sender queues as much
        again and sleeps, while the bytes already queued keep leaving. So each third costs the
        sender a trip through the CPU (a switch in, and one out), unless it is still waiting for
        the CPU since the last wake-up: a runnable task is not woken twice.
        """
        conn.waiter = done = simpy.Event(self.env)
        cpu = self.cpu
        left = [nbytes]
        waking = [False]                           # a wake-up burst queued and not yet run

        def ran(_ev):
            waking[0] = False

        def drained(c):
            c.flow = None
            if left[0] > 0 and c.waiter is done:
                piece = min(left[0], c.sndbuf / 3)
                left[0] -= piece
                self.send(c, piece, drained)
                if not waking[0]:
                    waking[0] = True
                    cpu.run(entity, 0.0).callbacks.append(ran)
            else:
                self._unblock(c)

        piece = min(nbytes, conn.sndbuf / 3)
        left[0] = nbytes - piece
        self.send(conn, piece, drained)
        yield from self.block(entity, done)

    def _unblock(self, conn) -> None:
        conn.flow = None
        w = conn.waiter
        if w is not None:
            conn.waiter = None
            w.succeed()

    def abort_send(self, conn) -> None:
        """The peer is gone: drop what is in flight and release a sender blocked on the socket."""
        if conn.flow is not None:
            conn.link.cancel(conn.flow)
            conn.flow = None
        conn.unsent = 0
        w = conn.waiter
        if w is not None:
            conn.waiter = None
            w.succeed()
