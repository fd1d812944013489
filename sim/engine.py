"""One simulation run: one server configuration at one offered rate, one replication.

Builds the machine (sim/server.py), starts the architecture's model and the
clients, warms the page cache as a long-running server would have it, runs past
the warm-up and measures over the window that follows.
"""
from __future__ import annotations

import contextlib
import functools
import gc
import math

import numpy as np

import models

from .analytic import che_lru_hit_ratio, two_list_hit_ratio
from .clients import Clients
from .config import Scenario, ServerSpec
from . import membus
from .hardware import TwoListCache
from .server import Server
from .timer import Environment


def point_seed(seed: int, rep: int, rate: float) -> list[int]:
    """Seeds shared by every architecture at one rate and replication (common random numbers)."""
    return [int(seed), int(rep), int(round(rate * 1000))]


def warm_page_cache(server: Server, fileset, rng: np.random.Generator) -> None:
    """Start the page cache in its policy's stationary state, as a long-running server has it.

    LRU: by Che's approximation file i is resident with probability 1 - exp(-p_i T), T
    filling the cache on average: the most requested files, whatever their size. Two
    lists: each file is resident, and active, with the probabilities of the two-list
    approximation (sim/analytic.py). A model that warmed the cache itself (one with its
    own file cache) keeps its files.
    """
    p, sizes = fileset.probabilities, fileset.sizes
    cache = server.cache
    if isinstance(cache, TwoListCache):
        hit = _two_list_state(fileset, cache.capacity, cache.refault)
        draw = rng.random((2, len(p)))
        order = np.argsort(-hit.resident, kind="stable")
        active = draw[1] * hit.resident < hit.active
        cache.warm(order[(draw[0] < hit.resident)[order]], sizes, active)
        return
    T = che_lru_hit_ratio(p, sizes.astype(float), cache.capacity).char_time
    resident = -np.expm1(-p * T) if np.isfinite(T) else np.ones_like(p)
    order = np.argsort(-resident, kind="stable")
    cache.warm(order[(rng.random(len(p)) < resident)[order]], sizes)


@functools.lru_cache(maxsize=32)
def _two_list_state(fileset, capacity: float, refault: bool):
    """The two-list approximation, kept: every replication of a point starts from it."""
    return two_list_hit_ratio(fileset.probabilities, fileset.sizes.astype(float), capacity, refault)


def build(scenario: Scenario, spec: ServerSpec, rate: float, rep: int):
    """The environment, server and clients of one run, ready to run."""
    hw, wl, run = scenario.hardware, scenario.workload, scenario.run
    env = Environment()
    module = models.module_of(spec.architecture)
    server = Server(env, hw, scenario.profile, wl, module.OPERATIONS)
    membus.attach(server, hw)
    server.add_footprint(0)
    entities = module.start(server, spec.knobs)
    warm_page_cache(server, wl.fileset, np.random.default_rng(point_seed(run.seed, rep, rate) + [1]))
    rng = np.random.default_rng(point_seed(run.seed, rep, rate))
    window = (run.warmup_s, run.warmup_s + run.duration_s)
    clients = Clients(env, wl, rate, rng, server, window)
    server.clients = clients
    clients.prefill()
    return env, server, clients, entities


GC_GEN0 = 50_000      # allocations between young collections while a run steps (CPython's default: 700)


@contextlib.contextmanager
def gc_paced():
    """Python's cyclic garbage collector, paced for a run. A run allocates an event or two per
    simulated step, most of them dead within microseconds, while the model (sessions, files,
    thousands of thread processes) lives throughout: at the default pace a young collection came
    every 700 allocations, and each older one walked the whole model. So the model built so far
    is frozen (never walked) and young collections come every GC_GEN0 allocations; garbage cycles
    are still collected, only later. No object's life depends on the collector, so results do not
    change."""
    old = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(GC_GEN0, old[1], old[2])
    try:
        yield
    finally:
        gc.set_threshold(*old)
        gc.unfreeze()


