"""The bad-input catalogue against every live architecture.

Each case must get the right status, serve nothing from outside the root, and
leave the server alive (it serves a normal request afterwards) without leaked
descriptors (counted in /proc/PID/fd of every server process).
"""
from __future__ import annotations

import os
import socket
import struct
import time

import pytest

from conftest import ARCH_ARGS, ARCHS, SECRET, get, read_response, settle_fds, start_server, stop_server

CACHE = 16
SHORT = ["--idle-timeout", "1", "--request-timeout", "1", "--cache-entries", str(CACHE)]

H = b"Host: t\r\n"
# (name, raw request, expected status, connection kept afterwards)
CASES = [
    ("garbage line", b"GARBAGE\r\n\r\n", 400, False),
    ("no version", b"GET /small.txt\r\n\r\n", 400, False),
    ("two spaces", b"GET  /small.txt HTTP/1.1\r\n" + H + b"\r\n", 400, False),
    ("header without colon", b"GET /small.txt HTTP/1.1\r\nHost t\r\n\r\n", 400, False),
    ("space in header name", b"GET /small.txt HTTP/1.1\r\nBad Name: x\r\n" + H + b"\r\n", 400, False),
    ("folded header", b"GET /small.txt HTTP/1.1\r\n" + H + b" folded\r\n\r\n", 400, False),
    ("HTTP/1.1 without Host", b"GET /small.txt HTTP/1.1\r\n\r\n", 400, False),
    ("two Host fields", b"GET /small.txt HTTP/1.1\r\n" + H + H + b"\r\n", 400, False),
    ("bad Content-Length", b"GET /small.txt HTTP/1.1\r\n" + H + b"Content-Length: x\r\n\r\n", 400, False),
    ("NUL in request line", b"GET /small.txt\x00 HTTP/1.1\r\n" + H + b"\r\n", 400, False),
    ("relative target", b"GET small.txt HTTP/1.1\r\n" + H + b"\r\n", 400, True),
    ("body refused", b"GET /small.txt HTTP/1.1\r\n" + H + b"Content-Length: 3\r\n\r\nabc", 413, False),
    ("chunked refused", b"GET /small.txt HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
     501, False),
    # traversal, in every encoding
    ("dot-dot", b"GET /../secret.txt HTTP/1.1\r\n" + H + b"\r\n", 403, True),
    ("dot-dot deep", b"GET /dir0/../../secret.txt HTTP/1.1\r\n" + H + b"\r\n", 403, True),
    ("dot-dot at end", b"GET /dir0/.. HTTP/1.1\r\n" + H + b"\r\n", 403, True),
    ("encoded dots", b"GET /%2e%2e/secret.txt HTTP/1.1\r\n" + H + b"\r\n", 403, True),
    ("encoded dots upper", b"GET /%2E%2E/secret.txt HTTP/1.1\r\n" + H + b"\r\n", 403, True),
    ("half-encoded dots", b"GET /.%2e/secret.txt HTTP/1.1\r\n" + H + b"\r\n", 403, True),
    ("double-encoded dots", b"GET /%252e%252e/secret.txt HTTP/1.1\r\n" + H + b"\r\n", 400, True),
    ("encoded slash", b"GET /..%2fsecret.txt HTTP/1.1\r\n" + H + b"\r\n", 400, True),
    ("encoded dots and slash", b"GET /%2e%2e%2fsecret.txt HTTP/1.1\r\n" + H + b"\r\n", 400, True),
    ("double-encoded slash", b"GET /..%252fsecret.txt HTTP/1.1\r\n" + H + b"\r\n", 400, True),
    ("encoded NUL", b"GET /small.txt%00.html HTTP/1.1\r\n" + H + b"\r\n", 400, True),
    ("backslash", b"GET /..\\secret.txt HTTP/1.1\r\n" + H + b"\r\n", 400, True),
    ("encoded backslash", b"GET /%5c..%5csecret.txt HTTP/1.1\r\n" + H + b"\r\n", 400, True),
    ("bad escape", b"GET /%zz HTTP/1.1\r\n" + H + b"\r\n", 400, True),
    ("absolute URL escaping", b"GET http://t/../secret.txt HTTP/1.1\r\n" + H + b"\r\n", 403, True),
    ("absolute URL encoded", b"GET http://t/%2e%2e/secret.txt HTTP/1.1\r\n" + H + b"\r\n", 403, True),
    ("absolute URL inside", b"GET http://t/small.txt HTTP/1.1\r\n" + H + b"\r\n", 200, True),
    ("absolute path stays inside", b"GET //secret.txt HTTP/1.1\r\n" + H + b"\r\n", 404, True),
    ("system path stays inside", b"GET /etc/passwd HTTP/1.1\r\n" + H + b"\r\n", 404, True),
    ("symlink out of root", b"GET /escape.txt HTTP/1.1\r\n" + H + b"\r\n", 403, True),
    ("symlinked directory out", b"GET /updir/secret.txt HTTP/1.1\r\n" + H + b"\r\n", 403, True),
    ("query ignored", b"GET /small.txt?../../secret.txt HTTP/1.1\r\n" + H + b"\r\n", 200, True),
    ("directory", b"GET /dir0/ HTTP/1.1\r\n" + H + b"\r\n", 404, True),
    ("missing", b"GET /nope.html HTTP/1.1\r\n" + H + b"\r\n", 404, True),
    # sizes
    ("request line too long", b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\n" + H + b"\r\n", 414, False),
    ("target too long", b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\n" + H + b"\r\n", 414, False),
    ("header section too large", b"GET /small.txt HTTP/1.1\r\n" + H + b"X-Big: " + b"b" * 20000 + b"\r\n\r\n",
     431, False),
    ("too many fields", b"GET /small.txt HTTP/1.1\r\n" + H + b"".join(b"X-%d: y\r\n" % i for i in range(150))
     + b"\r\n", 431, False),
    # methods and versions
    ("POST", b"POST /small.txt HTTP/1.1\r\n" + H + b"\r\n", 405, True),
    ("DELETE", b"DELETE /small.txt HTTP/1.1\r\n" + H + b"\r\n", 405, True),
    ("unknown method", b"BREW /small.txt HTTP/1.1\r\n" + H + b"\r\n", 501, True),
    ("HTTP/2.0", b"GET /small.txt HTTP/2.0\r\n" + H + b"\r\n", 505, False),
    ("HTTP/1.2", b"GET /small.txt HTTP/1.2\r\n" + H + b"\r\n", 505, False),
    ("HTTP/0.9", b"GET /small.txt HTTP/0.9\r\n\r\n", 505, False),
    ("bad version", b"GET /small.txt HTTPS/1.1\r\n" + H + b"\r\n", 400, False),
]


@pytest.fixture(scope="module", params=ARCHS)
def srv(request, docroot):
    root, _ = docroot
    server = start_server(request.param, root, *ARCH_ARGS[request.param], *SHORT)
    try:
        assert get(server.port, "/small.txt")[0] == 200
        n_listen = len(server.pids()) - 1 if request.param in ("symped", "blocking") else 1
        server.root = root
        server.base = settle_fds(server, n_listen)
        server.arch = request.param
        yield server
    finally:
        stop_server(server.proc)


def healthy(srv) -> None:
    assert srv.alive(), f"{srv.arch} died"
    status, _, body = get(srv.port, "/small.txt")
    assert (status, body) == (200, b"hello\n")


def test_catalogue(srv):
    failures = []
    for name, raw, want, kept in CASES:
        try:
            with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as c, c.makefile("rb") as f:
                c.sendall(raw)
                status, headers, body = read_response(f)
                if status != want:
                    failures.append(f"{name}: {status}, want {want}")
                    continue
                if SECRET in body:
                    failures.append(f"{name}: served the secret")
                if want == 405 and headers.get("allow") != "GET, HEAD":
                    failures.append(f"{name}: Allow {headers.get('allow')!r}")
                if kept:
                    c.sendall(b"GET /small.txt HTTP/1.1\r\n" + H + b"\r\n")
                    if read_response(f)[::2] != (200, b"hello\n"):
                        failures.append(f"{name}: connection not usable afterwards")
                else:
                    if headers.get("connection") != "close" or f.read(1) != b"":
                        failures.append(f"{name}: connection not closed")
        except (OSError, EOFError, ValueError) as e:
            failures.append(f"{name}: {type(e).__name__} {e}")
    assert not failures, f"{srv.arch}: " + "; ".join(failures)
    healthy(srv)


def test_reset_mid_sendfile(srv, docroot):
    _, files = docroot
    big = max(files, key=lambda p: len(files[p]))
    for _ in range(3):
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.settimeout(5)
        c.connect(("127.0.0.1", srv.port))
        c.sendall(b"GET /%s HTTP/1.1\r\n%s\r\n" % (big.encode(), H))
        got = c.recv(1024)
        assert got.startswith(b"HTTP/1.1 200")
        time.sleep(0.05)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()                      # a reset while the server is still sending
    healthy(srv)


def test_stalled_reader_blocks_nobody_and_is_cut_off(srv, docroot):
    root, _ = docroot
    size = os.path.getsize(os.path.join(root, "huge.bin"))
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.settimeout(5)
    stalled.connect(("127.0.0.1", srv.port))
    try:
        stalled.sendall(b"GET /huge.bin HTTP/1.1\r\n" + H + b"\r\n")
        time.sleep(0.2)                       # the server is now stuck on a full socket
        t0 = time.monotonic()
        assert get(srv.port, "/small.txt", timeout=3)[::2] == (200, b"hello\n")
        assert time.monotonic() - t0 < 1.0, f"{srv.arch}: a stalled reader held up another client"
        time.sleep(2.5)                       # past the idle timeout without progress
        got = 0
        try:
            while chunk := stalled.recv(1 << 20):
                got += len(chunk)
        except ConnectionResetError:
            pass
        assert got < size, f"{srv.arch}: the stalled reader was never cut off"
    finally:
        stalled.close()
    healthy(srv)


def test_slow_client_is_cut_off(srv):
    request = b"GET /small.txt HTTP/1.1\r\n" + H + b"X-Slow: " + b"z" * 20 + b"\r\n\r\n"
    c = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    t0 = time.monotonic()
    got = b""
    try:
        for i in range(len(request)):      # 40+ bytes, 0.1 s apart: never complete in 1 s
            c.send(request[i:i + 1])
            time.sleep(0.1)
            c.settimeout(0.001)
            try:
                chunk = c.recv(4096)
            except (BlockingIOError, socket.timeout):
                continue
            got += chunk
            if not chunk:
                break
    except (BrokenPipeError, ConnectionResetError):
        pass
    elapsed = time.monotonic() - t0
    try:
        c.settimeout(1.0)
        while got.count(b"\n") < 6 and (chunk := c.recv(4096)):
            got += chunk
    except OSError:
        pass
    c.close()
    assert elapsed < 3.5, f"{srv.arch}: trickling client kept for {elapsed:.1f} s"
    assert got.startswith(b"HTTP/1.1 408"), got[:40]
    # an idle keep-alive connection is closed after the idle timeout
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as c:
        t0 = time.monotonic()
        try:
            assert c.recv(10) == b""
        except ConnectionResetError:
            pass
        assert time.monotonic() - t0 < 3.0
    healthy(srv)


def test_burst_beyond_max_conns(srv):
    max_conns = 8
    socks = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(10 * max_conns)]
    try:
        time.sleep(0.3)
        held = srv.fds()["socket"] - srv.base["socket"]
        assert held <= max_conns, f"{srv.arch} holds {held} connections, limit {max_conns}"
        for c in socks:
            c.sendall(b"GET /small.txt HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
        ok = 0
        for c in socks:
            with c.makefile("rb") as f:
                try:
                    ok += read_response(f)[::2] == (200, b"hello\n")
                except (EOFError, OSError):
                    pass
        assert ok == len(socks), f"{srv.arch}: {ok} of {len(socks)} served"
    finally:
        for c in socks:
            c.close()
    healthy(srv)


def test_no_descriptor_leaked(srv):
    """Runs after the others for the same server: everything it opened is closed again."""
    n = settle_fds(srv, srv.base["socket"])
    base = srv.base
    assert (n["socket"], n["other"]) == (base["socket"], base["other"]), (base, n)
    outside = sorted(f for f in n["files"] if not f.startswith(srv.root + "/"))
    assert outside == sorted(f for f in base["files"] if not f.startswith(srv.root + "/"))
    assert len(n["files"]) - len(outside) <= CACHE * len(srv.pids())


def test_fast_parse_paths_agree_with_the_general_parser():
    """The fast paths (CRLF CRLF by find, a plain head by one regex, a plain target) give exactly
    what the general code gives, on a seeded mix of good and bad heads and of split buffers."""
    import random
    from real import http
    rng = random.Random(7)
    lines = [b"GET / HTTP/1.1", b"HEAD /a/b.txt HTTP/1.0", b"GET /a%2e%2e/x HTTP/1.1", b"PUT /x HTTP/1.1",
             b"GET /\x01 HTTP/1.1", b"GET /" + b"x" * 4100 + b" HTTP/1.1", b"GET /x HTTP/2.0", b"GET  / HTTP/1.1",
             b"GET /a?b HTTP/1.1\r", b"G\x00T / HTTP/1.1", b"GET /\xc3\xa9 HTTP/1.1"]
    fields = [b"Host: a", b"host:b ", b"Connection: close", b"Connection: keep-alive", b"X:\tv\t", b" folded",
              b"Content-Length: 0", b"Content-Length: 5", b"Transfer-Encoding: chunked", b"Bad Name: x",
              b"X: a\x01b", b"X: a\rb", b"NoColon", b"X:", b"X: \xff"]
    seen, fast_hits = set(), 0
    for _ in range(4000):
        head = rng.choice(lines) + b"".join(rng.choice((b"\r\n", b"\n")) + rng.choice(fields)
                                            for _ in range(rng.choice((0, 1, 2, 3, 101))))
        fast, general = _outcome(http.parse_head, head), _outcome(http._parse_head_general, head)
        assert fast == general, head
        seen.add(fast[:2])
        fast_hits += http._FAST_HEAD.match(head) is not None
    assert fast_hits > 200 and ("ok", b"GET") in seen and ("error", 400) in seen and ("error", 505) in seen and ("error", 431) in seen
    for target in (b"/a/b", b"/a//b/", b"/./a", b"/a/../b", b"/.x", b"/a.b/c-d_e~f", b"/a?x", b"/%61", b"/",
                   b"/a/.", b"/a\\b", b"/~u/-x"):
        assert _outcome(http.target_path, target) == _outcome(http._target_path_general, target), target
    pieces = [b"GET / HTTP/1.1", b"\r\n", b"\n", b"\r", b"Host: a", b"\r\n\r\n", b"\n\n", b"\n\r\n"]
    for _ in range(4000):
        buf = bytearray(b"".join(rng.choice(pieces) for _ in range(rng.randrange(1, 12))))
        m = http._HEAD_END.search(buf, 0, http.MAX_HEADER_BYTES + 4)
        assert http.head_end(buf) == (m.span() if m else None), bytes(buf)


def _outcome(fn, arg):
    from real.http import HttpError
    try:
        r = fn(arg)
        return ("ok", r.method, r.target, r.version, r.headers, r.keep_alive) if hasattr(r, "method") else ("ok", r)
    except HttpError as e:
        return ("error", e.status, e.close)
