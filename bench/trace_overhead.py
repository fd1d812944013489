"""How much does `--trace` cost? Reply rate of a live server with tracing off and on.

The server (default `sped`) runs pinned to core 0; a bounded closed loop of
keep-alive clients runs on core 1: CLIENTS connections driven by one Python epoll
loop (several httperf processes sharing one core starve each other, since httperf
spins), each sending its next request when the last reply is in, CALLS requests
per connection, REQUESTS replies per run, URIs drawn with a fixed seed from a
small generated file set (200 files, 102 B to 20 KB). Runs alternate off/on (the order flips every round) and the medians of
ROUNDS runs are compared. Also printed: the server's CPU per reply (from
/proc/PID/stat), which the load generator's own noise does not blur, and an
estimate that other load on the machine cannot move: traced calls per reply (from
the traces) times the CPU one traced call adds (timed here on core 1), over the
untraced CPU per reply.

    python bench/trace_overhead.py [--arch sped] [--rounds 3] [--clients 16] [--requests 30000] [--calls 50]
"""
from __future__ import annotations

import argparse
import os
import random
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

SIZES = (102, 500, 1024, 3000, 5120, 10240, 20000)


def make_files(d: str, seed: int = 2007) -> list[bytes]:
    """A small file set under d/root and a seeded sequence of URIs to fetch from it."""
    rng = random.Random(seed)
    root = os.path.join(d, "root")
    os.makedirs(root)
    for i in range(200):
        with open(os.path.join(root, f"f{i}.html"), "wb") as f:
            f.write(rng.randbytes(rng.choice(SIZES)))
    return [b"/f%d.html" % rng.randrange(200) for _ in range(20000)]


def start(arch: str, root: str, trace: str | None) -> tuple[subprocess.Popen, int, int]:
    cmd = ["taskset", "-c", "0", sys.executable, "-m", "sim.cli", "serve", arch, "--root", root, "--port", "0"]
    if trace:
        cmd += ["--trace", trace]
    proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    r, _, _ = select.select([proc.stdout], [], [], 15)
    line = proc.stdout.readline().decode() if r else ""
    m = re.match(r"listening on [\d.]+:(\d+) pid (\d+)", line)
    if not m:
        proc.kill()
        raise SystemExit(f"trace_overhead: server did not start: {line!r}")
    return proc, int(m.group(1)), int(m.group(2))


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(port: int, uris: list[bytes], clients: int, requests: int, calls: int,
         limit_s: float = 120.0) -> tuple[int, float, int]:
    """A closed loop of `clients` keep-alive connections (one epoll loop, this process):
    each sends its next request when the last reply is complete, and reconnects after
    `calls` requests, until `requests` replies are in or `limit_s` passed.
    Returns (replies, seconds, errors)."""
    ep = select.epoll()
    state: dict[int, list] = {}      # fd -> [socket, buffer, body bytes left or -1, calls done]
    next_uri = [0]
    sent = [0]

    def send_next(st) -> None:
        if sent[0] >= requests:
            return
        sent[0] += 1
        uri = uris[next_uri[0] % len(uris)]
        next_uri[0] += 1
        st[0].sendall(b"GET %s HTTP/1.1\r\nHost: bench\r\n\r\n" % uri)

    def connect() -> None:
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        st = [s, b"", -1, 0]
        state[s.fileno()] = st
        ep.register(s.fileno(), select.EPOLLIN)
        send_next(st)

    replies = errors = 0
    t0 = time.perf_counter()
    for _ in range(clients):
        connect()
    while replies < requests and time.perf_counter() - t0 < limit_s:
        for fd, _ in ep.poll(1.0):
            st = state[fd]
            data = st[0].recv(262144)
            if not data:
                errors += 1
                ep.unregister(fd)
                st[0].close()
                del state[fd]
                connect()
                continue
            buf = st[1] + data
            while True:
                if st[2] < 0:
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        break
                    head = buf[:end]
                    if not head.startswith(b"HTTP/1.1 200"):
                        errors += 1
                    i = head.lower().find(b"content-length:")
                    st[2] = int(head[i + 15:head.find(b"\r\n", i)])
                    buf = buf[end + 4:]
                if len(buf) < st[2]:
                    st[2] -= len(buf)
                    buf = b""
                    break
                buf = buf[st[2]:]
                st[2] = -1
                replies += 1
                st[3] += 1
                if st[3] >= calls:
                    ep.unregister(fd)
                    st[0].close()
                    del state[fd]
                    if sent[0] < requests:
                        connect()
                    break
                send_next(st)
            st[1] = buf
    secs = time.perf_counter() - t0
    for st in state.values():
        st[0].close()
    ep.close()
    return replies, secs, errors + (requests - replies)


