"""Fixtures for the live-server tests: a small document root and servers run as subprocesses."""
from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHS = ("sped", "symped", "blocking", "threaded", "green", "pipeline")
# small settings so the tests are quick; --max-conns for the burst test
ARCH_ARGS = {
    "sped": ["--max-conns", "8"],
    "symped": ["--processes", "2", "--max-conns", "8"],
    "blocking": ["--processes", "4", "--max-conns", "8"],
    "threaded": ["--threads", "8"],
    "green": ["--max-conns", "8"],
    "pipeline": ["--writers", "3", "--max-conns", "8"],
}
SECRET = b"outside the document root\n"


@pytest.fixture(scope="session")
def docroot(tmp_path_factory):
    """A few hundred files of varied sizes (two over 1 MB), a symlink out of the root,
    and a secret file beside the root. Returns (root, {relpath: bytes}); the root also
    holds huge.bin, bigger than socket buffers can absorb."""
    base = tmp_path_factory.mktemp("www")
    root = base / "root"
    root.mkdir()
    (base / "secret.txt").write_bytes(SECRET)
    rng = random.Random(20070321)
    files: dict[str, bytes] = {}
    sizes = [0, 1, 102, 1000, 4096, 10_000, 65_537, 200_000] + [rng.randrange(50, 40_000) for _ in range(290)]
    sizes += [1_300_000, 2_500_000]
    for i, size in enumerate(sizes):
        rel = f"dir{i % 7}/file{i}.{'html' if i % 3 else 'bin'}"
        data = rng.randbytes(size)
        (root / rel).parent.mkdir(exist_ok=True)
        (root / rel).write_bytes(data)
        files[rel] = data
    # larger than the most a socket can buffer on the way (send buffer ceiling, twice over):
    # a reader that stops must leave the server with bytes it cannot send. Not in `files`.
    with open("/proc/sys/net/ipv4/tcp_wmem") as f:
        wmem_max = int(f.read().split()[2])
    (root / "huge.bin").write_bytes(b"h" * (2 * wmem_max + (4 << 20)))
    (root / "small.txt").write_bytes(b"hello\n")
    files["small.txt"] = b"hello\n"
    os.symlink(base / "secret.txt", root / "escape.txt")
    os.symlink(base, root / "updir")
    return str(root), files


class Server:
    def __init__(self, proc: subprocess.Popen, port: int, pid: int):
        self.proc, self.port, self.pid = proc, port, pid

    def pids(self) -> list[int]:
        """The server process and its worker processes."""
        out = [self.pid]
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
                out += [int(x) for x in f.read().split()]
        except OSError:
            pass
        return out

    def fds(self) -> dict[str, int]:
        """Open descriptors of all its processes: sockets, regular files, other."""
        n = {"socket": 0, "file": 0, "other": 0, "files": []}
        for pid in self.pids():
            d = f"/proc/{pid}/fd"
            for fd in os.listdir(d):
                try:
                    target = os.readlink(f"{d}/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:"):
                    n["socket"] += 1
                elif target.startswith("/"):
                    n["file"] += 1
                    n["files"].append(target)
                else:
                    n["other"] += 1
        return n

    def alive(self) -> bool:
        return self.proc.poll() is None


def start_server(arch: str, root: str, *extra: str) -> Server:
    cmd = [sys.executable, "-m", "sim.cli", "serve", arch, "--root", root, "--port", "0", *extra]
    proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 15
    line = b""
    while time.monotonic() < deadline and not line.endswith(b"\n"):
        r, _, _ = select.select([proc.stdout], [], [], 0.2)
        if r:
            ch = os.read(proc.stdout.fileno(), 1)
            if not ch:
                break
            line += ch
    if not line.startswith(b"listening on "):
        proc.kill()
        err = proc.stderr.read()
        stop_server(proc)
        raise RuntimeError(f"{arch} did not start: {line!r} {err!r}")
    words = line.decode().split()
    port = int(words[2].rsplit(":", 1)[1])
    return Server(proc, port, int(words[4]))


def stop_server(proc: subprocess.Popen) -> int:
    """SIGTERM, then SIGKILL (workers too) if it has not stopped within 8 s."""
    if proc.poll() is None:
        workers = Server(proc, 0, proc.pid).pids()[1:]
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(8)
        except subprocess.TimeoutExpired:
            for pid in workers:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.kill()
            proc.wait()
    for f in (proc.stdout, proc.stderr):
        if f:
            f.close()
    return proc.returncode


def read_response(rfile, head_only: bool = False):
    """Read one response from `rfile` (sock.makefile("rb")): (status, {name: value}, body).
    Raises EOFError on a connection closed before a complete response."""
    line = rfile.readline(65536)
    if not line:
        raise EOFError("closed before a response")
    status = int(line.split()[1])
    headers = {}
    while True:
        line = rfile.readline(65536)
        if not line:
            raise EOFError("closed in the header")
        if line in (b"\r\n", b"\n"):
            break
        k, _, v = line.partition(b":")
        headers[k.strip().lower().decode()] = v.strip().decode()
    n = 0 if head_only else int(headers.get("content-length", 0))
    body = rfile.read(n)
    if len(body) < n:
        raise EOFError("closed in the body")
    return status, headers, body


def get(port: int, path: str, extra: bytes = b"", timeout: float = 10.0):
    """One request on a new connection: (status, headers, body)."""
    import socket
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as c:
        c.sendall(b"GET %s HTTP/1.1\r\nHost: t\r\n%sConnection: close\r\n\r\n" % (path.encode(), extra))
        return read_response(c.makefile("rb"))


def settle_fds(server: "Server", want_sockets: int, timeout: float = 4.0) -> dict:
    """Descriptor counts once the sockets are back to `want_sockets` and no count moved for 0.2 s
    (or the timeout passed). A forked worker that has not yet made its epoll descriptor when the
    first reply comes back would otherwise look like a leak later (seen once on a loaded machine)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        n = server.fds()
        key = (n["socket"], n["file"], n["other"])
        if (n["socket"] == want_sockets and key == last) or time.monotonic() > deadline:
            return n
        last = key if n["socket"] == want_sockets else None
        time.sleep(0.2 if last else 0.05)


@pytest.fixture
def server_factory():
    """start(arch, root, *flags) -> Server; every server started is stopped at the end."""
    started: list[Server] = []

    def start(arch, root, *extra):
        s = start_server(arch, root, *extra)
        started.append(s)
        return s

    yield start
    for s in started:
        stop_server(s.proc)
