import math
from collections import OrderedDict

import numpy as np
import pytest
from scipy import signal
from scipy import stats as sps

from sim import analytic as an
from sim import stats as st


# ---- statistics -------------------------------------------------------------------


def test_estimate_matches_scipy_t_interval():
    values = [101.0, 97.5, 103.2, 99.9, 100.4]
    est = st.estimate(values)
    lo, hi = sps.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=sps.sem(values))
    assert est.n == 5
    assert est.mean == pytest.approx(np.mean(values), rel=1e-12)
    assert est.halfwidth == pytest.approx((hi - lo) / 2, rel=1e-10)
    assert est.low == pytest.approx(lo) and est.high == pytest.approx(hi)


def test_estimate_single_value_has_no_interval():
    est = st.estimate([3.0])
    assert est.mean == 3.0 and est.n == 1 and math.isnan(est.halfwidth)
    assert math.isnan(st.relative_halfwidth(est))
    with pytest.raises(ValueError, match="no values"):
        st.estimate([])


def test_relative_halfwidth_edges():
    assert st.relative_halfwidth(st.Estimate(200.0, 10.0, 3)) == pytest.approx(0.05)
    assert st.relative_halfwidth(st.Estimate(-200.0, 10.0, 3)) == pytest.approx(0.05)
    assert st.relative_halfwidth(st.Estimate(0.0, 0.0, 3)) == 0.0
    assert st.relative_halfwidth(st.Estimate(0.0, 1.0, 3)) == math.inf


def _ar1(rng, n, phi, mean, sigma=1.0):
    noise = rng.normal(0.0, sigma, n)
    x = signal.lfilter([1.0], [1.0, -phi], noise)
    return mean + x


def test_batch_means_covers_true_mean_of_ar1():
    # strongly correlated series: a naive iid interval is far too narrow, batch means is not
    rng = np.random.default_rng(2024)
    covered = naive_covered = 0
    trials = 100
    for _ in range(trials):
        x = _ar1(rng, 20_000, phi=0.9, mean=5.0)
        est = st.batch_means(x, n_batches=10)
        assert est.n == 10
        covered += est.low <= 5.0 <= est.high
        naive = st.estimate(x)
        naive_covered += naive.low <= 5.0 <= naive.high
    assert covered >= 0.85 * trials
    assert naive_covered < 0.6 * trials


def test_batch_means_drops_the_leading_remainder_and_checks_input():
    est = st.batch_means([100.0] + [1.0, 2.0] * 10, n_batches=10)  # 21 samples: the first is dropped
    assert est.mean == pytest.approx(1.5) and est.halfwidth == pytest.approx(0.0)
    with pytest.raises(ValueError, match="cannot fill"):
        st.batch_means([1.0, 2.0, 3.0], n_batches=10)
    with pytest.raises(ValueError, match="n_batches"):
        st.batch_means(range(100), n_batches=1)


def test_summarize_and_stopping_rule():
    reps = [{"throughput_mbps": 1000.0, "reply_rps": 8000.0},
            {"throughput_mbps": 1010.0, "reply_rps": 8050.0},
            {"throughput_mbps": 990.0, "reply_rps": 7990.0}]
    s = st.summarize(reps)
    assert list(s) == ["throughput_mbps", "reply_rps"]
    assert s["throughput_mbps"].mean == pytest.approx(1000.0)
    assert s["throughput_mbps"].halfwidth == pytest.approx(sps.t.ppf(0.975, 2) * 10.0 / math.sqrt(3))
    assert not st.need_more(s, "throughput_mbps", 5.0)  # about 2.5 %
    assert st.need_more(s, "throughput_mbps", 1.0)
    assert st.need_more(st.summarize(reps[:1]))  # one replication: no interval yet
    with pytest.raises(KeyError, match="cpu_util"):
        st.need_more(s, "cpu_util")


def test_summarize_rejects_a_missing_metric():
    with pytest.raises(ValueError, match="replication 1.*missing cpu_util"):
        st.summarize([{"a": 1.0, "cpu_util": 0.5}, {"a": 2.0}])
    with pytest.raises(ValueError, match="no replications"):
        st.summarize([])


