"""bench/section4.py: the study's configurations exist in the models, and the finding checks decide
PASS and MISS as stated on synthetic numbers (no simulation)."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import section4 as s4  # noqa: E402


def test_every_configuration_builds_with_the_models_knobs():
    cfgs = s4.configs_of(list(s4.SWEEPS))
    labels = [c.label for c in cfgs]
    assert len(labels) == len(set(labels))
    for c in cfgs:
        spec = c.spec()
        for name, value in c.knobs:
            assert getattr(spec.knobs, name) == value
    assert "knot-nb-15K-50w" in labels and "userver-b-50K-100p" in labels and "WatPipe-10K-25p" in labels
    for f in s4.FINDINGS:    # every finding names configurations of its own sweep
        own = {c.label for c in s4.configs_of([f.sweep])}
        assert {lab for lab in (f.ref,) + tuple(f.others) if lab} <= own, f.text


def _level(**mbps):
    return {k.replace("_", "-"): (v, 5.0) for k, v in mbps.items()}


NO_GAIN = s4.Finding("x", "no gain", "-", "no_gain", "a", ("b", "c"))


def test_no_gain_within_tolerance_passes_and_beyond_misses():
    assert s4.check(NO_GAIN, _level(a=1000, b=1019, c=990), {}).status == "PASS"
    v = s4.check(NO_GAIN, _level(a=1000, b=1030, c=990), {})
    assert v.status == "MISS" and "b 1,030" in v.detail


def test_below_needs_every_other_lower_by_the_tolerance():
    f = s4.Finding("x", "hurts", "-", "below", "a", ("b", "c"))
    assert s4.check(f, _level(a=1000, b=970, c=900), {}).status == "PASS"
    assert s4.check(f, _level(a=1000, b=990, c=900), {}).status == "MISS"


def test_rises_allows_small_dips_but_needs_a_rise_overall():
    f = s4.Finding("x", "rises", "-", "rises", "", ("a", "b", "c"))
    assert s4.check(f, _level(a=900, b=1000, c=990), {}).status == "PASS"     # -1 % step is within 2 %
    assert s4.check(f, _level(a=900, b=1000, c=950), {}).status == "MISS"     # -5 % step
    assert s4.check(f, _level(a=1000, b=1005, c=1010), {}).status == "MISS"   # +1 % overall: no rise


def test_peak_against_a_range_and_missing_configurations():
    f = s4.Finding("x", "peak", "-", "peak", "a", study=(1165, 1200))
    assert s4.check(f, {"a": (0, 0)}, {"a": 1250}).status == "PASS"           # +4.2 % over 1,200
    assert s4.check(f, {"a": (0, 0)}, {"a": 1080}).status == "MISS"           # -7.3 % under 1,165
    assert s4.check(NO_GAIN, _level(a=1000, b=1000), {}).status == "not run"


def test_metric_against_the_studys_value_at_its_rate():
    f = s4.Finding("x", "blocked", "-", "metric", "a", study=(33.0, 33.0), metric="blocked_pct", rate=15000)
    rows = {"a": {15000: {"blocked_pct": 32.0}}}
    assert s4.check(f, {"a": (0, 0)}, {}, rows=rows).status == "PASS"           # -3 %
    rows["a"][15000]["blocked_pct"] = 28.0
    assert s4.check(f, {"a": (0, 0)}, {}, rows=rows).status == "MISS"           # -15 %
    assert s4.check(f, {"a": (0, 0)}, {}, rows={"a": {25000: {}}}).status == "not run"


def test_a_verdict_inside_the_half_widths_is_marked_noisy():
    wide = {"a": (1000, 40.0), "b": (1030, 40.0), "c": (900, 1.0)}
    assert s4.check(NO_GAIN, wide, {}).noisy
    tight = {"a": (1000, 1.0), "b": (1100, 1.0), "c": (900, 1.0)}
    assert not s4.check(NO_GAIN, tight, {}).noisy


def test_levels_average_the_rates_and_combine_half_widths():
    rows = {"a": {15000: {"throughput_mbps": 1000.0, "throughput_hw": 30.0},
                  25000: {"throughput_mbps": 1100.0, "throughput_hw": 40.0}}}
    level, peak = s4.levels_of(rows)
    assert level["a"] == (1050.0, pytest.approx(25.0)) and peak["a"] == 1100.0


def test_bad_options_exit_2_with_one_line(capsys):
    assert s4.main(["--sweeps", "knot-x"]) == 2
    assert s4.main(["--rates", "fast"]) == 2
    assert s4.main(["--set", "server[0].threads=5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("section4: ") for line in err)
