"""What every concurrency model shares: the settings, the listen socket, the per-process
context (file cache and tracer) and `Conn`, one client connection with its traced
system calls on top of the sans-IO layer of real/http.py.

A server module only decides who waits for what and when `Conn.recv`,
`Conn.next_reply`, `Conn.send` and `Conn.close` are called.

Header and body go out without a delayed-ACK stall this way: TCP_NODELAY is set
on the listen socket (accepted sockets inherit it on Linux), and the header is
written with MSG_MORE when a body follows, a one-call cork, so header and the
first file bytes share segments; the sendfile that ends the reply pushes.
"""
from __future__ import annotations

import os
import signal
import socket
import struct
import sys
from dataclasses import dataclass

from .. import http
from ..trace import CONN_SAMPLE, OP, Recorder, Tracer

RECV_SIZE = 16384
MSG_MORE = getattr(socket, "MSG_MORE", 0)

OP_ACCEPT = OP['accept']
OP_CLOSE = OP['close']
OP_OPEN = OP['open']
OP_PARSE = OP['parse']
OP_READ = OP['read']
OP_SENDFILE = OP['sendfile']
OP_STAT = OP['stat']
OP_WRITE = OP['write']


@dataclass
class Config:
    arch: str
    root: str
    host: str = "127.0.0.1"
    port: int = 0
    processes: int = 1
    max_conns: int = 1000
    threads: int = 64
    writers: int = 4
    accept_limit: int = 100          # accepts per accept phase; 0 = until EWOULDBLOCK
    event: str = "epoll"
    idle_timeout: float = 30.0
    request_timeout: float = 30.0    # a started request must be complete within this
    cache_entries: int = 512
    backlog: int = 1024
    trace: str | None = None
    trace_conns: float = CONN_SAMPLE   # share of the connections whose calls are traced

    @property
    def send_timeout(self) -> float:
        """SO_SNDTIMEO of blocking sockets. A blocking sendfile waits up to this once per
        pipe buffer it moves (the kernel's splice loop), so a reply stuck on a full socket
        is abandoned after two to four of these: about the idle timeout."""
        return self.idle_timeout / 3

    @property
    def tick(self) -> float:
        """How often timeouts are checked: a quarter of the shortest, at most 0.5 s."""
        return max(0.01, min(0.5, self.idle_timeout / 4, self.request_timeout / 4))


def make_listener(cfg: Config) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.bind((cfg.host, cfg.port))
    s.listen(cfg.backlog)
    return s


def announce(lsock: socket.socket) -> None:
    host, port = lsock.getsockname()[:2]
    sys.stdout.write(f"listening on {host}:{port} pid {os.getpid()}\n")
    sys.stdout.flush()


def set_timeouts(sock: socket.socket, rcv: float | None, snd: float | None) -> None:
    """Kernel timeouts of blocking recv/send (SO_RCVTIMEO/SO_SNDTIMEO): EAGAIN when they expire."""
    for opt, t in ((socket.SO_RCVTIMEO, rcv), (socket.SO_SNDTIMEO, snd)):
        if t is not None:
            sec = int(t)
            sock.setsockopt(socket.SOL_SOCKET, opt, struct.pack("ll", sec, int((t - sec) * 1e6)))


class Stopper:
    """SIGTERM/SIGINT set a flag (and call an optional hook); loops poll `stop`."""

    def __init__(self, hook=None):
        self.stop = False
        self.hook = hook
        signal.signal(signal.SIGTERM, self._on)
        signal.signal(signal.SIGINT, self._on)

    def _on(self, signum, frame) -> None:
        self.stop = True
        if self.hook is not None:
            self.hook()


class Context:
    """Per process: the file cache and, with --trace, the tracer."""

    def __init__(self, cfg: Config, background_flush: bool = True, threads: bool = True):
        """threads=False: a process of one thread (event loop, gevent), whose cache needs no lock."""
        self.cfg = cfg
        self.root = os.fsencode(os.path.realpath(cfg.root))
        self.cache = http.FileCache(self.root, cfg.cache_entries, threads=threads)
        self.tracer = (Tracer(cfg.trace, cfg.arch, background=background_flush, conn_sample=cfg.trace_conns)
                       if cfg.trace else None)

    def recorder(self, role: str = "main") -> Recorder | None:
        return self.tracer.recorder(role) if self.tracer is not None else None

    def close(self) -> None:
        self.cache.close_all()
        if self.tracer is not None:
            self.tracer.close()


def traced_accept(lsock: socket.socket, rec: Recorder | None):
    """accept() once; raises BlockingIOError when the queue is empty."""
    if rec is None:
        return lsock.accept()[0]
    t = rec.begin() if rec.sample() else 0.0
    ok = 0
    try:
        s = lsock.accept()[0]
        ok = 1
        return s
    finally:
        rec.add(OP_ACCEPT + ok, t)


