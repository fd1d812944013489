"""The study's tuning sweeps (PAPER.md section 4), simulated and checked against its stated findings.

    python bench/section4.py [--sweeps knot-nb,userver-nb,...] [--rates 15000,25000] [--quick]
                             [--warmup S] [--duration S] [--batches N] [--set KEY=VALUE]
                             [--cache DIR] [--jobs N] [--json OUT]
    python bench/section4.py --report A.json,B.json [--json OUT]     (no simulation)
    python bench/section4.py --poll-probe [--sweeps userver-nb] [--rates 15000]

Runs scenarios/paper-fig7.toml (the study's machine, workload, run control and
profile study-xeon) with its [[server]] entries replaced by the configurations
the study swept around Figure 7's best ones, one per label in the study's legend
form (knot-nb-15K-50w, userver-nb-10K-2p, WatPipe-20K-25p, ...), at a few
saturated offered rates. Each point is one replication whose window is cut into
batches (batch means), and every configuration sees the same random numbers at a
rate (the engine's seeds depend on the seed, replication and rate only).

It prints, per sweep, the simulated Mbps (mean and 95 % half-width per rate, and
the level: the mean over the rates run), then the simulation's own outputs that
tell why (connections held against the limit, CPU busy, entities blocked, disk
busy, page-cache hits, the page cache left after the footprint, errors), and then
each of the study's findings as PASS or MISS. "No gain" means not above the
reference by more than TOL_PCT; "rises"/"hurts" means by more than TOL_PCT. A
verdict whose margin is smaller than the 95 % half-width of the difference is
marked "(within noise)": a longer run could turn it. Peaks are compared with the
values the study's text gives, within PEAK_TOL_PCT.

Nothing is tuned here: the models, the profile and the scenario are used as they
are. The sweeps can be run in several commands (`--sweeps`) and reported together
with `--report` from their `--json` outputs; `--cache DIR` also keeps each
replication in a result cache (sim/resultcache.py). The default run (all six
sweeps, 35 configurations at two rates, the scenario's 50 s warm-up and 10 s
window) takes 15-20 minutes with two jobs; `--quick` (one rate, 20 s warm-up,
4 s window) a few minutes, and is only a smoke test. `--poll-probe` counts the
userver's poll calls and their CPU, which the runner's outputs do not give.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field, replace

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import models  # noqa: E402
from sim.atomic import write_text  # noqa: E402
from sim.config import ServerSpec  # noqa: E402
from sim.scenario import ScenarioError, format_error, load_scenario  # noqa: E402

SCENARIO = os.path.join(REPO, "scenarios", "paper-fig7.toml")
RATES = (15000, 25000)                 # saturated: every good server saturates by 15,000 (PAPER.md 5.1)
TOL_PCT = 2.0                          # "no gain": not above the reference by more than this
PEAK_TOL_PCT = 5.0                     # a peak matches the study's within this (as bench/fig7.py)
BATCHES = 4


# ---------------------------------------------------------------- the configurations

@dataclass(frozen=True)
class Config:
    """One configuration of a sweep: the study's legend label, the model and its knobs."""

    label: str
    architecture: str
    knobs: tuple                       # (name, value) pairs, in the model's Knobs vocabulary
    limit: int                         # the connection limit (Knot: threads; others: max_conns)
    note: str = ""

    def spec(self) -> ServerSpec:
        return ServerSpec(self.label, self.architecture, models.knobs_class(self.architecture)(**dict(self.knobs)))


def _k(n: int) -> str:
    return f"{n // 1000}K"


def knot(variant: str, threads: int, workers: int, cache_mb: int | None = None) -> Config:
    label = f"{variant}-{_k(threads)}-{workers}w" + (f"-{cache_mb}MB" if cache_mb is not None else "")
    knobs = (("variant", variant), ("threads", threads), ("workers", workers))
    if cache_mb is not None:
        knobs += (("cache_mb", float(cache_mb)),)
    return Config(label, "knot", knobs, threads)


def userver(p: int, conns: int, blocking: bool = False, note: str = "") -> Config:
    label = f"userver-{'b' if blocking else 'nb'}-{_k(conns)}-{p}p"
    knobs = (("processes", p), ("max_conns", conns))
    if blocking:
        knobs += (("blocking_sockets", True),)
    return Config(label, "symped", knobs, conns, note)


def watpipe(writers: int, conns: int) -> Config:
    return Config(f"WatPipe-{_k(conns)}-{writers}p", "watpipe", (("writers", writers), ("max_conns", conns)), conns)


