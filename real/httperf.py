"""`simrun load`: drive a live server with httperf from the simulator's own workload description.

Session files (httperf `--wsesslog`)
------------------------------------
httperf 0.9 reads a session as lines of URIs; a line starting in column 1
opens a *burst*, indented lines that follow join it. It sends a burst's first
request alone, the rest of the burst pipelined once that first reply is in,
and waits the burst's `think=` time (or the X of `--wsesslog=N,X,F`) after the
*last reply of the burst* before the next burst. A session is one persistent
HTTP/1.1 connection (reopened only if the server closes it); it fails at the
first timeout (`--timeout`, per step of progress, not during think time) or
at a connection that closes before any reply. At most 1,000 sessions can be
defined in one file; httperf then reuses them round robin. A workload with
`session_templates` is written as those templates, shared out over as many
httperf processes as hold them (`template_slices`), so that the simulator,
replaying the same templates in turn, sees the same sessions and repeats.

Our model (sim/workload.py) has no pipelining: within a burst each request
follows the previous reply after the active off-period, and bursts are
separated by the inactive off-period. So each of our requests is written as
its own httperf burst (a line in column 1) whose `think=` is the think time
that follows it: the within-burst time if the next request is in the same
burst, the between-burst time if it ends a burst (none after the last).
httperf then issues exactly the requests, order and think times the
simulator models. Sessions arrive as a Poisson stream (`--period=e<mean>`).

Measurement
-----------
httperf waits with `select`, so one process keeps at most FD_SETSIZE (1,024)
descriptors; its own start-up warns so and caps itself. Sessions hold their
connection through think times, so the concurrency is about session rate x
mean session length; above `conns_per_instance` per process the load is split
over several httperf processes (each its own session file and `--client i/k`,
which seeds its own Poisson stream) whose results are summed. httperf busy-
polls (it uses a whole core even when idle), so they share the load core.

A run starts with no sessions in progress and ends with the tail of the last
sessions, so the whole-run reply rate understates the rate under load.
`reply_rps` is therefore the mean of httperf's 5-second reply-rate samples
(`-v`) taken after a warm-up and before the last session starts; beside it,
`offered_window_rps` is the request rate the sessions offered in the same
window, so their ratio tells whether the server kept up. It is counted, not
expected: httperf's rate generator has a fixed seed per `--client` id, so its
session starts are known (sim/generator.py); to them the files' think times are
added, responses taken as instant. Runs too short for a sample use
the whole run for both. `--hog` is not used: on Linux a plain connect() takes
ports from the kernel's 28k-port ephemeral range and reuses TIME_WAIT ports on
loopback (tcp_tw_reuse=2), which is plenty at one connection per session,
while `--hog` would make httperf bind ports from 1024 up on a shared machine.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from sim import generator
from sim.fileset import FileSet
from sim.atomic import write_text
from sim.workload import GENERATOR_MAX_TEMPLATES, Workload

FD_SETSIZE = 1024
# mean concurrent sessions per httperf (800): leaves room for Poisson swings
CONNS_PER_INSTANCE = Workload.__dataclass_fields__["generator_sessions_per_process"].default
FD_LIMIT = FD_SETSIZE - 2  # connections one httperf holds: 1,022 in its own count at overload (2026-11-26)
MAX_INSTANCES = 8  # the study ran eight httperf processes
MAX_TEMPLATES = GENERATOR_MAX_TEMPLATES  # MAX_SESSION_TEMPLATES in httperf's wsesslog.c
SAMPLE_S = 5.0  # httperf's reply-rate sample interval
ERROR_KINDS = ("client_timo", "socket_timo", "connrefused", "connreset", "fd_unavail", "addrunavail",
               "ftab_full", "other")


class LoadError(Exception):
    """A load run that cannot be made as asked, told in one line."""


# ---------------------------------------------------------------- session files

@dataclass
class SessionLog:
    """What a written session file holds: per session, the issue age of each request (think times summed)."""

    path: str
    ages: list[list[float]] = field(default_factory=list)

    @property
    def n_sessions(self) -> int:
        return len(self.ages)

    @property
    def n_requests(self) -> int:
        return sum(len(a) for a in self.ages)

    @property
    def longest_s(self) -> float:
        return max((a[-1] for a in self.ages), default=0.0)


def write_wsesslog(workload: Workload, rng: np.random.Generator, n_sessions: int, path: str) -> SessionLog:
    """Write `n_sessions` sessions drawn from `workload` as an httperf --wsesslog file (atomically).

    Each request is its own httperf burst (a line in column 1, nothing indented, so nothing pipelined);
    its `think=` is the pause after its reply: the within-burst think time when the next request is in
    the same burst of our model, the between-burst one when it ends a burst, none after the session's
    last request. Think times are drawn with `workload.think` and written to the millisecond.
    """
    if not 1 <= n_sessions <= MAX_TEMPLATES:
        raise ValueError(f"a session file holds 1 to {MAX_TEMPLATES} sessions (httperf's limit), got {n_sessions}")
    return write_templates(workload, [workload.template(rng) for _ in range(n_sessions)], path)


def write_templates(workload: Workload, templates, path: str) -> SessionLog:
    """Write sessions given as (files, think after each request) as an httperf --wsesslog file."""
    if not 1 <= len(templates) <= MAX_TEMPLATES:
        raise ValueError(f"a session file holds 1 to {MAX_TEMPLATES} sessions (httperf's limit), got {len(templates)}")
    fs = workload.fileset
    lines = [f"# {len(templates)} sessions; each request is its own burst, think= is the pause after its reply"]
    log = SessionLog(path=path)
    for files, thinks in templates:
        ages, age = [], 0.0
        for j, (index, think) in enumerate(zip(files, thinks)):
            ages.append(age)
            if j == len(files) - 1:
                lines.append(f"/{fs.path(index)}")
                continue
            age += think
            lines.append(f"/{fs.path(index)} think={think:.3f}")
        lines.append("")
        log.ages.append(ages)
    atomic_write_text(path, "\n".join(lines) + "\n")
    return log


def template_slices(workload: Workload, counts: list[int]) -> list[list]:
    """The workload's session templates shared out over httperf instances that start `counts`
    sessions each (sim/generator.py's `template_shares`, which the simulator's clients follow
    too): a contiguous share each, given only as many as it starts, so every template is offered
    about equally often, as the simulator's clients replay them all in turn."""
    tpl = workload.templates()
    if not tpl:
        raise LoadError("the workload has no session templates (session_templates = 0)")
    shares = [[tpl[j] for j in share] for share in generator.template_shares(len(tpl), counts)]
    if max(len(s) for s in shares) > MAX_TEMPLATES:
        raise LoadError(f"{len(tpl)} session templates over {len(counts)} httperf processes: more than httperf's "
                        f"{MAX_TEMPLATES} in one session file")
    return shares


