"""Calibration: the fits recover known costs from synthetic traces; black-box demands; the report's
arithmetic; and a quick live validation (sped calibrated, held-out symped and nginx black box)."""
from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys

import numpy as np
import pytest

from calibration import fit
from calibration.blackbox import demands_of, profile_of
from calibration.cgroup import memory_charge, scaled_profile, sendfile_readahead_kb
from calibration.netns import goodput_gbps, queue_flows
from calibration.validate import (Settings, all_cases, case_scenario, compare, cpu_setting, disk_inputs, reads_serviced,
                                 saturation_rate, verdict, write_scenario)
from real.trace import OpStats, Trace, read_trace
from sim.config import Footprint, Hardware, Profile
from sim.operations import Cost
from sim.profile import load_profile, write_profile
from sim.resultcache import code_version
from sim.scenario import load_scenario

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def synthetic_trace(costs: dict, n: int, rng, bias: float = 1e-6, noise: float = 2e-6, units=None) -> Trace:
    """A trace whose sampled calls cost fixed + per_unit * units + bias + noise, bucketed like real/trace.py."""
    tr = Trace("synthetic", {"cpu_bias": repr(bias), "wall_bias": "0.0"}, {"start": (0, 0, 0), "last": (1, 1, 0)}, [])
    for op, (fixed, per_unit, unit) in costs.items():
        u = units[op](n) if units and op in units else np.ones(n)
        y = fixed + per_unit * u + bias + rng.normal(0.0, noise, n)
        buckets = np.frexp(u)[1]
        for b in np.unique(buckets):
            m = buckets == b
            uu, yy = u[m], y[m]
            tr.ops.append(OpStats("loop", op, unit, int(b), count=int(m.sum() * 8), units=float(uu.sum() * 8),
                                  cpu_count=int(m.sum()), cpu_units=float(uu.sum()), cpu_units2=float((uu * uu).sum()),
                                  cpu=float(yy.sum()), cpu2=float((yy * yy).sum()), units_cpu=float((uu * yy).sum())))
    return tr


def test_per_call_fit_recovers_known_costs():
    rng = np.random.default_rng(7)
    costs = {"parse": (15e-6, 0.0, "call"), "sendfile": (8e-6, 0.6e-9, "byte"), "read": (3e-6, 10e-9, "byte"),
             "epoll_wait": (20e-6, 1.0e-6, "event")}
    units = {"sendfile": lambda n: rng.choice([102, 1024, 5120, 10240, 51200, 409600], n).astype(float),
             "read": lambda n: rng.integers(40, 400, n).astype(float),
             "epoll_wait": lambda n: rng.integers(1, 40, n).astype(float)}
    tr = synthetic_trace(costs, 20000, rng, units=units)
    fits = fit.fit_operations([tr])
    for op, (fixed, per_unit, _) in costs.items():
        f = fits[op]
        assert f.fixed == pytest.approx(fixed, abs=0.3e-6), op
        assert f.per_unit == pytest.approx(per_unit, rel=0.05, abs=0.2e-9), op
        assert f.rms_s == pytest.approx(2e-6, rel=0.05), op      # the noise we put in, bias taken off
    assert fits["sendfile"].r2 > 0.9
    assert fits["parse"].calls == 8 * 20000 and fits["parse"].sampled == 20000


def test_sums_fit_equals_per_call_least_squares():
    rng = np.random.default_rng(3)
    u = rng.uniform(0, 1e5, 500)
    y = 5e-6 + 2e-10 * u + rng.normal(0, 1e-6, 500)
    a, b, rss = fit.fit_sums(fit.Sums.of_pairs(u, y), per_unit=True)
    x = np.column_stack([np.ones_like(u), u])
    coef, res, *_ = np.linalg.lstsq(x, y, rcond=None)
    assert a == pytest.approx(coef[0], rel=1e-6) and b == pytest.approx(coef[1], rel=1e-6)
    assert rss == pytest.approx(float(res[0]), rel=1e-4)


def test_fit_is_nonnegative_and_constant_units_give_no_slope():
    # costs falling with size would need a negative per-byte part: clipped at zero
    a, b, _ = fit.fit_sums(fit.Sums.of_pairs([1, 2, 3, 4], [4e-6, 3e-6, 2e-6, 1e-6]), per_unit=True)
    assert b == 0.0 and a == pytest.approx(2.5e-6)
    a, b, _ = fit.fit_sums(fit.Sums.of_pairs([7, 7, 7], [1e-6, 2e-6, 3e-6]), per_unit=True)
    assert b == 0.0 and a == pytest.approx(2e-6)


def test_unseen_regression_recovers_per_request_and_per_loop_cpu():
    rng = np.random.default_rng(11)
    runs = []
    for rate in (300, 700, 1100, 1500, 1900, 2300):
        req = rate * 10.0
        loops = req / (1 + rate / 300)          # batching grows with load, so loops and requests part
        runs.append(fit.RunCounts(req * 7, req, loops, req * 14000, req / 10,
                                  req * 12e-6 + loops * 30e-6 + rng.normal(0, 1e-4)))
    u = fit.fit_unseen(runs, ("requests", "loops"))
    assert u.coef["requests"] == pytest.approx(12e-6, rel=0.03)
    assert u.coef["loops"] == pytest.approx(30e-6, rel=0.03)
    # a negative per-request part (traces overstating) is allowed down to its bound
    # samples overstating every call (a negative per-call part) are corrected down to the bound
    runs = [fit.RunCounts(r.calls, r.requests, r.loops, 0, 0, r.calls * -2e-6 + r.loops * 30e-6) for r in runs]
    u = fit.fit_unseen(runs, ("calls", "loops"), lower={"calls": -5e-6})
    assert u.coef["calls"] == pytest.approx(-2e-6, rel=0.01) and u.coef["loops"] == pytest.approx(30e-6, rel=0.01)
    u = fit.fit_unseen(runs, ("calls", "loops"))
    assert u.coef["calls"] >= 0.0


def test_process_cpu_regression_recovers_scale_and_per_pass_cpu_into_the_profile():
    """/proc sets the level (traced CPU x scale) and the CPU per loop pass; build_profile applies both."""
    from calibration.calibrate import build_profile
    from sim.config import Footprint
    rng = np.random.default_rng(5)
    runs = []
    for rate in (800, 1200, 1800, 2600):
        req = rate * 10.0
        loops = req / (1 + rate / 250)
        traced = req * 70e-6 * rng.uniform(0.98, 1.02)
        runs.append(fit.RunCounts(req * 7, req, loops, 0, 0, 0.0, "", traced, 0.56 * traced + 58e-6 * loops))
    u = fit.fit_unseen(runs, ("traced", "loops"), target="process")
    assert u.coef["traced"] == pytest.approx(0.56, rel=0.01) and u.coef["loops"] == pytest.approx(58e-6, rel=0.02)
    # the level again on the busiest runs, the per-pass CPU held
    top = [fit.RunCounts(r.calls, r.requests, r.loops, 0, 0, 0.0, "", r.traced, 0.5 * r.traced + 58e-6 * r.loops)
           for r in runs[-2:]]
    assert fit.refit_scale(top, {"traced": 0.56, "loops": 58e-6}) == pytest.approx(0.5, rel=1e-6)
    fits = {"parse": fit.OpFit("parse", "call", 20e-6, 0.0, 10, 10, 1, 0, 0),
            "epoll_wait": fit.OpFit("epoll_wait", "event", 10e-6, 1e-6, 10, 10, 3, 0, 0)}
    prof, how = build_profile(fits, u, {"ctx_switch": 3e-6}, Hardware(cores=1), Footprint(), "t", "", "epoll_wait")
    assert prof.cost("parse").fixed == pytest.approx(0.56 * 20e-6, rel=0.01)
    assert prof.cost("epoll_wait").fixed == pytest.approx(0.56 * 10e-6 + 58e-6, rel=0.02)
    assert prof.cost("epoll_wait").per_unit == pytest.approx(0.56e-6, rel=0.01)
    assert prof.cost("poll").fixed == prof.cost("epoll_wait").fixed          # every event call pays the pass
    assert prof.cost("net_tx") == prof.cost("net_conn") == Cost()     # softirq work not fitted: not charged
    assert prof.cost("ctx_switch").fixed == 3e-6 and "disk_read" in how["from_fallback"]