# Each sweep: series of configurations, as the study varied one knob at a time around its best.
SWEEPS: dict[str, dict[str, list[Config]]] = {
    "knot-nb": {
        "threads, 50 workers": [knot("knot-nb", t, 50) for t in (10000, 15000, 20000, 40000)],
        "workers, 15K threads": [knot("knot-nb", 15000, w) for w in (5, 25, 50, 100)],
    },
    "knot-b": {
        "workers, 20K threads": [knot("knot-b", 20000, w) for w in (5, 25, 50, 100)],
        "threads, 100 workers": [knot("knot-b", t, 100) for t in (10000, 20000, 40000)],
    },
    "knot-c": {
        "cache, 20K threads 100 workers": [knot("knot-c", 20000, 100, c) for c in (10, 100, 500, 1000)],
    },
    "userver-nb": {
        "processes, 30K conns": [userver(p, 30000) for p in (1, 2, 3, 4, 6)],
        "processes, 10K conns": [userver(p, 10000) for p in (1, 2, 4)],
    },
    "userver-b": {
        "processes, 30K conns": [userver(10, 30000, True, "control, not in the study's sweep")]
                                + [userver(p, 30000, True) for p in (75, 100, 200)],
        "50K conns": [userver(100, 50000, True)],
    },
    "watpipe": {
        "writers, 20K conns": [watpipe(w, 20000) for w in (5, 25, 50)],
        "conns, 25 writers": [watpipe(25, c) for c in (10000, 20000, 30000)],
    },
}


def configs_of(sweeps) -> list[Config]:
    """The distinct configurations of these sweeps, in order of first appearance."""
    seen: dict[str, Config] = {}
    for name in sweeps:
        for series in SWEEPS[name].values():
            for c in series:
                seen.setdefault(c.label, c)
    return list(seen.values())


# ---------------------------------------------------------------- the study's findings

@dataclass(frozen=True)
class Finding:
    """One statement of the study about a sweep, and how to check it on the simulated levels.

    kind: "no_gain" (no label of `others` above `ref` by more than TOL_PCT), "rises"
    (`labels` never fall by more than TOL_PCT from one to the next, and the last is above
    the first by more than TOL_PCT), "below" (each of `others` below `ref` by more than
    TOL_PCT), "peak" (the peak of `ref` within PEAK_TOL_PCT of the study's [lo, hi]), "metric"
    (output `metric` of `ref` at offered rate `rate` within PEAK_TOL_PCT of the study's value)."""

    sweep: str
    text: str
    source: str
    kind: str
    ref: str = ""
    others: tuple = ()
    study: tuple = ()                  # (lo, hi) Mbps for "peak"
    mechanism_hint: str = ""           # which of the mechanisms the study names, if any
    metric: str = ""                   # for "metric": the output compared
    rate: int = 0                      # for "metric": the offered rate it is stated at


FINDINGS: tuple[Finding, ...] = (
    Finding("knot-nb", "no gain above 15K threads (50 workers)", "4.1", "no_gain",
            "knot-nb-15K-50w", ("knot-nb-20K-50w", "knot-nb-40K-50w"), mechanism_hint="connection limits"),
    Finding("knot-nb", "no gain above 25 workers (15K threads)", "4.1", "no_gain",
            "knot-nb-15K-25w", ("knot-nb-15K-50w", "knot-nb-15K-100w"), mechanism_hint="too few workers"),
    Finding("knot-nb", "15K-50w is the best of the sweep", "4.1", "no_gain", "knot-nb-15K-50w",
            ("knot-nb-10K-50w", "knot-nb-20K-50w", "knot-nb-40K-50w", "knot-nb-15K-5w", "knot-nb-15K-25w",
             "knot-nb-15K-100w")),
    Finding("knot-nb", "peak 1,165 (sustained) to 1,200 Mbps", "5.1", "peak", "knot-nb-15K-50w", study=(1165, 1200)),
    Finding("knot-b", "20K-100w is the best of the sweep", "4.1", "no_gain", "knot-b-20K-100w",
            ("knot-b-20K-5w", "knot-b-20K-25w", "knot-b-20K-50w", "knot-b-10K-100w", "knot-b-40K-100w"),
            mechanism_hint="too few workers, disk blocking"),
    Finding("knot-b", "peak 1,230 Mbps", "5.1", "peak", "knot-b-20K-100w", study=(1230, 1230)),
    Finding("knot-c", "throughput rises with the cache size, 10 MB to 1 GB", "4.1", "rises", "",
            ("knot-c-20K-100w-10MB", "knot-c-20K-100w-100MB", "knot-c-20K-100w-500MB", "knot-c-20K-100w-1000MB"),
            mechanism_hint="memory footprint, disk blocking"),
    Finding("knot-c", "1 GB is the best cache size", "4.1", "no_gain", "knot-c-20K-100w-1000MB",
            ("knot-c-20K-100w-10MB", "knot-c-20K-100w-100MB", "knot-c-20K-100w-500MB")),
    Finding("knot-c", "peak 1,085 Mbps", "5.1", "peak", "knot-c-20K-100w-1000MB", study=(1085, 1085)),
    Finding("userver-nb", "throughput rises from 1 to 4 processes (30K conns)", "4.2", "rises", "",
            ("userver-nb-30K-1p", "userver-nb-30K-2p", "userver-nb-30K-3p", "userver-nb-30K-4p"),
            mechanism_hint="disk blocking"),
    Finding("userver-nb", "SPED (30K, 1p) is blocked on the disk 33 % of the time at 15,000 req/s", "4.2",
            "metric", "userver-nb-30K-1p", study=(33.0, 33.0), metric="blocked_pct", rate=15000,
            mechanism_hint="disk blocking"),
    Finding("userver-nb", "more than 4 processes do not help (30K conns)", "4.2", "no_gain",
            "userver-nb-30K-4p", ("userver-nb-30K-6p",)),
    Finding("userver-nb", "at 10K conns adding processes hurts (2p, 4p below 1p)", "4.2", "below",
            "userver-nb-10K-1p", ("userver-nb-10K-2p", "userver-nb-10K-4p"), mechanism_hint="poll set size"),
    Finding("userver-b", "needs many processes: 10p (control) below 100p", "4.2", "below",
            "userver-b-30K-100p", ("userver-b-30K-10p",), mechanism_hint="disk blocking, socket blocking"),
    Finding("userver-b", "30K-100p is the best of 75-200 processes and 50K conns", "4.2", "no_gain",
            "userver-b-30K-100p", ("userver-b-30K-75p", "userver-b-30K-200p", "userver-b-50K-100p")),
    Finding("watpipe", "no gain above 20K conns (25 writers)", "4.3", "no_gain",
            "WatPipe-20K-25p", ("WatPipe-30K-25p",), mechanism_hint="connection limits"),
    Finding("watpipe", "20K-25p is the best of the sweep", "4.3", "no_gain", "WatPipe-20K-25p",
            ("WatPipe-20K-5p", "WatPipe-20K-50p", "WatPipe-10K-25p", "WatPipe-30K-25p")),
)


