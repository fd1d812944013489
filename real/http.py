"""The one HTTP/1.1 layer of every live server: a sans-IO parser, safe path resolution,
a userver-style cache of open descriptors with prebuilt headers, and reply building.

No function here touches a socket. A server feeds received bytes to a `Parser`,
asks it for the next complete `Request` (or an `HttpError`), turns that into a
`Reply` with `respond()` and sends `Reply.head` followed by `Reply.length` bytes
of `Reply.entry.fd` from `Reply.offset`. So the concurrency models differ only
in how they wait and send, never in what they answer.

What is answered
- GET and HEAD of regular files under the document root; 200 with Content-Length.
- 400 malformed request line, header, target or percent-encoding; a request body
  (Content-Length > 0) is refused with 413 and Transfer-Encoding with 501, both
  closing, because a static server has no use for bodies and the stream position
  after an unread body is unknown.
- 403 a path that leaves the root: a `..` segment, or a symlink resolving outside.
- 404 no such regular file (directories included: there is no index or listing).
- 405 (with `Allow: GET, HEAD`) for the methods of RFC 9110 other than GET/HEAD;
  501 for any other method token (a method this server has never heard of).
- 414 request line longer than MAX_REQUEST_LINE or target longer than MAX_TARGET;
  431 header section longer than MAX_HEADER_BYTES or more than MAX_HEADERS fields.
- 505 an HTTP version other than 1.0 and 1.1 (a syntactically bad one is 400).
- 408 is sent by the servers (not here) when a started request does not complete
  within the request timeout.
Errors where the parser cannot know where the next request starts (400, 413,
414, 431, 501 with a body, 505) close the connection; 403/404/405 keep it.

Persistence: HTTP/1.1 keeps the connection unless `Connection: close`;
HTTP/1.0 closes unless `Connection: keep-alive`. Pipelined requests are parsed
one after another from the buffer.

Path safety (`resolve_target`): the target is split at `?`, must be origin-form
(`/...`) or absolute-form (`http://host/...`); an encoded slash or backslash
(`%2f`, `%5c`) is refused before decoding; it is percent-decoded exactly once and
refused (400) if the result still holds `%` (double encoding such as `%252e`),
NUL, a backslash or another control byte; `.`/empty segments are dropped and a
`..` segment is 403. The joined path is then resolved with `os.path.realpath`
and must stay under the (real) root, else 403; it is opened with O_NOFOLLOW, so a
symlink swapped in after the check fails rather than being followed. Names that
contain `%` therefore cannot be served: a documented restriction.

Cache (`FileCache`): like the userver's, it holds the open descriptor and both
prebuilt 200 headers (keep-alive and close) of each file, bounded in entries,
least recently used out. A reply holds a reference to its entry so an eviction
while a sendfile is still in progress defers the close to the last `release()`:
descriptors are never leaked nor closed under a sender. Files are assumed not to
change while served (as the userver assumes).
"""
from __future__ import annotations

import errno
import mimetypes
import os
import re
import stat
import threading
from collections import OrderedDict
from dataclasses import dataclass

MAX_REQUEST_LINE = 8192
MAX_TARGET = 4096
MAX_HEADER_BYTES = 16384     # the whole request head: request line plus fields
MAX_HEADERS = 100
SERVER_NAME = b"websim"

