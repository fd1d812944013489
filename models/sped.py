"""SPED: the userver's single-process event-driven loop (PAPER.md section 4.2).

One process watches every connection with poll (or select, or epoll). Each pass
of its loop makes one poll call, accepts new connections until EWOULDBLOCK (or up
to the accept limit), then serves every ready descriptor: reads and parses a
request, looks the file up in the header/descriptor cache, writes the header and
sendfiles as much of the file as the socket buffer takes; a socket that drains
comes back as writable for the next piece.

The CPU work of a pass goes in bursts of at most one scheduler slice: Linux 2.6
keeps a runnable process on the CPU until it blocks or its slice ends, so a
process serving a long ready list does not hand the CPU to the other userver
processes after each descriptor. A burst that starts at once (the CPU was free)
sends each piece when its descriptor's work is done, as the kernel does; one that
queued behind another process sends its pieces when it ends, at most a slice late.

A page-cache miss blocks the whole process in sendfile while the disk reads: with
one process the server then does nothing at all, which is why SYMPED exists.
With blocking sockets (the userver-b), sendfile also blocks until all but the
last socket buffer of the reply has left, so many processes are needed.
"""
from __future__ import annotations

from dataclasses import dataclass

from sim.config import knob

# Linux 2.6.16's O(1) scheduler round-robins runnable processes of equal priority every
# TIMESLICE_GRANULARITY, 10 ms for a process that often sleeps (in poll, on the disk), and
# otherwise lets one keep the CPU until it blocks. Table 1 agrees: the userver with 4 processes,
# all CPU-bound at 12,000 requests/s, made 107 context switches/s, about one per 10 ms.
SLICE_S = 0.010

OPERATIONS = ("accept", "read", "parse", "open", "stat", "write", "sendfile", "poll", "select",
              "epoll_wait", "epoll_ctl", "close", "ctx_switch", "net_tx", "net_conn", "wakeup")


@dataclass(frozen=True)
class Knobs:
    max_conns: int = knob(30_000, "simultaneous connections allowed, in total over all processes", min=1, max=10_000_000)
    blocking_sockets: bool = knob(False, "blocking socket writes: one sendfile per reply that blocks until sent")
    event_mechanism: str = knob("poll", "how readiness is learnt", choices=("poll", "select", "epoll"))
    accept_limit: int = knob(0, "connections accepted per accept phase; 0 = until EWOULDBLOCK", min=0, max=10_000_000)


