"""The simulator against textbook queues, where it reduces to one.

A Poisson stream of single-request connections (the load generator's tick off, so
each arrives at its drawn instant), every operation free except
sendfile's per-byte cost, replies carried by an effectively infinite NIC: SPED is
then a FIFO single server (M/D/1 for one file, M/M/1 for exponential sizes) and
SYMPED with c processes, c cores and one connection per process is M/M/c. With
free CPU and a slow NIC, the fluid link is processor sharing (M/G/1-PS). Each
check asks the textbook value to lie inside the run's 99% confidence interval
over independent replications.
"""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
from scipy import stats as st

from sim import analytic
from sim.engine import simulate
from sim.operations import OPERATION_NAMES
from sim.scenario import load_scenario

SERVICE_BYTES = 10_000
US_PER_BYTE = 0.1          # 10,000 bytes -> 1 ms of CPU


def write_profile(tmp_path, sendfile_us_per_byte=US_PER_BYTE):
    lines = ['[profile]', 'name = "textbook"', '[hardware]', 'memory_mb = 16384', 'kernel_mb = 16',
             'nics = 1', 'nic_gbps = 1000', 'sndbuf_kb = 65536', 'listen_backlog = 100000',
             '[footprint]', 'process_kb = 0', 'kernel_thread_kb = 0', 'user_thread_kb = 0', 'connection_kb = 0']
    for op in OPERATION_NAMES:
        per_unit = sendfile_us_per_byte if op == "sendfile" else 0
        lines += [f'[costs.{op}]', 'fixed_us = 0', f'per_unit_us = {per_unit}']
    (tmp_path / "textbook.toml").write_text("\n".join(lines) + "\n")


def scenario(tmp_path, server: str, workload: str, rate: float, hardware: str = "", reps: int = 5,
             duration: float = 20.0, sendfile_us_per_byte=US_PER_BYTE):
    write_profile(tmp_path, sendfile_us_per_byte)
    text = f"""
[scenario]
name = "textbook"
profile = "textbook.toml"
[hardware]
{hardware}
[workload]
fileset = "synthetic"
{workload}
header_bytes = 0
session_requests_min = 1
session_requests_max = 1
burst_requests_min = 1
burst_requests_max = 1
timeout_s = 1000
generator_tick_s = 0
[run]
rates = [{rate}]
warmup_s = 2
duration_s = {duration}
replications = {reps}
max_replications = {reps}
seed = 11
[[server]]
label = "s"
{server}
"""
    path = tmp_path / "s.toml"
    path.write_text(text)
    return load_scenario(path)


def response_ci(sc, q=0.99):
    """Mean response time (s) over replications, and its q confidence half-width."""
    means = np.array([simulate(sc, sc.servers[0], sc.run.rates[0], r)["response_ms_mean"] / 1e3
                      for r in range(sc.run.replications)])
    half = st.t.ppf(0.5 + q / 2, len(means) - 1) * means.std(ddof=1) / math.sqrt(len(means))
    return means.mean(), half


def check(name, mean, expect, half):
    """The simulated mean within its 99% CI of the analytic one (printed with -s)."""
    print(f"{name}: {mean * 1e3:.4f} ± {half * 1e3:.4f} ms against {expect * 1e3:.4f} ms "
          f"({100 * (mean - expect) / expect:+.2f} %)")
    assert abs(mean - expect) <= half, (mean, expect, half)


def test_sped_one_file_is_md1(tmp_path):
    lam, s = 600.0, SERVICE_BYTES * US_PER_BYTE / 1e6
    sc = scenario(tmp_path, 'architecture = "sped"', f"files = 1\nmean_bytes = {SERVICE_BYTES}", lam)
    mean, half = response_ci(sc)
    expect = analytic.md1(lam, s).mean_response
    check("SPED one file vs M/D/1", mean, expect, half)
    # and M/D/1 is told apart from M/M/1 at this load
    assert abs(analytic.mm1(lam, 1 / s).mean_response - expect) > 3 * half


def test_sped_exponential_sizes_is_mm1(tmp_path):
    lam = 600.0
    sc = scenario(tmp_path, 'architecture = "sped"',
                  f'files = 20000\nmean_bytes = {SERVICE_BYTES}\nsize_distribution = "exponential"', lam)
    s = sc.workload.fileset.sizes.mean() * US_PER_BYTE / 1e6
    mean, half = response_ci(sc)
    expect = analytic.mm1(lam, 1 / s).mean_response
    check("SPED exponential sizes vs M/M/1", mean, expect, half)


def test_symped_on_c_cores_is_mmc(tmp_path):
    lam, c = 1400.0, 2
    sc = scenario(tmp_path, f'architecture = "symped"\nprocesses = {c}\nmax_conns = {c}',
                  f'files = 20000\nmean_bytes = {SERVICE_BYTES}\nsize_distribution = "exponential"', lam,
                  hardware=f"cores = {c}")
    s = sc.workload.fileset.sizes.mean() * US_PER_BYTE / 1e6
    mean, half = response_ci(sc)
    expect = analytic.mmc(lam, 1 / s, c).mean_response
    check("SYMPED on c cores vs M/M/c", mean, expect, half)
    # and M/M/c is told apart from one server twice as fast
    assert abs(analytic.mm1(lam, 2 / s).mean_response - expect) > half