class Conn:
    """One client connection: buffered parser state, the reply in progress, deadlines."""

    __slots__ = ("sock", "fd", "parser", "reply", "cache", "rec", "sampled", "last", "started",
                 "closed", "state", "drain")

    def __init__(self, sock: socket.socket, cache: http.FileCache, rec: Recorder | None, now: float):
        """`rec`: the creating thread's recorder (None when not tracing); the connection records
        its calls only if `rec.pick()` samples it."""
        self.sock = sock
        self.fd = sock.fileno()
        self.parser = http.Parser()
        self.reply: http.Reply | None = None
        self.cache = cache
        self.rec = rec.pick() if rec is not None else None
        self.sampled = self.rec is not None
        self.last = now          # last byte received or sent
        self.started = 0.0       # when the buffered, incomplete request began (0: none)
        self.closed = False
        self.state = 0           # free for the concurrency model (e.g. which set it is in)
        self.drain = False       # an error reply ends the connection: read what is left first

    def use(self, rec: Recorder | None) -> None:
        """Record into `rec`'s thread from now on (a connection handed to another thread), if sampled."""
        self.rec = rec.conn if rec is not None and self.sampled else None

    # -- reading -----------------------------------------------------------
    def recv(self, now: float) -> int:
        """Read once into the parser; returns bytes read (0 = peer closed).
        Raises BlockingIOError when nothing is there."""
        rec = self.rec
        if rec is None:
            data = self.sock.recv(RECV_SIZE)
        else:
            t = rec.begin() if rec.sample() else 0.0
            data = b""
            try:
                data = self.sock.recv(RECV_SIZE)
            finally:
                if t:
                    rec.sampled(OP_READ + len(data), t)
                else:
                    rec.n(OP_READ + len(data))
        if data:
            if not self.started:
                self.started = now
            self.parser.buf += data
            self.last = now
        return len(data)

    def next_reply(self) -> http.Reply | None:
        """Parse the next buffered request and build its reply (also kept in self.reply);
        None when no complete request is buffered."""
        parser = self.parser
        if not parser.buf:
            self.started = 0.0
            return None
        rec = self.rec
        if rec is None:
            try:
                req = parser.next_request()
            except http.HttpError as err:
                self.reply = http.error_reply(err)
                self.drain = err.close
            else:
                if req is None:
                    if not parser.started:
                        self.started = 0.0
                    return None
                self.reply = http.lookup_reply(self.cache, req)[0]
        else:
            t = rec.begin() if rec.sample() else 0.0
            try:
                req = parser.next_request()
            except http.HttpError as err:
                self.reply = http.error_reply(err)
                self.drain = err.close
                rec.add(OP_PARSE + 1, t)
            else:
                if req is None:     # incomplete: not a parse, just a look at the buffer
                    if not parser.started:
                        self.started = 0.0
                    return None
                t = rec.then(OP_PARSE + 1, t)
                self.reply, hit = http.lookup_reply(self.cache, req)
                code = OP_STAT + 1 if hit else OP_OPEN + 1
                if t:
                    rec.sampled(code, t)
                else:
                    rec.n(code)
        # a pipelined request may have begun already
        self.started = self.last if parser.buf and parser.started else 0.0
        return self.reply

    # -- sending -----------------------------------------------------------
    def send(self, now: float) -> bool:
        """Send what is left of self.reply; True when all is sent (the entry is released).
        Returns False when the socket would block (or a blocking send timed out)."""
        r = self.reply
        rec = self.rec
        try:
            head = r.head
            if head:
                length = r.length
                if rec is None:
                    n = self.sock.send(head, MSG_MORE if length else 0)
                else:
                    t = rec.begin() if rec.sample() else 0.0
                    n = 0
                    try:
                        n = self.sock.send(head, MSG_MORE if length else 0)
                    finally:
                        if t:
                            rec.sampled(OP_WRITE + n, t)
                        else:
                            rec.n(OP_WRITE + n)
                self.last = now
                if n < len(head):
                    r.head = head[n:]
                    return False
                r.head = b""
            while r.length:
                if rec is None:
                    n = os.sendfile(self.fd, r.entry.fd, r.offset, r.length)
                else:
                    t = rec.begin() if rec.sample() else 0.0
                    n = 0
                    try:
                        n = os.sendfile(self.fd, r.entry.fd, r.offset, r.length)
                    finally:
                        if t:
                            rec.sampled(OP_SENDFILE + n, t)
                        else:
                            rec.n(OP_SENDFILE + n)
                if n == 0:
                    raise ConnectionAbortedError("file shorter than its cached size")
                r.offset += n
                r.length -= n
                self.last = now
        except BlockingIOError:
            return False
        self.finish_reply()
        return True

    def finish_reply(self) -> None:
        r = self.reply
        if r is not None:
            self.reply = None
            if r.entry is not None:
                e, r.entry = r.entry, None
                self.cache.release(e)

    # -- timeouts and closing ------------------------------------------------
    def expired(self, now: float, idle: float, request: float) -> int:
        """0 = fine; 1 = idle too long (close quietly); 2 = request too slow (send 408)."""
        if self.started and self.reply is None and now - self.started > request:
            return 2
        if now - self.last > idle:
            return 1
        return 0

    def send_timeout_reply(self) -> None:
        """Best effort 408 on a slow request, never blocking for long."""
        self.finish_reply()
        self.drain = True
        try:
            self.sock.send(http.timeout_reply().head, socket.MSG_DONTWAIT)
        except OSError:
            pass

    def _drain(self) -> None:
        """Read (without waiting) what the client already sent, so that closing after an
        error reply sends FIN rather than a reset that could destroy the reply in flight."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
            for _ in range(16):
                if not self.sock.recv(65536, socket.MSG_DONTWAIT):
                    break
        except OSError:
            pass

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.finish_reply()
        if self.drain:
            self._drain()
        rec = self.rec
        if rec is None:
            self.sock.close()
        else:
            t = rec.begin() if rec.sample() else 0.0
            try:
                self.sock.close()
            finally:
                rec.add(OP_CLOSE + 1, t)


def log(msg: str) -> None:
    try:
        sys.stderr.write(f"serve[{os.getpid()}]: {msg}\n")
        sys.stderr.flush()
    except OSError:
        pass