def parse_wsesslog(text: str) -> list[list[tuple[str, float | None]]]:
    """Sessions of a --wsesslog file as (uri, think) per request, following httperf's parser (for checks)."""
    sessions, cur = [], []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        parts = line.split()
        if not parts:
            if cur:
                sessions.append(cur)
                cur = []
            continue
        think = None
        for arg in parts[1:]:
            if arg.startswith("think="):
                think = float(arg[6:])
        cur.append((parts[0], think))
    if cur:
        sessions.append(cur)
    return sessions


def offered_in_window(logs: list[SessionLog], starts: list[np.ndarray], a: float, b: float) -> float:
    """Requests issued in [a, b) by sessions starting at `starts` (per httperf process, seconds after its
    start; sim/generator.py) that replay `logs`' sessions in turn, replies taken as instant."""
    total = 0
    for log, at in zip(logs, starts):
        n = log.n_sessions
        for j, ages in enumerate(log.ages):
            mine = at[j::n]                  # the starts of the sessions that replay session j
            if len(mine):
                t = mine[:, None] + np.asarray(ages)[None, :]
                total += int(np.count_nonzero((t >= a) & (t < b)))
    return float(total)


# ---------------------------------------------------------------- httperf output

_NUM = r"([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
_PATTERNS = {
    "total": rf"^Total: connections {_NUM} requests {_NUM} replies {_NUM} test-duration {_NUM} s",
    "conn_rate": rf"^Connection rate: {_NUM} conn/s \({_NUM} ms/conn, <={_NUM} concurrent connections\)",
    "connect": rf"^Connection time \[ms\]: connect {_NUM}",
    "reply_rate": rf"^Reply rate \[replies/s\]: min {_NUM} avg {_NUM} max {_NUM} stddev {_NUM} \({_NUM} samples\)",
    "reply_time": rf"^Reply time \[ms\]: response {_NUM} transfer {_NUM}",
    "reply_size": rf"^Reply size \[B\]: header {_NUM} content {_NUM} footer {_NUM} \(total {_NUM}\)",
    "status": rf"^Reply status: 1xx={_NUM} 2xx={_NUM} 3xx={_NUM} 4xx={_NUM} 5xx={_NUM}",
    "cpu": rf"^CPU time \[s\]: user {_NUM} system {_NUM} \(user {_NUM}% system {_NUM}% total {_NUM}%\)",
    "net": rf"^Net I/O: {_NUM} KB/s \({_NUM}\*10\^6 bps\)",
    "errors1": rf"^Errors: total {_NUM} client-timo {_NUM} socket-timo {_NUM} connrefused {_NUM} connreset {_NUM}",
    "errors2": rf"^Errors: fd-unavail {_NUM} addrunavail {_NUM} ftab-full {_NUM} other {_NUM}",
    "sessions": rf"^Session rate \[sess/s\]: min {_NUM} avg {_NUM} max {_NUM} stddev {_NUM} \({_NUM}/{_NUM}\)",
}
_REQUIRED = ("total", "reply_time", "reply_size", "errors1", "errors2")