@dataclass
class Verdict:
    finding: Finding
    status: str                        # PASS, MISS or "not run"
    detail: str
    noisy: bool = False
    values: dict = field(default_factory=dict)


def _pct(a: float, b: float) -> float:
    return 100.0 * (a / b - 1.0)


def _hw(*hws: float) -> float:
    """Half-width of a difference of independent estimates (nan-safe: nan counts as 0)."""
    return math.sqrt(sum((h if math.isfinite(h) else 0.0) ** 2 for h in hws))


def check(f: Finding, level: dict, peak: dict, tol: float = TOL_PCT, peak_tol: float = PEAK_TOL_PCT,
          rows: dict | None = None) -> Verdict:
    """PASS or MISS for one finding from each label's level (mean, half-width) and peak (Mbps), and for
    a "metric" finding the rows (label -> rate -> outputs).

    A comparison is noisy when the margin by which it is decided is smaller than the
    half-width of the difference it rests on."""
    need = ((f.ref,) if f.ref else ()) + tuple(f.others)
    if any(lab not in level for lab in need):
        return Verdict(f, "not run", "configurations missing: " + ", ".join(lab for lab in need if lab not in level))
    vals = {lab: level[lab][0] for lab in need}
    if f.kind == "metric":
        row = (rows or {}).get(f.ref, {}).get(f.rate)
        if row is None:
            return Verdict(f, "not run", f"{f.ref} was not run at {f.rate:,} req/s")
        x, want = row[f.metric], f.study[0]
        err = _pct(x, want)
        return Verdict(f, "PASS" if abs(err) <= peak_tol else "MISS",
                       f"simulated {f.metric} {x:.1f} vs study {want:g} ({err:+.1f} %, limit {peak_tol:g} %)",
                       values={f.ref: x})
    if f.kind == "peak":
        lo, hi = f.study
        p = peak[f.ref]
        err = _pct(p, lo) if p < lo else (_pct(p, hi) if p > hi else 0.0)
        ok = abs(err) <= peak_tol
        what = f"{lo:,}" if lo == hi else f"{lo:,}-{hi:,}"
        return Verdict(f, "PASS" if ok else "MISS", f"simulated peak {p:,.0f} Mbps vs study {what} ({err:+.1f} %)",
                       values={f.ref: p})
    if f.kind == "no_gain":
        ref, hw_ref = level[f.ref]
        top = max(f.others, key=lambda lab: level[lab][0])
        m, hw_top = level[top]
        gain = _pct(m, ref)
        ok = gain <= tol
        margin_mbps = abs(m - ref * (1 + tol / 100))
        noisy = margin_mbps < _hw(hw_ref, hw_top)
        return Verdict(f, "PASS" if ok else "MISS",
                       f"best other {top} {m:,.0f} vs {f.ref} {ref:,.0f} Mbps ({gain:+.1f} %, limit +{tol:g} %)",
                       noisy, vals)
    if f.kind == "below":
        ref, hw_ref = level[f.ref]
        parts, ok, noisy = [], True, False
        for lab in f.others:
            m, hw = level[lab]
            d = _pct(m, ref)
            ok &= d < -tol
            noisy |= abs(m - ref * (1 - tol / 100)) < _hw(hw_ref, hw)
            parts.append(f"{lab} {m:,.0f} ({d:+.1f} %)")
        return Verdict(f, "PASS" if ok else "MISS",
                       f"{f.ref} {ref:,.0f} Mbps; " + ", ".join(parts) + f"; need below -{tol:g} %", noisy, vals)
    if f.kind == "rises":
        labs = list(f.others)
        steps, ok, noisy = [], True, False
        for a, b in zip(labs, labs[1:]):
            (ma, ha), (mb, hb) = level[a], level[b]
            d = _pct(mb, ma)
            ok &= d >= -tol
            noisy |= abs(mb - ma * (1 - tol / 100)) < _hw(ha, hb)
            steps.append(f"{d:+.1f} %")
        (m0, h0), (m1, h1) = level[labs[0]], level[labs[-1]]
        total = _pct(m1, m0)
        ok &= total > tol
        noisy |= abs(m1 - m0 * (1 + tol / 100)) < _hw(h0, h1)
        return Verdict(f, "PASS" if ok else "MISS",
                       " -> ".join(f"{level[lab][0]:,.0f}" for lab in labs)
                       + f" Mbps (steps {', '.join(steps)}; first to last {total:+.1f} %, need > +{tol:g} % "
                         f"and no step below -{tol:g} %)", noisy, vals)
    raise ValueError(f"unknown finding kind {f.kind!r}")