def test_wakeups_are_fitted_apart_from_passes_and_written_as_their_own_cost():
    """Process CPU = traced CPU outside the event calls x scale + per pass + per wake-up. The wake-ups
    (voluntary context switches) fall faster with the load than the passes, so the two part; the
    event call's fixed part then comes from the regression alone and the wake-up is its own
    operation, so the profile charges no CPU twice. A candidate with a useless regressor loses on
    its leave-one-out error."""
    from calibration.calibrate import build_profile
    from sim.config import Footprint
    rng = np.random.default_rng(9)
    runs = []
    for rate in (400, 1100, 1500, 1900, 2500, 3200):
        req = rate * 10.0
        loops = req / (1 + rate / 900)
        wakeups = req / (1 + rate / 200)
        other = req * 60e-6 * rng.uniform(0.98, 1.02)
        events = req * 1.1
        # the sampled event calls hold 9 us a pass, 40 us a wake-up and 0.5 us an event
        event_cpu = 9e-6 * loops + 40e-6 * wakeups + 0.5e-6 * events
        process = 0.6 * (other + 0.5e-6 * events) + 12e-6 * loops + 70e-6 * wakeups + rng.normal(0, 5e-4)
        runs.append(fit.RunCounts(req * 7, req, loops, 0, 0, 0.0, f"{rate}", other + event_cpu, process, wakeups,
                                  event_cpu, events))
    split = fit.without_event_calls(runs, 0.5e-6)
    assert split[0].traced == pytest.approx(runs[0].traced - 9e-6 * runs[0].loops - 40e-6 * runs[0].wakeups)
    best, cands = fit.choose_unseen(split, {"wakeups+passes": ("traced", "wakeups", "loops"),
                                            "wakeups+passes+requests": ("traced", "wakeups", "loops", "requests"),
                                            "passes": ("traced", "loops")})
    u = cands["wakeups+passes"]["fit"]
    assert best == "wakeups+passes", {k: v["loo_rms_rel"] for k, v in cands.items()}
    assert u.coef["traced"] == pytest.approx(0.6, rel=0.05)
    assert u.coef["wakeups"] == pytest.approx(70e-6, rel=0.05) and u.coef["loops"] == pytest.approx(12e-6, rel=0.1)
    assert cands["passes"]["rms_rel"] > 3 * cands["wakeups+passes"]["rms_rel"]
    assert fit.loo_rms(split[:3], ("traced", "wakeups", "loops")) == math.inf     # too few runs to tell
    fits = {"parse": fit.OpFit("parse", "call", 20e-6, 0.0, 10, 10, 1, 0, 0),
            "epoll_wait": fit.OpFit("epoll_wait", "event", 25e-6, 0.5e-6, 10, 10, 3, 0, 0)}
    prof, how = build_profile(fits, u, {}, Hardware(cores=1), Footprint(), "t", "", "epoll_wait", event_split=True)
    assert prof.cost("wakeup").fixed == pytest.approx(u.coef["wakeups"])
    assert prof.cost("epoll_wait").fixed == pytest.approx(u.coef["loops"])          # the fit's 25 us left out
    assert prof.cost("epoll_wait").per_unit == pytest.approx(u.coef["traced"] * 0.5e-6)
    assert prof.cost("poll").fixed == prof.cost("epoll_wait").fixed
    assert how["unseen_added_us"]["wakeups"] == pytest.approx(1e6 * u.coef["wakeups"])


def test_blackbox_demand_is_utilisation_law_and_profile_round_trips(tmp_path):
    runs = [{"replies": 4000, "server_cpu_s": 0.2, "reply_bytes_mean": 15000.0, "load_avg": 1.0},
            {"replies": 6000, "server_cpu_s": 0.3, "reply_bytes_mean": 15000.0, "load_avg": 1.0,
             "disk_read_bytes": 1e6}]
    d = demands_of(runs)
    assert d.cpu_s == pytest.approx(50e-6) and d.disk_bytes == pytest.approx(100.0)
    sat = d.saturation(cpu_fraction=0.15, link_gbps=0.1)
    assert sat["cpu"] == pytest.approx(3000.0) and sat["nic"] == pytest.approx(0.1e9 / 8 / 15000)
    prof = scaled_profile(profile_of(d, "bb", Hardware(cores=1, kernel_mb=0.0)), 0.25)
    assert prof.cost("parse").fixed == pytest.approx(200e-6) and prof.cost("sendfile").fixed == 0.0
    path = write_profile(prof, tmp_path / "bb.toml", {"cpu_us_per_reply": 50.0})
    back = load_profile(str(path))
    assert back.costs == prof.costs


def test_blackbox_splits_cpu_into_a_demand_per_reply_and_per_wakeup():
    """The server sleeps less as the load rises, so its CPU per reply falls; least squares over the
    runs on replies and wake-ups give back the demand that sets the saturation rate and the wake-up's
    cost, which the profile charges as `wakeup`. With one run, the plain law on it."""
    from calibration.blackbox import demands_with_wakeups
    runs = []
    for replies, wake_per_reply in ((2000, 0.6), (3000, 0.4), (4000, 0.25), (4600, 0.1)):
        wakeups = replies * wake_per_reply
        runs.append({"replies": replies, "server_wakeups": wakeups, "server_cpu_s": replies * 25e-6 + wakeups * 60e-6,
                     "reply_bytes_mean": 15000.0, "load_avg": 1.0, "httperf_wall_s": 1.0, "errors_pct": 0.0,
                     "reply_rps": replies, "offered_window_rps": replies})
    d = demands_with_wakeups(runs)
    assert d.cpu_s == pytest.approx(25e-6, rel=1e-6) and d.wakeup_s == pytest.approx(60e-6, rel=1e-6)
    assert d.saturation(cpu_fraction=0.15)["cpu"] == pytest.approx(6000.0)
    # the plain law on the busiest run counts its wake-ups in the demand: a lower saturation
    assert demands_of(runs[-1:]).saturation(cpu_fraction=0.15)["cpu"] < 0.85 * 6000
    prof = profile_of(d, "bb", Hardware(cores=1, kernel_mb=0.0))
    assert prof.cost("wakeup").fixed == pytest.approx(60e-6) and prof.cost("parse").fixed == pytest.approx(25e-6)
    one = demands_with_wakeups(runs[:1])
    assert one.wakeup_s == 0.0 and one.cpu_s == pytest.approx(runs[0]["server_cpu_s"] / 2000)
    # CPU per reply that falls with the load for more than the wake-ups: the split would put the
    # demand above the busiest run's own CPU per reply, so the busiest run's law stands
    batching = [dict(runs[0], replies=n, server_wakeups=n * w, server_cpu_s=n * c)
                for n, w, c in ((2000, 0.20, 49e-6), (3300, 0.24, 39e-6), (5600, 0.28, 29e-6))]
    assert fit_line_above_busiest(batching)
    d = demands_with_wakeups(batching)
    assert d.wakeup_s == 0.0 and d.cpu_s == pytest.approx(29e-6)


def test_blackbox_demand_past_saturation_sets_the_rate():
    """A loaded server batches: its CPU per reply past saturation is lower than any run that kept up
    shows, wake-ups taken off or not. Runs past saturation (busy for 90 % of the share and not keeping
    up) give the demand, their median; the lighter runs' CPU beyond it goes to their wake-ups. A run
    that is busy but keeps up, or that falls behind while idle, is not past saturation."""
    from calibration.blackbox import demands_with_wakeups
    from calibration.measure import past_saturation

    def run(offered, replies, cpu_per_reply, wakeups, busy_wall=1.0):
        return {"offered_rps": offered, "offered_window_rps": offered, "reply_rps": replies, "replies": replies,
                "server_cpu_s": replies * cpu_per_reply + wakeups * 40e-6, "server_wakeups": wakeups,
                "httperf_wall_s": busy_wall, "errors_pct": 0.0, "reply_bytes_mean": 15000.0, "load_avg": 1.0}

    light = [run(400, 400, 36e-6, 350), run(2000, 2000, 33e-6, 800), run(3300, 3300, 31e-6, 900)]
    # 0.15 of a core: 5000 replies/s at 30 us, 4800 at 31.25 us, 5200 at 28.8 us
    past = [run(6000, 5000, 30e-6, 10), run(6000, 4800, 31.25e-6, 10), run(6000, 5200, 28.8e-6, 10)]
    assert all(past_saturation(r, 0.15) for r in past) and not any(past_saturation(r, 0.15) for r in light)
    assert not past_saturation(run(6000, 3000, 20e-6, 0), 0.15)          # behind, but 40 % busy
    d = demands_with_wakeups(light + past, cpu_fraction=0.15)
    assert d.cpu_s == pytest.approx(30e-6 + 10 * 40e-6 / 5000) and "past saturation" in d.basis
    assert d.saturation(cpu_fraction=0.15)["cpu"] == pytest.approx(0.15 / d.cpu_s)
    assert 40e-6 < d.wakeup_s < 60e-6          # the light runs' batching is charged to their wake-ups
    # without a run past saturation, the split over the runs that kept up, as before
    assert "least squares" in demands_with_wakeups(light, cpu_fraction=0.15).basis


def test_blackbox_demand_runs_lie_between_the_sweeps(monkeypatch):
    """The run past saturation is repeated after each live sweep, and the demand is the median over
    all of them: a fast first minute (5,600 replies/s) no longer sets the prediction for sweeps that
    ran on a slower host (5,000)."""
    import calibration.validate as v
    calls = []
    monkeypatch.setattr(v, "sweep", lambda srv, wl, rates, d, **kw: calls.append("sweep") or [
        {"offered_rps": r, "offered_window_rps": r, "reply_rps": 1.0, "throughput_mbps": 1.0,
         "response_ms_mean": 1.0} for r in rates])

    def run(offered, replies, cpu_per_reply, wakeups):
        return {"offered_rps": offered, "offered_window_rps": offered, "reply_rps": replies, "replies": replies,
                "server_cpu_s": replies * cpu_per_reply + wakeups * 40e-6, "server_wakeups": wakeups,
                "httperf_wall_s": 1.0, "errors_pct": 0.0, "reply_bytes_mean": 15000.0, "load_avg": 1.0}

    probe = [run(2000, 2000, 33e-6, 800), run(7000, 5600, 0.15 / 5600, 5)]
    st = v.Settings(out="", repeat=3, log=lambda s: None)
    first = v.nginx_demand(probe, st)[3]

    def demand_run(k):
        calls.append(f"demand {k}")
        probe.append(run(7000, 5000, 0.15 / 5000, 5))

    v.repeated_sweep(None, None, [1000.0], st, after_each=demand_run)
    assert calls == ["sweep", "demand 0", "sweep", "demand 1", "sweep", "demand 2"]
    d, top, busiest, predicted = v.nginx_demand(probe, st)
    assert first == pytest.approx(0.15 / (0.15 / 5600 + 5 * 40e-6 / 5600), rel=1e-6)
    assert predicted == pytest.approx(0.15 / (0.15 / 5000 + 5 * 40e-6 / 5000), rel=1e-6)
    assert top is probe[0] and "4 run(s) past saturation" in d.basis