ALLOWED = (b"GET", b"HEAD")
KNOWN_METHODS = (b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE", b"CONNECT")

REASONS = {
    200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 413: "Content Too Large",
    414: "URI Too Long", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
    501: "Not Implemented", 503: "Service Unavailable", 505: "HTTP Version Not Supported",
}

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_VERSION = re.compile(rb"HTTP/(\d)\.(\d)\Z")
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")   # control bytes except HT
_PCT = re.compile(rb"%([0-9A-Fa-f]{2})")

# Fast paths. A head that matches _FAST_HEAD (GET or HEAD of an origin-form target of
# printable ASCII, HTTP/1.0 or 1.1, well-formed fields of token names and values free of
# control bytes) passes every check of the general parser, so only its fields need splitting;
# anything else takes the general path, which finds the right error. Likewise a target of
# plain segments (_PLAIN_TARGET: no dot first, no escape, no query) is its own safe path.
_TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_FAST_HEAD = re.compile(rb"(GET|HEAD) (/[!-~]*) HTTP/1\.([01])(?:\r?\n((?:" + _TCHAR + rb"+:[\t -~\x80-\xff]*"
                        rb"\r?\n)*" + _TCHAR + rb"+:[\t -~\x80-\xff]*?))?\r?\Z")
_PLAIN_TARGET = re.compile(rb"(?:/[A-Za-z0-9_~\-][A-Za-z0-9_~.\-]*)+\Z")
_V10, _V11 = (1, 0), (1, 1)


class HttpError(Exception):
    """A request that is answered with an error status; `close` ends the connection after it."""

    def __init__(self, status: int, why: str = "", close: bool = False):
        super().__init__(f"{status} {why}".strip())
        self.status = status
        self.why = why
        self.close = close


@dataclass(slots=True)
class Request:
    method: bytes
    target: bytes
    version: tuple[int, int]
    headers: dict[bytes, bytes]   # lower-case names; repeated fields joined with ", "
    keep_alive: bool

    @property
    def head_only(self) -> bool:
        return self.method == b"HEAD"


class Parser:
    """Sans-IO request parser for one connection: `feed()` bytes, then `next_request()`.

    `next_request()` returns a Request, or None when more bytes are needed, or
    raises HttpError. `started` tells whether a partial request is buffered (for
    the slow-client timeout).
    """

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> None:
        self.buf += data

    @property
    def started(self) -> bool:
        return bool(self.buf.strip(b"\r\n"))

    def next_request(self) -> Request | None:
        buf = self.buf
        if not buf:
            return None
        if buf[0] in (13, 10):
            # RFC 9112 2.2: ignore empty lines before a request line
            i = 0
            n = len(buf)
            while i < n and buf[i] in (13, 10):
                i += 1
            del buf[:i]
            if not buf:
                return None
        span = head_end(buf)
        if span is None:
            line_end = buf.find(b"\n", 0, MAX_REQUEST_LINE + 2)
            if line_end < 0 and len(buf) > MAX_REQUEST_LINE:
                raise HttpError(414, "request line too long", close=True)
            if len(buf) > MAX_HEADER_BYTES:
                raise HttpError(431, "request head too large", close=True)
            return None
        head = bytes(buf[:span[0]])
        del buf[:span[1]]
        return parse_head(head)


def head_end(buf: bytearray) -> tuple[int, int] | None:
    """Where the first blank line (`_HEAD_END`) of the first MAX_HEADER_BYTES + 4 bytes is."""
    # the usual CRLF CRLF, when no bare-LF blank line comes before it, found faster than by the regex
    e = buf.find(b"\r\n\r\n", 0, MAX_HEADER_BYTES + 4)
    if e >= 0 and buf.find(b"\n\n", 0, e + 1) < 0 and buf.find(b"\n\r\n", 0, e + 2) < 0:
        return e, e + 4
    m = _HEAD_END.search(buf, 0, MAX_HEADER_BYTES + 4)
    return None if m is None else m.span()


def parse_head(head: bytes) -> Request:
    """Parse a request head (without its blank line) into a Request, or raise HttpError."""
    m = _FAST_HEAD.match(head)
    if m is not None:
        method, target, minor, fields = m.groups()
        if len(target) <= MAX_TARGET:
            headers: dict[bytes, bytes] = {}
            lines = fields.split(b"\n") if fields else ()
            if len(lines) <= MAX_HEADERS:
                for line in lines:      # each `token:value\r?`, as _FAST_HEAD checked
                    name, _, value = line.partition(b":")
                    value = value.strip(b" \t\r")
                    _add_field(headers, name.lower(), value)
                return _finish(method, target, _V11 if minor == b"1" else _V10, headers)
    return _parse_head_general(head)


def _parse_head_general(head: bytes) -> Request:
    lines = head.split(b"\n")
    line = lines[0]
    if line.endswith(b"\r"):
        line = line[:-1]
    if len(line) > MAX_REQUEST_LINE:
        raise HttpError(414, "request line too long", close=True)
    parts = line.split(b" ")
    if len(parts) != 3:
        raise HttpError(400, "malformed request line", close=True)
    method, target, version = parts
    if not _TOKEN.match(method):
        raise HttpError(400, "malformed method", close=True)
    vm = _VERSION.match(version)
    if vm is None:
        raise HttpError(400, "malformed version", close=True)
    ver = (int(vm.group(1)), int(vm.group(2)))
    if ver not in ((1, 0), (1, 1)):
        raise HttpError(505, "HTTP version not supported", close=True)
    if not target or _CTL.search(target) or b"\t" in target:
        raise HttpError(400, "malformed target", close=True)
    if len(target) > MAX_TARGET:
        raise HttpError(414, "target too long", close=True)
    if len(lines) - 1 > MAX_HEADERS:
        raise HttpError(431, "too many header fields", close=True)
    headers: dict[bytes, bytes] = {}
    for raw in lines[1:]:
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if raw[:1] in (b" ", b"\t"):
            raise HttpError(400, "obsolete header line folding", close=True)
        name, sep, value = raw.partition(b":")
        if not sep or not _TOKEN.match(name):
            raise HttpError(400, "malformed header field", close=True)
        value = value.strip(b" \t")
        if _CTL.search(value):
            raise HttpError(400, "control byte in header value", close=True)
        _add_field(headers, name.lower(), value)
    return _finish(method, target, ver, headers)


def _add_field(headers: dict[bytes, bytes], name: bytes, value: bytes) -> None:
    """A repeated field joins the first with a comma, except those that must be single."""
    if name in headers:
        if name in (b"host", b"content-length"):
            raise HttpError(400, f"repeated {name.decode()} field", close=True)
        headers[name] = headers[name] + b", " + value
    else:
        headers[name] = value


def _finish(method: bytes, target: bytes, ver: tuple[int, int], headers: dict[bytes, bytes]) -> Request:
    """The checks on a parsed head's fields and method; the Request."""
    conn = headers.get(b"connection")
    conn_tokens = {t.strip().lower() for t in conn.split(b",")} if conn is not None else ()
    if ver == _V11:
        keep = b"close" not in conn_tokens
        if b"host" not in headers:
            raise HttpError(400, "HTTP/1.1 request without Host", close=True)
    else:
        keep = b"keep-alive" in conn_tokens and b"close" not in conn_tokens
    if b"transfer-encoding" in headers:
        raise HttpError(501, "request bodies are not supported", close=True)
    cl = headers.get(b"content-length")
    if cl is not None:
        if not cl.isdigit():
            raise HttpError(400, "malformed Content-Length", close=True)
        if int(cl) > 0:
            raise HttpError(413, "request bodies are not supported", close=True)
    if method not in ALLOWED:
        if method in KNOWN_METHODS:
            raise HttpError(405, "method not allowed", close=not keep)
        raise HttpError(501, "method not implemented", close=not keep)
    return Request(method, target, ver, headers, keep)


def target_path(target: bytes) -> bytes:
    """The safe relative path (bytes, '/'-joined segments) named by a request target.

    Raises HttpError 400 (malformed or encoded escape) or 403 (`..`).
    """
    if _PLAIN_TARGET.match(target):
        return target[1:]
    return _target_path_general(target)


def _target_path_general(target: bytes) -> bytes:
    if target.startswith(b"/"):
        path = target
    else:
        low = target[:8].lower()
        if low.startswith(b"http://") or low.startswith(b"https://"):
            rest = target.split(b"://", 1)[1]
            slash = rest.find(b"/")
            if slash < 0:
                path = b"/"
            else:
                path = rest[slash:]
        else:
            raise HttpError(400, "target is not origin-form or absolute-form")
    path = path.split(b"?", 1)[0]
    if b"#" in path:
        raise HttpError(400, "fragment in target")
    if b"\\" in path:
        raise HttpError(400, "backslash in target")
    low = path.lower()
    if b"%2f" in low or b"%5c" in low:
        raise HttpError(400, "encoded slash or backslash in target")
    if b"%" in path:
        if _PCT.sub(b"", path).find(b"%") >= 0:
            raise HttpError(400, "bad percent-encoding")
        path = _PCT.sub(lambda m: bytes((int(m.group(1), 16),)), path)
        if b"%" in path:
            raise HttpError(400, "double percent-encoding")
        if b"\\" in path or _CTL.search(path) or b"\t" in path:
            raise HttpError(400, "control byte or backslash in decoded target")
    segments = []
    for seg in path.split(b"/"):
        if seg == b"..":
            raise HttpError(403, "'..' segment")
        if seg and seg != b".":
            segments.append(seg)
    return b"/".join(segments)


def open_under(root: bytes, rel: bytes) -> tuple[int, os.stat_result]:
    """Open regular file `rel` under real directory `root`, refusing escapes by symlink.

    Returns (fd, stat). Raises HttpError 403 (escape) or 404 (missing, not a file).
    """
    full = os.path.join(root, rel) if rel else root
    real = os.path.realpath(full)
    if not (real == root or real.startswith(root + b"/")):
        raise HttpError(403, "path resolves outside the root")
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise HttpError(403, "symlink at open") from None
        if e.errno in (errno.EACCES, errno.EPERM):
            raise HttpError(403, "permission denied") from None
        raise HttpError(404, "not found") from None
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        raise HttpError(404, "not found") from None
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise HttpError(404, "not a regular file")
    return fd, st


def content_type(rel: bytes) -> bytes:
    ctype, _ = mimetypes.guess_type(os.fsdecode(rel), strict=False)
    return (ctype or "application/octet-stream").encode("latin-1", "replace")


def build_head(status: int, length: int, keep_alive: bool, ctype: bytes = b"text/plain",
               extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 %d %s\r\nServer: %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
            b"%sConnection: %s\r\n\r\n" % (
                status, REASONS.get(status, "Error").encode(), SERVER_NAME, ctype, length,
                extra, b"keep-alive" if keep_alive else b"close"))


class Entry:
    """One cached file: its descriptor, size and both prebuilt 200 headers."""

    __slots__ = ("fd", "size", "head_keep", "head_close", "refs", "evicted")

    def __init__(self, fd: int, size: int, ctype: bytes):
        self.fd = fd
        self.size = size
        self.head_keep = build_head(200, size, True, ctype)
        self.head_close = build_head(200, size, False, ctype)
        self.refs = 0
        self.evicted = False


class FileCache:
    """Bounded LRU of open descriptors and prebuilt headers (the userver's header cache).

    `lookup(rel)` returns the entry with a reference taken (or None), `insert(rel)`
    opens and caches it; `release(entry)` drops the reference. Thread-safe (one
    lock) unless made with `threads=False`, for a process of one thread (the event
    loops, gevent), which then takes no lock on its hot path; `close_all()` at exit.
    Hits are the `stat` operation of sim/operations.py, misses are `open`.
    """

    def __init__(self, root: bytes, max_entries: int = 512, threads: bool = True):
        if max_entries < 1:
            raise ValueError("cache needs at least one entry")
        self.root = root
        self.max_entries = max_entries
        self.entries: OrderedDict[bytes, Entry] = OrderedDict()
        self.lock = threading.Lock()
        self.threads = threads
        self.open_fds = 0  # descriptors held, cached or awaiting their last release

    def lookup(self, rel: bytes) -> Entry | None:
        if not self.threads:
            e = self.entries.get(rel)
            if e is not None:
                self.entries.move_to_end(rel)
                e.refs += 1
            return e
        with self.lock:
            e = self.entries.get(rel)
            if e is not None:
                self.entries.move_to_end(rel)
                e.refs += 1
            return e

    def insert(self, rel: bytes) -> Entry:
        """Open and cache `rel` (a miss); raises HttpError 403/404."""
        fd, st = open_under(self.root, rel)
        e = Entry(fd, st.st_size, content_type(rel))
        e.refs = 1
        victims = []
        with self.lock:
            self.open_fds += 1
            old = self.entries.get(rel)
            if old is not None:       # another thread opened it meanwhile: keep theirs
                old.refs += 1
                self.entries.move_to_end(rel)
                e.evicted = True
                e.refs = 0
                victims.append(e)
                e = old
            else:
                self.entries[rel] = e
                while len(self.entries) > self.max_entries:
                    _, v = self.entries.popitem(last=False)
                    v.evicted = True
                    if v.refs == 0:
                        victims.append(v)
            self.open_fds -= len(victims)
        for v in victims:
            os.close(v.fd)
        return e

    def release(self, e: Entry) -> None:
        if not self.threads:
            e.refs -= 1
            if e.evicted and e.refs == 0:
                self.open_fds -= 1
                os.close(e.fd)
            return
        with self.lock:
            e.refs -= 1
            close = e.evicted and e.refs == 0
            if close:
                self.open_fds -= 1
        if close:
            os.close(e.fd)

    def close_all(self) -> None:
        with self.lock:
            for e in self.entries.values():
                e.evicted = True
                if e.refs == 0:
                    os.close(e.fd)
                    self.open_fds -= 1
            self.entries.clear()


class Reply:
    """What to send: `head` bytes, then `length` bytes of `entry.fd` from `offset`."""

    __slots__ = ("head", "entry", "offset", "length", "close", "status")

    def __init__(self, head: bytes, entry: Entry | None, length: int, close: bool, status: int):
        self.head = head
        self.entry = entry
        self.offset = 0
        self.length = length
        self.close = close
        self.status = status


def error_reply(err: HttpError, head_only: bool = False) -> Reply:
    """A small text/plain error reply (headers only for HEAD)."""
    body = b"%d %s\n" % (err.status, REASONS.get(err.status, "Error").encode())
    extra = b"Allow: GET, HEAD\r\n" if err.status == 405 else b""
    head = build_head(err.status, len(body), not err.close, b"text/plain", extra)
    return Reply(head if head_only else head + body, None, 0, err.close, err.status)


def lookup_reply(cache: FileCache, req: Request) -> tuple[Reply, bool]:
    """The reply to a parsed GET/HEAD: (reply, hit). hit is None when no file was looked up
    (the target was refused), True for a cache hit (`stat`), False for a miss (`open`)."""
    try:
        rel = target_path(req.target)
    except HttpError as err:
        err.close = err.close or not req.keep_alive
        return error_reply(err, req.head_only), None
    e = cache.lookup(rel)
    hit = e is not None
    if e is None:
        try:
            e = cache.insert(rel)
        except HttpError as err:
            err.close = err.close or not req.keep_alive
            return error_reply(err, req.head_only), False
    head = e.head_keep if req.keep_alive else e.head_close
    if req.method == b"HEAD":
        cache.release(e)
        return Reply(head, None, 0, not req.keep_alive, 200), hit
    return Reply(head, e, e.size, not req.keep_alive, 200), hit


def timeout_reply() -> Reply:
    return error_reply(HttpError(408, "request not completed in time", close=True))
