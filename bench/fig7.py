"""Figure 7 of the EuroSys 2007 study, simulated beside the published curves.

    python bench/fig7.py [--quick] [--rates 4000,15000,...] [--warmup S] [--duration S]
                         [--labels a,b] [--batches N] [--set key=value] [--gap-replications N]
                         [--jobs N] [--json OUT]

Runs scenarios/paper-fig7.toml (the study's machine, workload and the eight
configurations of Figure 7) and compares it with the digitized figure
(PAPER.md section 5.2; throughput in Mbps read from the vector paths of the
EuroSys 2007 PDF, about +-2 Mbps). It prints each curve's peak and its error,
the ranking by peak, the study's two headline gaps at 15,000 requests/s (the
best server 18 % above knot-b and 34 % above knot-c; their three configurations
run again at that rate with `--gap-replications` replications, since with the
scenario's two a gap is +-15 points wide), and, as a secondary check,
Figure 8's ordering of mean response time at the highest rate run.

Targets: every peak within 5 % of the study's; the three best configurations
ahead of every Knot variant; both gaps within 3 points. No constant is tuned to
these curves: the costs come from the study's Table 1 (sim/profiles/study-xeon.toml).

`--quick` runs 4 rates with a 5 s measurement (about half an hour on two cores:
each run first simulates the scenario's 50 s warm-up); the default runs all
nine rates of the figure (well over an hour). `--batches N` runs one replication
per point with its window cut into N batches (batch means) instead of the
scenario's replications: each point then simulates its warm-up once, not twice.
`--set` overrides any scenario key, e.g. `--set hardware.page_cache=two-list`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from sim.runner import parse_overrides, run_scenario  # noqa: E402
from sim.scenario import ScenarioError, format_error, load_scenario  # noqa: E402

SCENARIO = os.path.join(REPO, "scenarios", "paper-fig7.toml")
RATES = (4000, 6000, 8000, 10000, 12500, 15000, 20000, 25000, 30000)

# PAPER.md 5.2: digitized Figure 7 of Pariag et al., EuroSys 2007 (Mbps at each offered rate).
FIG7 = {
    "userver-shared-nb-30K-10p": (468, 692, 910, 1112, 1358, 1458, 1435, 1408, 1436),
    "WatPipe-20K-25p": (467, 692, 911, 1124, 1355, 1429, 1408, 1401, 1419),
    "userver-nb-30K-4p": (466, 684, 883, 1087, 1294, 1363, 1382, 1393, 1393),
    "userver-b-30K-100p": (453, 690, 911, 1119, 1329, 1396, 1372, 1319, 1274),
    "knot-b-20K-100w": (467, 692, 910, 1118, 1169, 1233, 1228, 1212, 1234),
    "knot-nb-15K-50w": (467, 692, 910, 1111, 1130, 1162, 1144, 1140, 1145),
    "knot-c-20K-100w-1GB": (467, 692, 911, 1063, 1058, 1087, 1065, 1059, 1049),
    "userver-nb-30K-1p": (468, 693, 878, 912, 898, 917, 933, 905, 905),
}
# PAPER.md 5.3: digitized Figure 8 (mean response time, ms).
FIG8 = {
    "userver-b-30K-100p": (1193, 1287, 1325, 1491, 2164, 2469, 2613, 2692, 2856),
    "userver-shared-nb-30K-10p": (1152, 1193, 1250, 1309, 1541, 2154, 2436, 2521, 2575),
    "userver-nb-30K-4p": (1511, 1609, 1790, 1800, 1730, 1858, 1977, 2044, 2106),
    "WatPipe-20K-25p": (1111, 1120, 1151, 1193, 1556, 1807, 1936, 1975, 2002),
    "knot-b-20K-100w": (1135, 1150, 1163, 1238, 1604, 1737, 1911, 1968, 2024),
    "knot-nb-15K-50w": (1134, 1163, 1214, 1382, 1695, 1800, 1870, 1884, 1910),
    "knot-c-20K-100w-1GB": (1107, 1136, 1152, 1490, 1741, 1850, 1950, 2012, 2113),
    "userver-nb-30K-1p": (1118, 1144, 1315, 1578, 1685, 1748, 1780, 1807, 1826),
}
BEST = "userver-shared-nb-30K-10p"
THREE_BEST = ("userver-shared-nb-30K-10p", "WatPipe-20K-25p", "userver-nb-30K-4p")
KNOTS = ("knot-b-20K-100w", "knot-nb-15K-50w", "knot-c-20K-100w-1GB")
GAP_RATE = 15000


def paper_scenario(overrides: dict, sets: list[str], tag: str):
    """scenarios/paper-fig7.toml with `overrides` and the `--set KEY=VALUE` items; None (said why) if bad."""
    try:
        return load_scenario(SCENARIO, overrides={**overrides, **parse_overrides(sets)})
    except ValueError as e:
        print(f"{tag}: {e}", file=sys.stderr)
    except ScenarioError as e:
        print(format_error(e), file=sys.stderr)
    return None


def study_at(table, label, rate):
    return table[label][RATES.index(rate)] if rate in RATES else None


def gap_pct(a: float, b: float) -> float:
    return 100.0 * (a / b - 1.0)


def gap_halfwidth(a: dict, b: dict) -> float:
    """95 % half-width, in points, of the gap a/b - 1 from the two means' own half-widths (first
    order, as if independent: the replications share their seeds, so this errs on the wide side);
    nan with one replication."""
    ha, hb = a.get("throughput_mbps_halfwidth", math.nan), b.get("throughput_mbps_halfwidth", math.nan)
    ma, mb = a["throughput_mbps"], b["throughput_mbps"]
    return 100.0 * (ma / mb) * math.hypot(ha / ma, hb / mb)


def pairs_in_order(reference: list[str], other: list[str]) -> tuple[int, int]:
    """(pairs of `reference` that `other` puts in the same order, pairs): Kendall's count of agreement."""
    pos = {lab: i for i, lab in enumerate(other)}
    pairs = [(a, b) for i, a in enumerate(reference) for b in reference[i + 1:]]
    return sum(pos[a] < pos[b] for a, b in pairs), len(pairs)


