"""Cheap tracing of the operations of sim/operations.py in the live servers.

Switched on by `simrun serve ARCH --trace PREFIX`: each server process writes
PREFIX.<pid>.trace (one file per process; its threads are merged, each under
its `role`). The calibration code reads it with `read_trace(path)`.

What is recorded. Around each traced call the server takes the wall clock
(time.perf_counter) and, for a pseudo-random sample of calls (probability
CPU_SAMPLE, fixed seed per process), the calling thread's CPU clock
(time.thread_time: a system call, too dear to take on every call). Calls are
aggregated per (role, operation, unit bucket), where the bucket of a call with
`u` units is u.bit_length() (0 for u = 0, 1 for 1, 2 for 2-3, 3 for 4-7, ...):
count and sums of units, units^2, wall, wall^2, units*wall over all calls, and
the same for the CPU-sampled calls. Per-bucket sums let a fit of fixed + per-unit
cost use the within-bucket spread too. Units are those of OPERATIONS: bytes for
read/write/sendfile, descriptors in the interest set for poll/select, ready
events for epoll_wait; for `call` operations units are 1, except `accept` that
failed with EWOULDBLOCK (0) and `ult_switch` (1, with wall and CPU 0: a gevent
wait's own cost is not separable from the other greenlets that run meanwhile;
its count is what the models need). Wall time of a call that blocks (a waiting
poll, a blocking recv or sendfile) includes the waiting; CPU time does not.

Also recorded: the process's user and system CPU (os.times() accounting, read
with resource.getrusage for microseconds) at start, at each flush and at the end,
so calibration can compare the traced sum with the whole process's CPU.

File format (UTF-8 text, tab-separated, written whole to a temporary file and
renamed, every FLUSH_EVERY seconds and at exit, so it is never half written):

    websim-trace<TAB>1
    meta<TAB>KEY<TAB>VALUE                    (pid, arch, cpu_sample, started, ...)
    times<TAB>WHEN<TAB>MONO<TAB>USER<TAB>SYSTEM   WHEN = start | last | end;
                                              MONO = time.monotonic(); USER, SYSTEM = getrusage
    op<TAB>ROLE<TAB>NAME<TAB>UNIT<TAB>BUCKET<TAB>COUNT<TAB>UNITS<TAB>UNITS2<TAB>WALL<TAB>WALL2<TAB>UNITS_WALL
      <TAB>CPU_COUNT<TAB>CPU_UNITS<TAB>CPU_UNITS2<TAB>CPU<TAB>CPU2<TAB>UNITS_CPU

Seconds for times, floats written with repr (exact round trip).
"""
from __future__ import annotations

import os
import random
import resource
import threading
import time
from dataclasses import dataclass, field

from sim.operations import OPERATIONS

FORMAT_VERSION = 1
CPU_SAMPLE = 0.125
FLUSH_EVERY = 2.0

_perf = time.perf_counter
_tcpu = time.thread_time

# indexes of a statistics row
_N, _U, _U2, _W, _W2, _UW, _CN, _CU, _CU2, _C, _C2, _UC = range(12)
_FIELDS = ("count", "units", "units2", "wall", "wall2", "units_wall",
           "cpu_count", "cpu_units", "cpu_units2", "cpu", "cpu2", "units_cpu")


class Recorder:
    """Per-thread aggregation; only its own thread writes to it (no lock on the hot path).

    Use: `w0 = perf(); c0 = rec.cpu0(); <call>; rec.add(op, units, w0, c0)`.
    """

    __slots__ = ("role", "stats", "_rand", "_p")

    def __init__(self, role: str, seed: int, p: float):
        self.role = role
        self.stats: dict[str, dict[int, list]] = {op: {} for op in OPERATIONS}
        self._rand = random.Random(seed).random
        self._p = p

    def cpu0(self) -> float:
        """The thread CPU clock if this call is sampled, else -1."""
        if self._rand() < self._p:
            return _tcpu()
        return -1.0

    def add(self, op: str, units: int, w0: float, c0: float = -1.0) -> None:
        wall = _perf() - w0
        if c0 >= 0.0:
            cpu = _tcpu() - c0
        d = self.stats[op]
        b = units.bit_length()
        s = d.get(b)
        if s is None:
            s = d[b] = [0, 0, 0, 0.0, 0.0, 0.0, 0, 0, 0, 0.0, 0.0, 0.0]
        s[0] += 1
        s[1] += units
        s[2] += units * units
        s[3] += wall
        s[4] += wall * wall
        s[5] += units * wall
        if c0 >= 0.0:
            s[6] += 1
            s[7] += units
            s[8] += units * units
            s[9] += cpu
            s[10] += cpu * cpu
            s[11] += units * cpu

    def count(self, op: str, units: int = 1) -> None:
        """Count a call whose own cost cannot be timed apart (ult_switch)."""
        d = self.stats[op]
        b = units.bit_length()
        s = d.get(b)
        if s is None:
            s = d[b] = [0, 0, 0, 0.0, 0.0, 0.0, 0, 0, 0, 0.0, 0.0, 0.0]
        s[0] += 1
        s[1] += units
        s[2] += units * units


