"""Thread-per-connection on kernel threads with blocking I/O (Apache's worker MPM, Python's ThreadingHTTPServer).

A listener thread accepts a connection only when a worker thread is free for it
and hands it over; the worker serves that connection until the client closes it:
it blocks in `read` while the client thinks, in `sendfile` on a page-cache miss,
and in `sendfile` until all but the last socket buffer of the reply has left. So
the thread count is the connection limit, and every thread costs memory.

`threads = 0` spawns a thread per connection (ThreadingHTTPServer), up to `max_conns`;
a positive value is a fixed pool (Apache), and connections beyond it wait in the
listen queue.

With `gil` on, the threads share CPython's interpreter lock, taken and given back
as CPython does: every blocking system call (recv, the header's send, sendfile,
close) lets the lock go around its kernel work, and the thread takes it back on
its return, on its core. So a request takes the lock three times, each time
from a thread that is running, and the lock is contended only when another
thread holds it at that instant: on several cores, a thread running Python on
another core; on one core, only a holder taken off the core in mid-Python
(preempted or throttled), which these non-preemptive bursts never are. The
return from the system call and the Python that follows run as one burst; the
lock's timeline records when the last Python section ended, and a thread whose
section would have overlapped it sleeps until then, is handed the lock
(`handoff`) and runs the overlapped part after it. The switch interval (5 ms)
does not enter: it shares the lock among holders that run Python for longer
than that, and a request's Python here is tens of microseconds.

A thread that slept in a blocking call and is woken on an idle core pays
`wakeup` (the core's return from idle: the VM's halt and wake, the scheduler,
cold caches) in the burst it wakes to: woken with its connection's next request
(or its first, which stands for the live thread woken in accept; the listener
here is the model's bookkeeping and pays none), woken in a sendfile that
blocked, and woken when the lock it slept on is handed to it. A thread woken
while every core is busy only joins the run queue; the switch to it is the
CPU's `ctx_switch`. A thread that finds its next request already there when it
finishes a reply does not sleep and pays none. (Measured 2026-11-26: charged on
every wake, the live threaded server's 1.2 wake-ups per reply at 80 % of its
share would cost twice the CPU per reply it used.)

A running thread is also taken off its core when another is woken there: Linux
lets a thread that slept preempt the one running. On one core, a thread woken
(by its connection's next request, or from a blocking sendfile) while another
runs Python preempts the lock's holder, finds the lock held and sleeps on it,
and is woken again when the holder lets it go: a `handoff` (two switches and
the lock's futex pair), which the woken thread pays in its next burst. Bursts
here are not preempted, so the model keeps the wake-up times and, when a burst
ends, charges the threads woken during its Python section. (Measured 2026-11-26
on the live threaded server, 256 threads on core 0: 0.2 involuntary switches
and 0.65 futex calls per reply at a quarter of the core, 0.6-0.9 and 0.9-2.5
under a 15 % quota: about one preemption per wake-up that lands in Python.)

A holder does leave its core in mid-Python when a CFS quota runs out (the
hardware's `cpu_quota`): the CPU then marks the burst with `cut`, the CPU
seconds into it where the period's share ran out. If that falls in the Python
section, the threads waiting for the core run first in the next period, each
finds the lock held and sleeps on it (a `handoff` each): the convoy that costs
a Python server on a short CFS period up to half its share.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from sim.config import knob

OPERATIONS = ("accept", "read", "parse", "open", "stat", "write", "sendfile", "close", "ctx_switch",
              "handoff", "net_tx", "net_conn", "wakeup")


@dataclass(frozen=True)
class Knobs:
    threads: int = knob(256, "worker threads in the pool; 0 = a new thread per connection", min=0, max=1_000_000)
    max_conns: int = knob(30_000, "simultaneous connections allowed (with a pool, at most `threads`)",
                          min=1, max=10_000_000)
    gil: bool = knob(False, "threads share CPython's global interpreter lock")


class GIL:
    """The interpreter lock as a timeline: when the last Python section ended, and counters.

    A section is charged with the system call return before it as one CPU burst, so the
    lock is checked when the burst ends: its Python ran in the last `python` seconds."""

    __slots__ = ("free_at", "acquisitions", "handovers", "waited_s", "convoys", "futile", "woken", "owed",
                 "preemptions")

    def __init__(self):
        self.free_at = 0.0
        self.acquisitions = 0
        self.handovers = 0
        self.waited_s = 0.0
        self.convoys = 0                  # holders throttled in mid-Python
        self.futile = 0                   # threads that ran meanwhile and found the lock held
        self.woken: deque = deque()       # (time, thread) of threads woken on the busy core, in time order
        self.owed: dict = {}              # thread -> hand-overs it owes for preempting a holder
        self.preemptions = 0              # wake-ups that preempted a thread in its Python section

    def woke_on_busy_core(self, now: float, thread) -> None:
        self.woken.append((now, thread))

    def settle(self, start: float, end: float, held: bool) -> None:
        """A burst ended at `end` on the one core, its Python section from `start`: the threads
        woken during that section preempted the holder (if `held`: not when a quota throttle
        already stands for it), each a hand-over owed; earlier wake-ups found no lock held."""
        woken, owed = self.woken, self.owed
        while woken and woken[0][0] <= end:
            t, thread = woken.popleft()
            if held and t >= start:
                owed[thread] = owed.get(thread, 0) + 1
                self.preemptions += 1


class Threaded:
    def __init__(self, server, knobs: Knobs):
        self.server = server
        self.k = knobs
        self.listener = server.entity("listener")
        self.idle: list = []              # threads waiting for a connection
        self.threads: list = []
        self.limit = knobs.threads if knobs.threads else knobs.max_conns
        self.gil = GIL() if knobs.gil else None
        self.one_core = getattr(server.cpu, "cores", 1) == 1   # where a woken thread preempts the holder
        self.requests = 0                 # requests parsed (the lock counters are per request of these)

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

    def locked(self, w, before: float, python: float, after: float = 0.0, takes: int = 1):
        """One burst of a running thread: `before` (a system call's return, without the lock),
        `python` (with it) and `after` (the next system calls, which let it go again).

        The lock is checked when the burst ends: if another thread's Python section (on
        another core) had not ended when this one began, this thread sleeps until it has,
        is handed the lock and runs the overlapped part again, until its section overlaps
        no other. `takes` counts the lock's acquisitions in the burst (one per system call
        it returns from). A burst cut by the CPU quota in its Python section leaves the lock
        held across the throttle: every thread then waiting for the core runs, finds it held
        and sleeps on it, a hand-over's cost each."""
        gil, env, handoff = self.gil, self.server.env, self.server.costs.handoff
        wakeup = self.server.costs.wakeup
        gil.acquisitions += takes
        if gil.owed:                             # it preempted a holder when it woke: the futile run
            before += gil.owed.pop(w, 0) * handoff
        ev = w.run(before + python + after)
        yield ev
        end = env.now - after                    # when this burst's Python section ended
        cut = getattr(ev, "cut", -1.0)
        if self.one_core:
            gil.settle(end - python, end, python > 0.0 and cut < 0.0)
        if before < cut < before + python:
            n = len(self.server.cpu.queue)
            gil.convoys += 1
            gil.futile += n
            if n:
                yield w.run(n * handoff)
        handed = False
        while True:
            start = end - python
            if gil.free_at <= start + 1e-12:
                if end > gil.free_at:
                    gil.free_at = end
                return
            overlap = min(python, gil.free_at - start)
            if end > gil.free_at:
                gil.free_at = end                # the part after the other section stands
            python = overlap + handoff
            if gil.free_at > env.now:            # sleeps on the lock, and is woken with it
                gil.waited_s += gil.free_at - env.now
                yield env.timeout(gil.free_at - env.now)
                if self.server.cpu.free:         # on an idle core
                    python += wakeup
            if not handed:
                handed = True
                gil.handovers += 1
            yield w.run(python)
            end = env.now

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
            if self.gil is None:
                yield lst.run(cpu)
            else:                                # back from the accepts: the hand-over is Python
                yield from self.locked(lst, cpu - n * c.handoff, n * c.handoff, takes=0)

    def serve(self, w):
        """One worker thread: wait for a connection, serve it until the client closes."""
        server, c, gil = self.server, self.server.costs, self.gil
        cache, sizes, reply_sent = server.cache, server.sizes, server.reply_sent
        header = c.write + c.write_u * server.header_bytes
        per_byte = c.sendfile_u + c.net_tx_u
        woke = 0.0                               # the wake-up the next burst pays (0: none)
        cpu = server.cpu
        while True:
            if not w.ready:
                yield w.wait()                   # waiting for a connection, or blocked in read
                if cpu.free:                     # woken on an idle core
                    woke = c.wakeup
                elif gil is not None and self.one_core:
                    gil.woke_on_busy_core(server.env.now, w)
                continue
            conn = w.ready.pop()
            conn.queued = False
            wake, woke = woke, 0.0
            if conn.closed:                      # read returns EOF: close, and wait for the next one
                if gil is None:
                    yield w.run(wake + c.read + c.close)
                else:                            # read (EOF) and close, each taking the lock back
                    yield from self.locked(w, wake + c.read + c.close, 0.0, takes=2)
                server.close(conn)
                self.idle.append(w)
                self.listener.wake()
                continue
            if conn.file < 0:
                continue
            f = conn.file
            self.requests += 1
            python = c.parse + (c.stat if server.header_cached(w, f) else c.open)
            body = c.sendfile + per_byte * conn.size
            if gil is None:
                yield w.run(wake + c.read + python + header + body)
            else:
                # as the live server does it: recv returns, parse and look up (the lock held),
                # send the header, sendfile; each system call lets the lock go and takes it back
                yield from self.locked(w, wake + c.read, python, header + body, takes=3)
            conn.unsent = conn.size
            miss = cache.touch(f, sizes[f])
            blocked = miss is not None or (not conn.closed and conn.size > conn.sndbuf)
            t = server.env.now
            if miss is not None:
                yield from server.block(w, miss)
            if not conn.closed and conn.size > conn.sndbuf:   # sendfile blocks until the rest fits the buffer
                yield from server.blocking_send(w, conn, server.must_leave(conn, conn.size))
            if blocked:                          # back from sendfile: the return takes the lock again
                wake = c.wakeup if server.env.now > t and cpu.free else 0.0   # slept there, woken on an idle core
                if gil is not None and server.env.now > t and not cpu.free and self.one_core:
                    gil.woke_on_busy_core(server.env.now, w)
                if gil is not None:
                    yield from self.locked(w, wake, 0.0, takes=0)
                elif wake:
                    yield w.run(wake)
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
    """CPU seconds per request, usable cores (one, for the Python part, with the GIL), footprint KB.

    With the GIL on several cores, the Python sections queue for the lock at saturation,
    each handed over once; on one core the lock is never held by another thread."""
    cost = profile.cost
    fp = profile.footprint
    # a thread sleeps in recv for each request, but at saturation the core it wakes on is busy:
    # no wake-up from idle
    per_request = (cost("read")() + cost("parse")() + cost("stat")() + cost("write")(workload.header_bytes)
                   + cost("sendfile")(mean_bytes) + cost("net_tx")(mean_bytes))
    per_connection = cost("accept")() + cost("net_conn")() + cost("handoff")() + cost("read")() + cost("close")()
    cpu = per_request + per_connection / workload.mean_requests_per_session
    threads = knobs.threads or knobs.max_conns
    cores = min(hw.cores, threads)
    if knobs.gil and cores > 1:
        # the Python part is serial: `cores` servers of `cpu` each, or one lock of `python`,
        # whichever is slower, told as the demand on `cores` servers that gives that rate
        python = cost("parse")() + cost("stat")() + cost("handoff")()
        cpu = max(cpu + cost("handoff")(), cores * python)
    return cpu, cores, fp.process_kb + (threads + 1) * fp.kernel_thread_kb
