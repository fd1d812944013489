"""One simulation run: one server configuration at one offered rate, one replication.

Builds the machine (sim/server.py), starts the architecture's model and the
clients, warms the page cache as a long-running server would have it, runs past
the warm-up and measures over the window that follows.
"""
from __future__ import annotations

import math

import numpy as np

import models

from .analytic import che_lru_hit_ratio
from .clients import Clients
from .config import Scenario, ServerSpec
from . import membus
from .server import Server
from .timer import Environment


def point_seed(seed: int, rep: int, rate: float) -> list[int]:
    """Seeds shared by every architecture at one rate and replication (common random numbers)."""
    return [int(seed), int(rep), int(round(rate * 1000))]


def warm_page_cache(server: Server, fileset, rng: np.random.Generator) -> None:
    """Start the page cache in an LRU's stationary state, as a long-running server has it.

    By Che's approximation file i is resident with probability 1 - exp(-p_i T), T
    filling the cache on average: the most requested files, whatever their size. A
    model that warmed the cache itself (one with its own file cache) keeps its files.
    """
    p, sizes = fileset.probabilities, fileset.sizes
    T = che_lru_hit_ratio(p, sizes.astype(float), server.cache.capacity).char_time
    resident = -np.expm1(-p * T) if np.isfinite(T) else np.ones_like(p)
    order = np.argsort(-resident, kind="stable")
    server.cache.warm(order[(rng.random(len(p)) < resident)[order]], sizes)


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


def simulate(scenario: Scenario, spec: ServerSpec, rate: float, rep: int, detail: bool = False) -> dict[str, float]:
    """Run one replication and return its metrics (with `detail`, also each core's and NIC's utilisation)."""
    env, server, clients, entities = build(scenario, spec, rate, rep)
    run = scenario.run
    t0, t1 = run.warmup_s, run.warmup_s + run.duration_s
    snap = {}

    def snapshot():
        yield env.timeout(t0)
        snap.update(_counters(server, entities, env.now))

    env.process(snapshot())
    env.run(until=t1)
    end = _counters(server, entities, t1)
    d = {k: end[k] - snap.get(k, 0.0) for k in end}
    dur = run.duration_s
    hw = scenario.hardware
    errors = clients.timeouts + clients.connect_failures
    attempts = clients.replies + errors
    resp = np.frombuffer(clients.response, dtype=float) if len(clients.response) else np.empty(0)
    lookups = d["hits"] + d["misses"]
    out = {
        "reply_rps": clients.replies / dur,
        "throughput_mbps": clients.bytes * 8 / dur / 1e6,
        "response_ms_mean": float(resp.mean() * 1e3) if resp.size else math.nan,
        "response_ms_p90": float(np.percentile(resp, 90) * 1e3) if resp.size else math.nan,
        "errors_pct": 100.0 * errors / attempts if attempts else 0.0,
        "timeouts_pct": 100.0 * clients.timeouts / attempts if attempts else 0.0,
        "refused_pct": 100.0 * clients.connect_failures / attempts if attempts else 0.0,
        "cpu_util": min(1.0, d["cpu"] / (hw.cores * dur)),
        "nic_util": d["nic"] / (hw.nics * dur),
        "disk_util": min(1.0, d["disk"] / (hw.disks * dur)),
        "cache_hit_pct": 100.0 * d["hits"] / lookups if lookups else 100.0,
        "blocked_pct": 100.0 * d["blocked"] / (len(entities) * dur),
        "conns_mean": float(np.mean(clients.open_samples)) if len(clients.open_samples) else 0.0,
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