def test_black_box_runs_go_deeper_until_they_saturate_the_server():
    """A run that keeps up says nothing of the demand at saturation: the next goes 1.3 x deeper, until as
    many runs as asked lie past saturation (bounded). A host that sped up after a slow first reading thus
    still gets a run past saturation, where one at the old rate would have kept up at full share."""
    import calibration.validate as v
    capacity = iter([5000.0, 7000.0, 7000.0, 7000.0, 7000.0, 7000.0])     # replies/s the 0.15 share allows
    asked = []

    def measure_at(rate):
        cap = next(capacity)
        asked.append(rate)
        replies = min(rate, cap)
        return [{"offered_rps": rate, "offered_window_rps": rate, "reply_rps": replies, "replies": replies,
                 "server_cpu_s": 0.15 * replies / cap, "httperf_wall_s": 1.0, "errors_pct": 0.0}]

    runs = []
    rate = v.until_past_saturation(measure_at, 6000.0, runs, 0.15, 1, 5)
    assert asked == [6000.0] and rate == 6000.0                  # past saturation at once (a slow host)
    rate = v.until_past_saturation(measure_at, rate, runs, 0.15, 2, 5)
    assert asked == [6000.0, 6000.0, 7800.0] and rate == 7800.0  # kept up at 6,000 on the faster host
    assert [v.past_saturation(r, 0.15) for r in runs] == [True, False, True]
    rate = v.until_past_saturation(measure_at, rate, runs, 0.15, 9, 2)
    assert len(asked) == 5                                        # bounded by the tries


def test_host_level_rounds_run_between_a_cpu_cases_sweeps(monkeypatch):
    """A CPU case's repeated sweeps have a host-level round between each two (not after the last: the
    next case's round follows); the NIC and disk cases, whose peaks the level does not set, have none."""
    import calibration.validate as v
    calls = []
    monkeypatch.setattr(v, "sweep", lambda srv, wl, rates, d, **kw: calls.append("sweep") or [
        {"offered_rps": r, "offered_window_rps": r, "reply_rps": 1.0, "throughput_mbps": 1.0,
         "response_ms_mean": 1.0} for r in rates])
    st = v.Settings(out="", repeat=3, log=lambda s: None)
    case = {c.name: c for c in v.all_cases()}
    v.repeated_sweep(None, None, [1000.0], st, after_each=v.rounds_between(case["symped-2p"], st, calls.append))
    assert calls == ["sweep", "after symped-2p's sweep 1", "sweep", "after symped-2p's sweep 2", "sweep"]
    assert v.rounds_between(case["nic-tbf"], st, calls.append) is None
    assert v.rounds_between(case["disk-cgroup"], st, calls.append) is None
    assert v.rounds_between(case["symped-2p"], st, None) is None


def fit_line_above_busiest(runs) -> bool:
    """Whether the least-squares split alone would put the demand above the busiest run's CPU per reply."""
    from scipy.optimize import nnls
    x = np.array([[r["replies"], r["server_wakeups"]] for r in runs], dtype=float)
    y = np.array([r["server_cpu_s"] for r in runs])
    per_reply = nnls(x, y)[0][0]
    return per_reply > max(runs, key=lambda r: r["replies"])["server_cpu_s"] / max(r["replies"] for r in runs)


def test_past_the_knee_sums_the_rows_both_sides_saturate_and_is_not_the_verdict():
    """A noisy high live row sets the peak (-8.6 %); over the rows where both sides had stopped
    keeping up the two sides agree within a point, and the verdict still goes by the peak."""
    import calibration.validate as v

    def row(offered, reply):
        return {"offered_rps": offered, "reply_rps": reply, "throughput_mbps": reply / 8, "response_ms_mean": 1.0}

    offered = [4000, 6000, 8000, 10000, 12000]
    live = [row(o, r) for o, r in zip(offered, [3990, 5980, 6800, 6700, 8100])]
    sim = [row(o, r) for o, r in zip(offered, [4000, 6000, 7400, 7350, 7360])]
    c = v.compare(live, sim)
    assert c["live_saturation_rps"] == 8000 and c["sim_saturation_rps"] == 10000
    assert c["past_knee_rates"] == [10000, 12000]
    assert c["past_knee_error_pct"] == pytest.approx(100 * (14710 / 14800 - 1))
    assert c["peak_error_pct"] == pytest.approx(100 * (7400 / 8100 - 1))
    assert v.verdict({**c, "mape_pct": 5.0}, True) == "miss"
    # a side that kept up everywhere has no knee: nothing to sum
    c = v.compare(live, [row(o, o) for o in offered])
    assert c["past_knee_rates"] == [] and math.isnan(c["past_knee_error_pct"])
    text = v.report_md({"machine": {"date": "d", "host": "h", "cpu_model": "c", "cpus": 2, "memory_mb": 1,
                                    "kernel": "k", "python": "p"}, "command": "simrun validate",
                        "profile_file": "p.toml", "profile_note": "n", "workload": "w",
                        "settings": {"duration_s": 15.0},
                        "cases": [{"case": "x", "held_out": True, "peak_error_pct": -8.6, "mape_pct": 5.0,
                                   "verdict": "miss", "architecture": "sped", "model": "sped", "knobs": {},
                                   "setting": {}, "scenario": "x.toml", "rates": [],
                                   "past_knee_error_pct": -0.6, "past_knee_rates": [10000.0, 12000.0]}]})
    assert "- x: -0.6 % at 10000, 12000 requests/s" in text


def test_repeated_live_sweeps_compare_the_median_row_and_report_each_sweeps_error():
    """With --repeat the live side is several sweeps at the same rates: per rate the median run's
    row (its figures one run's, not mixed), and the report gives the peak error against each sweep."""
    from calibration.validate import median_rows, report_md, summarize_case
    sweeps = [[{"offered_rps": 100, "offered_window_rps": 100.0, "reply_rps": r1, "throughput_mbps": r1 / 10,
                "response_ms_mean": 1.0},
               {"offered_rps": 200, "offered_window_rps": 200.0, "reply_rps": r2, "throughput_mbps": r2 / 10,
                "response_ms_mean": 9.0}]
              for r1, r2 in ((100.0, 180.0), (98.0, 150.0), (99.0, 200.0))]
    rows = median_rows(sweeps)
    assert [r["reply_rps"] for r in rows] == [99.0, 180.0]
    assert rows[1]["throughput_mbps"] == 18.0 and rows[1]["reply_rps_runs"] == [180.0, 150.0, 200.0]
    assert [r["reply_rps"] for r in median_rows(sweeps[:2])] == [98.0, 150.0]      # even count: the lower
    case = next(c for c in all_cases() if c.name == "symped-2p")
    sim = [{"offered_rps": 100, "reply_rps": 99.0, "throughput_mbps": 9.9, "response_ms_mean": 1.0},
           {"offered_rps": 200, "reply_rps": 190.0, "throughput_mbps": 19.0, "response_ms_mean": 9.0}]
    c = summarize_case(case, {"live": rows, "sim": sim, "setting": {
        "live_sweeps_reply_rps": [[r["reply_rps"] for r in s] for s in sweeps]}})
    assert c["peak_error_pct"] == pytest.approx(100 * (190 - 180) / 180)
    assert c["peak_error_pct_per_sweep"] == pytest.approx([100 * 10 / 180, 100 * 40 / 150, -5.0])
    text = report_md({"machine": {"date": "d", "host": "h", "cpu_model": "c", "cpus": 2, "memory_mb": 1,
                                  "kernel": "k", "python": "p"}, "command": "simrun validate --repeat 3",
                      "cases": [c], "profile_file": "p.toml", "profile_note": "n", "workload": "w",
                      "settings": {"duration_s": 15.0}, "calibration": ""})
    assert "symped-2p: +5.6 %, +26.7 %, -5.0 %" in text