def perf() -> float:
    return _perf()


class Tracer:
    """One trace file per process; hands out per-thread Recorders and flushes them all."""

    def __init__(self, prefix: str, arch: str, flush_every: float = FLUSH_EVERY,
                 cpu_sample: float = CPU_SAMPLE, background: bool = True):
        self.pid = os.getpid()
        self.path = f"{prefix}.{self.pid}.trace"
        self.arch = arch
        self.cpu_sample = cpu_sample
        self.recorders: list[Recorder] = []
        self.lock = threading.Lock()
        self.started = time.time()
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
        with self.lock:
            rec = Recorder(role, seed=self.pid * 1000 + len(self.recorders), p=self.cpu_sample)
            self.recorders.append(rec)
        return rec

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

    def _merged(self) -> dict[tuple[str, str, int], list]:
        out: dict[tuple[str, str, int], list] = {}
        with self.lock:
            recs = list(self.recorders)
        for rec in recs:
            for op, buckets in rec.stats.items():
                for _ in range(5):     # another thread may add a bucket while we copy
                    try:
                        items = [(b, list(s)) for b, s in buckets.items()]
                        break
                    except RuntimeError:
                        continue
                else:
                    items = []
                for b, s in items:
                    key = (rec.role, op, b)
                    acc = out.get(key)
                    if acc is None:
                        out[key] = s
                    else:
                        for i in range(12):
                            acc[i] += s[i]
        return out

    def flush(self, end: bool = False) -> None:
        lines = [f"websim-trace\t{FORMAT_VERSION}",
                 f"meta\tpid\t{self.pid}", f"meta\tarch\t{self.arch}",
                 f"meta\tcpu_sample\t{self.cpu_sample!r}", f"meta\tstarted\t{self.started!r}"]
        lines.append("times\tstart\t" + "\t".join(repr(x) for x in self.t_start))
        lines.append(("times\tend\t" if end else "times\tlast\t") + "\t".join(repr(x) for x in self._times()))
        for (role, op, b), s in sorted(self._merged().items()):
            lines.append("\t".join(["op", role, op, OPERATIONS[op][0], str(b)] + [repr(x) for x in s]))
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

    @property
    def mean_wall(self) -> float:
        return self.wall / self.count if self.count else 0.0

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
                acc = out[key] = OpStats(s.role if by_role else "*", s.op, s.unit, -1)
            for f in _FIELDS:
                setattr(acc, f, getattr(acc, f) + getattr(s, f))
        return out

    def traced_cpu(self) -> float:
        """Estimated CPU seconds inside traced calls (sampled mean per call x count)."""
        return sum(s.mean_cpu * s.count for s in self.ops)


def read_trace(path: str) -> Trace:
    """Read one trace file; raises ValueError naming the file and line on a bad one."""
    tr = Trace(path)
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.rstrip("\n").split("\t")
            try:
                kind = parts[0]
                if lineno == 1:
                    if kind != "websim-trace" or int(parts[1]) != FORMAT_VERSION:
                        raise ValueError("not a websim trace of version 1")
                elif kind == "meta":
                    tr.meta[parts[1]] = parts[2]
                elif kind == "times":
                    tr.times[parts[1]] = (float(parts[2]), float(parts[3]), float(parts[4]))
                elif kind == "op":
                    role, op, unit, bucket = parts[1], parts[2], parts[3], int(parts[4])
                    if op not in OPERATIONS:
                        raise ValueError(f"unknown operation {op!r}")
                    vals = parts[5:]
                    if len(vals) != len(_FIELDS):
                        raise ValueError("wrong number of fields")
                    nums = {f: (int(v) if f in ("count", "cpu_count") else float(v))
                            for f, v in zip(_FIELDS, vals)}
                    tr.ops.append(OpStats(role, op, unit, bucket, **nums))
                elif kind:
                    raise ValueError(f"unknown record {kind!r}")
            except (IndexError, ValueError) as e:
                raise ValueError(f"{path}:{lineno}: bad trace line: {e}") from None
    if "start" not in tr.times:
        raise ValueError(f"{path}: no start times")
    return tr
