"""`simrun across`: several validation runs side by side (calibration/across.py)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
from scipy import stats

from calibration import across

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_run(folder, date, errors: dict, code="c0de", settings=None, mape=3.0):
    """A validation.json with one case per entry of `errors` (case -> peak error %)."""
    os.makedirs(folder, exist_ok=True)
    cases = [{"case": name, "held_out": name != "sped-cpu", "peak_error_pct": e, "mape_pct": mape,
              "verdict": "pass" if abs(e) <= 5 else "miss", "peak_error_ci95_pct": [e - 9.0, e + 9.0]}
             for name, e in errors.items()]
    doc = {"machine": {"date": date}, "simulator_code": code, "settings": settings or {"duration_s": 15.0},
           "targets": {"peak_error_pct": 5.0, "mape_pct": 10.0, "blackbox_error_pct": 10.0}, "cases": cases}
    with open(os.path.join(folder, "validation.json"), "w") as f:
        json.dump(doc, f)
    return str(folder)


def test_runs_side_by_side_give_each_cases_mean_error_its_interval_and_a_verdict(tmp_path, capsys):
    runs = [write_run(tmp_path / "r1", "2026-01-01T01:00:00", {"sped-cpu": 1.0, "far": -9.0, "noisy": 5.0}),
            write_run(tmp_path / "r2", "2026-01-01T02:00:00", {"sped-cpu": -1.0, "far": -10.0, "noisy": -5.0}),
            write_run(tmp_path / "r3", "2026-01-01T03:00:00", {"sped-cpu": 0.5, "far": -11.0, "noisy": 8.0,
                                                                 "new": 2.0})]
    out = tmp_path / "out"
    assert across.main(runs + ["--out", str(out)]) == 0
    doc = json.loads((out / "across.json").read_text())
    by = {c["case"]: c for c in doc["cases"]}
    # the mean and its Student-t half-width, computed here independently
    xs = [1.0, -1.0, 0.5]
    mean, sd = sum(xs) / 3, stats.tstd(xs)
    peak = by["sped-cpu"]["peak_error_pct"]
    assert peak["runs"] == xs
    assert peak["mean"] == pytest.approx(mean)
    assert peak["ci95_halfwidth"] == pytest.approx(stats.t.ppf(0.975, 2) * sd / math.sqrt(3))
    assert peak["verdict"] == "holds" and peak["runs_within_target"] == 3
    # every run misses by far the same way: the mean misses; runs that straddle the target: undecided
    assert by["far"]["peak_error_pct"]["verdict"] == "misses"
    assert by["noisy"]["peak_error_pct"]["verdict"] == "undecided"
    assert by["noisy"]["peak_error_pct"]["runs_within_target"] == 2
    # a case only one run has is shown, with nothing claimed
    assert by["new"]["peak_error_pct"]["runs"] == [None, None, 2.0]
    assert by["new"]["peak_error_pct"]["verdict"] == "one run"
    # MAPE is held to its bound on one side only
    assert by["far"]["mape_pct"]["verdict"] == "holds"
    md = (out / "across.md").read_text()
    assert "| far | yes | peak error % | +-5 | -9.0 | -10.0 | -11.0 | -10.0 |" in md
    assert "Not like for like" not in md
    assert (out / "across.png").stat().st_size > 1000
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]
    assert "far" in capsys.readouterr().out


def test_across_says_when_the_runs_are_not_like_for_like_and_can_keep_the_newest_code(tmp_path, capsys):
    old = write_run(tmp_path / "old", "2026-01-01T01:00:00", {"a": 9.0}, code="aaaa", settings={"repeat": 1})
    new1 = write_run(tmp_path / "new1", "2026-01-02T01:00:00", {"a": 1.0}, code="bbbb", settings={"repeat": 3})
    new2 = write_run(tmp_path / "new2", "2026-01-02T02:00:00", {"a": 2.0}, code="bbbb", settings={"repeat": 3})
    assert across.main([old, new1, new2, "--out", str(tmp_path / "mixed")]) == 0
    doc = json.loads((tmp_path / "mixed" / "across.json").read_text())
    notes = " ".join(doc["not_like_for_like"])
    assert "2 versions of the simulator" in notes and "`repeat` differs" in notes
    assert "Not like for like" in (tmp_path / "mixed" / "across.md").read_text()
    # a run from before the code was recorded is named as such, not counted as another version
    unknown = write_run(tmp_path / "unknown", "2026-01-02T03:00:00", {"a": 3.0}, code=None, settings={})
    assert across.main([new1, new2, unknown, "--out", str(tmp_path / "unknown-code")]) == 0
    notes = json.loads((tmp_path / "unknown-code" / "across.json").read_text())["not_like_for_like"]
    assert "unknown did not record the simulator's code: check by hand that they validated the same one" in notes
    assert "setting `repeat` differs: 3, not recorded" in notes
    assert not any("versions of the simulator" in n for n in notes)
    assert across.main([old, new1, new2, "--same-code", "--out", str(tmp_path / "same")]) == 0
    doc = json.loads((tmp_path / "same" / "across.json").read_text())
    assert [r["label"] for r in doc["runs"]] == ["new1", "new2"] and doc["not_like_for_like"] == []
    assert doc["cases"][0]["peak_error_pct"]["runs"] == [1.0, 2.0]
    assert "left out (other code): old" in capsys.readouterr().err
    # runs in folders of the same name are told apart by their paths
    a = write_run(tmp_path / "x" / "v", "2026-01-03T01:00:00", {"a": 1.0})
    b = write_run(tmp_path / "y" / "v", "2026-01-03T02:00:00", {"a": 2.0})
    assert across.main([a, b, "--out", str(tmp_path / "two")]) == 0
    assert [r["label"] for r in json.loads((tmp_path / "two" / "across.json").read_text())["runs"]] == [a, b]


def test_across_bad_input_is_one_line_and_writes_nothing(tmp_path):
    good = write_run(tmp_path / "good", "2026-01-01T01:00:00", {"a": 1.0})
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "validation.json").write_text("{not json")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "validation.json").write_text('{"cases": "none"}')
    for argv in ([good, str(tmp_path / "nosuch")], [good, str(tmp_path / "bad")], [str(tmp_path / "other")], []):
        out = tmp_path / "out"
        r = subprocess.run([sys.executable, "-m", "sim.cli", "across", *argv, "--out", str(out)], cwd=REPO,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, (argv, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
        assert not out.exists()