# ---------------------------------------------------------------- the simulation's own reasons

MECH_COLUMNS = (  # (key, heading, width, format)
    ("conns_mean", "conns", 7, ",.0f"),
    ("conns_of_limit", "of lim", 6, ".0%"),
    ("conns_per_entity", "conn/p", 7, ",.0f"),
    ("cpu_util", "cpu", 5, ".0%"),
    ("blocked_pct", "blocked", 7, ".1f"),
    ("blocked_n", "blk n", 6, ".2f"),
    ("disk_util", "disk", 5, ".0%"),
    ("cache_hit_pct", "hit %", 6, ".2f"),
    ("app_hit_pct", "app %", 6, ".1f"),
    ("page_cache_mb", "pgcache", 7, ",.0f"),
    ("errors_pct", "err %", 6, ".2f"),
    ("ctx_switches_per_s", "ctx/s", 7, ",.0f"),
    ("bound_disk_rps", "disk bnd", 8, ",.0f"),
)


def page_cache_mb(scenario, cfg: Config, conns_mean: float) -> float:
    """The memory left to the page cache: memory less the kernel, the server's footprint (processes,
    threads, knot-c's cache) and the connections it holds on average, as the model charges them."""
    hw, prof = scenario.hardware, scenario.profile
    spec = cfg.spec()
    module = models.module_of(cfg.architecture)
    from sim.twin import reply_stats
    mean_bytes, pieces = reply_stats(scenario)
    footprint_kb = module.demand(prof, hw, scenario.workload, spec.knobs, mean_bytes, pieces)[2]
    app_cache_mb = dict(cfg.knobs).get("cache_mb", 0.0) if dict(cfg.knobs).get("variant") == "knot-c" else 0.0
    return (hw.memory_mb - hw.kernel_mb - footprint_kb / 1024 - app_cache_mb
            - conns_mean * prof.footprint.connection_kb / 1024)


def entities_of(cfg: Config) -> tuple[int, int]:
    """The model's schedulable entities: (all of them, those sharing the connections' descriptors).
    Knot: the Capriccio thread and its workers (the one thread holds every descriptor); the userver:
    its processes; WatPipe: its three stage threads and its writers (the read stage holds the set)."""
    k = dict(cfg.knobs)
    if cfg.architecture == "knot":
        return 1 + int(k["workers"]), 1
    if cfg.architecture == "symped":
        return int(k["processes"]), int(k["processes"])
    return 3 + int(k["writers"]), 1


def app_cache_hit_pct(scenario, cfg: Config) -> float:
    """knot-c's application-cache hit ratio by Che's approximation for its LRU over whole files
    (header + data), as the model warms it; nan for the others. The runner's cache_hit_pct is the
    page cache's, which under knot-c sees only the application cache's misses."""
    k = dict(cfg.knobs)
    if k.get("variant") != "knot-c":
        return math.nan
    from sim.analytic import che_lru_hit_ratio
    wl = scenario.workload
    fs = wl.fileset
    hit = che_lru_hit_ratio(fs.probabilities, (fs.sizes + wl.header_bytes).astype(float), k["cache_mb"] * 2**20)
    return 100.0 * hit.hit_ratio


