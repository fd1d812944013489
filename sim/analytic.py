"""The analytic twin: textbook queues, operational bounds and Che's LRU approximation.

Beside every simulated point the report gives what can be known without
simulating: the saturation rate of each resource from its service demand
(operational analysis), and where a model reduces to a textbook queue, the
exact formula. The tests hold the simulator to these formulas.

Units: rates per second, times in seconds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from scipy.optimize import brentq
from scipy.optimize import root as root_solve


@dataclass
class QueueResult:
    """Steady-state figures of one queue. p90_response is None where no closed form is used."""

    model: str
    rho: float  # utilisation of one server
    mean_response: float  # sojourn time: waiting plus service
    mean_wait: float  # time in queue before service starts
    mean_in_system: float  # Little: lam * mean_response
    p90_response: float | None = None


def _check_rate(name: str, value: float, *, positive: bool) -> float:
    value = float(value)
    if math.isnan(value) or math.isinf(value) or value < 0 or (positive and value == 0):
        kind = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be a finite number {kind}, got {value!r}")
    return value


def _unstable(model: str, rho: float, detail: str) -> ValueError:
    return ValueError(f"{model} is unstable: utilisation rho = {rho:.4g} >= 1 ({detail}); "
                      "no steady state exists")


def _survival_quantile(survival, q: float, scale: float) -> float:
    """Smallest t with survival(t) <= 1 - q, for a continuous decreasing survival function."""
    target = 1.0 - q
    hi = max(scale, 1e-300)
    while survival(hi) > target:
        hi *= 2.0
        if hi > 1e300:
            raise ValueError("percentile search did not converge")
    return float(brentq(lambda t: survival(t) - target, 0.0, hi, xtol=1e-15 * hi + 1e-300, rtol=1e-12))


def mm1(lam: float, mu: float) -> QueueResult:
    """M/M/1: the response time is exponential with rate mu - lam."""
    lam = _check_rate("arrival rate lam", lam, positive=False)
    mu = _check_rate("service rate mu", mu, positive=True)
    rho = lam / mu
    if rho >= 1:
        raise _unstable("M/M/1", rho, f"arrival rate {lam:g}/s, service rate {mu:g}/s")
    r = 1.0 / (mu - lam)
    return QueueResult("M/M/1", rho, r, rho * r, lam * r, math.log(10.0) * r)


def md1(lam: float, s: float) -> QueueResult:
    """M/D/1 with a fixed service time s: Pollaczek-Khinchine, half the M/M/1 wait."""
    lam = _check_rate("arrival rate lam", lam, positive=False)
    s = _check_rate("service time s", s, positive=True)
    rho = lam * s
    if rho >= 1:
        raise _unstable("M/D/1", rho, f"arrival rate {lam:g}/s, service time {s:g} s")
    wait = rho * s / (2.0 * (1.0 - rho))
    return QueueResult("M/D/1", rho, wait + s, wait, lam * (wait + s))


def erlang_c(c: int, a: float) -> float:
    """Probability that an arrival waits in M/M/c with offered load a = lam/mu erlangs.

    Computed through the Erlang B recursion, which stays stable for thousands of servers.
    """
    if int(c) != c or c < 1:
        raise ValueError(f"number of servers c must be an integer >= 1, got {c!r}")
    c = int(c)
    a = _check_rate("offered load a", a, positive=False)
    if a / c >= 1:
        raise _unstable(f"M/M/{c}", a / c, f"offered load {a:g} erlangs on {c} servers")
    b = 1.0
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    rho = a / c
    return b / (1.0 - rho * (1.0 - b))


def mmc_response_survival(lam: float, mu: float, c: int, t: float) -> float:
    """P(response > t) in M/M/c (FCFS): no wait with prob 1 - C, else Exp(c mu - lam) then Exp(mu)."""
    pw = erlang_c(c, lam / mu)
    theta = c * mu - lam
    e_mu = math.exp(-mu * t)
    # Exp(theta) + Exp(mu) is hypoexponential; written around the slower rate so
    # that neither cancellation nor overflow occurs for long tails (rho near 1)
    slow, fast = min(theta, mu), max(theta, mu)
    g = fast - slow
    x = -math.expm1(-g * t) / g if g * t > 1e-12 else t
    both = math.exp(-slow * t) * (1.0 + slow * x)
    return (1.0 - pw) * e_mu + pw * both


def mmc(lam: float, mu: float, c: int) -> QueueResult:
    """M/M/c: c identical servers of rate mu, one FCFS queue (Erlang C)."""
    lam = _check_rate("arrival rate lam", lam, positive=False)
    mu = _check_rate("service rate mu", mu, positive=True)
    if int(c) != c or c < 1:
        raise ValueError(f"number of servers c must be an integer >= 1, got {c!r}")
    c = int(c)
    rho = lam / (c * mu)
    if rho >= 1:
        raise _unstable(f"M/M/{c}", rho, f"arrival rate {lam:g}/s, {c} servers of {mu:g}/s")
    pw = erlang_c(c, lam / mu)
    wait = pw / (c * mu - lam)
    resp = wait + 1.0 / mu
    p90 = _survival_quantile(lambda t: mmc_response_survival(lam, mu, c, t), 0.9, resp)
    return QueueResult(f"M/M/{c}", rho, resp, wait, lam * resp, p90)


def mg1_ps(lam: float, mean_s: float) -> QueueResult:
    """M/G/1 processor sharing: mean sojourn E[S]/(1 - rho) whatever the service distribution."""
    lam = _check_rate("arrival rate lam", lam, positive=False)
    mean_s = _check_rate("mean service time", mean_s, positive=True)
    rho = lam * mean_s
    if rho >= 1:
        raise _unstable("M/G/1-PS", rho, f"arrival rate {lam:g}/s, mean service {mean_s:g} s")
    resp = mean_s / (1.0 - rho)
    return QueueResult("M/G/1-PS", rho, resp, resp - mean_s, lam * resp)


def fluid_link(lam: float, size_bytes: float, capacity_bytes_s: float) -> QueueResult:
    """Flows of mean size b arriving as a Poisson stream on a fairly shared link of C bytes/s.

    Fair sharing of a fluid link is processor sharing, so the mean transfer time
    is (b/C)/(1 - rho) with rho = lam b / C.
    """
    size_bytes = _check_rate("flow size", size_bytes, positive=True)
    capacity_bytes_s = _check_rate("link capacity", capacity_bytes_s, positive=True)
    try:
        res = mg1_ps(lam, size_bytes / capacity_bytes_s)
    except ValueError as e:
        raise ValueError(f"link overloaded: {e}") from None
    res.model = "fluid link (M/G/1-PS)"
    return res


# ---- operational bounds -------------------------------------------------------


@dataclass
class Demand:
    """Service demand of one request on a resource with `servers` identical units."""

    resource: str
    seconds_per_request: float
    servers: int = 1


def saturation_rates(demands: Iterable[Demand]) -> dict[str, float]:
    """Requests/s at which each resource saturates: servers / demand (inf for zero demand)."""
    out: dict[str, float] = {}
    for d in demands:
        if d.resource in out:
            raise ValueError(f"resource {d.resource!r} is given twice; add its demands first")
        sec = float(d.seconds_per_request)
        if math.isnan(sec) or sec < 0:
            raise ValueError(f"demand of {d.resource!r} must be >= 0 s per request, got {d.seconds_per_request!r}")
        if int(d.servers) != d.servers or d.servers < 1:
            raise ValueError(f"servers of {d.resource!r} must be an integer >= 1, got {d.servers!r}")
        out[d.resource] = math.inf if sec == 0 else d.servers / sec
    return out


def bottleneck(demands: Iterable[Demand]) -> tuple[str, float]:
    """The resource with the lowest saturation rate (the first one listed on a tie)."""
    rates = saturation_rates(demands)
    if not rates:
        raise ValueError("bottleneck: no demands given")
    name = min(rates, key=lambda k: rates[k])
    return name, rates[name]


def demand_from_utilisation(util: float, throughput: float, servers: int = 1) -> float:
    """Utilisation law U = X D / servers, solved for D (seconds per request).

    `util` is the mean busy fraction of one unit (0..1); for a resource with
    several units (cores) the demand is the busy time summed over them.
    """
    util = float(util)
    if math.isnan(util) or util < 0:
        raise ValueError(f"utilisation must be >= 0, got {util!r}")
    throughput = float(throughput)
    if not throughput > 0 or math.isinf(throughput):
        raise ValueError(f"throughput must be a finite number > 0 to infer a demand, got {throughput!r}")
    return util * servers / throughput


# ---- page cache ----------------------------------------------------------------


@dataclass
class CacheHit:
    """Che's approximation: request and byte hit ratios and the characteristic time T."""

    hit_ratio: float
    byte_hit_ratio: float
    char_time: float  # in requests (the unit of 1/p); inf when everything fits


