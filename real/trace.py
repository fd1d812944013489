"""Cheap tracing of the operations of sim/operations.py in the live servers.

Switched on by `simrun serve ARCH --trace PREFIX`: each server process writes
PREFIX.<pid>.trace (one file per process; its threads are merged, each under
its `role`). The calibration code reads it with `read_trace(path)`.

What is recorded. Calls that belong to the server's loop (epoll_wait, poll,
select, accept, epoll_ctl, ult_switch) are all counted with their units. Calls
made for one connection (read, parse, open/stat, write, sendfile, close, handoff)
are recorded for a random CONN_SAMPLE of the connections only (`Recorder.pick`,
when a connection is created); the others run the untraced code, so most of the
requests pay nothing. The reader scales the sampled connections' counts and unit
sums by connections seen over connections picked, an unbiased estimate of the
whole (`Trace.conn_scale`). Counting every call cost tracing a tenth of a small
server's CPU: a few hundred nanoseconds per call, at five or six calls per
request of about 40 us (measured on a loopback connection, bench/trace_overhead.py
--method conn). For a pseudo-random sample of the recorded calls (probability
CPU_SAMPLE for the loop's calls, CONN_CPU_SAMPLE for a sampled connection's,
from a cycle of random gaps drawn with a fixed seed) the server
also takes the wall clock (time.perf_counter) and the calling thread's CPU clock
(time.thread_time, a system call) around the call. An untimed recorded call
costs one C-level `next()` on the sample cycle and one float appended to an
array of its thread (operation and units packed in one); a timed call appends
(code, wall, CPU). There is no context manager or closure on the hot path. Each
flush aggregates the records (in plain Python) per (role, operation, unit bucket,
scaled), where the bucket of a call with u units is u.bit_length() (0 for u = 0,
1 for 1, 2 for 2-3, 3 for 4-7, ...): count and sums of units and units^2 over
the recorded calls, and over the timed calls their count, sums of units and
units^2, and sums of wall, wall^2, units*wall, CPU, CPU^2 and units*CPU.
Per-bucket sums let a fit of fixed + per-unit cost use the spread within
buckets too. `--trace-conns 1` records every connection (exact counts, as the
tests need).

Units are those of OPERATIONS: bytes for read/write/sendfile, descriptors in the
interest set for poll/select, ready events for epoll_wait, 1 for `call`
operations. A call that fails (EWOULDBLOCK, a reset) is recorded with 0 units,
so a failed accept is bucket 0. `ult_switch` is only counted (never sampled): a
gevent wait's own cost cannot be separated from the greenlets that run meanwhile;
its count is what the models need. The wall time of a call that blocks (a
waiting poll, a blocking recv or sendfile) includes the waiting; its CPU time
does not.

Also recorded: the process's user and system CPU (os.times() accounting, read
with resource.getrusage for microseconds) at start, at each flush and at the end,
so calibration can compare the traced sum with the whole process's CPU.

File format (UTF-8 text, tab-separated, written whole to a temporary file and
renamed, every FLUSH_EVERY seconds and at exit, so it is never half written):

    websim-trace<TAB>3
    meta<TAB>KEY<TAB>VALUE                    (pid, arch, cpu_sample, conn_sample, conns_seen,
                                              conns_picked, started, ...)
    times<TAB>WHEN<TAB>MONO<TAB>USER<TAB>SYSTEM   WHEN = start | last | end;
                                              MONO = time.monotonic(); USER, SYSTEM = getrusage
    op<TAB>ROLE<TAB>NAME<TAB>UNIT<TAB>BUCKET<TAB>COUNT<TAB>UNITS<TAB>UNITS2<TAB>WALL<TAB>WALL2<TAB>UNITS_WALL
      <TAB>CPU_COUNT<TAB>CPU_UNITS<TAB>CPU_UNITS2<TAB>CPU<TAB>CPU2<TAB>UNITS_CPU<TAB>SCALED

COUNT, UNITS and UNITS2 are over the recorded calls (as written; SCALED = 1 marks
the rows of sampled connections, which read_trace multiplies by conns_seen /
conns_picked); CPU_COUNT, CPU_UNITS and CPU_UNITS2 over the timed calls, and so
are WALL, WALL2 and UNITS_WALL in versions 2 and 3 (in version 1, which timed
the wall clock of every call, over all calls; versions 1 and 2 have no SCALED
column and recorded every call: read_trace reads all three, and
OpStats.mean_wall divides by the right count). meta wall_bias and
cpu_bias: what tracing itself adds to each sampled call's wall and CPU seconds,
measured at start (see measure_bias); subtract them, as Trace.cost() does. Seconds for times; counts as integers, sums as floats written with repr (exact
round trip). Roles: `loop` (event-loop processes), `conn` (threaded), `green`,
and the pipeline's stages `accept`, `read`, `wselect`, `writer`.
"""
from __future__ import annotations