def traced_call_cost(n: int = 200_000) -> float:
    """CPU seconds that tracing adds to one call (start + add, CPU sampled at the default rate)."""
    from real.trace import CPU_SAMPLE, OP, Recorder
    rec = Recorder("bench", 1, CPU_SAMPLE)
    op = OP["read"]
    best = float("inf")
    for _ in range(5):
        del rec.wall[:], rec.cpu[:]
        c0 = time.thread_time()
        for _ in range(n // 5):
            t = rec.start()
            rec.add(op, 100, t)
        best = min(best, (time.thread_time() - c0) / (n // 5))
    return best


def one_run(arch, root, uris, tracing, tmp, args) -> tuple[float, float, float]:
    """(reply rate, server CPU us per reply, traced calls per reply or 0)."""
    prefix = os.path.join(tmp, f"trace{time.monotonic_ns()}") if tracing else None
    proc, port, pid = start(arch, root, prefix)
    try:
        load(port, uris, 4, 400, 50)            # warm the caches
        c0 = cpu_seconds(pid)
        replies, secs, errors = load(port, uris, args.clients, args.requests, args.calls)
        c1 = cpu_seconds(pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    if errors:
        raise SystemExit(f"trace_overhead: {errors} errors in the load")
    calls = 0.0
    if tracing:
        from real.trace import read_trace
        d = os.path.dirname(prefix)
        for f in os.listdir(d):
            if f.startswith(os.path.basename(prefix)) and f.endswith(".trace"):
                calls += sum(s.count for s in read_trace(os.path.join(d, f)).ops if s.op != "ult_switch")
        calls /= replies + 400          # the warm-up's 400 replies are in the trace too
    return replies / secs, (c1 - c0) / replies * 1e6, calls


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="sped")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=16, help="concurrent connections")
    ap.add_argument("--requests", type=int, default=30000, help="replies per run")
    ap.add_argument("--calls", type=int, default=50, help="requests per connection")
    args = ap.parse_args(argv)
    if not shutil.which("taskset"):
        print("trace_overhead: needs taskset", file=sys.stderr)
        return 2
    if os.sched_getaffinity(0) != {1}:             # the load itself runs on core 1
        os.sched_setaffinity(0, {1})
    tmp = tempfile.mkdtemp(prefix="trace-overhead-")
    try:
        uris = make_files(tmp)
        root = os.path.join(tmp, "root")
        rate = {False: [], True: []}
        cpu = {False: [], True: []}
        calls: list[float] = []
        for i in range(args.rounds):
            for tracing in ((False, True) if i % 2 == 0 else (True, False)):
                r, c, n = one_run(args.arch, root, uris, tracing, tmp, args)
                rate[tracing].append(r)
                cpu[tracing].append(c)
                if tracing:
                    calls.append(n)
                print(f"round {i + 1} tracing {'on ' if tracing else 'off'}: {r:8.0f} replies/s, "
                      f"{c:6.1f} us CPU/reply", flush=True)
        off, on = statistics.median(rate[False]), statistics.median(rate[True])
        coff, con = statistics.median(cpu[False]), statistics.median(cpu[True])
        print(f"{args.arch}: median reply rate off {off:.0f}/s, on {on:.0f}/s, on/off = {on / off:.3f}; "
              f"CPU per reply off {coff:.1f} us, on {con:.1f} us, on/off = {con / coff:.3f}")
        per_call = traced_call_cost()
        n = statistics.median(calls)
        print(f"estimate: {n:.2f} traced calls per reply x {per_call * 1e9:.0f} ns each = "
              f"{n * per_call * 1e6:.2f} us per reply, {n * per_call * 1e6 / coff:.1%} of the untraced CPU per reply")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