def _cache_inputs(name: str, probabilities, sizes, capacity_bytes) -> tuple[np.ndarray, np.ndarray, float]:
    """Checked inputs of a cache approximation: normalised probabilities, sizes, capacity in bytes."""
    p = np.asarray(probabilities, dtype=float)
    s = np.asarray(sizes, dtype=float)
    if p.ndim != 1 or s.shape != p.shape:
        raise ValueError(f"{name}: probabilities and sizes must be flat and of the same length")
    if p.size == 0:
        raise ValueError(f"{name}: no objects")
    if not (np.all(np.isfinite(p)) and np.all(p >= 0)) or p.sum() <= 0:
        raise ValueError(f"{name}: probabilities must be finite, >= 0 and not all zero")
    if not (np.all(np.isfinite(s)) and np.all(s > 0)):
        raise ValueError(f"{name}: sizes must be finite and > 0")
    capacity = float(capacity_bytes)
    if math.isnan(capacity) or capacity < 0:
        raise ValueError(f"{name}: capacity must be >= 0 bytes, got {capacity_bytes!r}")
    return p / p.sum(), s, capacity


def che_lru_hit_ratio(probabilities: Sequence[float], sizes: Sequence[float], capacity_bytes: float) -> CacheHit:
    """Hit ratios of an LRU cache of capacity_bytes under the independent reference model.

    An object requested with probability p_i stays cached if requested again
    within the characteristic time T, where T fills the cache on average:
    sum_i size_i (1 - exp(-p_i T)) = capacity. The probabilities are normalised.
    """
    p, s, capacity = _cache_inputs("che_lru_hit_ratio", probabilities, sizes, capacity_bytes)
    live = p > 0  # never-requested objects never enter the cache
    p, s = p[live], s[live]
    if s.sum() <= capacity:
        return CacheHit(1.0, 1.0, math.inf)
    if capacity == 0:
        return CacheHit(0.0, 0.0, 0.0)

    def excess(t: float) -> float:
        return float(np.dot(s, -np.expm1(-p * t))) - capacity

    hi = 1.0 / p.max()
    while excess(hi) < 0:
        hi *= 2.0
    t = float(brentq(excess, 0.0, hi, xtol=1e-12 * hi, rtol=1e-12, maxiter=500))
    h = -np.expm1(-p * t)
    ps = p * s
    return CacheHit(float(np.dot(p, h)), float(np.dot(ps, h) / ps.sum()), t)