RAW = ("throughput_mbps", "conns_mean", "cpu_util", "blocked_pct", "disk_util", "cache_hit_pct", "errors_pct",
       "timeouts_pct", "refused_pct", "response_ms_mean", "ctx_switches_per_s", "reply_rps")


def raw_row(point) -> dict:
    """What the runner gives for one point (means), its throughput half-width and the twin's bounds."""
    row = {k: point.metrics[k].mean if k in point.metrics else math.nan for k in RAW}
    row["throughput_hw"] = point.metrics["throughput_mbps"].halfwidth
    row["bound_disk_rps"] = point.bounds.get("disk", math.inf)
    row["bound_cpu_rps"] = point.bounds.get("cpu", math.inf)
    return row


def derive(scenario, cfg: Config, raw: dict) -> dict:
    """The raw row with what follows from it and the configuration: connections against the limit
    and per descriptor-holding entity, entities blocked on average, page cache left, app-cache hits."""
    n_all, n_sets = entities_of(cfg)
    conns = raw["conns_mean"]
    return {**raw,
            "conns_of_limit": conns / cfg.limit,
            "conns_per_entity": conns / n_sets,
            "blocked_n": raw["blocked_pct"] / 100.0 * n_all,
            "page_cache_mb": page_cache_mb(scenario, cfg, conns),
            "app_hit_pct": app_cache_hit_pct(scenario, cfg)}


def levels_of(rows: dict[str, dict[int, dict]]) -> tuple[dict, dict]:
    """Each label's level (mean over the rates run, with its half-width) and peak (max over them)."""
    level, peak = {}, {}
    for lab, by_rate in rows.items():
        ms = [r["throughput_mbps"] for r in by_rate.values()]
        hws = [r["throughput_hw"] for r in by_rate.values()]
        level[lab] = (sum(ms) / len(ms), _hw(*hws) / len(ms))
        peak[lab] = max(ms)
    return level, peak


def _avg(by_rate: dict, key: str) -> float:
    vals = [r[key] for r in by_rate.values()]
    return sum(vals) / len(vals)


def drivers(f: Finding, rows: dict) -> str:
    """The outputs beside a finding's configurations (averaged over the rates run), for its mechanism."""
    labs = ([f.ref] if f.ref else []) + [lab for lab in f.others if lab != f.ref]
    parts = []
    for lab in labs:
        if lab not in rows:
            continue
        r = rows[lab]
        parts.append(f"{lab}: conns {_avg(r, 'conns_mean'):,.0f} ({_avg(r, 'conns_of_limit'):.0%} of limit), "
                     f"cpu {_avg(r, 'cpu_util'):.0%}, blocked {_avg(r, 'blocked_pct'):.1f} % "
                     f"({_avg(r, 'blocked_n'):.2f} entities), "
                     f"disk {_avg(r, 'disk_util'):.0%}, hit {_avg(r, 'cache_hit_pct'):.2f} %, "
                     f"page cache {_avg(r, 'page_cache_mb'):,.0f} MB, errors {_avg(r, 'errors_pct'):.2f} %"
                     + (f", app cache hit {_avg(r, 'app_hit_pct'):.1f} %" if math.isfinite(_avg(r, 'app_hit_pct'))
                        else ""))
    return "\n".join("      " + p for p in parts)


# ---------------------------------------------------------------- the poll probe

def poll_probe(scenario, cfgs: list[Config], rate: float) -> dict[str, dict]:
    """Poll's share of the CPU in the userver configurations, which the runner's metrics do not give.

    Runs each configuration's first replication in this process (the same seeds as the
    sweep's, so the same run) with the userver's readiness-call cost function wrapped to
    count what it charges; the wrapper returns the same cost, so nothing changes. Counts
    are over the measured window: calls per second over all processes, descriptors
    watched and returned ready per call (each including the listen socket), and the CPU
    they cost as a share of the CPU busy and per reply."""
    from sim import engine
    from models import sped

    original = sped.event_cost
    acc = [0, 0, 0, 0.0]          # calls, watched, ready, cpu seconds

    def counting(c, mechanism, watched, ready):
        cost = original(c, mechanism, watched, ready)
        acc[0] += 1
        acc[1] += watched
        acc[2] += ready
        acc[3] += cost
        return cost

    run = scenario.run
    out = {}
    sped.event_cost = counting
    try:
        for cfg in cfgs:
            if cfg.architecture != "symped":
                continue
            print(f"section4: poll probe {cfg.label} @ {rate:,.0f}", file=sys.stderr, flush=True)
            env, server, clients, _entities = engine.build(scenario, cfg.spec(), rate, 0)
            with engine.gc_paced():
                env.run(until=run.warmup_s)
                before, busy0 = list(acc), server.cpu.busy
                env.run(until=run.warmup_s + run.duration_s)
            calls, watched, ready, cpu = (a - b for a, b in zip(acc, before))
            busy = server.cpu.busy - busy0
            replies = len(clients.response)
            out[cfg.label] = {
                "calls_per_s": calls / run.duration_s,
                "watched_per_call": watched / calls if calls else math.nan,
                "ready_per_call": ready / calls if calls else math.nan,
                "poll_cpu_pct": 100.0 * cpu / busy if busy else math.nan,
                "poll_us_per_reply": 1e6 * cpu / replies if replies else math.nan,
                "reply_rps": replies / run.duration_s,
            }
    finally:
        sped.event_cost = original
    return out