def compare(sim: dict[str, dict[float, dict]], rates) -> dict:
    """Peak errors, ranking, gaps and Figure 8 ordering of simulated curves against the study's."""
    labels = [lab for lab in FIG7 if lab in sim]
    idx = [RATES.index(r) for r in rates if r in RATES]
    out = {"curves": {}, "rates": list(rates)}
    for lab in labels:
        s_mbps = {r: sim[lab][r]["throughput_mbps"] for r in rates}
        study_peak = max(FIG7[lab][i] for i in idx)      # the study's peak over the rates run
        sim_peak = max(s_mbps.values())
        mape = sum(abs(s_mbps[r] / study_at(FIG7, lab, r) - 1) for r in rates if r in RATES) / max(1, len(idx))
        out["curves"][lab] = {"study_peak": study_peak, "sim_peak": sim_peak,
                              "peak_err_pct": gap_pct(sim_peak, study_peak), "mape_pct": 100 * mape,
                              "sim_mbps": s_mbps}
    c = out["curves"]
    out["rank_study"] = sorted(labels, key=lambda lab: -c[lab]["study_peak"])
    out["rank_sim"] = sorted(labels, key=lambda lab: -c[lab]["sim_peak"])
    out["rank_pairs"] = pairs_in_order(out["rank_study"], out["rank_sim"])
    if all(lab in c for lab in THREE_BEST + KNOTS):
        out["three_best_ahead"] = min(c[lab]["sim_peak"] for lab in THREE_BEST) > max(c[lab]["sim_peak"] for lab in KNOTS)
    at = GAP_RATE if GAP_RATE in rates else None
    gaps = {}
    for other, key in (("knot-b-20K-100w", "best_vs_knot_b"), ("knot-c-20K-100w-1GB", "best_vs_knot_c")):
        if BEST in sim and other in sim and at is not None:
            a, b = sim[BEST][at], sim[other][at]
            gaps[key] = {"study": gap_pct(study_at(FIG7, BEST, at), study_at(FIG7, other, at)),
                         "sim": gap_pct(a["throughput_mbps"], b["throughput_mbps"]),
                         "sim_halfwidth": gap_halfwidth(a, b)}
    out["gaps"] = gaps
    top = max(r for r in rates)
    if top in RATES:
        out["fig8_rate"] = top
        out["fig8_study"] = sorted(labels, key=lambda lab: -study_at(FIG8, lab, top))
        out["fig8_sim"] = sorted(labels, key=lambda lab: -sim[lab][top]["response_ms_mean"])
        out["fig8_sim_ms"] = {lab: sim[lab][top]["response_ms_mean"] for lab in labels}
        out["fig8_pairs"] = pairs_in_order(out["fig8_study"], out["fig8_sim"])
    return out