def two_list_ratio(capacity_bytes: float) -> int:
    """Active bytes allowed per inactive byte (`inactive_is_low`, mm/vmscan.c): sqrt(10 x GB), 1 below 1 GB."""
    gb = int(capacity_bytes) >> 30
    return math.isqrt(10 * gb) if gb else 1


@dataclass
class TwoListHit:
    """The stationary state of the two-list page cache under the independent reference model.

    `resident` and `active` are each object's probability of being cached and of being on
    the active list; `miss` its share of all requests that miss. Times are in requests.
    """

    hit_ratio: float
    byte_hit_ratio: float
    t_inactive: float
    t_active: float
    t_refault: float
    resident: np.ndarray
    active: np.ndarray
    miss: np.ndarray


def _two_list_state(p, t_i, t_a, t_r):
    """Per object: time out, inactive and active, and evictions plus activations, per cycle.

    A cycle starts when the object is evicted. Its next request reads it in: onto the active
    list if it refaults within t_r of the eviction, else onto the inactive list, referenced.
    Inactive and referenced, one more request within t_i promotes it (unreferenced, two); each
    stay on the active list lasts t_a and leaves it referenced if it was requested meanwhile.
    All four are scaled by the chance that a stay on the active list ends the cycle, so that
    they stay finite for objects that are never evicted.
    """
    q, a = p * t_i, p * t_a
    eq = np.exp(-q)
    p1 = -np.expm1(-q)                   # promoted from inactive, referenced
    r0 = np.exp(-a)                      # unreferenced when demoted
    f = -np.expm1(-p * t_r)              # read in again as a refault
    end = eq * (1.0 + r0 * q)            # a stay on the active list is followed by eviction
    enter = f + (1.0 - f) * p1           # a cycle reaches the active list
    t_out = end / p
    t_in = (((1.0 - f) * end + enter * (1.0 - r0)) * p1 + enter * r0 * (2.0 - eq * (2.0 + q))) / p
    t_act = enter * t_a
    return t_out, t_in, t_act, end + enter


