"""Small measurements for the costs and hardware the traces cannot give.

- `ctx_switch`: two processes pinned to one core pass a byte back and forth
  through pipes; each round trip is two kernel context switches (plus the pipe
  calls, which makes it an upper bound).
- `handoff`: two Python threads pass an item back and forth through queues:
  a hand-over between threads of one CPython process (lock, wake-up, the
  interpreter lock changing hands).
- `wakeup`: a thread on one core blocks in `recv` and is woken by a sender on
  another core a thousand times a second, so that its core is idle between
  messages; its CPU per wake-up over the same `recv` finding the data already
  there (the kernel's sleep, the wake-up from idle, the switch back to it).
- `disk`: O_DIRECT reads of a file on the disk under test (no page cache):
  random 4 KB reads give the positioning time, 1 MB sequential reads the bandwidth.
  Under a blkio throttle over a fast (host-cached) disk this is not a positioning
  time: it is the throttle's mean spacing of reads, the first ones of which pass
  at once. `throttle` measures what the throttle does instead.
- `throttle`: the latency of each O_DIRECT read issued back to back after an idle
  second, 4 KB reads then 1 MB ones: the device's own read time (the reads the
  throttle passes at once), how many reads pass per slice and how long a slice
  is, and the sustained rates of reads and bytes.
Each returns the median of a few batches: the machine may be shared.
"""
from __future__ import annotations

import contextlib
import mmap
import os
import queue
import signal
import statistics
import struct
import threading
import time


def ctx_switch_s(rounds: int = 4000, core: int = 0, batches: int = 3) -> float:
    """Seconds per kernel context switch between two processes on `core` (pipe ping-pong)."""
    results = []
    for _ in range(batches):
        a_r, a_w = os.pipe()
        b_r, b_w = os.pipe()
        pid = os.fork()
        if pid == 0:                                   # child: echo every byte back, then exit
            try:
                os.sched_setaffinity(0, {core})
                os.close(a_w)
                os.close(b_r)
                for _ in range(rounds):
                    os.read(a_r, 1)
                    os.write(b_w, b"x")
            finally:
                os._exit(0)
        os.close(a_r)
        os.close(b_w)
        old = os.sched_getaffinity(0)
        try:
            os.sched_setaffinity(0, {core})
            t0 = time.perf_counter()
            for _ in range(rounds):
                os.write(a_w, b"x")
                os.read(b_r, 1)
            results.append((time.perf_counter() - t0) / (2 * rounds))
        finally:
            os.sched_setaffinity(0, old)
            os.close(a_w)
            os.close(b_r)
            os.waitpid(pid, 0)
    return statistics.median(results)


def handoff_s(rounds: int = 3000, batches: int = 3) -> float:
    """Seconds per hand-over between two threads of this Python process (queue ping-pong)."""
    results = []
    for _ in range(batches):
        q1, q2 = queue.SimpleQueue(), queue.SimpleQueue()

        def echo():
            for _ in range(rounds):
                q2.put(q1.get())

        t = threading.Thread(target=echo, daemon=True)
        t.start()
        t0 = time.perf_counter()
        for i in range(rounds):
            q1.put(i)
            q2.get()
        results.append((time.perf_counter() - t0) / (2 * rounds))
        t.join(timeout=5)
    return statistics.median(results)


def _voluntary_switches() -> int:
    with open("/proc/thread-self/status") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    return 0


def _recv_cpu(sock, n: int) -> tuple[float, int]:
    """This thread's CPU seconds and voluntary switches over `n` one-byte receives."""
    v0, c0 = _voluntary_switches(), time.thread_time()
    for _ in range(n):
        sock.recv(1)
    return time.thread_time() - c0, _voluntary_switches() - v0


def wakeup_s(rounds: int = 1500, rate: float = 1000.0, core: int = 0, sender_core: int = 1,
             batches: int = 3) -> float:
    """CPU seconds a thread pays per wake-up from an idle core (see the module's docstring).

    The sender paces itself by spinning on its own core (bounded: `rounds` messages at `rate`),
    so the receiver's core is left idle between messages. Per batch: (CPU per message when
    each receive sleeps - CPU per message when none does) / voluntary switches per message."""
    import socket
    results = []
    old = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {core})
        for _ in range(batches):
            a, b = socket.socketpair()
            try:
                a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
                # a blocking receive that gives up after 5 s (the kernel's timeout, so the sleep
                # measured is recv's own): a sender that died cannot hang the probe
                a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 5, 0))
                b.sendall(b"x" * rounds)                 # the baseline: every receive finds its byte
                base, _ = _recv_cpu(a, rounds)
                pid = os.fork()
                if pid == 0:                             # the sender: `rounds` bytes at `rate`, then exit
                    try:
                        with contextlib.suppress(OSError):       # no such core: unpinned
                            os.sched_setaffinity(0, {sender_core})
                        t0 = time.perf_counter()
                        for i in range(rounds):
                            due = t0 + (i + 1) / rate
                            while time.perf_counter() < due:
                                pass
                            b.send(b"x")
                    finally:
                        os._exit(0)
                try:
                    cpu, woken = _recv_cpu(a, rounds)
                except OSError as e:                     # the timeout: the sender stopped early
                    raise RuntimeError(f"wake-up probe: the sender stopped sending ({e})") from None
                finally:
                    if os.waitpid(pid, os.WNOHANG) == (0, 0):   # still running (it stopped us early): end it
                        os.kill(pid, signal.SIGKILL)
                        os.waitpid(pid, 0)
            finally:
                a.close()
                b.close()
            if woken >= rounds // 4:                     # the core was not idle enough to tell
                results.append(max(0.0, cpu - base) / woken)
    finally:
        os.sched_setaffinity(0, old)
    if not results:
        raise RuntimeError("wake-up probe: the receiving thread hardly ever slept (is the sender's core free?)")
    return statistics.median(results)