import itertools
import os
import random
import resource
import threading
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field

from sim.operations import OPERATION_NAMES, OPERATIONS

FORMAT_VERSION = 3
CPU_SAMPLE = 0.0625         # timed share of the calls a recorder records
CONN_SAMPLE = 0.125         # share of the connections whose calls are recorded at all
CONN_CPU_SAMPLE = 0.25      # timed share of a sampled connection's calls (1/32 of all connections' calls)
FLUSH_EVERY = 2.0
# Sampling flags, drawn once per probability and repeated: a prime count, so that no periodic
# pattern of calls aliases with it.
_CYCLE = 4093

_perf = time.perf_counter
_tcpu = time.thread_time

# A record packs the operation and its units into one float, code = index * 2**40 + units (exact
# for units below 2**40): `OP[name] + units`.
_SHIFT = float(2 ** 40)
OP: dict[str, float] = {name: i * _SHIFT for i, name in enumerate(OPERATION_NAMES)}

_FIELDS = ("count", "units", "units2", "wall", "wall2", "units_wall",
           "cpu_count", "cpu_units", "cpu_units2", "cpu", "cpu2", "units_cpu")


_FLAGS: dict[float, object] = {}


def _flags(p: float):
    """The `__next__` of a repeating cycle of _CYCLE random flags, true with probability p: gaps
    uniform on 1..2/p-1 (mean 1/p), random so that no periodic pattern of calls can alias with
    the sampling; a prime cycle length, for the same reason. One cycle per probability, shared by
    all of a process's recorders: next() on it is atomic under the interpreter lock, and the
    threaded server starts 2,000 threads (a cycle of its own cost each 32-64 KB)."""
    nxt = _FLAGS.get(p)
    if nxt is None:
        flags = [False] * _CYCLE
        if p >= 1.0:
            flags = [True] * _CYCLE
        elif p > 0:
            rand = random.Random(round(p * 1e9)).random
            gap = max(1.0, 2.0 / p - 1.0)
            i = int(rand() * gap)
            while i < _CYCLE:
                flags[i] = True
                i += 1 + int(rand() * gap)
        nxt = _FLAGS.setdefault(p, itertools.cycle(flags).__next__)
    return nxt


class Recorder:
    """Per-thread raw records, aggregated (vectorised) at each flush.

    The hot path, written out at each call site (a method call would cost as
    much as the recording)::

        t = rec.begin() if rec.sample() else 0.0
        <call>
        if t: rec.sampled(OP[name] + units, t)
        else: rec.n(OP[name] + units)

    `sample` is the `__next__` of an itertools.cycle of flags (C code, no clock
    read); `begin()` reads the thread's CPU clock into `c0` and returns the wall
    clock (traced calls never nest within a thread). `then()` ends one call and
    starts the next in one clock reading, sampled alike. Only the owning thread
    appends; the flusher takes whole records from the front, so no lock is needed.
    """

    __slots__ = ("role", "calls", "samples", "n", "s", "sample", "c0", "scaled", "conn", "_pick", "seen",
                 "picked")

    def __init__(self, role: str, p: float, scaled: bool = False, conn_p: float = 1.0):
        """p: the timed share of its calls; conn_p: the share of the connections that `pick` samples."""
        self.role = role
        self.scaled = scaled        # records only the sampled connections' calls (see pick())
        self.conn = self            # the recorder of this thread's sampled connections
        self._pick = _flags(conn_p) if conn_p < 1.0 else None
        self.seen = self.picked = 0
        self.calls = array("d")     # code + units of each unsampled call
        self.samples = array("d")   # code + units, wall seconds, CPU seconds of each sampled call
        self.n = self.calls.append
        self.s = self.samples.append
        self.sample = _flags(p)
        self.c0 = 0.0

    def pick(self) -> "Recorder | None":
        """The recorder for a new connection: `conn` if the connection is sampled, else None (its
        calls then take the untraced path). Counted, so that the reader can scale the sampled
        connections' sums up to all connections (meta conns_seen / conns_picked)."""
        self.seen += 1
        if self._pick is None or self._pick():
            self.picked += 1
            return self.conn
        return None

    def begin(self) -> float:
        """Start a sampled call: CPU clock into c0, returns the wall clock."""
        self.c0 = _tcpu()
        return _perf()

    def start(self) -> float:
        """The wall clock if this call is sampled (its start taken), else 0.0."""
        return self.begin() if self.sample() else 0.0

    def sampled(self, code: float, t: float) -> None:
        """End a sampled call started at t."""
        w = _perf() - t
        c = _tcpu() - self.c0
        s = self.s
        s(code)
        s(w)
        s(c)

    def add(self, code: float, t: float) -> None:
        """End the call started by start(), with code = OP[name] + units."""
        if t:
            self.sampled(code, t)
        else:
            self.n(code)

    def then(self, code: float, t: float) -> float:
        """add() for the call that just ended, and the start of the next, sampled alike."""
        if not t:
            self.n(code)
            return 0.0
        now = _perf()
        c = _tcpu()
        s = self.s
        s(code)
        s(now - t)
        s(c - self.c0)
        self.c0 = c
        return now

    def count(self, code: float) -> None:
        """Count a call whose own cost cannot be timed apart (ult_switch)."""
        self.n(code)

    def take(self) -> tuple[array, array]:
        """The complete records so far, removed from the buffers (called by the flusher)."""
        out = []
        for buf, size in ((self.calls, 1), (self.samples, 3)):
            end = len(buf) // size * size
            chunk = buf[:end]
            del buf[:end]
            out.append(chunk)
        return out[0], out[1]