def two_list_hit_ratio(probabilities: Sequence[float], sizes: Sequence[float], capacity_bytes: float,
                       refault: bool = True) -> TwoListHit:
    """Hit ratios of the two-list page cache (sim/hardware.py TwoListCache), a Che-style approximation.

    The inactive list is a FIFO each object leaves t_i after entering (if not promoted); the
    active list one it leaves t_a after promotion; the active list holds ratio/(ratio+1) of the
    capacity (`two_list_ratio`). A refault window t_r makes the shadows' test: an object read
    in again within t_r of its eviction, when the non-resident age has grown by less than the
    active list's bytes, goes straight to the active list. t_i, t_a and t_r solve the three
    balance equations (bytes on each list, and t_r x the rate bytes are evicted or activated =
    active bytes). Exact only in the limit of many objects, as Che's is.
    """
    p, s, capacity = _cache_inputs("two_list_hit_ratio", probabilities, sizes, capacity_bytes)
    live = p > 0
    n = p.size
    if s[live].sum() <= capacity or capacity == 0:
        full = capacity > 0
        res = np.where(live, 1.0, 0.0) if full else np.zeros(n)
        return TwoListHit(float(full), float(full), math.inf if full else 0.0, math.inf if full else 0.0, 0.0,
                          res, np.zeros(n), np.zeros(n) if full else p)
    pl, sl = p[live], s[live]
    ratio = two_list_ratio(capacity)
    c_act = capacity * ratio / (ratio + 1.0)

    def occupancy(t_i, t_a, t_r):
        t_out, t_in, t_act, moves = _two_list_state(pl, t_i, t_a, t_r)
        cycle = t_out + t_in + t_act
        return float(sl @ (t_in / cycle)), float(sl @ (t_act / cycle)), float(sl @ (moves / cycle))

    lo, hi = math.log(1e-6 / pl.max()), math.log(1.0 / pl.min()) + 10.0
    last = {}

    def root(excess, key, xtol):
        """The log-time where excess (increasing) crosses 0, bracketed near the last one found."""
        x = last.get(key)
        if x is None:
            a, b = lo, hi
        else:
            a, b = x - 0.05, x + 0.05
            while a > lo and excess(a) > 0:
                a -= 4 * (x - a)
            while b < hi and excess(b) < 0:
                b += 4 * (b - x)
            a, b = max(a, lo), min(b, hi)
        if excess(a) > 0:
            return a
        if excess(b) < 0:
            return b
        last[key] = x = brentq(excess, a, b, xtol=xtol, rtol=1e-12)
        return x

    def t_inactive(t_a, t_r):
        """t_i that fills the whole capacity for the given t_a and t_r."""
        return math.exp(root(lambda x: sum(occupancy(math.exp(x), t_a, t_r)[:2]) - capacity, "i", 1e-9))

    def t_active(t_r):
        """t_a at which the active list holds its share, t_i filling the rest; all it would
        ever promote may fit, and then nothing is demoted (t_a at its upper end)."""
        def excess(y):
            t_a = math.exp(y)
            return occupancy(t_inactive(t_a, t_r), t_a, t_r)[1] - c_act
        return math.exp(root(excess, "a", 1e-7))

    def balance(x):
        t_i, t_a, t_r = np.exp(x)
        inact, act, churn = occupancy(t_i, t_a, t_r)
        return [(inact + act) / capacity - 1.0, act / c_act - 1.0, math.log(act / churn / t_r)]

    def t_refault(t_r):
        """The refault window the lists give when objects refault within t_r (less t_r)."""
        t_a = t_active(t_r)
        _, act, churn = occupancy(t_inactive(t_a, t_r), t_a, t_r)
        return act / churn - t_r

    t_r = 0.0
    t_a = t_active(t_r)
    t_i = t_inactive(t_a, t_r)
    if refault:
        # the three balances at once, from the state without refaults; the slow, sure way if that fails
        start = occupancy(t_i, t_a, 0.0)
        sol = root_solve(balance, np.log([t_i, t_a, start[1] / start[2]]), method="hybr")
        if sol.success and np.max(np.abs(balance(sol.x))) < 1e-6:
            t_i, t_a, t_r = (float(v) for v in np.exp(sol.x))
        else:
            hi = start[1] / start[2]     # the window only narrows as refaults grow the churn
            t_r = brentq(t_refault, 0.0, hi, xtol=1e-4 * hi, rtol=1e-4) if t_refault(hi) < 0 else hi
            t_a = t_active(t_r)
            t_i = t_inactive(t_a, t_r)
    t_out, t_in, t_act, _ = _two_list_state(pl, t_i, t_a, t_r)
    cycle = t_out + t_in + t_act
    res = np.zeros(n)
    act = np.zeros(n)
    res[live] = (t_in + t_act) / cycle
    act[live] = t_act / cycle
    miss = p * (1.0 - res)
    ps = p * s
    return TwoListHit(float(p @ res), float(ps @ res / ps.sum()), t_i, t_a, t_r, res, act, miss)