BLOCK = 1 << 20


@contextlib.contextmanager
def _scratch(path_dir: str, name: str, size_mb: int):
    """A scratch file of `size_mb` in `path_dir`, written and synced, open with O_DIRECT (removed
    afterwards): yields its descriptor and a page-aligned 1 MB buffer, as O_DIRECT needs."""
    path = os.path.join(path_dir, f".{name}-{os.getpid()}")
    buf = mmap.mmap(-1, BLOCK)
    buf.write(os.urandom(4096) * (BLOCK // 4096))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for _ in range(size_mb):
                os.write(fd, buf)
            os.fsync(fd)
        finally:
            os.close(fd)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        try:
            yield fd, buf
        finally:
            os.close(fd)
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass


def disk(path_dir: str, size_mb: int = 128, random_reads: int = 200, seq_mb: int = 64, seed: int = 1) -> dict:
    """Positioning time (ms) and bandwidth (MB/s) of the disk holding `path_dir`, with O_DIRECT reads.

    Writes a scratch file of `size_mb` there (removed afterwards)."""
    import random
    with _scratch(path_dir, "disk-probe", size_mb) as (fd, buf):
        rng = random.Random(seed)
        small = mmap.mmap(-1, 4096)
        t0 = time.perf_counter()
        for _ in range(random_reads):
            off = rng.randrange(size_mb * 256) * 4096
            os.preadv(fd, [small], off)
        rand_s = (time.perf_counter() - t0) / random_reads
        t0 = time.perf_counter()
        n = min(seq_mb, size_mb)
        for i in range(n):
            os.preadv(fd, [buf], i * BLOCK)
        seq_s = time.perf_counter() - t0
    mb_s = n / seq_s if seq_s > 0 else 1e5
    # a random 4 KB read is positioning plus 4 KB of transfer
    seek_ms = max(0.0, rand_s - 4096 / (mb_s * 1e6)) * 1e3
    return {"disk_seek_ms": seek_ms, "disk_mb_s": mb_s}


def throttle_slices(latencies_s: list[float], fast_factor: float = 4.0) -> dict:
    """What a slice-based rate limit does to reads issued one at a time, from their latencies.

    blk-throttle allows a slice's worth of reads and bytes (its limits times the slice, 100 ms
    on a rotational queue) and holds a read beyond that until the next slice: so reads pass in
    runs at the device's own speed, each run ended by one read that waited. Returns the device's
    time per read (the median of the fast reads), the reads per slice (the median run, the
    waiting read included), the slice (the median time from one waiting read's end to the next's) and the sustained
    reads per second (reads over time from the first wait to the last). A read waited if it took
    over `fast_factor` x the median fast read and over 1/`fast_factor` of the longest wait (a
    device's slow first reads after idle are not waits)."""
    if len(latencies_s) < 4:
        raise ValueError("need at least four reads")
    lo = sorted(latencies_s)[:max(1, len(latencies_s) // 2)]
    device = statistics.median(lo)
    limit = max(fast_factor * max(device, 1e-6), max(latencies_s) / fast_factor)
    waited = [i for i, t in enumerate(latencies_s) if t > limit]
    ends, acc = [], 0.0
    for t in latencies_s:
        acc += t
        ends.append(acc)
    out = {"device_s": statistics.median([t for i, t in enumerate(latencies_s) if i not in set(waited)] or lo),
           "first_run": waited[0] if waited else len(latencies_s), "per_slice": None, "slice_s": None,
           "reads_per_s": None}
    if len(waited) >= 2:
        out["per_slice"] = statistics.median(b - a for a, b in zip(waited, waited[1:]))
        out["slice_s"] = statistics.median(ends[b] - ends[a] for a, b in zip(waited, waited[1:]))
        out["reads_per_s"] = (waited[-1] - waited[0]) / (ends[waited[-1]] - ends[waited[0]])
    return out


def throttle(path_dir: str, size_mb: int = 64, small_reads: int = 100, large_reads: int = 24, idle_s: float = 1.0,
             seed: int = 1) -> dict:
    """What a read throttle on the disk holding `path_dir` does to reads issued one at a time (run it
    inside the throttled group): for 4 KB reads (held by the limit on reads) and 1 MB reads (held by
    the limit on bytes), after `idle_s` idle, `throttle_slices` of their latencies. Writes a scratch
    file of `size_mb` (removed afterwards)."""
    import random
    out = {}
    with _scratch(path_dir, "throttle-probe", size_mb) as (fd, buf):
        rng = random.Random(seed)
        small = mmap.mmap(-1, 4096)
        for name, n, target, span in (("4k", small_reads, small, 4096), ("1m", large_reads, buf, BLOCK)):
            time.sleep(idle_s)
            lat = []
            for _ in range(n):
                off = rng.randrange(size_mb * BLOCK // span) * span
                t0 = time.perf_counter()
                os.preadv(fd, [target], off)
                lat.append(time.perf_counter() - t0)
            r = throttle_slices(lat)
            out[f"throttle_{name}_device_ms"] = r["device_s"] * 1e3
            out[f"throttle_{name}_first_run"] = r["first_run"]
            out[f"throttle_{name}_per_slice"] = r["per_slice"]
            out[f"throttle_{name}_slice_ms"] = None if r["slice_s"] is None else r["slice_s"] * 1e3
            out[f"throttle_{name}_reads_per_s"] = r["reads_per_s"]
    r1 = out["throttle_1m_reads_per_s"]
    out["throttle_1m_mb_s"] = None if r1 is None else r1 * BLOCK / 1e6
    out["device_mb_s"] = BLOCK / 1e6 / (out["throttle_1m_device_ms"] / 1e3)
    return out