def test_percentile_is_numpy_default():
    rng = np.random.default_rng(1)
    x = rng.exponential(size=1001)
    for q in (0, 10, 50, 90, 99, 99.9, 100):
        assert st.percentile(x, q) == np.percentile(x, q)
        assert st.percentile(sorted(x), q) == np.percentile(x, q)
    assert st.percentile([1.0, 2.0, 3.0, 4.0], 90) == pytest.approx(3.7)
    with pytest.raises(ValueError):
        st.percentile([1.0], 101)


# ---- textbook queues ------------------------------------------------------------------


def test_mm1_known_values():
    r = an.mm1(50.0, 100.0)
    assert r.rho == 0.5
    assert r.mean_response == pytest.approx(2 / 100.0)
    assert r.mean_wait == pytest.approx(1 / 100.0)
    assert r.mean_in_system == pytest.approx(1.0)
    assert r.p90_response == pytest.approx(math.log(10) / 50.0)


def test_unstable_queues_raise_clear_errors():
    with pytest.raises(ValueError, match=r"M/M/1 is unstable.*rho = 1 >= 1"):
        an.mm1(100.0, 100.0)
    with pytest.raises(ValueError, match="M/D/1 is unstable"):
        an.md1(120.0, 0.01)
    with pytest.raises(ValueError, match="M/M/4 is unstable"):
        an.mmc(500.0, 100.0, 4)
    with pytest.raises(ValueError, match="PS is unstable"):
        an.mg1_ps(10.0, 0.2)
    with pytest.raises(ValueError, match="link overloaded"):
        an.fluid_link(200.0, 1e6, 1e8)
    with pytest.raises(ValueError, match="service rate"):
        an.mm1(1.0, 0.0)


def test_md1_waits_half_as_long_as_mm1():
    for rho in (0.1, 0.5, 0.9):
        s = 0.004
        lam = rho / s
        d, m = an.md1(lam, s), an.mm1(lam, 1 / s)
        assert d.mean_wait == pytest.approx(m.mean_wait / 2)
        assert d.mean_response == pytest.approx(d.mean_wait + s)
        assert d.mean_in_system == pytest.approx(lam * d.mean_response)


def test_erlang_c_tabulated_values():
    assert an.erlang_c(2, 1.0) == pytest.approx(1 / 3)
    assert an.erlang_c(3, 2.0) == pytest.approx(4 / 9)
    # the classic call-centre table: 10 erlangs on 12 agents wait with probability 44.94 %
    assert an.erlang_c(12, 10.0) == pytest.approx(0.4494, abs=5e-5)
    # stays finite for many servers (direct factorials would overflow)
    assert 0.0 < an.erlang_c(2000, 1950.0) < 1.0


def test_mmc_reduces_to_mm1_and_its_p90_has_survival_one_tenth():
    one, ref = an.mmc(70.0, 100.0, 1), an.mm1(70.0, 100.0)
    assert one.mean_response == pytest.approx(ref.mean_response)
    assert one.p90_response == pytest.approx(ref.p90_response, rel=1e-9)
    r = an.mmc(150.0, 100.0, 2)
    assert r.mean_wait == pytest.approx(an.erlang_c(2, 1.5) / (200.0 - 150.0))
    assert an.mmc_response_survival(150.0, 100.0, 2, r.p90_response) == pytest.approx(0.1, abs=1e-9)
    # heavy load: the tail is long and must not overflow
    assert an.mmc(0.999, 1.0, 1).p90_response == pytest.approx(math.log(10) / 0.001, rel=1e-9)