def test_fluid_nic_is_processor_sharing(tmp_path):
    """Equal-size replies on a slow link: PS gives S/(1-rho), FIFO would give M/D/1's smaller mean."""
    lam, rate_bytes = 750.0, 0.1e9 / 8
    sc = scenario(tmp_path, 'architecture = "sped"', f"files = 1\nmean_bytes = {SERVICE_BYTES}", lam,
                  hardware="nic_gbps = 0.1", sendfile_us_per_byte=0)
    mean, half = response_ci(sc)
    expect = analytic.fluid_link(lam, SERVICE_BYTES, rate_bytes).mean_response
    check("fluid NIC vs processor sharing", mean, expect, half)
    assert abs(analytic.md1(lam, SERVICE_BYTES / rate_bytes).mean_response - expect) > 3 * half


def test_a_link_whose_queue_holds_one_flow_is_fifo(tmp_path):
    """The same replies on a link that lets one flow at a time through (`nic_queue_flows = 1`): the
    others wait in arrival order, so the link is a FIFO server, M/D/1, no longer processor sharing."""
    lam, rate_bytes = 750.0, 0.1e9 / 8
    sc = scenario(tmp_path, 'architecture = "sped"', f"files = 1\nmean_bytes = {SERVICE_BYTES}", lam,
                  hardware="nic_gbps = 0.1\nnic_queue_flows = 1", sendfile_us_per_byte=0)
    mean, half = response_ci(sc)
    expect = analytic.md1(lam, SERVICE_BYTES / rate_bytes).mean_response
    check("link of one flow vs M/D/1", mean, expect, half)
    assert abs(analytic.fluid_link(lam, SERVICE_BYTES, rate_bytes).mean_response - expect) > 3 * half


def test_flows_past_the_links_queue_wait_in_arrival_order_and_can_be_cancelled():
    """Two places: the third and fourth flows wait; the fourth is cancelled while it waits, so it
    never starts and its bytes are not counted; the third takes the first place that frees."""
    from sim.hardware import Link
    from sim.timer import Environment

    env = Environment()
    link = Link(env, 1000.0, max_flows=2)                  # 1,000 bytes/s
    ended = []
    flows = [link.send(b, lambda name: ended.append((name, round(env.now, 9))), name)
             for name, b in (("a", 100.0), ("b", 300.0), ("c", 100.0), ("d", 50.0))]
    assert [f.waiting for f in flows] == [False, False, True, True]
    link.cancel(flows[3])
    assert link.bytes == 500.0
    env.run()
    # a and b share 1,000 bytes/s: a ends at 0.2; c starts then and shares with b (200 bytes left)
    # until c ends at 0.4, when b has 100 left, alone: 0.5
    assert ended == [("a", 0.2), ("c", 0.4), ("b", 0.5)]
    assert link.busy_time(env.now) == pytest.approx(0.5)


def test_a_cancelled_flow_speeds_the_others_up_at_once():
    """Two flows share 1,000 bytes/s; one is reset at 0.12 s with 40 bytes left: the other has 40
    bytes left too and the whole link, so it ends at 0.16 s, not at 0.2 s as at half the rate."""
    from sim.hardware import Link
    from sim.timer import Environment

    env = Environment()
    link = Link(env, 1000.0)
    ended = []
    link.send(100.0, lambda arg: ended.append(round(env.now, 9)), None)
    other = link.send(100.0, lambda arg: ended.append(-1), None)
    env.call_later(0.12, lambda _c: link.cancel(other))
    env.run()
    assert ended == [0.16]
    assert link.bytes == pytest.approx(160.0)


def test_cpu_quota_throttles_bursts_to_the_period_share():
    """CFS bandwidth: 50 % of one core in 100 ms periods; full speed while the share lasts."""
    import simpy

    from sim.hardware import CPU

    env = simpy.Environment()
    cpu = CPU(env, 1, 0.0, quota=0.5, period=0.1)
    ends = []

    def burst(seconds):
        yield cpu.run("p", seconds)
        ends.append(round(env.now, 12))

    def job():
        yield env.process(burst(0.08))   # 0.05 in period 0, the rest after 0.1
        yield env.process(burst(0.01))   # period 1 has 0.02 left
        yield env.process(burst(0.03))   # 0.01 of it now, 0.02 in period 2
    env.process(job())
    env.run()
    assert ends == [0.13, 0.14, 0.22]
    assert cpu.throttles == 2 and abs(cpu.busy - 0.12) < 1e-12
    # no quota: the same bursts back to back
    env = simpy.Environment()
    cpu = CPU(env, 1, 0.0)
    ends.clear()
    env.process(job())
    env.run()
    assert ends == [0.08, 0.09, 0.12]


def _deaf_worker_init():
    """A worker that outlives the pool's SIGTERM, busy (as in a long run) so that it cannot see
    the pool's end-of-work sentinel either."""
    import signal
    import time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(60)


def test_closing_the_local_pool_cannot_hang_on_a_worker(monkeypatch):
    """A worker that does not die of the pool's SIGTERM is killed after the grace time (the pool
    alone would wait for it a minute here, forever in the case this guards against)."""
    import time
    from sim import executor
    monkeypatch.setattr(executor, "_worker_init", _deaf_worker_init)
    ex = executor.LocalExecutor(2)
    ex.CLOSE_GRACE_S = 1.0
    ex.open([])
    pids = [p.pid for p in ex._pool._pool]
    time.sleep(0.3)                   # the workers have ignored SIGTERM by now
    t = time.monotonic()
    ex.close()
    assert time.monotonic() - t < 15
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
