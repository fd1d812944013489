"""Small measurements for the costs and hardware the traces cannot give.

- `ctx_switch`: two processes pinned to one core pass a byte back and forth
  through pipes; each round trip is two kernel context switches (plus the pipe
  calls, which makes it an upper bound).
- `handoff`: two Python threads pass an item back and forth through queues:
  a hand-over between threads of one CPython process (lock, wake-up, the
  interpreter lock changing hands).
- `disk`: O_DIRECT reads of a file on the disk under test (no page cache):
  random 4 KB reads give the positioning time, 1 MB sequential reads the bandwidth.
Each returns the median of a few batches: the machine may be shared.
"""
from __future__ import annotations

import mmap
import os
import queue
import statistics
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


def disk(path_dir: str, size_mb: int = 128, random_reads: int = 200, seq_mb: int = 64, seed: int = 1) -> dict:
    """Positioning time (ms) and bandwidth (MB/s) of the disk holding `path_dir`, with O_DIRECT reads.

    Writes a scratch file of `size_mb` there (removed afterwards)."""
    import random
    path = os.path.join(path_dir, f".disk-probe-{os.getpid()}")
    block = 1 << 20
    buf = mmap.mmap(-1, block)                       # page-aligned, as O_DIRECT needs
    buf.write(os.urandom(4096) * (block // 4096))
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
                os.preadv(fd, [buf], i * block)
            seq_s = time.perf_counter() - t0
        finally:
            os.close(fd)
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass
    mb_s = n / seq_s if seq_s > 0 else 1e5
    # a random 4 KB read is positioning plus 4 KB of transfer
    seek_ms = max(0.0, rand_s - 4096 / (mb_s * 1e6)) * 1e3
    return {"disk_seek_ms": seek_ms, "disk_mb_s": mb_s}
