"""A real network link of a chosen bandwidth between a server and httperf: two network namespaces.

The run creates two namespaces of its own (server side and client side) joined
by a veth pair, gives the pair addresses that exist only inside those two
namespaces, and shapes the server's side (the direction the replies take) with
`tc qdisc ... tbf` at the given rate. Nothing outside the two namespaces is
touched; `close()` deletes both namespaces, which removes the veth pair and the
qdisc with them.

The simulator's NIC carries reply bytes; the link carries frames. With an MTU
of M, a full TCP segment carries M - 52 payload bytes (IP 20, TCP 20, the
timestamp option 12) in a frame of M + 14 bytes, which is what tbf counts, so
the link's goodput is rate x (M - 52) / (M + 14): `goodput_gbps`.

tbf queues at most rate x latency + burst bytes. Linux's TCP small queues let
a socket keep about two frames in the qdisc, so the queue holds the packets of
that many bytes over two frames' worth of flows (`queue_flows`); past that a
packet is dropped locally, and a socket with nothing in flight waits for its
probe timer while the flows in flight keep their places with their ACKs.
Measured on this link at 710 requests/s (2026-11-27): the queue full at
353-378 KB, 130-146 connections with packets unacknowledged and up to 500
more with data waiting in their socket buffers.
"""
from __future__ import annotations

import os
import stat
import subprocess
import tempfile

SERVER_ADDR, CLIENT_ADDR, PREFIX = "10.213.47.1", "10.213.47.2", 30
MTU = 1500


class NetnsError(Exception):
    pass


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if r.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {r.stderr.strip() or 'failed'}")


def goodput_gbps(rate_mbit: float, mtu: int = MTU) -> float:
    """Reply bytes per second the shaped link carries, in Gbit/s."""
    return rate_mbit / 1000.0 * (mtu - 52) / (mtu + 14)


def queue_flows(rate_mbit: float, burst_kb: float, latency_ms: float, mtu: int = MTU) -> int:
    """Flows whose packets tbf's queue holds at once: its byte limit over two full frames each."""
    limit = rate_mbit * 1e6 / 8 * latency_ms / 1e3 + burst_kb * 1024
    return max(1, int(limit // (2 * (mtu + 14))))


class ShapedLink:
    """Server and client namespaces joined by a veth pair, the server's side shaped to `rate_mbit`."""

    def __init__(self, rate_mbit: float, burst_kb: int = 64, latency_ms: int = 50):
        if not rate_mbit > 0:
            raise NetnsError(f"link rate must be positive, got {rate_mbit}")
        tag = f"{os.getpid() % 100000}"
        self.server_ns, self.client_ns = f"websim-srv{tag}", f"websim-cli{tag}"
        self.rate_mbit = rate_mbit
        self.queue_flows = queue_flows(rate_mbit, burst_kb, latency_ms)
        self.server_addr, self.client_addr = SERVER_ADDR, CLIENT_ADDR
        self.created: list[str] = []
        self.tmpdir = None
        try:
            for ns in (self.server_ns, self.client_ns):
                _ip("netns", "add", ns)
                self.created.append(ns)
                _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", self.server_ns, "link", "add", "vsrv", "mtu", str(MTU), "type", "veth", "peer", "name", "vcli",
                "netns", self.client_ns)
            _ip("-n", self.server_ns, "addr", "add", f"{SERVER_ADDR}/{PREFIX}", "dev", "vsrv")
            _ip("-n", self.client_ns, "addr", "add", f"{CLIENT_ADDR}/{PREFIX}", "dev", "vcli")
            _ip("-n", self.server_ns, "link", "set", "vsrv", "up")
            _ip("-n", self.client_ns, "link", "set", "vcli", "up")
            r = subprocess.run(["ip", "netns", "exec", self.server_ns, "tc", "qdisc", "add", "dev", "vsrv", "root",
                                "tbf", "rate", f"{rate_mbit:g}mbit", "burst", f"{burst_kb}kb",
                                "latency", f"{latency_ms}ms"], capture_output=True, text=True, timeout=20)
            if r.returncode != 0:
                raise NetnsError(f"tc qdisc add tbf: {r.stderr.strip() or 'failed'}")
            self.tmpdir = tempfile.mkdtemp(prefix="websim-netns-")
            self.httperf = os.path.join(self.tmpdir, "httperf")
            with open(self.httperf, "w") as f:
                f.write(f"#!/bin/sh\nexec ip netns exec {self.client_ns} httperf \"$@\"\n")
            os.chmod(self.httperf, stat.S_IRWXU)
        except BaseException:
            self.close()
            raise

    @property
    def server_wrap(self) -> list[str]:
        return ["ip", "netns", "exec", self.server_ns]

    def qdisc_stats(self) -> str:
        r = subprocess.run(["ip", "netns", "exec", self.server_ns, "tc", "-s", "qdisc", "show", "dev", "vsrv"],
                           capture_output=True, text=True, timeout=20)
        return " ".join(r.stdout.split())

    def close(self) -> None:
        for ns in reversed(self.created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
        self.created = []
        if self.tmpdir:
            import shutil
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