def test_mmc_p90_against_a_direct_fcfs_simulation():
    rng = np.random.default_rng(11)
    lam, mu, c, n = 300.0, 100.0, 4, 200_000
    arrivals = np.cumsum(rng.exponential(1 / lam, n))
    service = rng.exponential(1 / mu, n)
    free = [0.0] * c  # when each server next becomes free
    resp = np.empty(n)
    for i in range(n):
        k = min(range(c), key=free.__getitem__)
        start = max(arrivals[i], free[k])
        free[k] = start + service[i]
        resp[i] = free[k] - arrivals[i]
    resp = resp[n // 10:]
    r = an.mmc(lam, mu, c)
    assert np.mean(resp) == pytest.approx(r.mean_response, rel=0.04)
    assert np.percentile(resp, 90) == pytest.approx(r.p90_response, rel=0.04)


def test_processor_sharing_and_fluid_link():
    r = an.mg1_ps(40.0, 0.02)
    assert r.rho == pytest.approx(0.8)
    assert r.mean_response == pytest.approx(0.02 / 0.2)
    assert r.mean_in_system == pytest.approx(0.8 / 0.2)
    # 100 flows/s of 500 KB on a 1 Gbit/s link: rho = 0.4
    f = an.fluid_link(100.0, 500_000.0, 125_000_000.0)
    assert f.rho == pytest.approx(0.4)
    assert f.mean_response == pytest.approx(0.004 / 0.6)


# ---- operational bounds --------------------------------------------------------------


def test_saturation_rates_and_bottleneck():
    demands = [an.Demand("cpu", 0.0004, 4), an.Demand("nic", 15_000 / 125e6, 4),
               an.Demand("disk", 0.0, 1)]
    rates = an.saturation_rates(demands)
    assert rates["cpu"] == pytest.approx(10_000.0)
    assert rates["nic"] == pytest.approx(4 * 125e6 / 15_000)
    assert rates["disk"] == math.inf
    assert an.bottleneck(demands) == ("cpu", pytest.approx(10_000.0))
    with pytest.raises(ValueError, match="twice"):
        an.saturation_rates([an.Demand("cpu", 1.0, 1), an.Demand("cpu", 1.0, 1)])
    with pytest.raises(ValueError, match="no demands"):
        an.bottleneck([])


def test_utilisation_law():
    # 60 % busy on one disk at 120 requests/s: 5 ms per request
    assert an.demand_from_utilisation(0.6, 120.0) == pytest.approx(0.005)
    # 4 cores each 50 % busy at 10,000 requests/s: 200 us of CPU per request
    assert an.demand_from_utilisation(0.5, 10_000.0, servers=4) == pytest.approx(0.0002)
    with pytest.raises(ValueError, match="throughput"):
        an.demand_from_utilisation(0.5, 0.0)


# ---- Che's approximation ----------------------------------------------------------------


def test_che_everything_fits():
    h = an.che_lru_hit_ratio([0.5, 0.3, 0.2], [100, 200, 300], 600)
    assert (h.hit_ratio, h.byte_hit_ratio) == (1.0, 1.0)
    # a never-requested object does not need room
    assert an.che_lru_hit_ratio([0.5, 0.5, 0.0], [100, 100, 10_000], 200).hit_ratio == 1.0
    assert an.che_lru_hit_ratio([0.5, 0.5], [100, 100], 0).hit_ratio == 0.0


def _lru_simulation(requests, sizes, capacity, warm):
    """Request and byte hit ratios of an LRU over whole objects, counted after `warm` requests."""
    cache: OrderedDict[int, None] = OrderedDict()
    used = 0
    hits = hit_bytes = total_bytes = 0
    for k, i in enumerate(requests):
        size = sizes[i]
        counted = k >= warm
        total_bytes += size * counted
        if i in cache:
            cache.move_to_end(i)
            hits += counted
            hit_bytes += size * counted
            continue
        if size > capacity:
            continue
        while used + size > capacity:
            old, _ = cache.popitem(last=False)
            used -= sizes[old]
        cache[i] = None
        used += size
    return hits / (len(requests) - warm), hit_bytes / total_bytes


def test_che_against_a_brute_force_lru_of_a_zipf_population():
    rng = np.random.default_rng(5)
    n = 400
    p = 1.0 / np.arange(1, n + 1) ** 0.9
    p /= p.sum()
    sizes = rng.integers(1_000, 50_000, n)
    capacity = 0.25 * sizes.sum()
    requests = rng.choice(n, size=150_000, p=p)
    sim_hit, sim_bytes = _lru_simulation(requests.tolist(), sizes.tolist(), capacity, warm=20_000)
    che = an.che_lru_hit_ratio(p, sizes, capacity)
    assert 0.2 < che.hit_ratio < 0.9
    assert che.hit_ratio == pytest.approx(sim_hit, abs=0.02)
    assert che.byte_hit_ratio == pytest.approx(sim_bytes, abs=0.03)


def test_che_rejects_bad_input():
    with pytest.raises(ValueError, match="same length"):
        an.che_lru_hit_ratio([0.5, 0.5], [1.0], 1.0)
    with pytest.raises(ValueError, match="sizes"):
        an.che_lru_hit_ratio([0.5, 0.5], [1.0, 0.0], 1.0)
