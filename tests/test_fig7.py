"""bench/fig7.py's comparison with the digitized Figures 7 and 8, on synthetic numbers (no simulation)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import fig7  # noqa: E402


def test_pairs_in_order_counts_the_pairs_kept_in_the_reference_order():
    assert fig7.pairs_in_order(["a", "b", "c", "d"], ["a", "b", "c", "d"]) == (6, 6)
    assert fig7.pairs_in_order(["a", "b", "c", "d"], ["d", "c", "b", "a"]) == (0, 6)
    assert fig7.pairs_in_order(["a", "b", "c", "d"], ["b", "a", "c", "d"]) == (5, 6)


def _sim(scale: dict[str, float], rates):
    """Simulated results that are the study's figures times a factor per configuration."""
    sim = {}
    for lab, mbps in fig7.FIG7.items():
        sim[lab] = {r: {"throughput_mbps": scale.get(lab, 1.0) * mbps[fig7.RATES.index(r)],
                        "response_ms_mean": fig7.FIG8[lab][fig7.RATES.index(r)]} for r in rates}
    return sim


def test_the_studys_own_figures_compare_as_exact():
    rates = (12500, 15000, 25000, 30000)
    res = fig7.compare(_sim({}, rates), rates)
    assert all(abs(cv["peak_err_pct"]) < 1e-9 for cv in res["curves"].values())
    assert res["rank_sim"] == res["rank_study"] and res["rank_pairs"] == (28, 28)
    assert res["fig8_sim"] == res["fig8_study"] and res["fig8_pairs"] == (28, 28)
    assert res["three_best_ahead"]
    for g in res["gaps"].values():
        assert abs(g["sim"] - g["study"]) < 1e-9
    assert abs(res["gaps"]["best_vs_knot_c"]["study"] - 34.1) < 0.1     # PAPER.md's 34 %


def test_a_curve_too_high_shows_in_its_peak_the_ranking_and_the_gap():
    rates = (12500, 15000, 25000, 30000)
    res = fig7.compare(_sim({"knot-c-20K-100w-1GB": 1.3}, rates), rates)
    assert abs(res["curves"]["knot-c-20K-100w-1GB"]["peak_err_pct"] - 30.0) < 1e-6
    assert res["rank_pairs"][0] < 28                  # knot-c moves up past knot-b, knot-nb and more
    assert res["gaps"]["best_vs_knot_c"]["sim"] < res["gaps"]["best_vs_knot_c"]["study"]
    assert "pairs in the study's order" in fig7.report(res)


def test_a_gap_carries_the_replications_noise():
    """Each mean's 95 % half-width gives the gap's, in points; a miss within it is said to be so."""
    rates = (12500, 15000, 25000, 30000)
    sim = _sim({"knot-c-20K-100w-1GB": 0.97}, rates)          # the gap 3.1 points too wide
    for lab in sim:
        for r in rates:
            sim[lab][r]["throughput_mbps_halfwidth"] = 0.04 * sim[lab][r]["throughput_mbps"]
    res = fig7.compare(sim, rates)
    g = res["gaps"]["best_vs_knot_c"]
    assert abs(g["sim"] - g["study"]) > 3
    ratio = 1 + g["sim"] / 100
    assert abs(g["sim_halfwidth"] - 100 * ratio * 0.04 * 2 ** 0.5) < 1e-9
    assert "a miss the noise covers" in fig7.report(res)
    for lab in sim:                                           # one replication: no half-width, no claim
        for r in rates:
            sim[lab][r]["throughput_mbps_halfwidth"] = float("nan")
    text = fig7.report(fig7.compare(sim, rates))
    assert "+-" not in text.split("gap best_vs_knot_c")[1].splitlines()[0]