def test_the_peak_errors_interval_redraws_the_sweeps_the_demand_and_the_replications():
    """Identical sweeps and nothing else noisy: the interval is the point error. Sweeps that spread,
    rounds that spread (for a CPU-bound peak), a simulated peak with a wide CI: each widens it, the
    point error stays inside, and the same inputs give the same interval."""
    from calibration.noise import peak_error_interval
    flat = [[100.0, 180.0, 175.0]] * 3
    b = peak_error_interval(flat, 180.0, 189.0)
    assert b.low == pytest.approx(5.0) and b.high == pytest.approx(5.0) and b.parts == ("the 3 live sweeps",)
    assert peak_error_interval(None, 180.0, 189.0) is None           # nothing noisy to redraw
    spread = [[100.0, 180.0, 175.0], [99.0, 150.0, 160.0], [98.0, 200.0, 190.0]]
    s = peak_error_interval(spread, 180.0, 189.0)
    assert s.low < 5.0 < s.high and s.high - s.low > 10.0
    assert s == peak_error_interval(spread, 180.0, 189.0)             # deterministic
    assert s.low == pytest.approx(100 * (189 / 200 - 1)) and s.high == pytest.approx(100 * (189 / 160 - 1))
    rounds = [20.0, 22.0, 24.0, 21.0, 26.0, 19.0, 23.0]
    lv = peak_error_interval(flat, 180.0, 189.0, demand_us=rounds, elasticity=1.0)
    assert lv.low < 5.0 < lv.high and lv.parts[1] == "the host level's rounds (7)"
    # the demand's median 22 drawn as 20 at most and 24 at least: the peak moves inversely with it
    assert lv.high <= 100 * (189 * 22 / 19 / 180 - 1) + 1e-9 and lv.low >= 100 * (189 * 22 / 26 / 180 - 1) - 1e-9
    assert peak_error_interval(flat, 180.0, 189.0, demand_us=rounds, elasticity=0.0).high == pytest.approx(5.0)
    sim = peak_error_interval(flat, 180.0, 189.0, sim_peak_halfwidth=9.0, sim_replications=3)
    assert sim.low < 5.0 < sim.high and len(sim.parts) == 2
    # firm: the whole interval on the verdict's side of the target
    Interval = type(s)
    assert Interval(-4.0, 4.5, ()).firm(5.0) and Interval(5.5, 9.0, ()).firm(5.0)
    assert Interval(-9.0, -5.1, ()).firm(5.0)
    assert not Interval(3.0, 6.0, ()).firm(5.0) and not Interval(-12.0, 1.0, ()).firm(5.0)
    # one live sweep: its own noise is not in the interval, so no verdict is called firm
    one = peak_error_interval([[100.0, 180.0, 175.0]], 180.0, 189.0, sim_peak_halfwidth=1.0, sim_replications=3)
    assert one.parts == ("the simulation's 3 replications",) and one.firm(5.0) is None


def test_a_cpu_cases_interval_takes_the_rounds_and_the_report_says_if_the_verdict_is_firm():
    from calibration.validate import all_cases, report_md, summarize_case

    def row(o, r):
        return {"offered_rps": o, "offered_window_rps": float(o), "reply_rps": r, "throughput_mbps": r / 10,
                "response_ms_mean": 1.0}
    known = {c.name: c for c in all_cases()}
    sweeps = [[100.0, 180.0], [99.0, 178.0], [98.0, 182.0]]
    sim = [{"offered_rps": 100, "reply_rps": 99.0, "reply_rps_ci": 1.0, "replications": 3, "throughput_mbps": 9.9,
            "response_ms_mean": 1.0},
           {"offered_rps": 200, "reply_rps": 171.0, "reply_rps_ci": 2.0, "replications": 3, "throughput_mbps": 17.1,
            "response_ms_mean": 1.0}]
    res = {"live": [row(100, 99.0), row(200, 180.0)], "sim": sim, "setting": {"live_sweeps_reply_rps": sweeps}}
    rounds = [18.0, 22.0, 26.0, 20.0, 24.0]
    cpu = summarize_case(known["symped-2p"], res, rounds)
    nic = summarize_case(known["nic-tbf"], res, rounds)       # bound by its link: the level does not move it
    assert cpu["peak_error_pct"] == pytest.approx(-5.0) == nic["peak_error_pct"]
    assert "the host level's rounds (5)" in cpu["peak_error_ci95_from"]
    assert not any("rounds" in p for p in nic["peak_error_ci95_from"])
    lo, hi = cpu["peak_error_ci95_pct"]
    assert lo < -5.0 < hi and hi - lo > nic["peak_error_ci95_pct"][1] - nic["peak_error_ci95_pct"][0]
    assert cpu["peak_verdict_firm"] is False
    # the black box's demand is the median of its runs past saturation: those are redrawn
    probe = [{"cpu_us_per_reply": u, "past_saturation": p} for u, p in ((30.0, False), (20.0, True), (24.0, True),
                                                                        (18.0, True))]
    bb = summarize_case(known["nginx-blackbox"], {**res, "blackbox": {"probe": probe, "predicted_saturation_rps": 171.0}})
    assert "the black box's runs past saturation (3)" in bb["peak_error_ci95_from"]
    text = report_md({"machine": {"date": "d", "host": "h", "cpu_model": "c", "cpus": 2, "memory_mb": 1,
                                  "kernel": "k", "python": "p"}, "command": "simrun validate --repeat 3",
                      "cases": [cpu], "profile_file": "p.toml", "profile_note": "n", "workload": "w",
                      "settings": {"duration_s": 15.0}, "calibration": ""})
    assert f"| {lo:+.1f} to {hi:+.1f} (noise) |" in text


def test_comparison_figures_and_verdict():
    live = [{"offered_rps": 100, "reply_rps": 100.0, "throughput_mbps": 10.0, "response_ms_mean": 2.0},
            {"offered_rps": 200, "reply_rps": 190.0, "throughput_mbps": 19.0, "response_ms_mean": 4.0},
            {"offered_rps": 300, "reply_rps": 200.0, "throughput_mbps": 20.0, "response_ms_mean": 40.0}]
    sim = [{"offered_rps": 100, "reply_rps": 100.0, "throughput_mbps": 10.0, "response_ms_mean": 2.0},
           {"offered_rps": 200, "reply_rps": 171.0, "throughput_mbps": 17.1, "response_ms_mean": math.nan},
           {"offered_rps": 300, "reply_rps": 211.0, "throughput_mbps": 21.0, "response_ms_mean": 40.0}]
    c = compare(live, sim)
    assert c["peak_error_pct"] == pytest.approx(5.5)
    assert c["mape_pct"] == pytest.approx((0 + 10 + 5.5) / 3)
    assert c["live_saturation_rps"] == 300 and c["sim_saturation_rps"] == 200
    assert verdict(c, True) == "miss"
    assert verdict({**c, "peak_error_pct": -4.9}, True) == "pass"
    assert verdict({**c, "peak_error_pct": -4.9, "mape_pct": 10.5}, False) == "miss (in sample)"
    assert saturation_rate(live[:2]) is None
    assert goodput_gbps(100.0) == pytest.approx(0.1 * 1448 / 1514)
    # tbf rate 50mbit burst 64kb latency 50ms queues 378,036 bytes: two 1,514-byte frames each for 124 flows
    assert queue_flows(50.0, 64, 50) == 124


def test_tracing_overhead_is_the_median_pair_so_one_slow_spell_does_not_set_it():
    """Three traced/untraced pairs, one whose untraced run met a slow spell: the median ignores it."""
    from calibration.calibrate import tracing_ratio
    pairs = [(3070.0, 49.5, 48.6, 0.04, 0.17), (2360.0, 48.8, 61.7, 0.39, 0.20), (1820.0, 50.0, 49.0, 0.4, 0.4)]
    assert tracing_ratio(pairs) == pytest.approx(48.6 / 49.5)
    assert tracing_ratio(pairs[:1]) == pytest.approx(48.6 / 49.5)
    assert tracing_ratio([]) == 1.0


def test_tracing_pairs_run_abba_so_a_linear_drift_cancels():
    """Every run 5 % dearer than the one before it (a drifting host), traced and untraced equal in
    truth. Run traced then untraced, every pair would read the untraced one dearer; as traced,
    untraced, untraced, traced the two sides' CPU per reply are equal."""
    from calibration.calibrate import abba_pairs, per_reply, tracing_ratio
    order = []

    def server(name):
        def run(rate):
            order.append((name, rate))
            return {"replies": 1000, "server_cpu_s": 0.03 * (1.0 + 0.05 * len(order))}
        return run

    got = abba_pairs([3000.0, 2000.0], server("T"), server("U"))
    assert order == [("T", 3000.0), ("U", 3000.0), ("U", 3000.0), ("T", 3000.0),
                     ("T", 2000.0), ("U", 2000.0), ("U", 2000.0), ("T", 2000.0)]
    pairs = [(rate, per_reply(t), per_reply(u)) for rate, t, u in got]
    assert [p[0] for p in pairs] == [3000.0, 2000.0]
    assert tracing_ratio(pairs) == pytest.approx(1.0)
    assert per_reply([{"replies": 0, "server_cpu_s": 1.0}]) == 0.0