def probe_report(probe: dict, rate: float) -> str:
    lines = [f"poll probe at {rate:,.0f} req/s (the userver's poll calls over the measured window; "
             "watched and ready include the listen socket)",
             f"{'configuration':<26}{'calls/s':>9}{'watched':>9}{'ready':>8}{'poll % cpu':>11}{'us/reply':>9}"
             f"{'replies/s':>10}"]
    for lab, p in probe.items():
        lines.append(f"{lab:<26}{p['calls_per_s']:>9,.1f}{p['watched_per_call']:>9,.0f}{p['ready_per_call']:>8,.0f}"
                     f"{p['poll_cpu_pct']:>11.2f}{p['poll_us_per_reply']:>9.2f}{p['reply_rps']:>10,.0f}")
    return "\n".join(lines)


# ---------------------------------------------------------------- report

def sweep_report(name: str, rows: dict, level: dict, rates) -> str:
    lines = [f"== {name} ==", ""]
    head = f"{'configuration':<26}" + "".join(f"{r:>16,}" for r in rates) + f"{'level':>16}"
    lines += ["Mbps (95 % half-width), per offered rate; level = mean over the rates", head, "-" * len(head)]
    for series, cfgs in SWEEPS[name].items():
        lines.append(f"  {series}")
        for c in cfgs:
            if c.label not in rows:
                continue
            cells = "".join(f"{rows[c.label][r]['throughput_mbps']:>9,.0f} ±{rows[c.label][r]['throughput_hw']:<5.0f}"
                            for r in rates)
            m, hw = level[c.label]
            lines.append(f"{c.label:<26}{cells}{m:>9,.0f} ±{hw:<5.0f}" + (f"  ({c.note})" if c.note else ""))
    lines += ["", "why: the simulation's outputs. conn/p: connections per descriptor set (userver process); blocked: "
                  "% of the entities' time; blk n: entities blocked on average; hit %: page cache; app %: knot-c's "
                  "cache (Che); pgcache: MB left after the footprint; disk bnd: the twin's disk bound, req/s"]
    head = f"{'configuration':<26}{'rate':>7}" + "".join(f" {h:>{w}}" for _key, h, w, _f in MECH_COLUMNS)
    lines += [head, "-" * len(head)]
    for series, cfgs in SWEEPS[name].items():
        for c in cfgs:
            if c.label not in rows:
                continue
            for r in rates:
                row = rows[c.label][r]
                cells = "".join(" " + _fmt(row[key], w, fmt) for key, _h, w, fmt in MECH_COLUMNS)
                lines.append(f"{c.label:<26}{r:>7,}" + cells)
    return "\n".join(lines)


def _fmt(x: float, width: int, fmt: str) -> str:
    if not isinstance(x, (int, float)) or math.isnan(x):
        return f"{'-':>{width}}"
    if math.isinf(x):
        return f"{'inf':>{width}}"
    return f"{format(x, fmt):>{width}}"


def findings_report(verdicts: list[Verdict], rows: dict) -> str:
    lines = [f"Findings of the study (PAPER.md), checked on the levels; tolerance {TOL_PCT:g} %, "
             f"peaks {PEAK_TOL_PCT:g} %", ""]
    for v in verdicts:
        f = v.finding
        tag = v.status + (" (within noise)" if v.noisy and v.status != "not run" else "")
        lines.append(f"[{tag}] {f.sweep}: {f.text} (PAPER.md {f.source})")
        lines.append(f"      {v.detail}")
        if v.status != "not run" and f.kind not in ("peak", "metric"):
            if f.mechanism_hint:
                lines.append(f"      mechanism the issue/study names: {f.mechanism_hint}")
            lines.append(drivers(f, rows))
    n = sum(v.status == "PASS" for v in verdicts)
    run = sum(v.status != "not run" for v in verdicts)
    lines += ["", f"{n} of {run} findings pass ({sum(v.noisy for v in verdicts if v.status != 'not run')} "
                  f"decided within noise)"]
    return "\n".join(lines)