def simulate(scenario: Scenario, spec: ServerSpec, rate: float, rep: int, detail: bool = False) -> dict:
    """Run one replication and return its metrics over the measured window.

    With `run.batches`, the metrics of each of that many equal parts of the window
    come too, under `batches` (batch means: one long run gives the CI's samples).
    With `detail`, each core's and NIC's utilisation as well.
    """
    env, server, clients, entities = build(scenario, spec, rate, rep)
    run = scenario.run
    t0, t1 = run.warmup_s, run.warmup_s + run.duration_s
    k = run.batches
    edges = [t0 + run.duration_s * i / k for i in range(k)] + [t1] if k else [t0, t1]
    snaps = []

    def snapshot():
        for t in edges[:-1]:
            yield env.timeout(t - env.now)
            snaps.append(_counters(server, entities, env.now))

    env.process(snapshot())
    with gc_paced():
        env.run(until=t1)
    snaps.append(_counters(server, entities, t1))
    out = _window_metrics(scenario, server, clients, entities, snaps[0], snaps[-1], t0, t1, detail)
    if k:
        out["batches"] = [_window_metrics(scenario, server, clients, entities, snaps[i], snaps[i + 1],
                                          edges[i], edges[i + 1], detail) for i in range(k)]
    return out


def _window_metrics(scenario, server, clients, entities, first, last, a, b, detail) -> dict[str, float]:
    """The metrics over [a, b) of the measured window, from the counters at its ends."""
    d = {key: last[key] - first.get(key, 0.0) for key in last}
    dur = b - a
    hw = scenario.hardware

    def within(at):
        t = np.frombuffer(at, dtype=float) if len(at) else np.empty(0)
        return (t >= a) & (t < b)

    resp = np.frombuffer(clients.response, dtype=float) if len(clients.response) else np.empty(0)
    sizes = np.frombuffer(clients.reply_bytes, dtype=float) if len(clients.reply_bytes) else np.empty(0)
    opened = np.frombuffer(clients.open_samples, dtype=float) if len(clients.open_samples) else np.empty(0)
    if (a, b) != (clients.t0, clients.t1):      # a batch: only what happened within it
        inside = within(clients.reply_at)
        resp, sizes = resp[inside], sizes[inside]
        opened = opened[within(clients.open_sampled_at)]
    replies = resp.size
    timeouts = int(np.count_nonzero(within(clients.timeout_at)))
    refused = int(np.count_nonzero(within(clients.refused_at)))
    errors = timeouts + refused
    attempts = replies + errors
    lookups = d["hits"] + d["misses"]
    out = {
        "reply_rps": replies / dur,
        "throughput_mbps": float(sizes.sum()) * 8 / dur / 1e6,
        "response_ms_mean": float(resp.mean() * 1e3) if resp.size else math.nan,
        "response_ms_p90": float(np.percentile(resp, 90) * 1e3) if resp.size else math.nan,
        "errors_pct": 100.0 * errors / attempts if attempts else 0.0,
        "timeouts_pct": 100.0 * timeouts / attempts if attempts else 0.0,
        "refused_pct": 100.0 * refused / attempts if attempts else 0.0,
        "cpu_util": min(1.0, d["cpu"] / (hw.cores * dur)),
        "nic_util": d["nic"] / (hw.nics * dur),
        "disk_util": min(1.0, d["disk"] / (hw.disks * dur)),
        "cache_hit_pct": 100.0 * d["hits"] / lookups if lookups else 100.0,
        "blocked_pct": 100.0 * d["blocked"] / (len(entities) * dur),
        "conns_mean": float(np.mean(opened)) if opened.size else 0.0,
        "ctx_switches_per_s": d["switches"] / dur,
    }
    out.update(membus.metrics(hw, d, dur))
    if detail:
        out.update({f"cpu_util_core{i}": min(1.0, d[f"core{i}"] / dur) for i in range(hw.cores)})
        out.update({f"nic_util_link{i}": d[f"link{i}"] / dur for i in range(hw.nics)})
        out["detail_entities"] = float(len(entities))
    return out


def _counters(server: Server, entities, now) -> dict[str, float]:
    return {
        "cpu": server.cpu.busy,
        "nic": sum(link.busy_time(now) for link in server.links),
        "disk": server.disk.busy,
        "hits": server.cache.hits,
        "misses": server.cache.misses,
        "blocked": sum(e.blocked_s for e in entities),
        "switches": server.cpu.switches,
        **membus.counters(server),
        **{f"core{i}": b for i, b in enumerate(server.cpu.core_busy)},
        **{f"link{i}": link.busy_time(now) for i, link in enumerate(server.links)},
    }
