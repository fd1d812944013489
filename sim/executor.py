"""Where replications run: in this process, in forked local processes, or on a Dask cluster.

Every executor has the same four calls: `open(scenarios)` once per batch of
work, `submit(task)`, `next_done()` (the next finished task and its metrics, in
whatever order they finish) and `close()`. A task is (scenario index, server
index, offered rate, replication); its result depends on nothing else, so where
and in which order it runs never changes a number.
"""
from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import queue
import signal
import socket
import threading
from collections import deque
from typing import NamedTuple


class Task(NamedTuple):
    point: int        # index of the scenario (sweep point) in the batch
    server: int       # index of the server in that scenario
    rate: float
    rep: int


class ExecutorError(Exception):
    """The executor cannot run (bad address, cluster unreachable): one line for the user."""


def simulate_task(scenario, task: Task) -> dict:
    """One replication of one server at one rate, with the bottleneck detail."""
    from .engine import simulate

    return simulate(scenario, scenario.servers[task.server], task.rate, task.rep, detail=True)


# ---------------------------------------------------------------- in this process

class InlineExecutor:
    """Runs each task in this process when its result is asked for (--jobs 1)."""

    name = "inline"

    def __init__(self):
        self._scenarios: list = []
        self._todo: deque = deque()

    def open(self, scenarios):
        self._scenarios = list(scenarios)
        self._todo.clear()

    def submit(self, task: Task):
        self._todo.append(task)

    def next_done(self) -> tuple[Task, dict]:
        task = self._todo.popleft()
        return task, simulate_task(self._scenarios[task.point], task)

    def close(self):
        self._todo.clear()


# ---------------------------------------------------------------- local processes

_SCENARIOS: list = []   # the batch's scenarios in worker processes (inherited through fork)


def _worker_init():
    """Die with the parent (even on SIGKILL), and leave Ctrl-C to the parent."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _pool_run(task: Task):
    return task, simulate_task(_SCENARIOS[task.point], task)


class LocalExecutor:
    """`jobs` worker processes forked from this one; the scenarios reach them through fork."""

    name = "local"

    def __init__(self, jobs: int):
        if jobs < 1:
            raise ExecutorError("--jobs must be at least 1")
        self.jobs = jobs
        self._pool = None
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        self._pending = 0

    def open(self, scenarios):
        global _SCENARIOS
        self.close()
        _SCENARIOS = list(scenarios)
        self._pool = mp.get_context("fork").Pool(self.jobs, initializer=_worker_init)
        self._done = queue.SimpleQueue()
        self._pending = 0

    def submit(self, task: Task):
        self._pending += 1
        self._pool.apply_async(_pool_run, (task,), callback=self._done.put,
                               error_callback=lambda e: self._done.put(e))

    def next_done(self) -> tuple[Task, dict]:
        if not self._pending:
            raise RuntimeError("next_done with nothing submitted")
        got = self._done.get()
        self._pending -= 1
        if isinstance(got, BaseException):
            raise got
        return got

    CLOSE_GRACE_S = 20.0

    def close(self):
        """End the workers. The pool sends each a SIGTERM and waits for them; a worker that outlives
        it (seen once: `simrun validate --quick` waited forever on a worker idle on the task queue's
        lock, the cause not found) is killed after CLOSE_GRACE_S, so that closing cannot hang."""
        if self._pool is None:
            return
        pool, self._pool = self._pool, None
        closed = threading.Event()

        def watchdog():
            if not closed.wait(self.CLOSE_GRACE_S):
                for p in list(getattr(pool, "_pool", ())):     # the pool's worker processes
                    if p.exitcode is None:
                        p.kill()

        threading.Thread(target=watchdog, name="pool-close-watchdog", daemon=True).start()
        try:
            pool.terminate()
            pool.join()
        finally:
            closed.set()


# ---------------------------------------------------------------- Dask

def _code_version() -> str:
    from .resultcache import code_version
    return code_version()


def _dask_run(scenario, task: Task):
    return task, simulate_task(scenario, task)


def dask_address(spec: str) -> str:
    """`dask://HOST:PORT` (or tcp://HOST:PORT) as the scheduler address Dask wants."""
    for prefix in ("dask://", "tcp://"):
        if spec.startswith(prefix):
            rest = spec[len(prefix):]
            host, sep, port = rest.rpartition(":")
            if sep and host and port.isdigit() and 0 < int(port) < 65536:
                return f"tcp://{host}:{port}"
    raise ExecutorError(f"--executor {spec!r}: expected local or dask://HOST:PORT (for example dask://127.0.0.1:8786)")


class DaskExecutor:
    """The tasks on a Dask distributed cluster; each scenario is sent to the workers once.

    The workers must be able to import this package (same sources: the results
    are only identical to a local run when the code is the same).
    """

    name = "dask"

    def __init__(self, spec: str, timeout_s: float = 10.0):
        address = dask_address(spec)
        try:
            from distributed import Client, as_completed
        except ImportError:
            raise ExecutorError("the dask executor needs dask[distributed]: pip install 'dask[distributed]'") from None
        self._as_completed = as_completed
        host, _, port = address[len("tcp://"):].rpartition(":")
        try:  # fail fast, in one line, when nothing listens there
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
        except OSError as e:
            raise ExecutorError(f"cannot reach the Dask scheduler at {address}: {e.strerror or e}") from None
        try:
            self.client = Client(address, timeout=timeout_s, set_as_default=False)
        except Exception as e:  # noqa: BLE001 - whatever Dask raises, the user gets one line
            raise ExecutorError(f"cannot connect to a Dask scheduler at {address}: "
                                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
        self.address = address
        try:
            self.client.wait_for_workers(1, timeout=timeout_s)
        except Exception:  # noqa: BLE001 - reported below as "no workers"
            pass
        try:
            versions = self.client.run(_code_version)
        except Exception as e:  # noqa: BLE001
            self.client.close()
            raise ExecutorError(f"the Dask workers at {address} cannot run the simulator: "
                                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
        mine = _code_version()
        if not versions:
            self.client.close()
            raise ExecutorError(f"the Dask scheduler at {address} has no workers")
        stale = sorted(w for w, v in versions.items() if v != mine)
        if stale:
            self.client.close()
            raise ExecutorError(f"{len(stale)} Dask worker(s) run other simulator sources than this one "
                                f"(first: {stale[0]}); their results would differ from a local run")
        self._remote: list = []
        self._ac = None
        self._futures: set = set()

    def open(self, scenarios):
        self._drop()
        self._remote = self.client.scatter(list(scenarios), broadcast=True, hash=False)
        self._ac = self._as_completed(loop=self.client.loop)

    def submit(self, task: Task):
        f = self.client.submit(_dask_run, self._remote[task.point], task, pure=False)
        self._futures.add(f)
        self._ac.add(f)

    def next_done(self) -> tuple[Task, dict]:
        f = next(self._ac)
        self._futures.discard(f)
        return f.result()

    def _drop(self):
        if self._futures:
            self.client.cancel(list(self._futures))
        self._futures = set()
        self._remote = []
        self._ac = None

    def close(self):
        self._drop()

    def shutdown(self):
        self._drop()
        self.client.close()


def make_executor(spec: str | None, jobs: int):
    """`local` (or None): forked processes, or this process when jobs is 1; `dask://HOST:PORT`: a cluster."""
    if spec is None or spec == "local":
        return InlineExecutor() if jobs == 1 else LocalExecutor(jobs)
    return DaskExecutor(spec)