# ---------------------------------------------------------------- main

def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sweeps", help="comma-separated sweeps (default: all): " + ", ".join(SWEEPS))
    ap.add_argument("--rates", help=f"comma-separated offered rates (default {','.join(map(str, RATES))})")
    ap.add_argument("--quick", action="store_true", help="15,000 req/s only, 20 s warm-up, 4 s measured")
    ap.add_argument("--warmup", type=float, help="simulated warm-up seconds (default: the scenario's)")
    ap.add_argument("--duration", type=float, help="simulated measured seconds (default: the scenario's)")
    ap.add_argument("--batches", type=int, default=BATCHES, help=f"batches per window (default {BATCHES})")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a scenario key (not the servers), e.g. run.seed=2")
    ap.add_argument("--cache", metavar="DIR", help="keep replications in this result cache and reuse them")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", help="write tables and verdicts as JSON here (atomically)")
    ap.add_argument("--report", metavar="A.json[,B.json]",
                    help="no simulation: report again from earlier --json outputs (merged)")
    ap.add_argument("--poll-probe", action="store_true",
                    help="instead of the sweeps, count the userver's poll calls and their CPU at the first rate, "
                         "one configuration at a time in this process")
    return ap.parse_args(argv)


def err(message: str, code: int = 2) -> int:
    """One line on stderr; the exit code."""
    print(f"section4: {message}", file=sys.stderr)
    return code


def main(argv=None) -> int:
    args = parse_args(argv)
    sweeps = list(SWEEPS)
    if args.sweeps:
        sweeps = [s.strip() for s in args.sweeps.split(",") if s.strip()]
        bad = [s for s in sweeps if s not in SWEEPS]
        if bad or not sweeps:
            return err(f"--sweeps {args.sweeps!r}: unknown {bad}; known: {', '.join(SWEEPS)}")
    rates = RATES
    overrides = {}
    if args.quick:
        rates = (15000,)
        overrides.update({"run.warmup_s": "20", "run.duration_s": "4"})
    if args.rates:
        try:
            rates = tuple(int(float(x)) for x in args.rates.split(","))
        except ValueError:
            return err(f"--rates {args.rates!r}: expected numbers")
        if any(r <= 0 for r in rates):
            return err(f"--rates {args.rates!r}: rates must be positive")
    rates = tuple(sorted(set(rates)))
    if args.batches < 2:
        return err("--batches must be at least 2 (a confidence interval needs two samples)")
    if args.jobs < 1:
        return err("--jobs must be at least 1")
    if args.warmup is not None:
        overrides["run.warmup_s"] = str(args.warmup)
    if args.duration is not None:
        overrides["run.duration_s"] = str(args.duration)
    overrides.update({"run.rates": ",".join(map(str, rates)), "run.replications": "1",
                      "run.max_replications": "1", "run.batches": str(args.batches)})
    for kv in args.set:
        key, eq, value = kv.partition("=")
        if not eq or not key.strip():
            return err(f"--set {kv!r}: expected KEY=VALUE")
        if key.strip().startswith("server"):
            return err(f"--set {kv!r}: the servers are this benchmark's; override other keys")
        overrides[key.strip()] = value.strip()
    try:
        base = load_scenario(SCENARIO, overrides=overrides)
    except ScenarioError as e:
        print(format_error(e), file=sys.stderr)
        return 2
    cfgs = configs_of(sweeps)
    try:
        specs = tuple(c.spec() for c in cfgs)
    except TypeError as e:                       # a knob the model does not have
        return err(f"a configuration names a knob its model lacks: {e}")
    scenario = replace(base, servers=specs)
    if args.json:
        d = os.path.dirname(os.path.abspath(args.json))
        if not os.path.isdir(d):
            return err(f"--json {args.json!r}: no folder {d}")
    if args.report:
        paths = [x for x in args.report.split(",") if x]
        try:
            saved_sweeps, rates, raw, meta = load_saved(paths)
        except (OSError, ValueError, TypeError, AttributeError) as e:
            return err(f"--report: {e}")
        chosen = [s for s in saved_sweeps if not args.sweeps or s in sweeps]
        note = f"reported from {', '.join(paths)} (no simulation)"
        return present(base, chosen, rates, raw, meta, note, args.json)

    if args.poll_probe:
        t = time.monotonic()
        probe = poll_probe(scenario, cfgs, rates[0])
        if not probe:
            return err("--poll-probe: the sweeps chosen have no userver configuration")
        print(probe_report(probe, rates[0]))
        print(f"\nwall time {time.monotonic() - t:.0f} s in this process")
        if args.json:
            doc = {"scenario": SCENARIO, "rate": rates[0], "warmup_s": scenario.run.warmup_s,
                   "duration_s": scenario.run.duration_s, "poll_probe": probe}
            try:
                write_text(args.json, json.dumps(_finite(doc), indent=1, sort_keys=True) + "\n")
            except OSError as e:
                return err(f"--json {args.json!r}: {e}", 1)
        return 0

    from sim.runner import run_scenario
    cache = None
    if args.cache:
        from sim.resultcache import ResultCache
        cache = ResultCache(args.cache)
        cache.sweep_stale()
    print(f"section4: {len(cfgs)} configurations x {len(rates)} rates ({', '.join(sweeps)}); "
          f"warm-up {scenario.run.warmup_s:g} s, {scenario.run.duration_s:g} s in {args.batches} batches; "
          f"{args.jobs} jobs", file=sys.stderr, flush=True)
    t = time.monotonic()
    results = run_scenario(scenario, jobs=args.jobs, progress=True, cache=cache)
    wall = time.monotonic() - t

    raw = {}
    for p in results:
        raw.setdefault(p.label, {})[int(p.offered_rps)] = raw_row(p)
    note = f"wall time {wall:.0f} s with {args.jobs} jobs"
    if cache is not None:
        note += f"; cache {args.cache}: {cache.hits} replications reused"
    meta = {"warmup_s": scenario.run.warmup_s, "duration_s": scenario.run.duration_s, "batches": args.batches,
            "wall_s": wall}
    return present(scenario, sweeps, rates, raw, meta, note, args.json)


