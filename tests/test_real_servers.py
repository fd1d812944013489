"""Every live architecture serves the file set byte for byte under concurrent keep-alive load,
keeps its descriptors bounded, and writes a readable trace."""
from __future__ import annotations

import hashlib
import os
import signal
import socket
import threading
import time

import pytest

from conftest import ARCHS, get, read_response, settle_fds, stop_server
from real.trace import read_trace
from sim.operations import OPERATIONS

CACHE = 40   # smaller than the file set: the descriptor cache evicts while serving


def fetch_all(port: int, paths: list[str], out: list, errors: list) -> None:
    """Fetch `paths` on one keep-alive connection, pipelining two at a time."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as c, c.makefile("rb") as f:
            for i in range(0, len(paths), 2):
                batch = paths[i:i + 2]
                c.sendall(b"".join(b"GET /%s HTTP/1.1\r\nHost: t\r\n\r\n" % p.encode() for p in batch))
                for p in batch:
                    status, headers, body = read_response(f)
                    if status != 200 or headers.get("connection") != "keep-alive":
                        errors.append(f"{p}: {status} {headers}")
                    out.append((p, hashlib.sha256(body).hexdigest()))
    except Exception as e:   # reported by the test
        errors.append(f"{type(e).__name__}: {e}")


# every architecture with its defaults, and the other readiness mechanisms where they apply
SETUPS = [(a, ()) for a in ARCHS] + [
    ("sped", ("--event", "poll")), ("sped", ("--event", "select", "--max-conns", "200", "--accept-limit", "1")),
    ("symped", ("--event", "select", "--processes", "3", "--max-conns", "300")), ("blocking", ("--event", "poll")),
    ("pipeline", ("--event", "select", "--max-conns", "200", "--writers", "1")), ("pipeline", ("--event", "poll")),
]


@pytest.mark.parametrize("arch,flags", SETUPS, ids=[" ".join((a,) + f) for a, f in SETUPS])
def test_serves_identical_bytes_under_concurrent_load(arch, flags, docroot, server_factory):
    root, files = docroot
    srv = server_factory(arch, root, "--cache-entries", str(CACHE), *flags)
    assert get(srv.port, "/small.txt")[0] == 200     # every lazily made descriptor exists now
    base = settle_fds(srv, 1 if arch not in ("symped", "blocking") else len(srv.pids()) - 1)
    paths = sorted(files)
    big = [p for p in paths if len(files[p]) > 1_000_000]
    clients = 6
    results: list[list] = [[] for _ in range(clients)]
    errors: list[str] = []
    threads = [threading.Thread(target=fetch_all,
                                args=(srv.port, paths[k::clients] + big, results[k], errors))
               for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:5]
    want = {p: hashlib.sha256(d).hexdigest() for p, d in files.items()}
    for k in range(clients):
        for p, h in results[k]:
            assert h == want[p], f"{arch}: {p} differs"
    assert sum(len(r) for r in results) == len(paths) + clients * len(big)
    # HEAD: same header, no body; HTTP/1.0 closes by default
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as c, c.makefile("rb") as f:
        c.sendall(b"HEAD /small.txt HTTP/1.1\r\nHost: t\r\n\r\nGET /small.txt HTTP/1.0\r\n\r\n")
        status, headers, body = read_response(f, head_only=True)
        assert (status, headers["content-length"], body) == (200, "6", b"")
        status, headers, body = read_response(f)
        assert (status, headers["connection"], body) == (200, "close", b"hello\n")
        assert f.read(10) == b""
    # descriptors: sockets back to where they were, cached files bounded and inside the root
    n = settle_fds(srv, base["socket"])
    assert n["socket"] == base["socket"] and n["other"] == base["other"], (base, n)
    inside = [f for f in n["files"] if f.startswith(root + "/")]
    assert len(inside) <= CACHE * len(srv.pids())
    assert sorted(f for f in n["files"] if not f.startswith(root + "/")) == \
        sorted(f for f in base["files"] if not f.startswith(root + "/"))
    assert stop_server(srv.proc) == 0


@pytest.mark.parametrize("arch", ["sped", "symped", "threaded", "green", "pipeline"])
def test_trace_records_the_operations(arch, docroot, server_factory, tmp_path):
    root, files = docroot
    prefix = str(tmp_path / "t")
    extra = ["--event", "poll"] if arch == "symped" else []
    srv = server_factory(arch, root, "--trace", prefix, "--trace-conns", "1", *extra)
    for p in ["small.txt", "dir0/file7.html", "dir0/file7.html", "nope"]:
        get(srv.port, "/" + p)
    if arch == "green":     # its trace flushes from a greenlet: the file is rewritten while it serves
        from real.trace import FLUSH_EVERY
        path = str(tmp_path / [f for f in os.listdir(tmp_path) if f.endswith(".trace")][0])
        first = read_trace(path).times["last"][0]
        deadline = time.monotonic() + 3 * FLUSH_EVERY
        while read_trace(path).times["last"][0] == first and time.monotonic() < deadline:
            time.sleep(0.1)
        assert read_trace(path).times["last"][0] > first
    assert stop_server(srv.proc) == 0
    traces = [read_trace(str(tmp_path / f)) for f in sorted(os.listdir(tmp_path)) if f.endswith(".trace")]
    assert traces and all(t.complete for t in traces)
    ops: dict = {}
    for t in traces:
        assert t.process_cpu() > 0
        for op, s in t.totals().items():
            assert op in OPERATIONS
            ops[op] = ops.get(op, 0) + s.count
    assert ops["accept"] >= 4 and ops["parse"] == 4 and ops["close"] >= 4
    # misses (small.txt, file7, the missing one) open; the second file7 hits unless another process got it
    assert ops.get("open", 0) + ops.get("stat", 0) == 4 and ops["open"] >= 3
    assert ops["read"] >= 4 and ops["write"] >= 4
    sendfile = sum(s.units for t in traces for s in t.ops if s.op == "sendfile")
    assert sendfile == len(files["small.txt"]) + 2 * len(files["dir0/file7.html"])
    wait = {"sped": "epoll_wait", "symped": "poll", "pipeline": "epoll_wait",
            "green": "ult_switch", "threaded": None}[arch]
    if wait:
        assert ops.get(wait, 0) > 0
    if arch == "pipeline":
        assert ops["handoff"] >= 8


@pytest.mark.parametrize("argv,fragment", [
    (["nosuch", "--root", "."], "invalid choice"),
    (["sped"], "--root"),
    (["sped", "--root", "/nonexistent/dir"], "not a directory"),
    (["sped", "--root", ".", "--port", "70000"], "0..65535"),
    (["sped", "--root", ".", "--max-conns", "0"], "at least 1"),
    (["sped", "--root", ".", "--max-conns", "many"], "not an integer"),
    (["sped", "--root", ".", "--processes", "2"], "does not apply"),
    (["sped", "--root", ".", "--event", "kqueue"], "invalid choice"),
    (["sped", "--root", ".", "--idle-timeout", "-1"], "between"),
    (["sped", "--root", ".", "--event", "select", "--max-conns", "5000"], "descriptors below 1024"),
    (["threaded", "--root", ".", "--threads", "4", "--max-conns", "8"], "same limit"),
    (["pipeline", "--root", ".", "--writers", "x"], "not an integer"),
    (["symped", "--root", ".", "--writers", "3"], "does not apply"),
    (["green", "--root", ".", "--trace", "/nonexistent/dir/t"], "does not exist"),
    (["sped", "--root", ".", "--trace", "t", "--trace-conns", "2"], "a share between"),
    (["sped", "--root", ".", "--trace-conns", "0.5"], "needs --trace"),
])
def test_bad_flags_exit_2_with_one_line(argv, fragment, capsys):
    from real.serve import main
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and fragment in err, err


def test_sigint_stops_workers_too(docroot, server_factory):
    root, _ = docroot
    srv = server_factory("blocking", root, "--processes", "3")
    workers = srv.pids()[1:]
    assert len(workers) == 3 and get(srv.port, "/small.txt")[0] == 200
    srv.proc.send_signal(signal.SIGINT)
    assert srv.proc.wait(10) == 0
    for pid in workers:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_trace_aggregates_exactly(tmp_path):
    from real.trace import OP, Tracer
    tr = Tracer(str(tmp_path / "x"), "unit", background=False, cpu_sample=0.5)
    rec = tr.recorder("loop")
    for units in (0, 1, 2, 3, 4, 1000, 1500):
        t = rec.start()
        rec.add(OP["sendfile"] + units, t)
    tr.flush()                       # a flush in the middle changes nothing
    rec.count(OP["ult_switch"] + 1)
    tr.close()
    t = read_trace(tr.path)
    assert t.complete and t.meta["arch"] == "unit" and float(t.meta["cpu_bias"]) > 0
    got = {s.bucket: (s.count, s.units, s.units2) for s in t.ops if s.op == "sendfile"}
    assert got == {0: (1, 0, 0), 1: (1, 1, 1), 2: (2, 5, 13), 3: (1, 4, 16), 10: (1, 1000, 10**6),
                   11: (1, 1500, 2250000)}
    total = t.totals()["sendfile"]
    assert total.count == 7 and 0 < total.cpu_count < 7 and total.wall > 0
    assert total.mean_wall == total.wall / total.cpu_count      # format 2: the wall of the sampled calls
    assert t.totals()["ult_switch"].count == 1


def test_sampled_connections_scale_up_to_all(tmp_path):
    """With a share of the connections traced, read_trace scales their counts and units by
    connections seen over picked: exact here, as every connection makes the same calls. The loop's
    own calls are all recorded and not scaled."""
    from real.trace import OP, Tracer
    tr = Tracer(str(tmp_path / "x"), "unit", background=False, conn_sample=0.25)
    rec = tr.recorder("loop")
    for _ in range(1000):
        rec.add(OP["accept"] + 1, rec.start())
        c = rec.pick()
        if c is not None:
            for units in (100, 200, 300):
                c.add(OP["read"] + units, c.start())
    tr.close()
    t = read_trace(tr.path)
    assert 150 < int(t.meta["conns_picked"]) < 350 and t.meta["conns_seen"] == "1000"
    tot = t.totals()
    assert tot["accept"].count == 1000 and not any(s.scaled for s in t.ops if s.op == "accept")
    assert tot["read"].count == 3000 and tot["read"].units == pytest.approx(600_000)
    assert 0 < tot["read"].cpu_count < int(t.meta["conns_picked"]) * 3


def test_a_recorder_per_thread_stays_small(tmp_path):
    """The threaded server gives each of its thousands of threads a recorder (and one for its sampled
    connections): each must cost little memory, and still time about CPU_SAMPLE of the calls."""
    import tracemalloc
    from real.trace import CPU_SAMPLE, Tracer
    tr = Tracer(str(tmp_path / "x"), "unit", background=False)
    tracemalloc.start()
    try:
        recs = [tr.recorder("conn") for _ in range(200)]
        per_recorder = tracemalloc.get_traced_memory()[0] / len(recs)
    finally:
        tracemalloc.stop()
        tr.close()
    assert per_recorder < 64 * 1024, per_recorder
    sampled = sum(recs[0].sample() for _ in range(100_000)) / 100_000
    assert 0.7 * CPU_SAMPLE < sampled < 1.3 * CPU_SAMPLE, sampled


def test_trace_reader_reads_format_1(tmp_path):
    """Files of format 1 (the wall clock of every call) still read, their mean wall over all calls."""
    path = tmp_path / "old.trace"
    path.write_text("websim-trace\t1\nmeta\tpid\t1\ntimes\tstart\t1.0\t0.5\t0.25\n"
                    "op\tloop\tread\tbyte\t7\t4\t400\t40000\t0.004\t4e-06\t0.4\t1\t100\t10000\t0.0005\t2.5e-07\t0.05\n")
    t = read_trace(str(path))
    s = t.ops[0]
    assert (s.count, s.cpu_count, s.wall_sampled) == (4, 1, False) and s.mean_wall == 0.001
    assert t.totals()["read"].mean_wall == 0.001 and s.mean_cpu == 0.0005
    path.write_text(path.read_text().replace("websim-trace\t1", "websim-trace\t4"))
    with pytest.raises(ValueError, match="version"):
        read_trace(str(path))


@pytest.mark.parametrize("threads", [True, False])
def test_cache_evicts_and_closes_descriptors(tmp_path, threads):
    from real.http import FileCache, HttpError
    for i in range(5):
        (tmp_path / f"f{i}").write_bytes(b"x" * i)
    cache = FileCache(os.fsencode(str(tmp_path)), max_entries=2, threads=threads)
    held = cache.insert(b"f0")              # a reply still sending f0
    fd0 = held.fd
    for i in range(1, 5):
        cache.release(cache.insert(b"f%d" % i))
    assert cache.lookup(b"f0") is None and cache.open_fds == 3   # f0 evicted but still held
    os.fstat(fd0)                                                # ... and still open
    cache.release(held)
    assert cache.open_fds == 2
    with pytest.raises(OSError):
        os.fstat(fd0)
    with pytest.raises(HttpError) as e:
        cache.insert(b"missing")
    assert e.value.status == 404 and cache.open_fds == 2
    cache.close_all()
    assert cache.open_fds == 0