def test_host_level_is_the_median_saturated_round_over_the_simulated_configuration():
    """Each round's CPU per reply is its CPU over its replies; the factor is the median of the
    rounds in which the server used its whole share (saturated), over the CPU per reply the
    profile gives the same configuration in the simulator. The first round has no special part:
    a slow spell during the calibration alone shows against the rounds (the 10:50 run)."""
    from calibration.drift import HostLevel

    def run(cpu_s, replies, wall_s=10.0):
        return {"offered_rps": 1400.0, "offered_window_rps": 1400.0, "reply_rps": replies / wall_s,
                "replies": replies, "server_cpu_s": cpu_s, "httperf_wall_s": wall_s, "load_avg": 1.0,
                "errors_pct": 5.0}
    level = HostLevel(rate=1400.0, cpu_fraction=0.25)
    assert level.factor == 1.0                                   # no rounds
    assert level.add("first", run(2.4, 40_000))["cpu_us_per_reply"] == pytest.approx(60.0)
    assert level.factor == 1.0                                   # nothing simulated to compare with
    level.simulated_us = 40.0
    assert level.factor == pytest.approx(60.0 / 40.0)            # one round is enough
    level.add("second", run(2.5, 50_000))                        # 50 us, the whole share
    level.add("third", run(2.4, 48_000))                         # 50 us, 96 % of the share
    level.add("idle spells", run(1.5, 20_000))                   # 60 % of the share: not used
    assert [r["saturated"] for r in level.rounds] == [True, True, True, False]
    assert level.factor == pytest.approx(50.0 / 40.0)            # median of 60, 50, 50
    level.add("fourth", run(2.45, 35_000))                       # 70 us
    assert level.factor == pytest.approx(55.0 / 40.0)
    assert level.summary()["simulated_us_per_reply"] == 40.0
    idle = HostLevel(rate=1400.0, cpu_fraction=0.25, simulated_us=40.0)
    idle.add("first", run(1.0, 20_000))
    assert idle.factor == 1.0                                    # no saturated round
    with pytest.raises(ValueError):                              # it would divide by a share of nothing
        HostLevel(rate=1400.0, cpu_fraction=0.0)


def test_the_level_leaves_the_costs_measured_apart_as_measured():
    """The rounds run sped past saturation, which hardly wakes or switches: the level scales the
    regression's costs, not the wake-up, context switch and hand-off measured by their own benchmarks."""
    import dataclasses
    from calibration.drift import MEASURED_APART, levelled
    prof = load_profile("study-xeon")
    prof = dataclasses.replace(prof, costs={**prof.costs, "wakeup": Cost(10e-6, 0.0)})   # as a calibration has it
    up = levelled(prof, 1.5)
    assert set(MEASURED_APART) <= set(prof.costs)
    for op, c in prof.costs.items():
        k = 1.0 if op in MEASURED_APART else 1.5
        assert up.cost(op).fixed == pytest.approx(c.fixed * k) and up.cost(op).per_unit == pytest.approx(c.per_unit * k)
    assert levelled(prof, 1.0) is prof


def test_the_simulated_level_is_the_profiles_cpu_per_reply_on_a_quota_or_a_slower_core(tmp_path):
    """The calibration's configuration simulated past saturation uses the profile's CPU per reply,
    whether the share is a CFS quota or a core that many times slower (whose busy time is the
    share's): the two agree, and a profile twice as dear reads twice as much."""
    from calibration.calibrate import workload_for
    from calibration.cgroup import scaled_profile
    from calibration.drift import HostLevel
    from calibration.validate import Settings, all_cases, simulated_level_us
    prof = load_profile("study-xeon")
    sped = all_cases()[0]
    level = HostLevel(rate=8000.0, cpu_fraction=0.25, period_us=100_000)
    got = {}
    for quota in (True, False):
        st = Settings(out=str(tmp_path / str(quota)), quick=True, cpu_fraction=0.25, sim_warmup_s=0.5,
                      sim_duration_s=1.0, sim_quota=quota, log=lambda _s: None)
        got[quota] = simulated_level_us(sped, prof, level, workload_for(4), st)
    assert got[True] == pytest.approx(got[False], rel=0.1)
    st = Settings(out=str(tmp_path / "dear"), quick=True, cpu_fraction=0.25, sim_warmup_s=0.5, sim_duration_s=1.0,
                  log=lambda _s: None)
    dear = simulated_level_us(sped, scaled_profile(prof, 0.5), level, workload_for(4), st)
    assert dear == pytest.approx(2 * got[True], rel=0.1)
    assert (tmp_path / "dear" / "host-level" / "scenario.toml").is_file()


def test_a_host_level_round_that_cannot_run_is_left_out(monkeypatch):
    """A round whose server does not start is logged and left out; the cgroup is removed all the same."""
    from calibration import drift
    from calibration.measure import MeasureError
    closed, logged = [], []

    class Group:
        procs = "/fake/cgroup.procs"

        def read(self, key):
            return "6667"

        def close(self):
            closed.append(True)

    class Broken:
        def __init__(self, *a, **kw):
            pass

        def __enter__(self):
            raise MeasureError("server did not start")

        def __exit__(self, *exc):
            return False
    monkeypatch.setattr(drift, "cpu_share", lambda fraction: Group())
    monkeypatch.setattr(drift, "LiveServer", Broken)
    level = drift.HostLevel(rate=1000.0, cpu_fraction=0.15)
    assert drift.level_round(level, "before x", "/nonexistent", None, [], 0.15, 1.0, 0, logged.append) is None
    assert level.rounds == [] and closed == [True]
    assert "could not run" in logged[0]


def test_cpu_share_is_simulated_as_a_slower_core_or_as_the_live_quota(tmp_path):
    """By default the scenario keeps the costs and states the live server's CFS quota and period in
    its hardware, which loads back; without sim_quota (--slower-core) the share is a core `fraction`
    times as fast. The twin picks the rates with the slower core either way."""
    run = {"replies": 1000, "server_cpu_s": 0.05, "reply_bytes_mean": 1e4, "load_avg": 1.0}
    base = profile_of(demands_of([run]), "bb", Hardware(cores=1, kernel_mb=0.0))
    hw = {"cores": 1, "memory_mb": 2048.0, "kernel_mb": 0.0}
    prof, hw1, twin = cpu_setting(base, hw, Settings(out=str(tmp_path), cpu_fraction=0.25, sim_quota=False), 4000)
    assert prof.cost("parse").fixed == pytest.approx(4 * base.cost("parse").fixed) and hw1 == hw and twin is prof
    prof, hw2, twin = cpu_setting(base, hw, Settings(out=str(tmp_path), cpu_fraction=0.25), 4000)
    assert prof is base and twin.cost("parse").fixed == pytest.approx(4 * base.cost("parse").fixed)
    assert hw2 == {**hw, "cpu_quota": 0.25, "cpu_period_ms": 4.0}
    write_profile(prof, tmp_path / "p.toml", {})
    case = next(c for c in all_cases() if c.name == "threaded-gil")
    assert case.cpu_period_us == 100_000
    wl = type("W", (), {"fileset": type("F", (), {"directories": 2})(), "think_within_burst_s": 0.02,
                        "think_between_bursts_s": 0.2})()
    path = write_scenario(str(tmp_path / "s.toml"), "s", str(tmp_path / "p.toml"), hw2, wl, [100.0], case,
                          Settings(out=str(tmp_path)))
    back = load_scenario(path)
    assert back.hardware.cpu_quota == 0.25 and back.hardware.cpu_period_ms == 4.0


class FakeGroup:
    """A cgroup's files as fixed text."""

    path = "/fake"

    def __init__(self, files: dict):
        self.files = files

    def read(self, key: str) -> str:
        return self.files[key]


def test_disk_case_scenario_carries_two_lists_and_the_cgroups_own_readings(tmp_path):
    """From fake cgroup and device readings: the footprint is usage less cache (not VmRSS),
    connections take nothing, the readahead window stands for the kernel's ramp, and the scenario
    written for the case loads back with the two-list cache and these values."""
    group = FakeGroup({"memory.usage_in_bytes": str(12 * 2**20),
                       "memory.stat": "cache 3145728\nrss 9437184\nrss_huge 0\ntotal_cache 3145728\n",
                       "blkio.throttle.io_serviced": "253:0 Read 70\n253:0 Write 3\n7:0 Read 4\nTotal 77\n"})
    charge = memory_charge(group)
    assert charge == {"usage": 12 * 2**20, "cache": 3 * 2**20, "rss": 9 * 2**20}
    assert reads_serviced(group) == 74
    assert sendfile_readahead_kb(8192) == pytest.approx(512.0)   # windows of 256 and 1,024 KB
    assert sendfile_readahead_kb(128) == 128.0 and sendfile_readahead_kb(64) == 64.0
    run = {"replies": 1000, "server_cpu_s": 0.05, "reply_bytes_mean": 1e4, "load_avg": 1.0}
    base = profile_of(demands_of([run]), "bb", Hardware(cores=1, kernel_mb=0.0))
    hw = {"cores": 1, "memory_mb": 24000.0, "kernel_mb": 0.0, "nics": 1, "nic_gbps": 40.0}
    prof, hw2, readings = disk_inputs(base, hw, charge, 8192, 64.0)
    assert readings["footprint_kb"] == 9 * 1024 and readings["device_read_ahead_kb"] == 8192
    case = next(c for c in all_cases() if c.name == "disk-cgroup")
    wl = type("W", (), {"fileset": type("F", (), {"directories": 2})(), "think_within_burst_s": 0.02,
                        "think_between_bursts_s": 0.2})()
    scen, _ = case_scenario(case, prof, hw2, wl, [100.0], Settings(out=str(tmp_path)), {"case": case.name, **readings})
    h = scen.hardware
    assert h.page_cache == "two-list" and h.disk_readahead_kb == 512.0 and h.memory_mb == 64.0
    back = load_profile(str(tmp_path / case.name / "profile.toml"))
    assert back.footprint.process_kb == 9216.0 and back.footprint.connection_kb == 0.0
    assert base.footprint.connection_kb > 0    # the change is the case's, not the base profile's