def present(scenario, sweeps, rates, raw: dict, meta: dict, note: str, json_path: str | None) -> int:
    """Print the tables and the verdicts from the raw rows; write them as JSON if asked."""
    by_label = {c.label: c for c in configs_of(sweeps)}
    rows = {lab: {r: derive(scenario, by_label[lab], row) for r, row in by.items()}
            for lab, by in raw.items() if lab in by_label}
    level, peak = levels_of(rows)
    verdicts = [check(f, level, peak, rows=rows) for f in FINDINGS if f.sweep in sweeps]
    print("\n\n".join(sweep_report(name, rows, level, rates) for name in sweeps))
    print()
    print(findings_report(verdicts, rows))
    print(f"\n{note}")
    if json_path:
        doc = {"scenario": SCENARIO, "sweeps": list(sweeps), "rates": list(rates), "tol_pct": TOL_PCT,
               "peak_tol_pct": PEAK_TOL_PCT, **meta,
               "raw": {lab: {str(r): v for r, v in by.items()} for lab, by in raw.items()},
               "rows": {lab: {str(r): v for r, v in by.items()} for lab, by in rows.items()},
               "level": {lab: {"mean": m, "halfwidth": hw} for lab, (m, hw) in level.items()},
               "peak": peak,
               "findings": [{"sweep": v.finding.sweep, "text": v.finding.text, "source": v.finding.source,
                             "status": v.status, "within_noise": v.noisy, "detail": v.detail}
                            for v in verdicts]}
        try:
            write_text(json_path, json.dumps(_finite(doc), indent=1, sort_keys=True) + "\n")
        except OSError as e:
            return err(f"--json {json_path!r}: {e}", 1)
    return 0


def load_saved(paths: list[str]) -> tuple[list, tuple, dict, dict]:
    """Sweeps, rates, raw rows and run settings of earlier --json outputs, merged; ValueError if they
    do not fit together (other rates or run settings)."""
    sweeps, rates, raw, meta = [], None, {}, None
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
        if not isinstance(doc, dict) or "rates" not in doc or not ("raw" in doc or "rows" in doc):
            raise ValueError(f"{path}: not an output of bench/section4.py --json")
        these = tuple(int(r) for r in doc["rates"])
        settings = {k: doc.get(k) for k in ("warmup_s", "duration_s", "batches")}
        if rates is not None and (these != rates or settings != meta):
            raise ValueError(f"{path}: rates {list(these)} / {settings} differ from {list(rates)} / {meta}")
        rates, meta = these, settings
        sweeps += [s for s in doc.get("sweeps", []) if s in SWEEPS and s not in sweeps]
        for lab, by in doc.get("raw", doc.get("rows")).items():
            raw[lab] = {int(r): {k: _number(row.get(k)) for k in RAW + ("throughput_hw", "bound_disk_rps",
                                                                        "bound_cpu_rps")}
                        for r, row in by.items()}
    return sweeps, rates, raw, meta


def _number(x) -> float:
    """A saved number back (null is nan, 'inf' is infinity)."""
    if x is None:
        return math.nan
    return float(x)


def _finite(x):
    """JSON without NaN or infinities (as null and strings)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else (None if math.isnan(x) else repr(x))
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


if __name__ == "__main__":
    sys.exit(main())