def start(server, knobs, processes: int = 1, shared_cache: bool = True) -> list:
    """Start `processes` userver processes sharing the listen socket; return them."""
    fp = server.profile.footprint
    server.max_conns = knobs.max_conns
    server.max_conns_per_entity = -(-knobs.max_conns // processes)   # the userver splits the limit
    procs = []
    for i in range(processes):
        p = server.entity(f"userver-{i}")
        if not shared_cache:
            p.opened = set()
        server.add_footprint(fp.process_kb)
        server.listeners.append(p)
        server.env.process(event_loop(server, p, knobs))
        procs.append(p)
    return procs


def event_cost(c, mechanism: str, watched: int, ready: int) -> float:
    """CPU of one readiness call: poll and select scan every watched descriptor, epoll only the ready ones."""
    if mechanism == "poll":
        return c.poll + c.poll_u * watched
    if mechanism == "select":
        return c.select + c.select_u * watched
    return c.epoll_wait + c.epoll_wait_u * ready


def event_loop(server, proc, knobs):
    """The userver's main loop for one process."""
    c = server.costs
    cache, sizes = server.cache, server.sizes
    mechanism, limit, blocking = knobs.event_mechanism, knobs.accept_limit, knobs.blocking_sockets
    epoll = mechanism == "epoll"
    request_cpu = c.read + c.parse + c.write + c.write_u * server.header_bytes
    per_byte = c.sendfile_u + c.net_tx_u
    reply_sent, run, send, call_later = server.reply_sent, server.cpu.run, server.send, server.env.call_later
    sends = []                                     # (conn, piece, CPU of the burst up to its sendfile)

    def piece_leaves(call):
        conn, chunk = call.arg
        if not conn.closed:
            send(conn, chunk, reply_sent)

    def burst(cpu):
        ev = run(proc, cpu)
        if sends and ev.triggered:                 # started at once: each piece leaves on time
            lag = max(0.0, ev._delay - cpu)        # a context switch first, or the CPU quota (not below 0 by rounding)
            for conn, chunk, at in sends:
                call_later(lag + at, piece_leaves, (conn, chunk))
            sends.clear()
        return ev

    while True:
        cpu = 0.0
        if not proc.ready and not server.can_accept(proc):
            yield proc.wait()                      # poll blocks: nothing is ready
            # the return from idle: paid only when the core had nothing else to run (with several
            # processes one often runs while another sleeps); a pass that finds work at once pays none
            cpu = c.wakeup if server.cpu.free else 0.0
        ready, proc.ready = proc.ready, []
        cpu += event_cost(c, mechanism, proc.nconns + 1, len(ready) + 1)
        if server.can_accept(proc):                # the listen socket is readable
            before = proc.nconns
            cpu += c.accept * server.accept(proc, limit)
            cpu += (proc.nconns - before) * (c.net_conn + (c.epoll_ctl if epoll else 0.0))
        for conn in ready:
            conn.queued = False
            if conn.closed:                        # EOF or reset: the client is gone
                cpu += c.read + c.close + (c.epoll_ctl if epoll else 0.0)
                server.close(conn)
                continue
            if conn.state == 1:                    # writable again: the next piece of the reply
                if conn.flow is not None or conn.unsent <= 0:
                    continue
                miss = None
                chunk = min(conn.unsent, conn.sndbuf)
                cpu += c.sendfile + per_byte * chunk
            elif conn.file >= 0:                   # a request has arrived
                conn.state = 1
                f = conn.file
                cpu += request_cpu + (c.stat if server.header_cached(proc, f) else c.open)
                miss = cache.touch(f, sizes[f])
                conn.unsent = conn.size
                if blocking:                       # one sendfile for the whole reply
                    chunk = conn.size
                    cpu += c.sendfile + per_byte * chunk
                else:
                    chunk = min(conn.size, conn.sndbuf)
                    cpu += c.sendfile + per_byte * chunk
                    if epoll and conn.size > conn.sndbuf:
                        cpu += 2 * c.epoll_ctl     # watch for writability, and stop watching
            else:
                continue
            if miss is None and chunk <= conn.sndbuf:   # sendfile returns at once: the piece joins the burst
                sends.append((conn, chunk, cpu))
                if cpu >= SLICE_S:                 # the slice is over: the burst runs, its pieces leave
                    yield burst(cpu)
                    cpu = 0.0
                    _flush(sends, send, reply_sent)
                continue
            # sendfile will block: the burst so far runs first, then the process sleeps in it
            yield burst(cpu)
            cpu = 0.0
            _flush(sends, send, reply_sent)
            if miss is not None:                   # sendfile faults the file in: the process blocks
                yield from server.block(proc, miss)
            if conn.closed:
                continue
            if blocking and chunk > conn.sndbuf:        # blocks until the rest fits the socket buffer
                yield from server.blocking_send(proc, conn, server.must_leave(conn, chunk))
                if conn.closed:
                    continue
                chunk = conn.unsent
            send(conn, chunk, reply_sent)
        if cpu:
            yield burst(cpu)
        if sends:
            _flush(sends, send, reply_sent)


def _flush(sends, send, reply_sent) -> None:
    """The queued burst that did these sendfile calls has run: their pieces go to the sockets."""
    for conn, chunk, _at in sends:
        if not conn.closed:
            send(conn, chunk, reply_sent)
    sends.clear()


def demand(profile, hw, workload, knobs, mean_bytes: float, pieces: float, processes: int = 1):
    """CPU seconds per request (without the poll call's batched share), usable cores, footprint KB."""
    cost = profile.cost
    per_request = (cost("read")() + cost("parse")() + cost("stat")() + cost("write")(workload.header_bytes)
                   + cost("sendfile").fixed * (1 if knobs.blocking_sockets else pieces)
                   + (cost("sendfile").per_unit + cost("net_tx").per_unit) * mean_bytes)
    per_connection = cost("accept")() + cost("net_conn")() + cost("read")() + cost("close")()
    cpu = per_request + per_connection / workload.mean_requests_per_session
    footprint = processes * profile.footprint.process_kb
    return cpu, min(hw.cores, processes), footprint