def report(res: dict) -> str:
    lines = ["Figure 7 (Mbps): simulated vs study, per offered rate", ""]
    rates = res["rates"]
    head = f"{'configuration':<27}" + "".join(f"{r:>13,}" for r in rates) + f"{'peak err':>10}{'MAPE':>7}"
    lines += [head, "-" * len(head)]
    for lab, cv in res["curves"].items():
        cells = "".join(f"{cv['sim_mbps'][r]:>7.0f}/{study_at(FIG7, lab, r):<5}" for r in rates)
        lines.append(f"{lab:<27}{cells}{cv['peak_err_pct']:>+9.1f}%{cv['mape_pct']:>6.1f}%")
    within = sum(abs(cv["peak_err_pct"]) <= 5 for cv in res["curves"].values())
    lines += ["", f"peaks within 5 % of the study's: {within} of {len(res['curves'])}"]
    lines.append("ranking by peak, study:    " + " > ".join(res["rank_study"]))
    lines.append("ranking by peak, simulated: " + " > ".join(res["rank_sim"]))
    lines.append("  pairs in the study's order: {} of {}".format(*res["rank_pairs"]))
    if "three_best_ahead" in res:
        lines.append(f"three best ahead of every Knot variant: {'yes' if res['three_best_ahead'] else 'NO'}")
    if res.get("gap_replications"):
        lines.append(f"gaps from a run of their configurations with {res['gap_replications']} replications:")
    for key, g in res["gaps"].items():
        off, hw = g["sim"] - g["study"], g.get("sim_halfwidth", math.nan)
        noise = ""
        if not math.isnan(hw):
            noise = f", +- {hw:.1f} from the replications" + (": a miss the noise covers"
                                                              if abs(off) > 3 and abs(off) - hw <= 3 else "")
        lines.append(f"gap {key} at {GAP_RATE:,} req/s: study {g['study']:+.1f} %, simulated {g['sim']:+.1f} % "
                     f"(off by {off:+.1f} points{noise})")
    if "fig8_rate" in res:
        lines.append(f"Figure 8 at {res['fig8_rate']:,} req/s, highest mean response first:")
        lines.append("  study:     " + " > ".join(res["fig8_study"]))
        lines.append("  simulated: " + " > ".join(f"{lab} ({res['fig8_sim_ms'][lab]:.0f} ms)" for lab in res["fig8_sim"]))
        lines.append("  pairs in the study's order: {} of {}".format(*res["fig8_pairs"]))
    return "\n".join(lines)


def simulated(results) -> dict:
    """Label -> offered rate -> metric means, and the throughput's 95 % half-width."""
    sim = {}
    for p in results:
        point = sim.setdefault(p.label, {})[int(p.offered_rps)] = {k: e.mean for k, e in p.metrics.items()}
        point["throughput_mbps_halfwidth"] = p.metrics["throughput_mbps"].halfwidth
    return sim


