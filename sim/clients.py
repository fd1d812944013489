"""httperf-style clients: a Poisson stream of sessions, each one persistent connection.

A session connects (a full listen queue drops the SYN; the client retries after
the SYN retransmission timeout, doubling it), sends its first request at once,
and after each reply thinks (within a burst or between bursts) before the next.
A request not answered within the timeout is an error: the client closes the
connection and the session ends, as httperf does. Timeouts are found by a reaper
that wakes a few times per simulated second over the deadlines (in sending order), so that a
request costs no timer event of its own.

The clients keep httperf's clock: its timer fires on 1 ms ticks (`generator_tick_s`,
TIMER_INTERVAL in httperf's timer.h). A session starts on the first tick past its
drawn Poisson instant (the rate generator keeps the drawn instants, so the rate is
the offered one), and a think time ends a whole number of ticks (at least one,
rounded to the nearest) after the next tick, as httperf's timer wheel counts it.
Each of the generator's processes ticks on a grid of its own, evenly offset. So
requests reach the server in clusters, a tick's worth at a time: a server whose
core is idle between requests wakes once per cluster, not once per request
(measured: the threaded server's core entered idle 0.35 times a reply at 3,740
requests/s, where requests at their drawn instants would wake it about once a reply).

With `session_templates` in the workload the sessions are not drawn: each new
session replays the next of the workload's templates (files and think times), in
turn, as httperf replays its session files.

With `arrivals = "httperf"` the sessions start at the instants httperf's own
seeded generator gives (sim/generator.py), each of its processes replaying its
share of the templates, from an empty start: the requests a live run offers.
"""
from __future__ import annotations

import heapq
import math
from array import array
from collections import deque
from operator import itemgetter

import numpy as np

from . import generator
from .workload import Workload

REAP_INTERVAL_S = 0.1
_DEADLINE_ORDER = itemgetter(0, 1, 2)
FILE_BATCH = 1 << 14


class Connection:
    """One client session and its persistent connection, seen from both ends."""

    __slots__ = ("id", "left", "burst_left", "file", "size", "sent_at", "reqno", "closed", "owner",
                 "link", "queued", "unsent", "flow", "waiter", "retries", "born", "accepted", "state", "tpl",
                 "sndbuf")

    def __init__(self, cid, n_requests, born):
        self.id = cid
        self.left = n_requests      # requests still to send, the current one included
        self.burst_left = 0         # requests left in the current burst
        self.file = -1              # file of the request in flight, -1 when none
        self.size = 0
        self.sent_at = 0.0
        self.reqno = 0              # bumps on every request, to match deadlines
        self.closed = False         # the client has closed (session over or timed out)
        self.owner = None           # the server entity that accepted it
        self.link = None
        self.queued = False         # already in its owner's ready list
        self.unsent = 0             # reply bytes not yet handed to the socket
        self.flow = None
        self.waiter = None          # event of a server entity blocked in a send on this socket
        self.retries = 0
        self.born = born
        self.accepted = False
        self.state = 0              # model-private state
        self.tpl = None             # the replayed template (files, thinks), or None when drawn
        self.sndbuf = 0             # the socket's send buffer in bytes, set when the server accepts it