class HttperfOutputError(LoadError):
    pass


def parse_httperf(text: str) -> dict:
    """The figures of one httperf report (httperf 0.9 format) as a flat dict of numbers."""
    found = {}
    for key, pat in _PATTERNS.items():
        m = re.search(pat, text, re.M)
        if m:
            found[key] = [float(g) for g in m.groups()]
    missing = [k for k in _REQUIRED if k not in found]
    if missing:
        raise HttperfOutputError(f"httperf output lacks its {', '.join(missing)} line(s); "
                                 f"first line: {text.strip().splitlines()[0] if text.strip() else '(empty)'}")
    conns, requests, replies, duration = found["total"]
    e1, e2 = found["errors1"], found["errors2"]
    out = {
        "connections": int(conns), "requests": int(requests), "replies": int(replies),
        "test_duration_s": duration,
        "max_concurrent": int(found["conn_rate"][2]) if "conn_rate" in found else 0,
        "connect_ms": found["connect"][0] if "connect" in found else 0.0,
        "response_ms": found["reply_time"][0], "transfer_ms": found["reply_time"][1],
        "reply_bytes": found["reply_size"][3],
        "errors": int(e1[0]), "client_timo": int(e1[1]), "socket_timo": int(e1[2]), "connrefused": int(e1[3]),
        "connreset": int(e1[4]), "fd_unavail": int(e2[0]), "addrunavail": int(e2[1]), "ftab_full": int(e2[2]),
        "other": int(e2[3]),
        "samples": [float(x) for x in re.findall(rf"^reply-rate = {_NUM}", text, re.M)],
    }
    if "status" in found:
        for cls, n in zip("12345", found["status"]):
            out[f"status_{cls}xx"] = int(n)
    if "cpu" in found:
        out["cpu_pct"] = found["cpu"][4]
    if "net" in found:
        out["net_mbps"] = found["net"][1]
    if "sessions" in found:
        done, total = found["sessions"][4:6]
        out["sessions_completed"], out["sessions_failed"] = int(done), int(total - done)
    return out


def merge(parts: list[dict]) -> dict:
    """Sum the counts of several httperf reports; weight their means by what they average over."""
    out = {}
    for key in ("connections", "requests", "replies", "errors", "max_concurrent", *ERROR_KINDS,
                "sessions_completed", "sessions_failed", *(f"status_{c}xx" for c in "12345")):
        out[key] = sum(p.get(key, 0) for p in parts)
    replies = out["replies"]
    out["test_duration_s"] = max(p["test_duration_s"] for p in parts)
    out["response_ms"] = _wmean([(p["response_ms"], p["replies"]) for p in parts])
    out["transfer_ms"] = _wmean([(p["transfer_ms"], p["replies"]) for p in parts])
    out["reply_bytes"] = _wmean([(p["reply_bytes"], p["replies"]) for p in parts]) if replies else 0.0
    out["connect_ms"] = _wmean([(p["connect_ms"], p["connections"]) for p in parts])
    out["cpu_pct"] = sum(p.get("cpu_pct", 0.0) for p in parts)
    n = max((len(p["samples"]) for p in parts), default=0)
    out["samples"] = [sum(p["samples"][i] for p in parts if i < len(p["samples"])) for i in range(n)]
    return out


