"""Batch means: one run's measured window cut into batches that are the CI's samples."""
from __future__ import annotations

import math

from sim.engine import simulate
from sim.executor import InlineExecutor
from sim.resultcache import ResultCache, replication_key
from sim.runner import run_scenario, samples
from sim.scenario import load_scenario

SCENARIO = """
[scenario]
name = "bm"
profile = "study-xeon"
[workload]
directories = 20
[run]
rates = [4000]
warmup_s = 1
duration_s = 2
replications = 1
max_replications = 1
batches = {batches}
seed = 4
[[server]]
label = "sped"
architecture = "sped"
"""


def load(tmp_path, batches):
    p = tmp_path / f"bm{batches}.toml"
    text = SCENARIO.format(batches=batches)
    if not batches:
        text = text.replace("replications = 1\nmax_replications = 1", "replications = 2\nmax_replications = 2")
    p.write_text(text)
    return load_scenario(p)


def test_batches_partition_the_window(tmp_path):
    sc = load(tmp_path, 4)
    m = simulate(sc, sc.servers[0], 4000, 0)
    parts = m["batches"]
    assert len(parts) == 4
    # every reply falls in exactly one batch of equal length: the batch rates average to the whole
    assert math.isclose(sum(b["reply_rps"] for b in parts) / 4, m["reply_rps"], rel_tol=1e-12)
    assert math.isclose(sum(b["throughput_mbps"] for b in parts) / 4, m["throughput_mbps"], rel_tol=1e-12)
    assert math.isclose(sum(b["cpu_util"] for b in parts) / 4, m["cpu_util"], rel_tol=1e-9)
    assert len({round(b["reply_rps"]) for b in parts}) > 1       # they are not copies of one another
    # the whole window is what a run without batches measures
    plain = simulate(load(tmp_path, 0), sc.servers[0], 4000, 0)
    assert {k: v for k, v in m.items() if k != "batches"} == plain


def test_runner_takes_batches_as_samples_and_cache_keeps_them(tmp_path):
    sc = load(tmp_path, 5)
    (res,) = run_scenario(sc, executor=InlineExecutor(), progress=False)
    est = res.metrics["throughput_mbps"]
    assert res.replications == 1 and est.n == 5 and 0 < est.halfwidth < est.mean
    cache = ResultCache(tmp_path / "cache")
    m = simulate(sc, sc.servers[0], 4000, 0)
    key = replication_key(sc, sc.servers[0], 4000, 0)
    cache.put(key, m)
    back = cache.get(key)
    assert samples({0: back}) == samples({0: m}) and len(samples({0: back})) == 5
    # batches are part of the key: a run cut otherwise is another result
    assert replication_key(load(tmp_path, 4), sc.servers[0], 4000, 0) != key