def gap_run(overrides: dict, args, labels: list[str]):
    """The gap configurations at GAP_RATE again, with `args.gap_replications` replications each."""
    n = str(args.gap_replications)
    extra = {**overrides, "run.rates": str(GAP_RATE), "run.replications": n, "run.max_replications": n,
             "run.batches": "0"}
    scenario = paper_scenario(extra, args.set, "fig7")
    if scenario is None:
        return None
    from dataclasses import replace
    scenario = replace(scenario, servers=tuple(s for s in scenario.servers if s.label in labels))
    return simulated(run_scenario(scenario, jobs=max(1, args.jobs), progress=True))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="rates 4000,10000,15000,30000 and a 5 s measurement")
    ap.add_argument("--rates", help="comma-separated offered rates (of the study's nine)")
    ap.add_argument("--warmup", type=float, help="simulated warm-up seconds (default: the scenario's)")
    ap.add_argument("--duration", type=float, help="simulated measured seconds (default: the scenario's)")
    ap.add_argument("--labels", help="comma-separated configurations to run (default: all eight)")
    ap.add_argument("--batches", type=int, help="one replication per point in this many batches (batch means)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a scenario key")
    ap.add_argument("--gap-replications", type=int, default=6,
                    help=f"replications of the gaps' three configurations at {GAP_RATE:,} req/s, run again for "
                         "the gaps alone (default 6; 0: the main run's)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", help="write the comparison as JSON here")
    args = ap.parse_args(argv)
    overrides = {}
    rates = RATES
    if args.quick:
        rates = (4000, 10000, 15000, 30000)
        overrides["run.duration_s"] = "5"
    if args.rates:
        try:
            rates = tuple(int(float(x)) for x in args.rates.split(","))
        except ValueError:
            print(f"fig7: --rates {args.rates!r}: expected numbers", file=sys.stderr)
            return 2
    bad = [r for r in rates if r not in RATES]
    if bad:
        print(f"fig7: rates {bad} are not among the study's {list(RATES)}", file=sys.stderr)
        return 2
    overrides["run.rates"] = ",".join(str(r) for r in rates)
    if args.warmup is not None:
        overrides["run.warmup_s"] = str(args.warmup)
    if args.duration is not None:
        overrides["run.duration_s"] = str(args.duration)
    if args.batches:
        overrides.update({"run.replications": "1", "run.max_replications": "1", "run.batches": str(args.batches)})
    scenario = paper_scenario(overrides, args.set, "fig7")
    if scenario is None:
        return 2
    if args.labels:
        want = args.labels.split(",")
        unknown = [lab for lab in want if lab not in {s.label for s in scenario.servers}]
        if unknown:
            print(f"fig7: unknown labels {unknown}", file=sys.stderr)
            return 2
        from dataclasses import replace
        scenario = replace(scenario, servers=tuple(s for s in scenario.servers if s.label in want))
    t = time.monotonic()
    results = run_scenario(scenario, jobs=max(1, args.jobs), progress=True)
    sim = simulated(results)
    res = compare(sim, rates)
    gap_labels = [lab for lab in (BEST, "knot-b-20K-100w", "knot-c-20K-100w-1GB") if lab in sim]
    if GAP_RATE in rates and len(gap_labels) > 1 and args.gap_replications > 0:
        # the gaps are differences of two noisy means: two replications leave them +-15 points wide
        gap_sim = gap_run(overrides, args, gap_labels)
        if gap_sim is None:
            return 2
        res["gaps"] = compare(gap_sim, (GAP_RATE,))["gaps"]
        res["gap_replications"] = args.gap_replications
    res["wall_s"] = time.monotonic() - t
    print(report(res))
    print(f"\nwall time {res['wall_s']:.0f} s with {args.jobs} jobs")
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(res, fh, indent=1, sort_keys=True)
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