def _wmean(pairs) -> float:
    w = sum(n for _, n in pairs)
    return sum(v * n for v, n in pairs) / w if w else 0.0


# ---------------------------------------------------------------- running httperf

def plan_instances(workload: Workload, offered_rps: float, conns_per_instance: int = CONNS_PER_INSTANCE,
                   max_instances: int = MAX_INSTANCES) -> tuple[int, float]:
    """(httperf processes needed, estimated concurrent sessions) for an offered request rate."""
    concurrency = workload.session_rate(offered_rps) * workload.mean_session_think_s
    k = dataclasses.replace(workload, generator_sessions_per_process=conns_per_instance,
                            session_templates=0).generator_processes(offered_rps)
    if k > max_instances:
        raise LoadError(f"{offered_rps:g} req/s keeps about {concurrency:,.0f} sessions open, more than "
                        f"{max_instances} httperf processes of {conns_per_instance} each (select's FD_SETSIZE is "
                        f"{FD_SETSIZE}); lower the rate or raise the instance limit")
    return k, concurrency


def run_httperf(server: str, port: int, workload: Workload, offered_rps: float, duration_s: float, cpu: int | None = 1,
                *, seed: int = 0, warmup_s: float | None = None, max_instances: int = MAX_INSTANCES,
                conns_per_instance: int = CONNS_PER_INSTANCE, workdir: str | None = None,
                httperf: str = "httperf", keep_files: bool = False, stop_after_s: float | None = None) -> dict:
    """Offer `offered_rps` requests/s for `duration_s` seconds of session arrivals; return the run's metrics.

    Metrics (keys as the simulator's): reply_rps, throughput_mbps, response_ms_mean (httperf's reply time:
    response + transfer), connect_ms_mean, errors_pct (errors per request issued, a connection that failed
    before sending counting as one), the errors by kind, sessions_completed/failed; and offered_window_rps,
    the rate the sessions offered over the window reply_rps was measured in (see the module docstring).
    `stop_after_s` interrupts httperf (SIGINT: it stops and prints its report) that long after the start,
    instead of waiting for the last sessions to end: short runs for a peak search.
    """
    if not offered_rps > 0 or not duration_s > 0:
        raise LoadError(f"need a positive rate and duration, got {offered_rps} req/s for {duration_s} s")
    if shutil.which(httperf) is None:
        raise LoadError(f"{httperf} not found; install the Debian package httperf")
    if cpu is not None and shutil.which("taskset") is None:
        raise LoadError("taskset not found (util-linux); pass cpu=None to run unpinned")
    k, concurrency = plan_instances(workload, offered_rps, conns_per_instance, max_instances)
    if workload.session_templates:
        # as many processes as the templates need, each holding at most httperf's 1,000
        need = math.ceil(workload.session_templates / MAX_TEMPLATES)
        if need > max_instances:
            raise LoadError(f"{workload.session_templates} session templates need {need} httperf processes of "
                            f"{MAX_TEMPLATES} each, more than the limit of {max_instances}")
        k = max(k, need)
    sess_rate = workload.session_rate(offered_rps)
    n_total = max(1, round(sess_rate * duration_s))
    counts = generator.session_counts(n_total, k)
    k = len(counts)
    rates = [sess_rate * c / n_total for c in counts]

    own_dir = workdir is None
    workdir = tempfile.mkdtemp(prefix="httperf-") if own_dir else workdir
    os.makedirs(workdir, exist_ok=True)
    procs, logs, outs = [], [], []
    shares = template_slices(workload, counts) if workload.session_templates else None
    try:
        for i, (c, lam) in enumerate(zip(counts, rates)):
            path = os.path.join(workdir, f"sessions-{i}.log")
            if shares is not None:
                logs.append(write_templates(workload, shares[i], path))
            else:
                logs.append(write_wsesslog(workload, np.random.default_rng([seed, i]), min(c, MAX_TEMPLATES), path))
            cmd = ([] if cpu is None else ["taskset", "-c", str(cpu)]) + [
                httperf, "-v", f"--server={server}", f"--port={port}", f"--wsesslog={c},0,{path}",
                f"--period=e{generator.period_s(lam):.9f}", f"--timeout={workload.timeout_s:g}", f"--client={i}/{k}"]
            out = open(os.path.join(workdir, f"httperf-{i}.out"), "w+")
            outs.append(out)
            procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True))
        # the last session starts near duration_s; it lasts its think times plus its replies
        limit = duration_s + max(l.longest_s for l in logs) + 2 * workload.timeout_s + 30.0
        started = time.monotonic()
        deadline = started + limit
        if stop_after_s is not None:
            deadline = min(deadline, started + stop_after_s)
            _wait_all(procs, deadline)
            for p in procs:
                if p.poll() is None:
                    try:
                        os.kill(p.pid, signal.SIGINT)
                    except ProcessLookupError:
                        pass
            deadline = time.monotonic() + 10.0
        killed = False
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                killed = True
        if killed:
            raise LoadError(f"httperf did not finish within {limit:.0f} s; stopped it")
        parts = []
        for i, (p, out) in enumerate(zip(procs, outs)):
            out.seek(0)
            text = out.read()
            if p.returncode != 0:
                last = text.strip().splitlines()[-1] if text.strip() else "(no output)"
                raise LoadError(f"httperf instance {i} exited with {p.returncode}: {last}")
            parts.append(parse_httperf(text))
        raw_texts = None
        if keep_files:
            raw_texts = []
            for out in outs:
                out.seek(0)
                raw_texts.append(out.read())
    finally:
        for p in procs:
            if p.poll() is None:
                _kill(p)
        for out in outs:
            out.close()
        if own_dir and not keep_files:
            shutil.rmtree(workdir, ignore_errors=True)

    m = merge(parts)
    starts = [generator.start_instants(i, lam, c) for i, (c, lam) in enumerate(zip(counts, rates))]
    window = sample_window(workload, duration_s, warmup_s, len(m["samples"]))
    if window is not None:
        a, b = window
        first, last = round(a / SAMPLE_S), round(b / SAMPLE_S)
        reply_rps = sum(m["samples"][first:last]) / (last - first)
        basis = f"samples {a:g}-{b:g} s"
    else:
        a, b = 0.0, max(m["test_duration_s"], 1e-9)
        reply_rps = m["replies"] / b
        basis = "whole run"
    offered_window = offered_in_window(logs, starts, a, b) / (b - a)
    connect_failures = m["fd_unavail"] + m["connrefused"] + m["addrunavail"] + m["ftab_full"]
    issued = m["requests"] + connect_failures
    result = {
        "offered_rps": float(offered_rps), "session_rate": sess_rate, "duration_s": float(duration_s),
        "instances": k, "est_concurrency": round(concurrency, 1), "sessions": n_total,
        "reply_rps": reply_rps, "reply_rps_basis": basis, "offered_window_rps": offered_window,
        "throughput_mbps": reply_rps * m["reply_bytes"] * 8 / 1e6,
        "response_ms_mean": m["response_ms"] + m["transfer_ms"], "connect_ms_mean": m["connect_ms"],
        "errors_pct": 100.0 * m["errors"] / issued if issued else (100.0 if m["errors"] else 0.0),
        "errors": m["errors"], **{kind: m[kind] for kind in ERROR_KINDS},
        "sessions_completed": m["sessions_completed"], "sessions_failed": m["sessions_failed"],
        "requests": m["requests"], "replies": m["replies"], "replies_2xx": m["status_2xx"],
        "replies_not_2xx": m["replies"] - m["status_2xx"],
        "test_duration_s": m["test_duration_s"], "max_concurrent": m["max_concurrent"],
        "client_cpu_pct": m["cpu_pct"], "reply_rate_samples": m["samples"],
    }
    if raw_texts is not None:
        result["httperf_output"] = raw_texts
        result["workdir"] = workdir
    return result