class Clients:
    """The client machines: sessions arrive, send requests, think, time out."""

    def __init__(self, env, workload: Workload, offered_rps: float, rng: np.random.Generator, server, window):
        self.env = env
        self.w = workload
        self.rng = rng
        self.server = server
        self.session_rate = workload.session_rate(offered_rps)
        self.t0, self.t1 = window
        self.sizes = workload.fileset.sizes.tolist()
        self.header_bytes = server.header_bytes
        self._files: list = []
        self._fpos = 0
        self.templates = workload.templates() if workload.session_templates else None
        self._next_template = 0
        # deadlines of requests in flight: almost always sent in time order, so a FIFO;
        # the few that are not (a first request timed from a SYN retried earlier) go to a heap
        self.deadlines: deque = deque()
        self.late_deadlines: list = []
        self.next_id = 0
        # measurement (inside the window only); the instants let the run loop cut the window into batches
        self.sessions_done = 0
        self.response = array("d")
        self.reply_at = array("d")       # when each reply of `response` completed
        self.reply_bytes = array("d")
        self.timeout_at = array("d")     # the deadline each timed-out request missed
        self.refused_at = array("d")     # when each refused session's time ran out
        self.open_samples = array("d")
        self.open_sampled_at = array("d")
        self.resets_during_send = 0
        # sessions holding a client descriptor, and the load generator's limit on them (0: none)
        self.open_sessions = 0
        self.max_sessions = workload.max_open_sessions(offered_rps)
        # the load generator's timer: its processes tick every `tick` seconds, each on a grid of its own
        # (evenly offset); a session belongs to the process its id falls to
        self.tick = workload.generator_tick_s
        self.procs = workload.generator_processes(offered_rps)
        self._phase = [self.tick * i / self.procs for i in range(self.procs)]   # each process's grid offset
        if workload.arrivals == "httperf":     # httperf's own instants, for a run as long as this one
            plan = generator.sessions(max(1, round(self.session_rate * self.t1)), self.procs, self.session_rate,
                                      len(self.templates) if self.templates is not None else 0)
            env.process(self._httperf_arrivals(plan))
        else:
            env.process(self._arrivals())
        env.process(self._reaper())

    @property
    def replies(self) -> int:
        """Replies completed inside the window."""
        return len(self.response)

    @property
    def timeouts(self) -> int:
        return len(self.timeout_at)

    @property
    def connect_failures(self) -> int:
        return len(self.refused_at)

    def prefill(self, horizon_s: float = 40.0) -> int:
        """Sessions already under way at time 0, as if the clients had run for ever at light load.

        Without them a run would start empty and the request rate would ramp up over
        a whole session length. The sessions born in the last `horizon_s` seconds are
        replayed with instant replies (vectorised: one array entry per request) to find
        where each stands at time 0; those still going hold an open connection,
        adopted by the server without an accept, and a pending next request.
        With httperf's arrivals the run starts empty, as httperf does: none.
        """
        rng, w = self.rng, self.w
        if w.arrivals == "httperf":
            return 0
        n = int(rng.poisson(self.session_rate * horizon_s))
        if n == 0:
            return 0
        if self.templates is not None:
            return self._prefill_templates(n, horizon_s)
        born = np.sort(rng.uniform(-horizon_s, 0.0, n))
        count = rng.integers(w.session_requests_min, w.session_requests_max + 1, n)
        total = int(count.sum())
        first = np.concatenate(([0], np.cumsum(count)[:-1]))          # flat index of each session's request 0
        sid = np.repeat(np.arange(n), count)
        j = np.arange(total) - first[sid]                              # request number within its session
        # burst starts: cumulative burst lengths within each session
        blen = rng.integers(w.burst_requests_min, w.burst_requests_max + 1, total)
        bcum = np.cumsum(blen)
        bpos = bcum - np.concatenate(([0], bcum[np.cumsum(count)[:-1] - 1]))[sid]   # per-session cumsum
        starts = np.zeros(total, dtype=bool)
        starts[first] = True
        ok = bpos < count[sid]
        starts[(first[sid] + bpos)[ok]] = True
        # think time before each request (none before the first)
        mean = np.where(starts, w.think_between_bursts_s, w.think_within_burst_s)
        gap = mean * (rng.exponential(1.0, total) if w.think_distribution == "exponential" else 1.0)
        gap[first] = 0.0
        csum = np.cumsum(gap)
        t = born[sid] + csum - csum[first][sid]
        future = t >= 0.0
        nxt = np.flatnonzero(future & ((j == 0) | ~np.roll(future, 1)))
        # end of the burst holding each resumed request: the next burst start, or the session's end
        idx = np.where(starts, np.arange(total), total)
        next_start = np.minimum.accumulate(idx[::-1])[::-1]
        s_n = sid[nxt]
        after = np.where(nxt + 1 < total, next_start[np.minimum(nxt + 1, total - 1)], total)
        burst_left = np.minimum(after, first[s_n] + count[s_n]) - nxt
        adopted, cap = 0, self.max_sessions
        env, resume, adopt = self.env, self._resume, self.server.adopt
        for left, born_at, reqno, in_burst, at in zip((count[s_n] - j[nxt]).tolist(), born[s_n].tolist(),
                                                      j[nxt].tolist(), burst_left.tolist(), t[nxt].tolist()):
            conn = Connection(self.next_id, left, born_at)
            self.next_id += 1
            conn.reqno = reqno
            conn.burst_left = in_burst
            if cap and adopted >= cap:          # the load generator could not have held it
                break
            if not adopt(conn):
                continue
            adopted += 1
            env.call_later(self._on_tick(at, conn.id), resume, conn)
        self.open_sessions += adopted
        return adopted

    def _prefill_templates(self, n: int, horizon_s: float) -> int:
        """`prefill` for replayed templates: the n sessions born in the last `horizon_s` seconds
        took the n templates before the first one the arrivals will take, in turn."""
        born = np.sort(self.rng.uniform(-horizon_s, 0.0, n)).tolist()
        tpl, count = self.templates, len(self.templates)
        adopted = 0
        for m, born_at in enumerate(born):
            t = tpl[(m - n) % count]
            files, thinks = t
            at = born_at
            for j in range(len(files)):
                if at >= 0.0:
                    break
                at += thinks[j]
            else:
                continue                    # the session is over (born before 0, j >= 1 below)
            conn = Connection(self.next_id, len(files) - j, born_at)
            self.next_id += 1
            conn.tpl = t
            conn.reqno = j
            if self.max_sessions and adopted >= self.max_sessions:   # the load generator could not have held it
                break
            if not self.server.adopt(conn):
                continue
            adopted += 1
            self.env.call_later(self._on_tick(at, conn.id), self._resume, conn)
        self.open_sessions += adopted
        return adopted

    # -- drawing --------------------------------------------------------------------------------
    def _next_file(self) -> int:
        if self._fpos >= len(self._files):
            self._files = self.w.fileset.sample(self.rng, FILE_BATCH).tolist()
            self._fpos = 0
        f = self._files[self._fpos]
        self._fpos += 1
        return f

    def _think(self, mean):
        return self.rng.exponential(mean) if self.w.think_distribution == "exponential" else mean

    def _on_tick(self, at: float, cid: int) -> float:
        """The first tick of session `cid`'s generator process at or after `at` (`at` itself with no tick)."""
        tick = self.tick
        if not tick:
            return at
        phase = self._phase[cid % self.procs]
        return phase + math.ceil((at - phase) / tick - 1e-9) * tick

    def _think_ends(self, conn, think: float) -> float:
        """When a think time started now fires on the generator's timer: it counts whole ticks (at least
        one, rounded to the nearest) from its process's next tick, as httperf's timer wheel does."""
        tick = self.tick
        if not tick:
            return think
        now = self.env.now
        phase = self._phase[conn.id % self.procs]
        nxt = phase + (math.floor((now - phase) / tick + 1e-9) + 1) * tick
        return nxt + max(1, round(think / tick)) * tick - now

    def _burst_len(self):
        return int(self.rng.integers(self.w.burst_requests_min, self.w.burst_requests_max + 1))

    # -- session life ---------------------------------------------------------------------------
    def _arrivals(self):
        env, rng, w = self.env, self.rng, self.w
        rate = self.session_rate
        if self.templates is not None:
            tpl, count = self.templates, len(self.templates)
            while True:
                yield env.timeout(rng.exponential(1.0 / rate))
                t = tpl[self._next_template]
                self._next_template = (self._next_template + 1) % count
                conn = Connection(self.next_id, len(t[0]), self._on_tick(env.now, self.next_id))
                self.next_id += 1
                conn.tpl = t
                self._start(conn)
        while True:
            yield env.timeout(rng.exponential(1.0 / rate))
            n = int(rng.integers(w.session_requests_min, w.session_requests_max + 1))
            conn = Connection(self.next_id, n, self._on_tick(env.now, self.next_id))
            self.next_id += 1
            conn.burst_left = self._burst_len()
            self._start(conn)

    def _httperf_arrivals(self, plan):
        """Sessions at the instants httperf starts them (sim/generator.py), each on its own process's
        ticks and with the template that process replays next; session j of process i is id j*k + i."""
        env, w, tpl = self.env, self.w, self.templates
        k = 1 + max(proc for _t, proc, _m in plan)
        started = [0] * k
        for at, proc, m in plan:
            if at > env.now:
                yield env.timeout(at - env.now)
            cid = started[proc] * k + proc
            started[proc] += 1
            if tpl is not None:
                conn = Connection(cid, len(tpl[m][0]), self._on_tick(at, cid))
                conn.tpl = tpl[m]
            else:
                conn = Connection(cid, int(self.rng.integers(w.session_requests_min, w.session_requests_max + 1)),
                                  self._on_tick(at, cid))
                conn.burst_left = self._burst_len()
            self._start(conn)

    def _start(self, conn):
        """A session drawn now starts at once, or with a tick on the first tick of its process
        (httperf's rate generator keeps the drawn instants and starts each on the tick past it)."""
        if conn.born > self.env.now:
            self.env.call_later(conn.born - self.env.now, self._open_later, conn)
        else:
            self._open(conn)

    def _open_later(self, call):
        self._open(call.arg)

    def _open(self, conn):
        """A new session takes a descriptor of the load generator, or fails at once when its
        process holds all it can (httperf's fd_unavail: counted as a connection that failed)."""
        if self.max_sessions and self.open_sessions >= self.max_sessions:
            if self.t0 <= self.env.now < self.t1:
                self.refused_at.append(self.env.now)
            return
        self.open_sessions += 1
        self._connect(conn)

    def _connect(self, conn):
        now = self.env.now
        if self.server.syn(conn):
            self._send(conn)
            return
        # SYN dropped: retransmit after the RTO, doubling, until the request timeout is spent
        rto = self.server.hw.syn_retry_s * (2 ** conn.retries)
        conn.retries += 1
        if now + rto - conn.born > self.w.timeout_s:
            gave_up = now + (self.w.timeout_s - (now - conn.born))
            if self.t0 <= gave_up < self.t1:
                self.refused_at.append(gave_up)
            if self.max_sessions:      # its descriptor is held until then (counted only under a limit)
                self.env.call_later(gave_up - now, self._release, conn)
            return
        self.env.call_later(rto, self._retry, conn)

    def _release(self, call):
        self.open_sessions -= 1

    def _retry(self, call):
        self._connect(call.arg)

    def _resume(self, call):
        """The think time is over: the next request, unless the session was closed meanwhile."""
        conn = call.arg
        if not conn.closed:
            self._send(conn)

    def _send(self, conn):
        """Send the next request of the session on its connection."""
        conn.file = f = self._next_file() if conn.tpl is None else conn.tpl[0][conn.reqno]
        conn.size = self.sizes[f] + self.header_bytes
        conn.sent_at = self.env.now if conn.reqno else conn.born
        conn.reqno += 1
        conn.left -= 1
        conn.burst_left -= 1
        entry = (conn.sent_at + self.w.timeout_s, conn.id, conn.reqno, conn)
        dl = self.deadlines
        if not dl or entry[0] >= dl[-1][0]:
            dl.append(entry)
        else:
            heapq.heappush(self.late_deadlines, entry)
        if conn.accepted:
            conn.owner.signal(conn)

    def reply_done(self, conn):
        """The last byte of the reply reached the client."""
        now = self.env.now
        if self.t0 <= now < self.t1:
            self.response.append(now - conn.sent_at)
            self.reply_at.append(now)
            self.reply_bytes.append(conn.size)
        conn.file = -1
        if conn.left <= 0:
            self.sessions_done += 1
            self._close(conn)
            return
        if conn.tpl is not None:
            think = conn.tpl[1][conn.reqno - 1]
        elif conn.burst_left <= 0:
            conn.burst_left = self._burst_len()
            think = self._think(self.w.think_between_bursts_s)
        else:
            think = self._think(self.w.think_within_burst_s)
        self.env.call_later(self._think_ends(conn, think), self._resume, conn)

    def _close(self, conn):
        """The client closes its end: the server will read EOF (or fail its next send)."""
        conn.closed = True
        self.open_sessions -= 1
        if conn.flow is not None:
            self.server.abort_send(conn)
        if conn.accepted:
            conn.owner.signal(conn)

    def _reaper(self):
        env, dl, late, timeout_window = self.env, self.deadlines, self.late_deadlines, (self.t0, self.t1)
        while True:
            yield env.timeout(REAP_INTERVAL_S)
            now = env.now
            due = []
            while dl and dl[0][0] <= now:
                due.append(dl.popleft())
            while late and late[0][0] <= now:
                due.append(heapq.heappop(late))
            due.sort(key=_DEADLINE_ORDER)   # as a heap of the tuples would pop them
            for deadline, _cid, reqno, conn in due:
                if conn.reqno == reqno and conn.file >= 0 and not conn.closed:
                    if timeout_window[0] <= deadline < timeout_window[1]:
                        self.timeout_at.append(deadline)
                    self._close(conn)
            if self.t0 <= now < self.t1:
                self.open_samples.append(self.server.open_conns)
                self.open_sampled_at.append(now)