def _aggregate(calls: array, samples: array, into: dict, role: str, scaled: bool = False) -> None:
    """Add untimed (code + units) and timed (code + units, wall, CPU) records to
    into[(role, op, bucket, scaled)] (the 12 sums of _FIELDS). Plain Python, no numpy: the
    servers do not import it (its import would add tens of MB and, with its BLAS pool, a
    thread to a one-thread server). Identical codes are counted first, in C."""
    def slot(code: float) -> tuple[list, float]:
        op = int(code // _SHIFT)
        u = code - op * _SHIFT
        name = (role, OPERATION_NAMES[op], int(u).bit_length(), scaled)
        acc = into.get(name)
        if acc is None:
            acc = into[name] = [0.0] * 12
        return acc, u

    for code, n in Counter(calls).items():
        acc, u = slot(code)
        acc[0] += n
        acc[1] += n * u
        acc[2] += n * u * u
    it = iter(samples)
    for code, w, c in zip(it, it, it):
        acc, u = slot(code)
        uu = u * u
        for i, v in enumerate((1, u, uu, w, w * w, u * w, 1, u, uu, c, c * c, u * c)):   # as _FIELDS
            acc[i] += v


def measure_bias(n: int = 2000) -> tuple[float, float]:
    """Mean wall and CPU seconds that tracing itself adds to one sampled call: the median of
    five batches of empty calls, all sampled, traced as the servers trace theirs. A sampled
    CPU interval contains about one thread_time() system call, comparable to a cheap traced
    call, so calibration should subtract these (meta wall_bias and cpu_bias)."""
    walls, cpus = [], []
    code = OP["parse"] + 1
    for _ in range(5):
        rec = Recorder("bias", 1.0)
        for _ in range(n // 5):
            t = rec.begin() if rec.sample() else 0.0
            if t:
                rec.sampled(code, t)
            else:
                rec.n(code)
        w = rec.samples[1::3]
        c = rec.samples[2::3]
        walls.append(sum(w) / len(w))
        cpus.append(sum(c) / len(c))
    return sorted(walls)[2], sorted(cpus)[2]


class Tracer:
    """One trace file per process; hands out per-thread Recorders and flushes them all."""

    def __init__(self, prefix: str, arch: str, flush_every: float = FLUSH_EVERY,
                 cpu_sample: float = CPU_SAMPLE, background: bool = True, conn_sample: float = CONN_SAMPLE,
                 conn_cpu_sample: float = CONN_CPU_SAMPLE):
        self.pid = os.getpid()
        self.path = f"{prefix}.{self.pid}.trace"
        self.arch = arch
        self.cpu_sample = cpu_sample
        self.conn_sample = conn_sample
        self.conn_cpu_sample = conn_cpu_sample if conn_sample < 1.0 else cpu_sample
        self.recorders: list[Recorder] = []
        self.totals: dict[tuple[str, str, int, bool], list] = {}
        self.lock = threading.Lock()
        self.started = time.time()
        self.wall_bias, self.cpu_bias = measure_bias()
        self.t_start = self._times()
        self.flush_every = flush_every
        self.next_flush = time.monotonic() + flush_every
        self.closed = False
        self._stop = threading.Event()
        self._thread = None
        d = os.path.dirname(self.path)
        if d:
            os.makedirs(d, exist_ok=True)
        self.flush()
        if background:
            self._thread = threading.Thread(target=self._flusher, name="trace-flush", daemon=True)
            self._thread.start()

    @staticmethod
    def _times() -> tuple[float, float, float]:
        # getrusage: the accounting of os.times() at microsecond rather than 10 ms resolution
        t = resource.getrusage(resource.RUSAGE_SELF)
        return (time.monotonic(), t.ru_utime, t.ru_stime)

    def recorder(self, role: str = "main") -> Recorder:
        """A thread's recorder. With conn_sample < 1 it comes with `conn`, the recorder of the
        thread's sampled connections (scaled rows in the file), and `pick()` samples connections."""
        with self.lock:
            rec = Recorder(role, p=self.cpu_sample, conn_p=self.conn_sample)
            self.recorders.append(rec)
            if self.conn_sample < 1.0:
                rec.conn = Recorder(role, p=self.conn_cpu_sample, scaled=True)
                self.recorders.append(rec.conn)
        return rec

    def conns(self) -> tuple[int, int]:
        """Connections seen and picked (sampled) so far, over all recorders."""
        recs = list(self.recorders)
        return sum(r.seen for r in recs), sum(r.picked for r in recs)

    def _flusher(self) -> None:
        while not self._stop.wait(self.flush_every):
            try:
                self.flush()
            except OSError:
                pass

    def maybe_flush(self, now: float) -> None:
        """For single-threaded loops that run without the background flusher."""
        if now >= self.next_flush:
            self.next_flush = now + self.flush_every
            self.flush()

    def _merged(self) -> dict[tuple[str, str, int, bool], list]:
        """Fold the records taken since the last flush into the running totals."""
        with self.lock:
            by_role: dict[tuple[str, bool], tuple[array, array]] = {}
            for rec in self.recorders:      # one aggregation per role, not per thread (threaded has 2000)
                if rec.calls or len(rec.samples) > 2:
                    calls, samples = rec.take()
                    acc = by_role.get((rec.role, rec.scaled))
                    if acc is None:
                        acc = by_role[(rec.role, rec.scaled)] = (array("d"), array("d"))
                    acc[0].extend(calls)
                    acc[1].extend(samples)
            for (role, scaled), (calls, samples) in by_role.items():
                _aggregate(calls, samples, self.totals, role, scaled)
            return {k: list(v) for k, v in self.totals.items()}

    def flush(self, end: bool = False) -> None:
        lines = [f"websim-trace\t{FORMAT_VERSION}",
                 f"meta\tpid\t{self.pid}", f"meta\tarch\t{self.arch}",
                 f"meta\tcpu_sample\t{self.cpu_sample!r}", f"meta\tconn_sample\t{self.conn_sample!r}",
                 f"meta\tconn_cpu_sample\t{self.conn_cpu_sample!r}", f"meta\tstarted\t{self.started!r}",
                 f"meta\twall_bias\t{self.wall_bias!r}", f"meta\tcpu_bias\t{self.cpu_bias!r}",
                 "meta\twall_of\tsampled"]
        merged = self._merged()
        seen, picked = self.conns()       # read after the records they count were taken
        lines += [f"meta\tconns_seen\t{seen}", f"meta\tconns_picked\t{picked}"]
        lines.append("times\tstart\t" + "\t".join(repr(x) for x in self.t_start))
        lines.append(("times\tend\t" if end else "times\tlast\t") + "\t".join(repr(x) for x in self._times()))
        for (role, op, b, scaled), s in sorted(merged.items()):
            vals = [repr(int(x)) if i in (0, 6) else repr(x) for i, x in enumerate(s)]
            lines.append("\t".join(["op", role, op, OPERATIONS[op][0], str(b)] + vals + [str(int(scaled))]))
        tmp = f"{self.path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(tmp, self.path)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        self.flush(end=True)


@dataclass
class OpStats:
    """Aggregates of one (role, operation, bucket) of a trace, or a sum of several."""

    role: str
    op: str
    unit: str
    bucket: int
    count: int = 0
    units: float = 0
    units2: float = 0
    wall: float = 0.0
    wall2: float = 0.0
    units_wall: float = 0.0
    cpu_count: int = 0
    cpu_units: float = 0
    cpu_units2: float = 0
    cpu: float = 0.0
    cpu2: float = 0.0
    units_cpu: float = 0.0
    wall_sampled: bool = False    # wall sums over the sampled calls (format 2), not over all (1)
    scaled: bool = False          # from the sampled connections only; count and units scaled to all (format 3)

    @property
    def mean_wall(self) -> float:
        n = self.cpu_count if self.wall_sampled else self.count
        return self.wall / n if n else 0.0

    @property
    def mean_cpu(self) -> float:
        """CPU seconds per call, from the sampled calls."""
        return self.cpu / self.cpu_count if self.cpu_count else 0.0

    @property
    def mean_units(self) -> float:
        return self.units / self.count if self.count else 0.0


@dataclass
class Trace:
    path: str
    meta: dict[str, str] = field(default_factory=dict)
    times: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    ops: list[OpStats] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when the process wrote its final flush (exited cleanly)."""
        return "end" in self.times

    def process_cpu(self) -> float:
        """User + system CPU seconds of the process between start and the last flush."""
        a = self.times["start"]
        b = self.times.get("end") or self.times["last"]
        return (b[1] - a[1]) + (b[2] - a[2])

    def totals(self, by_role: bool = False) -> dict:
        """Buckets summed: {op: OpStats} (or {(role, op): OpStats} with by_role)."""
        out: dict = {}
        for s in self.ops:
            key = (s.role, s.op) if by_role else s.op
            acc = out.get(key)
            if acc is None:
                acc = out[key] = OpStats(s.role if by_role else "*", s.op, s.unit, -1,
                                         wall_sampled=s.wall_sampled)
            for f in _FIELDS:
                setattr(acc, f, getattr(acc, f) + getattr(s, f))
        return out

    @property
    def conn_scale(self) -> float:
        """Connections over sampled connections (1 when every connection was traced): the factor
        that read_trace applies to the count (rounded) and unit sums of the sampled connections' rows."""
        seen, picked = int(self.meta.get("conns_seen", 0)), int(self.meta.get("conns_picked", 0))
        return seen / picked if picked and seen != picked else 1

    @property
    def wall_bias(self) -> float:
        return float(self.meta.get("wall_bias", 0.0))

    @property
    def cpu_bias(self) -> float:
        return float(self.meta.get("cpu_bias", 0.0))

    def cost(self, s: OpStats) -> tuple[float, float]:
        """(wall, CPU) seconds per call of `s` with the tracing overhead taken off."""
        if s.op == "ult_switch":
            return 0.0, 0.0
        return max(0.0, s.mean_wall - self.wall_bias), max(0.0, s.mean_cpu - self.cpu_bias)

    def traced_cpu(self) -> float:
        """Estimated CPU seconds inside traced calls (bias-corrected sampled mean x count)."""
        return sum(self.cost(s)[1] * s.count for s in self.ops)


def read_trace(path: str) -> Trace:
    """Read one trace file; raises ValueError naming the file and line on a bad one."""
    tr = Trace(path)
    version = 0
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.rstrip("\n").split("\t")
            try:
                kind = parts[0]
                if lineno == 1:
                    if kind != "websim-trace" or parts[1] not in ("1", "2", "3"):
                        raise ValueError("not a websim trace of version 1, 2 or 3")
                    version = int(parts[1])
                elif kind == "meta":
                    tr.meta[parts[1]] = parts[2]
                elif kind == "times":
                    tr.times[parts[1]] = (float(parts[2]), float(parts[3]), float(parts[4]))
                elif kind == "op":
                    role, op, unit, bucket = parts[1], parts[2], parts[3], int(parts[4])
                    if op not in OPERATIONS:
                        raise ValueError(f"unknown operation {op!r}")
                    vals = parts[5:]
                    scaled = False
                    if version >= 3:
                        if vals[-1:] not in (["0"], ["1"]):
                            raise ValueError("no scaled flag")
                        scaled = vals.pop() == "1"
                    if len(vals) != len(_FIELDS):
                        raise ValueError("wrong number of fields")
                    nums = {f: (int(v) if f in ("count", "cpu_count") else float(v))
                            for f, v in zip(_FIELDS, vals)}
                    tr.ops.append(OpStats(role, op, unit, bucket, **nums, wall_sampled=version >= 2,
                                          scaled=scaled))
                elif kind:
                    raise ValueError(f"unknown record {kind!r}")
            except (IndexError, ValueError) as e:
                raise ValueError(f"{path}:{lineno}: bad trace line: {e}") from None
    if "start" not in tr.times:
        raise ValueError(f"{path}: no start times")
    scale = tr.conn_scale
    if scale != 1:
        for st in tr.ops:
            if st.scaled:       # sums over all calls of the sampled connections, up to all connections
                st.count, st.units, st.units2 = round(st.count * scale), st.units * scale, st.units2 * scale
    return tr