def sample_window(workload: Workload, duration_s: float, warmup_s: float | None = None,
                  samples: int | None = None) -> tuple[float, float] | None:
    """[a, b), the seconds after httperf's start whose 5 s samples `reply_rps` averages: those after
    the warm-up (by default the think times of one session, at most half the run) that end before
    the last session starts; None when the run is too short for one (the whole run is used)."""
    if warmup_s is None:
        warmup_s = min(workload.mean_session_think_s, duration_s / 2)
    first = math.ceil(warmup_s / SAMPLE_S - 1e-9)
    last = int(math.floor(duration_s / SAMPLE_S + 1e-9))
    if samples is not None:
        last = min(last, samples)
    return (first * SAMPLE_S, last * SAMPLE_S) if last > first else None


def _wait_all(procs: list[subprocess.Popen], deadline: float) -> None:
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return


def _kill(p: subprocess.Popen) -> None:
    """Stop one process we started (and its process group, which it leads) and reap it."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return
        try:
            p.wait(timeout=3)
            return
        except subprocess.TimeoutExpired:
            continue


def atomic_write_text(path: str, text: str) -> None:
    """Write `text` through a temporary file beside `path`, then rename it over `path`."""
    write_text(path, text)


# ---------------------------------------------------------------- nginx, the reference server

NGINX_CONF = """\
{user}worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 20000; }}
worker_rlimit_nofile 20000;
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 75s;
    keepalive_requests 100000;
    default_type application/octet-stream;
    client_body_temp_path {prefix}/tmp;
    proxy_temp_path {prefix}/tmp;
    fastcgi_temp_path {prefix}/tmp;
    uwsgi_temp_path {prefix}/tmp;
    scgi_temp_path {prefix}/tmp;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {root};
    }}
}}
"""


def _last_line(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = f.read().strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nginx:
    """nginx with one worker and sendfile on, serving `root` on 127.0.0.1, as a subprocess we stop by pid."""

    def __init__(self, root: str, *, cpu: int | None = 0, nginx: str = "nginx"):
        self.root, self.cpu, self.nginx = os.path.abspath(root), cpu, nginx
        self.prefix = self.port = self.proc = None

    def start(self, timeout_s: float = 10.0) -> "Nginx":
        if shutil.which(self.nginx) is None:
            raise LoadError(f"{self.nginx} not found; install the Debian package nginx-light")
        for attempt in range(3):
            self.prefix = tempfile.mkdtemp(prefix="nginx-")
            os.makedirs(os.path.join(self.prefix, "tmp"))
            self.port = free_port()
            conf = os.path.join(self.prefix, "nginx.conf")
            # as root, nginx's workers would switch to `nobody`, who may not read a private root
            user = f"user {pwd.getpwuid(0).pw_name};\n" if os.geteuid() == 0 else ""
            atomic_write_text(conf, NGINX_CONF.format(user=user, prefix=self.prefix, port=self.port, root=self.root))
            cmd = ([] if self.cpu is None else ["taskset", "-c", str(self.cpu)]) + [
                self.nginx, "-c", conf, "-p", self.prefix + "/", "-e", os.path.join(self.prefix, "error.log")]
            log = open(os.path.join(self.prefix, "stderr.log"), "w")
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
            log.close()
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                    return self
                except OSError:
                    time.sleep(0.05)
            why = _last_line(os.path.join(self.prefix, "stderr.log")) or _last_line(
                os.path.join(self.prefix, "error.log")) or f"exit status {self.proc.poll()}"
            self.stop()
        raise LoadError(f"nginx did not start: {why}")

    def stop(self) -> None:
        """Stop nginx and remove its configuration directory."""
        if self.proc is not None and self.proc.poll() is None:
            _kill(self.proc)
        self.proc = None
        if self.prefix:
            shutil.rmtree(self.prefix, ignore_errors=True)
            self.prefix = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# ---------------------------------------------------------------- command line

COLUMNS = (("offered_rps", "offered/s", "{:>9.0f}"), ("reply_rps", "reply/s", "{:>9.1f}"),
           ("offered_window_rps", "win.off/s", "{:>9.1f}"), ("throughput_mbps", "Mbps", "{:>8.1f}"),
           ("response_ms_mean", "resp ms", "{:>8.1f}"), ("connect_ms_mean", "conn ms", "{:>8.1f}"),
           ("errors_pct", "err %", "{:>6.2f}"), ("sessions_failed", "s.fail", "{:>6d}"),
           ("instances", "httperf", "{:>7d}"))


def format_table(rows: list[dict]) -> str:
    head = " ".join(f"{title:>{len(fmt.format(0))}}" for _, title, fmt in COLUMNS)
    lines = [head]
    for r in rows:
        lines.append(" ".join(fmt.format(r[key]) for key, _, fmt in COLUMNS))
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise LoadError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="simrun load",
                description="Drive a live server with httperf --wsesslog sessions drawn from the simulator's "
                            "workload, at each offered request rate, and print reply rate, Mbps, response time "
                            "and errors.")
    p.add_argument("--server", default="127.0.0.1", help="server address (default 127.0.0.1)")
    p.add_argument("--port", type=int, required=True, help="server port")
    p.add_argument("--rates", required=True, help="offered request rates, comma separated (e.g. 100,200)")
    p.add_argument("--duration", type=float, default=20.0,
                   help="seconds of session arrivals per rate (default 20; the run lasts longer by the last "
                        "sessions' length)")
    p.add_argument("--root", help="generated file set (its manifest gives the directory count)")
    p.add_argument("--directories", type=int, help="file-set directories, if --root is not given (default 10)")
    p.add_argument("--core", type=int, default=1, help="CPU core for httperf (default 1); -1 for unpinned")
    p.add_argument("--seed", type=int, default=0, help="seed of the session files (default 0)")
    p.add_argument("--max-instances", type=int, default=MAX_INSTANCES,
                   help=f"most httperf processes per rate (default {MAX_INSTANCES})")
    p.add_argument("--no-tail", action="store_true",
                   help="stop httperf (SIGINT) when the arrivals end instead of letting the last sessions finish")
    p.add_argument("--json", help="write the results to this JSON file (atomically)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parser().parse_args(argv)
        try:
            rates = [float(x) for x in args.rates.split(",") if x.strip()]
        except ValueError:
            raise LoadError(f"--rates must be numbers separated by commas, got {args.rates!r}") from None
        if not rates or any(not r > 0 for r in rates):
            raise LoadError(f"--rates must be positive, got {args.rates!r}")
        if not 0 < args.port < 65536:
            raise LoadError(f"--port must be 1..65535, got {args.port}")
        if not args.duration > 0:
            raise LoadError(f"--duration must be positive, got {args.duration}")
        if args.root and args.directories:
            raise LoadError("give --root or --directories, not both")
        if args.root:
            from real.fileset import FileSetError, check
            try:
                directories = check(args.root)["directories"]
            except FileSetError as e:
                raise LoadError(str(e)) from None
        else:
            directories = args.directories or 10
            if directories < 1:
                raise LoadError(f"--directories must be >= 1, got {directories}")
        workload = Workload(fileset=FileSet(directories=directories))
        for r in rates:
            plan_instances(workload, r, max_instances=args.max_instances)  # refuse before any run
        if args.json:
            d = os.path.dirname(os.path.abspath(args.json))
            if not os.path.isdir(d):
                raise LoadError(f"--json: directory {d} does not exist")
        rows = []
        print(f"# {args.server}:{args.port}, {directories} directories, {args.duration:g} s per rate, "
              f"httperf on core {args.core if args.core >= 0 else 'any'}", flush=True)
        for r in rates:
            res = run_httperf(args.server, args.port, workload, r, args.duration,
                              None if args.core < 0 else args.core, seed=args.seed,
                              max_instances=args.max_instances,
                              stop_after_s=args.duration + 0.5 if args.no_tail else None)
            rows.append(res)
            print(format_table([res]).splitlines()[-1] if len(rows) > 1 else format_table([res]), flush=True)
        if args.json:
            doc = {"server": args.server, "port": args.port, "directories": directories, "seed": args.seed,
                   "duration_s": args.duration, "runs": rows}
            atomic_write_text(args.json, json.dumps(doc, indent=1) + "\n")
    except LoadError as e:
        print(f"simrun load: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