def test_sigterm_ends_a_forked_simulator_worker_at_once():
    """The simulator's pool workers are forked from `simrun validate` and inherit its SIGTERM handler.
    The pool ends them with SIGTERM: they must die at once, without running exit handlers (which
    waited forever on a lock the fork left held), while validate itself unwinds."""
    import signal
    import time
    from calibration import validate
    old = signal.signal(signal.SIGTERM, validate._terminate)
    r, w = os.pipe()
    try:
        pid = os.fork()
        if pid == 0:                                  # the worker: an exit handler that must not run
            try:
                os.close(r)
                import atexit
                atexit.register(os.write, w, b"unwound")
                time.sleep(20)
            finally:
                os._exit(0)
        os.close(w)
        time.sleep(0.2)
        os.kill(pid, signal.SIGTERM)
        t0 = time.monotonic()
        _, status = os.waitpid(pid, 0)
        assert time.monotonic() - t0 < 5
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 128 + signal.SIGTERM
        assert os.read(r, 100) == b""
        with pytest.raises(SystemExit):               # in validate's own process: unwind
            validate._terminate(signal.SIGTERM, None)
    finally:
        os.close(r)
        signal.signal(signal.SIGTERM, old)


def _can_run_live() -> str | None:
    if os.geteuid() != 0:
        return "needs root (cgroups)"
    for tool in ("httperf", "nginx", "taskset"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    if (os.cpu_count() or 1) < 2:
        return "needs two cores"
    return None


@pytest.mark.skipif(_can_run_live() is not None, reason=str(_can_run_live()))
def test_quick_validation_end_to_end(tmp_path):
    """`simrun validate --quick`: calibrate on sped, predict symped-2p and nginx; the files it promises."""
    out = tmp_path / "v"
    proc = subprocess.Popen([sys.executable, "-m", "sim.cli", "validate", "--quick", "--out", str(out)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=400)
    except subprocess.TimeoutExpired:
        proc.terminate()              # SIGTERM: validate stops its servers and removes its cgroups
        try:
            stdout, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        pytest.fail(f"simrun validate --quick took over 400 s: {stdout[-1500:]}")
    assert proc.returncode == 0, stderr[-2000:]
    doc = json.loads((out / "validation.json").read_text())
    assert [c["case"] for c in doc["cases"]] == ["symped-2p", "nginx-blackbox"]
    for c in doc["cases"]:
        assert {"case", "peak_error_pct", "mape_pct", "verdict"} <= set(c)
        assert c["verdict"].startswith(("pass", "miss")), c["verdict"]
        assert len(c["rates"]) == 3
        assert all(x["live"]["reply_rps"] > 0 and x["sim"]["reply_rps"] > 0 for x in c["rates"])
        assert (out / f"{c['case']}.png").stat().st_size > 1000
        # the case's scenario runs again as an ordinary scenario with the written profile
        assert (out / c["scenario"]).is_file()
    assert "blackbox_error_pct" in doc["cases"][1]
    # a demand run after a sweep goes as deep as the sweep's top rate, so that it saturates the server
    between = doc["cases"][1]["blackbox"]["between_sweeps_rps"]
    if between is not None:
        assert between >= max(x["live"]["offered_rps"] for x in doc["cases"][1]["rates"])
    prof = load_profile(str(out / "calibrated-here.toml"))
    assert prof.hardware.cores == 1 and prof.cost("parse").fixed >= 0
    assert {"kernel", "cpu_model", "python", "date", "fit_rms_us"} <= set(prof.provenance)
    assert "| symped-2p |" in (out / "report.md").read_text()
    assert not list(out.glob("*.tmp"))
    # the calibration's configuration ran again between the cases, was simulated at the rounds' rate,
    # and the Python case was simulated with every CPU cost at the median round over the simulated one
    level = doc["host_level"]
    assert [r["when"] for r in level["rounds"]] == ["after the calibration", "before symped-2p",
                                                    "after the last case"]
    used = [r["cpu_us_per_reply"] for r in level["rounds"] if r["saturated"]]
    assert level["factor"] == pytest.approx(statistics.median(used) / level["simulated_us_per_reply"], rel=1e-6)
    assert list(load_scenario(str(out / "host-level" / "scenario.toml")).run.rates) == [level["rate"]]
    # both sides replay the same sessions: the scenario names them, and httperf was given them
    assert load_scenario(str(out / "symped-2p" / "scenario.toml")).workload.session_templates == 1000
    assert doc["settings"]["cpu_sessions"] == 1000 and "1000 sessions replayed" in doc["workload"]
    # what `simrun across` groups runs by: the simulator's code, and the settings
    assert doc["simulator_code"] == code_version() and doc["settings"]["repeat"] == 1
    case_profile = load_profile(str(out / "symped-2p" / "profile.toml"))
    assert case_profile.cost("parse").fixed == pytest.approx(prof.cost("parse").fixed * level["factor"], rel=1e-3)
    assert case_profile.cost("wakeup").fixed == pytest.approx(prof.cost("wakeup").fixed, rel=1e-3)
    assert "## Host level" in (out / "report.md").read_text()
    # the peak error's interval on the run's noise: for the CPU case, the rounds redrawn
    sym = doc["cases"][0]
    assert any("rounds" in p for p in sym["peak_error_ci95_from"])
    assert sym["peak_error_ci95_pct"][0] <= sym["peak_error_pct"] <= sym["peak_error_ci95_pct"][1]


def test_bad_input_is_one_line(tmp_path):
    for argv in (["validate", "--cases", "nosuch"], ["calibrate", "--rates", "x"], ["validate", "--cpu-fraction", "3"],
                 ["validate", "--threaded-period-ms", "2"], ["blackbox", "--pid", "999999999", "--port", "80"]):
        r = subprocess.run([sys.executable, "-m", "sim.cli", *argv, "--out" if argv[0] != "blackbox" else "--host",
                            str(tmp_path / "o") if argv[0] != "blackbox" else "127.0.0.1"],
                           cwd=REPO, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, (argv, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("tc") is None,
                    reason="needs root and iproute2")
def test_shaped_link_and_cgroups_are_removed():
    from calibration.cgroup import cpu_share, memory_limit
    from calibration.netns import ShapedLink

    def namespaces():
        return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout

    with ShapedLink(20.0) as link:
        assert link.server_ns in namespaces() and link.client_ns in namespaces()
        assert "rate 20Mbit" in link.qdisc_stats()
        r = subprocess.run([link.httperf, "--version"], capture_output=True, text=True, timeout=20)
        assert r.returncode == 0
    assert link.server_ns not in namespaces() and link.client_ns not in namespaces()
    with cpu_share(0.15) as g:
        assert g.read("cpu.cfs_quota_us") == "1000" and g.read("cpu.cfs_period_us") == "6667"
        path = g.path
    assert not os.path.exists(path)
    with cpu_share(0.15, 100_000) as g:
        assert g.read("cpu.cfs_quota_us") == "15000" and g.read("cpu.cfs_period_us") == "100000"
        path = g.path
    assert not os.path.exists(path)
    with memory_limit(64) as g:
        assert int(g.read("memory.limit_in_bytes")) == 64 * 2 ** 20
        path = g.path
    assert not os.path.exists(path)


THREADED_SCENARIO = """
[scenario]
name = "threaded-wakeup"
profile = "study-xeon"

[hardware]
cores = 1
memory_mb = 2048
kernel_mb = 120

[workload]
directories = 5

[run]
rates = [300]
warmup_s = 2.0
duration_s = 2.0
seed = 3

[[server]]
label = "threaded"
architecture = "threaded"
threads = {threads}
max_conns = {max_conns}
gil = {gil}
"""


def test_threaded_thread_pays_a_wakeup_when_it_wakes_on_an_idle_core(tmp_path):
    """A worker woken from recv (its connection's next request, or its first) on an idle core pays
    `wakeup`: at light load about one per reply, a little more for the EOF reads. At saturation the
    core is busy when a thread wakes, so the peak stays. A cost of 0 changes nothing, bit for bit."""
    import dataclasses
    from sim.engine import build

    def cpu_per_reply(gil: bool, wakeup, rate=300, threads=64, max_conns=64, duration=2.0):
        path = tmp_path / f"t{int(gil)}{threads}.toml"
        path.write_text(THREADED_SCENARIO.format(gil="true" if gil else "false", threads=threads,
                                                 max_conns=max_conns))
        sc = load_scenario(path)
        if wakeup is not None:
            costs = {**sc.profile.costs, "wakeup": Cost(wakeup)}
            sc = dataclasses.replace(sc, profile=dataclasses.replace(sc.profile, costs=costs))
        env, server, clients, _ = build(sc, sc.servers[0], rate, 0)
        env.run(until=sc.run.warmup_s)
        busy, replies = server.cpu.busy, clients.replies
        env.run(until=sc.run.warmup_s + duration)
        return (server.cpu.busy - busy) / (clients.replies - replies), (clients.replies - replies) / duration

    wake = 100e-6
    for gil in (False, True):
        base = cpu_per_reply(gil, None)
        assert cpu_per_reply(gil, 0.0) == base                 # absent and zero: the same run
        woken, _ = cpu_per_reply(gil, wake)
        assert 0.9 * wake < woken - base[0] < 1.4 * wake, (gil, base, woken)
    # a thread per connection, offered more than the core can serve (~12,000 replies/s)
    busy0, peak0 = cpu_per_reply(False, 0.0, rate=16000, threads=0, max_conns=20000, duration=0.5)
    busy1, peak1 = cpu_per_reply(False, wake, rate=16000, threads=0, max_conns=20000, duration=0.5)
    assert busy1 - busy0 < 0.1 * wake and peak1 > 0.97 * peak0, (busy0, peak0, busy1, peak1)


def test_disk_case_replays_the_same_templates_in_its_scenario(tmp_path):
    """The disk case's workload replays --disk-sessions templates (8,000 by default: eight httperf
    files of 1,000), and the scenario written for the simulator carries them, so it replays the same."""
    assert Settings(out=str(tmp_path)).disk_sessions == 8000
    from calibration.validate import disk_workload
    w = disk_workload(2, 8000, 5)
    assert (w.session_templates, w.template_seed) == (8000, 5) and disk_workload(2, 0, 5).session_templates == 0
    run = {"replies": 1000, "server_cpu_s": 0.05, "reply_bytes_mean": 1e4, "load_avg": 1.0}
    prof = profile_of(demands_of([run]), "bb", Hardware(cores=1, kernel_mb=0.0))
    write_profile(prof, tmp_path / "p.toml", {})
    case = next(c for c in all_cases() if c.name == "disk-cgroup")
    path = write_scenario(str(tmp_path / "s.toml"), "s", str(tmp_path / "p.toml"), {"cores": 1}, w, [100.0], case,
                          Settings(out=str(tmp_path)))
    back = load_scenario(path).workload
    assert back.session_templates == 8000 and back.template_seed == 5 and back.templates()[:3] == w.templates()[:3]
    # and httperf's descriptor limit, which every live run has
    from real.httperf import FD_LIMIT
    assert (back.generator_fd_limit, back.generator_sessions_per_process) == (FD_LIMIT, w.generator_sessions_per_process)
    assert back.max_open_sessions(10_000.0) == FD_LIMIT * w.generator_processes(10_000.0) > 0


def test_a_full_runs_scenario_offers_httperfs_sessions_over_the_live_sample_window(tmp_path):
    """A full validation simulates each case with httperf's own session starts and over the seconds whose
    samples the live reply rate averages; a run too short for a sample window (the quick one) keeps the
    simulator's steady state with its own Poisson stream."""
    from calibration.calibrate import workload_for
    from calibration.validate import replayed
    from real.httperf import sample_window
    w = replayed(workload_for(2), 1000, 0)
    case = next(c for c in all_cases() if c.name == "symped-2p")
    p = str(tmp_path / "p.toml")
    write_profile(profile_of(demands_of([{"replies": 1000, "server_cpu_s": 0.05, "reply_bytes_mean": 1e4,
                                          "load_avg": 1.0}]), "bb", Hardware(cores=1, kernel_mb=0.0)), p, {})
    for duration, arrivals in ((15.0, True), (20.0, True), (8.0, True), (15.0, False)):
        st = Settings(out=str(tmp_path), duration_s=duration, httperf_arrivals=arrivals)
        back = load_scenario(write_scenario(str(tmp_path / "s.toml"), "s", p, {"cores": 1}, w, [100.0], case, st))
        window = sample_window(w, duration)
        if arrivals and window:
            assert back.workload.arrivals == "httperf"
            assert (back.run.warmup_s, back.run.warmup_s + back.run.duration_s) == window == (5.0, 5.0 * (duration // 5))
        else:
            assert back.workload.arrivals == "poisson"
            assert (back.run.warmup_s, back.run.duration_s) == (st.sim_warmup_s, st.sim_duration_s)
    assert sample_window(w, 8.0) is None        # the quick run's 8 s: one sample, the warm-up's


def test_nic_case_replays_few_sessions_so_both_sides_see_the_same_reply_sizes(tmp_path):
    """At the link's bound the reply rate is the goodput over the mean reply size, and the sizes are
    heavy-tailed: the NIC case replays --nic-sessions templates (100 by default) on both sides, and a
    simulated window at the link's bound draws its files from them alone, each session several times."""
    from calibration.calibrate import workload_for
    from calibration.validate import replayed
    from sim.clients import Clients
    st = Settings(out=str(tmp_path))
    assert st.nic_sessions == 100
    w = replayed(workload_for(2), st.nic_sessions, 7)
    assert (w.session_templates, w.template_seed) == (100, 7) and replayed(w, 0, 7) is w
    files = {f for t in w.templates() for f in t[0]}
    rng = np.random.default_rng(1)
    seen = []

    class Recorder:                                   # a server that notes each session's template
        header_bytes, open_conns = 200, 0
        hw = Hardware(syn_retry_s=100.0)

        def syn(self, conn):
            seen.append(conn.tpl)
            return False
    from sim.timer import Environment
    env = Environment()
    Clients(env, w, 440.0, rng, Recorder(), (0.0, 10.0))
    env.run(until=10.0)
    assert len(seen) > 3 * 100                        # every template came round more than three times
    assert {f for t in seen for f in t[0]} <= files and len({id(t) for t in seen}) == 100
    # the twin picks the case's rates from the same sessions' sizes, not from the popularity
    from sim.twin import request_shares
    share = request_shares(w)
    asked = [f for t in w.templates() for f in t[0]]
    assert share.sum() == pytest.approx(1.0) and set(np.flatnonzero(share)) == set(asked)
    sizes = w.fileset.sizes
    assert share @ sizes == pytest.approx(np.mean([sizes[f] for f in asked]))
    fresh = workload_for(2)
    assert request_shares(fresh) is fresh.fileset.probabilities


def test_throttle_is_read_as_slices_of_reads_at_the_device_speed():
    """blk-throttle passes a slice's worth of reads at the device's speed and holds the next one until
    the next slice: from the latencies of reads issued one at a time, the device's time, the reads per
    slice, the slice and the sustained rate (the device's slow first reads after idle are not waits)."""
    from calibration.micro import throttle_slices
    lat = [0.004, 0.004, 0.004] + ([0.00007] * 19 + [0.0913]) * 5 + [0.00007] * 5
    r = throttle_slices(lat)
    assert r["device_s"] == pytest.approx(0.00007) and r["per_slice"] == 20 and r["first_run"] == 22
    assert r["slice_s"] == pytest.approx(0.0913 + 19 * 0.00007)
    assert r["reads_per_s"] == pytest.approx(20 / (0.0913 + 19 * 0.00007))
    big = throttle_slices([0.0006, 0.104] * 8)                        # 1 MB reads: two per slice
    assert big["per_slice"] == 2 and big["slice_s"] == pytest.approx(0.1046)
    assert throttle_slices([0.0001] * 30)["per_slice"] is None        # no throttle seen


def test_disk_case_simulates_the_throttle_when_the_hardware_has_one():
    """With a throttle in the simulator's hardware the disk case gets the device's own times behind
    the throttle's limits and measured slice; without, the FIFO disk with micro.disk's figures."""
    from calibration.validate import disk_hardware
    hw = {"cores": 1}
    fifo = {"disk_seek_ms": 4.26258, "disk_mb_s": 19.96421}
    thr = {"throttle_4k_device_ms": 0.0443, "device_mb_s": 1876.22, "throttle_4k_slice_ms": 96.2}
    assert disk_hardware(hw, fifo, thr, 200, 20.0, False) == {"cores": 1, "disk_seek_ms": 4.2626, "disk_mb_s": 19.9642}
    got = disk_hardware(hw, fifo, thr, 200, 20.0, True)
    assert got == {"cores": 1, "disk_seek_ms": 0.0443, "disk_mb_s": 1876.2, "disk_throttle_iops": 200.0,
                   "disk_throttle_mb_s": 20.0, "disk_throttle_slice_ms": 96.2}


def test_disk_footprint_under_load_counts_the_kernel_memory_of_files_and_sockets(tmp_path):
    """The charge other than page cache with the server under load (the warm-up's median) is the
    footprint when it is larger than the idle one: the kernel memory of the opened files and the
    connections is charged to the group and leaves less for the cache. The sampler keeps every
    sample of that charge and of memory.kmem."""
    from calibration.validate import ChargeSampler, kmem_bytes
    charge = {"usage": 12 * 2**20, "cache": 3 * 2**20, "rss": 9 * 2**20}
    run = {"replies": 1000, "server_cpu_s": 0.05, "reply_bytes_mean": 1e4, "load_avg": 1.0}
    base = profile_of(demands_of([run]), "bb", Hardware(cores=1, kernel_mb=0.0))
    prof, _, r = disk_inputs(base, {"cores": 1}, charge, 8192, 64.0, loaded_kb=13 * 1024)
    assert prof.footprint.process_kb == 13 * 1024 and r["footprint_idle_kb"] == 9 * 1024
    assert r["footprint_loaded_kb"] == 13 * 1024
    prof, _, r = disk_inputs(base, {"cores": 1}, charge, 8192, 64.0, loaded_kb=5 * 1024)
    assert prof.footprint.process_kb == 9 * 1024                  # never below the idle charge
    group = FakeGroup({"memory.usage_in_bytes": str(20 * 2**20), "memory.kmem.usage_in_bytes": str(3 * 2**20),
                       "memory.stat": "cache 4194304\nrss 9437184\n"})
    assert kmem_bytes(group) == 3 * 2**20 and kmem_bytes(FakeGroup({})) is None
    with ChargeSampler(group) as s:
        import time
        time.sleep(0.05)
    assert s.noncache_median == 16 * 2**20 and s.kmem_median == 3 * 2**20 and s.peak == 9 * 2**20


def test_file_system_of_reads_the_mount_holding_the_path(tmp_path):
    """ext2/ext3 map big files through indirect blocks; the rest (ext4, xfs, tmpfs) through extents
    or no disk at all: the longest mount point holding the path decides."""
    from calibration.calibrate import file_system_of
    info = tmp_path / "mountinfo"
    info.write_text("22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
                    "30 22 8:2 / /srv/old\\040disk rw,relatime shared:2 - ext3 /dev/sdb1 rw\n"
                    "31 22 0:5 / /srv rw shared:3 - tmpfs tmpfs rw\n")
    assert file_system_of("/srv/old disk/www/f", str(info)) == "ext3"
    assert file_system_of("/srv/old", str(info)) == "extents"
    assert file_system_of("/home/x", str(info)) == "extents"
    assert file_system_of("/x", str(tmp_path / "missing")) == "extents"


def test_measured_wakeup_is_taken_off_before_the_scale_and_passes_are_fitted():
    """When nearly every pass that sleeps is one wake-up, a fit of both splits their CPU at random;
    with the wake-up measured apart (micro.wakeup_s) the scale and the per-pass CPU come back, and
    every candidate carries the measured wake-up."""
    from calibration.calibrate import process_cpu_fits
    rng = np.random.default_rng(3)
    runs = []
    for rate in (400, 900, 1500, 2200, 3000):
        req = rate * 10.0
        loops = req / (1 + rate / 600)
        wakeups = loops * rng.uniform(0.93, 0.97)               # almost every pass sleeps
        traced = req * 60e-6 * rng.uniform(0.98, 1.02)
        process = 0.55 * traced + 15e-6 * loops + 20e-6 * wakeups + rng.normal(0, 2e-4)
        runs.append(fit.RunCounts(req * 7, req, loops, 0, 0, 0.0, f"{rate}", traced, process, wakeups))
    chosen, fits = process_cpu_fits(runs, runs, ("traced",), 20e-6)
    u = fits[chosen]["fit"]
    assert chosen == "passes", {k: v["loo_rms_rel"] for k, v in fits.items()}
    assert u.coef["wakeups"] == 20e-6
    assert u.coef["traced"] == pytest.approx(0.55, rel=0.03)
    assert u.coef["loops"] == pytest.approx(15e-6, rel=0.15)
    assert "wake-ups and passes fitted (not chosen)" in fits


def test_wakeup_probe_measures_a_plausible_cost_here():
    """The live probe: a blocked recv woken from the other core costs the sleeping thread some
    microseconds of CPU, well above a receive that finds its byte (under 5 us) and far below a
    millisecond."""
    from calibration import micro
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores")
    w = micro.wakeup_s(rounds=600, batches=3)
    assert 1e-6 < w < 500e-6, w
    # a sender that stops sending (here: far too slow) ends the probe with an error after 5 s,
    # not a receive that waits forever
    with pytest.raises(RuntimeError, match="stopped sending"):
        micro.wakeup_s(rounds=2, rate=0.1, batches=1)


def test_level_is_taken_on_what_the_profile_charges_for_the_busiest_run():
    """The traced scale multiplies the pooled per-call fits, so it is fitted on the CPU those fits
    charge for a run's calls, not on the run's own samples: with samples that fall with the load,
    the profile then charges the busiest run exactly the CPU it used."""
    from types import SimpleNamespace
    from calibration.calibrate import build_profile, charged_counts
    from sim.config import Footprint
    fits = {"parse": fit.OpFit("parse", "call", 20e-6, 0.0, 10, 10, 1, 0, 0),
            "sendfile": fit.OpFit("sendfile", "byte", 10e-6, 1e-9, 10, 10, 4000, 0, 0),
            "epoll_wait": fit.OpFit("epoll_wait", "event", 5e-6, 1e-6, 10, 10, 3, 0, 0)}
    totals = {"parse": (1000, 1000), "sendfile": (1200, 5e6), "epoll_wait": (100, 1500),
              "ult_switch": (50, 50)}
    # the event call's fixed part is left to the per-pass coefficient; an operation without a fit costs nothing
    assert fit.charged_cpu(totals, fits, ("epoll_wait",)) == pytest.approx(0.02 + 0.012 + 0.005 + 0.0015)

    def run(scale_calls, sampled_per_call, process):
        ops = {op: SimpleNamespace(count=c * scale_calls, units=u * scale_calls) for op, (c, u) in totals.items()}
        trace = SimpleNamespace(totals=lambda: ops)
        return ({"trace": [trace]},
                fit.RunCounts(0, 1000 * scale_calls, 100 * scale_calls, 0, 0, 0.0, "", sampled_per_call * scale_calls,
                              process))
    # the light run's calls sample dearer than the pooled fit, the busiest run's cheaper
    light, busy = run(1, 0.05, 0.030), run(4, 0.030, 0.090)
    counts = charged_counts([light[0], busy[0]], [light[1], busy[1]], fits)
    assert counts[1].traced == pytest.approx(4 * 0.0385) and counts[1].process == 0.090
    scale = fit.refit_scale([counts[1]], {"traced": 1.0, "loops": 30e-6})
    u = fit.UnseenFit({"traced": scale, "loops": 30e-6}, [], 0.0, 2)
    prof, _ = build_profile(fits, u, {}, Hardware(cores=1), Footprint(), "t", "", "epoll_wait", event_split=True)
    charged = sum(prof.cost(op).fixed * c + prof.cost(op).per_unit * un
                  for op, (c, un) in ((op, (4 * c, 4 * un)) for op, (c, un) in totals.items()) if op != "ult_switch")
    assert charged == pytest.approx(0.090, rel=1e-9)
    # on the busiest run's own samples, the profile would have charged it 28 % more than it used
    sampled_scale = fit.refit_scale([busy[1]], {"traced": 1.0, "loops": 30e-6})
    assert sampled_scale * counts[1].traced + 400 * 30e-6 > 1.2 * 0.090


def test_the_host_levels_report_says_how_far_the_host_moved():
    from calibration.validate import host_level_md
    rounds = [{"when": w, "reply_rps": 1e6 / us * 0.15, "cpu_us_per_reply": us, "share_used": share,
               "saturated": share >= 0.9, "load_avg": 1.0}
              for w, us, share in (("after", 20.0, 1.0), ("before a", 25.0, 1.0), ("before b", 40.0, 0.5))]
    text = "\n".join(host_level_md({"rate": 16000.0, "factor": 1.125, "rounds": rounds}))
    assert "x1.25" in text and "20.0-25.0 us" in text          # the unsaturated round is left out
    assert "moved" not in "\n".join(host_level_md({"rate": 1.0, "factor": 1.0, "rounds": rounds[:1]}))


def test_a_charge_per_open_connection_is_fitted_from_the_warm_up():
    """The disk case's cgroup charge (other than page cache) against the connections open: the
    slope is each connection's charge, the intercept the footprint; too little spread, no fit."""
    from calibration.validate import disk_inputs, per_connection_charge
    samples = [(c, 12e6 + 1500.0 * c) for c in (0, 50, 200, 400, 800, 1200, 900, 300, 10)]
    at0, per = per_connection_charge(samples)
    assert at0 == pytest.approx(12e6) and per == pytest.approx(1500.0)
    assert per_connection_charge([(c, 1e6) for c in (100, 120, 130, 110, 125)]) is None      # no spread
    assert per_connection_charge([(c, 5e6 - c) for c in (0, 200, 400, 600, 800)]) is None    # falls
    charge = {"usage": 20 * 2**20, "cache": 10 * 2**20, "rss": 5 * 2**20}
    prof = Profile(name="p", costs={}, hardware=Hardware(cores=1, kernel_mb=0.0), footprint=Footprint())
    p1, hw, readings = disk_inputs(prof, {}, charge, 128, 64.0, 11 * 1024, (at0, per))
    assert p1.footprint.connection_kb == pytest.approx(1500 / 1024, abs=1e-3)
    assert p1.footprint.process_kb == pytest.approx(round(12e6 / 1024))
    p0, _, _ = disk_inputs(prof, {}, charge, 128, 64.0, 11 * 1024)
    assert p0.footprint.connection_kb == 0.0 and p0.footprint.process_kb == 11 * 1024


def test_open_connections_counts_a_servers_established_sockets():
    import socket
    from calibration.measure import open_connections
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(8)
    port = lst.getsockname()[1]
    clients, served = [], []
    try:
        assert open_connections(port) == 0
        for _ in range(3):
            c = socket.create_connection(("127.0.0.1", port))
            clients.append(c)
            served.append(lst.accept()[0])
        assert open_connections(port) == 3
    finally:
        for s in clients + served + [lst]:
            s.close()
