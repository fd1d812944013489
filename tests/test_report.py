import csv
import json
import math
import os

import pytest

from sim.report import PointResult, csv_columns, format_table, load_results, write_results
from sim.stats import Estimate

REQUIRED_FIRST = ["architecture", "offered_rps", "reply_rps", "throughput_mbps", "response_ms_mean",
                  "response_ms_p90", "errors_pct", "cpu_util", "ci_throughput_mbps"]


def _point(label, arch, rate, scale=1.0, extra=True, params=None):
    m = {
        "reply_rps": Estimate(rate * 0.99, rate * 0.004, 3),
        "throughput_mbps": Estimate(min(rate * 0.117 * scale, 1196.3), 7.25, 3),
        "response_ms_mean": Estimate(1100.0 + rate / 37.0, 21.5, 3),
        "response_ms_p90": Estimate(1900.0 + rate / 29.0, math.nan, 3),
        "errors_pct": Estimate(0.0 if rate < 15000 else 1.0 / 3.0, 0.0, 3),
        "cpu_util": Estimate(min(rate / 14000.0, 1.0), 0.0123, 3),
    }
    if extra:
        m["nic_util"] = Estimate(rate / 40000.0, 0.001, 3)
        m["timeouts_pct"] = Estimate(0.1, 0.05, 3)
    bounds = {"nic": 33_000.0, "cpu": 14_000.0 * scale, "disk": math.inf}
    return PointResult(label, arch, float(rate), m, bounds, 3, dict(params or {}))


@pytest.fixture
def results():
    pts = []
    for label, arch, scale in (("userver-nb-30K-4p", "sped", 1.0), ("knot-c-20K-100w-1000MB", "knot", 0.9)):
        for rate in (4000, 8000, 12500, 20000):
            pts.append(_point(label, arch, rate, scale, params={"cores": 4, "nic_gbps": 1.0}))
    pts.append(_point("watpipe", "watpipe", 10000, extra=False))  # fewer metrics, no params
    return pts


SCENARIO = {"name": "fig7", "rates": (4000.0, 8000.0), "hardware": {"cores": 4}}
PROFILE = {"name": "p4", "costs": {"accept": [1e-6, 0.0]}}
META = {"seed": 1, "version": "test"}


def test_csv_header_starts_exactly_as_required(results, tmp_path):
    write_results(tmp_path, results, SCENARIO, PROFILE, META)
    with open(tmp_path / "results.csv", newline="") as f:
        rows = list(csv.reader(f))
    header = rows[0]
    assert header[:9] == REQUIRED_FIRST
    assert header == csv_columns(results)
    assert len(set(header)) == len(header)
    # then the other half-widths, the other metrics, bounds and parameters
    assert header.index("ci_reply_rps") < header.index("ci_nic_util") < header.index("nic_util")
    assert header.index("nic_util") < header.index("bound_cpu_rps") < header.index("param_cores")
    assert [c for c in header if c.startswith("bound_")] == ["bound_cpu_rps", "bound_nic_rps", "bound_disk_rps"]
    assert len(rows) == 1 + len(results)
    first = dict(zip(header, rows[1]))
    assert first["architecture"] == "userver-nb-30K-4p" and first["model"] == "sped"
    assert float(first["offered_rps"]) == 4000.0
    assert float(first["ci_throughput_mbps"]) == 7.25
    assert first["ci_response_ms_p90"] == "nan" and first["bound_disk_rps"] == "inf"
    last = dict(zip(header, rows[-1]))
    assert last["nic_util"] == "" and last["param_cores"] == ""  # absent, not invented


def test_same_results_give_byte_identical_files_and_no_tmp_left(results, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b" / "nested"
    paths_a = write_results(a, results, SCENARIO, PROFILE, META)
    paths_b = write_results(b, results, SCENARIO, PROFILE, META)
    names = sorted(p.name for p in paths_a)
    assert names == ["response.png", "results.csv", "results.json", "throughput.png"]
    assert sorted(os.listdir(a)) == names and sorted(os.listdir(b)) == names  # no leftover temporaries
    for name in names:  # the plots too, with one matplotlib version
        assert (a / name).read_bytes() == (b / name).read_bytes()
    # writing again over existing files replaces them with the same bytes
    before = (a / "results.csv").read_bytes()
    write_results(a, results, SCENARIO, PROFILE, META)
    assert (a / "results.csv").read_bytes() == before
    assert sorted(os.listdir(a)) == names


def test_pngs_are_written(results, tmp_path):
    write_results(tmp_path, results, SCENARIO, PROFILE, META)
    for name in ("throughput.png", "response.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(data) > 5000  # axes, curves and a legend, not an empty canvas
        assert b"Software" not in data  # no version stamp that would vary between installations


def test_json_loads_and_round_trips(results, tmp_path):
    write_results(tmp_path, results, SCENARIO, PROFILE, META)
    text = (tmp_path / "results.json").read_text()
    assert "NaN" not in text and "Infinity" not in text  # strict JSON
    doc = json.loads(text)
    assert doc["scenario"]["name"] == "fig7" and doc["scenario"]["rates"] == [4000.0, 8000.0]
    assert doc["profile"]["name"] == "p4" and doc["meta"]["seed"] == 1
    row = doc["results"][0]
    assert row["metrics"]["throughput_mbps"] == {"mean": 468.0, "halfwidth": 7.25, "n": 3}
    assert row["metrics"]["response_ms_p90"]["halfwidth"] is None
    assert row["bounds"]["disk"] is None
    points, _ = load_results(tmp_path / "results.json")
    assert [p.label for p in points] == [p.label for p in results]
    assert points[3].metrics["cpu_util"] == results[3].metrics["cpu_util"]
    assert points[0].bounds["disk"] == math.inf and points[0].params == {"cores": 4, "nic_gbps": 1.0}


def test_a_failure_while_writing_leaves_the_old_file_and_no_tmp(results, tmp_path, monkeypatch):
    write_results(tmp_path, results, SCENARIO, PROFILE, META)
    before = (tmp_path / "results.json").read_bytes()

    import sim.report as report

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report, "_plot", broken)
    with pytest.raises(RuntimeError):
        write_results(tmp_path, results[:2], {"name": "other"}, PROFILE, META)
    # the tables were replaced whole (they come first), the plots kept, nothing half-written
    assert (tmp_path / "results.json").read_bytes() != before
    json.loads((tmp_path / "results.json").read_text())
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_output_directory_that_is_a_file_gives_a_clear_error(results, tmp_path):
    blocker = tmp_path / "out"
    blocker.write_text("x")
    with pytest.raises(OSError, match="cannot create output directory"):
        write_results(blocker / "sub", results, SCENARIO, PROFILE, META)


def test_table_groups_by_label_and_shows_the_bottleneck(results):
    shuffled = [results[i] for i in (3, 4, 0, 8, 2, 5, 1, 7, 6)]
    text = format_table(shuffled)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["label", "offered", "reply/s"]
    body = lines[2:]
    assert len(body) == len(results)
    # each label once, its rows together and by offered rate
    assert body[0].startswith("userver-nb-30K-4p")
    assert [ln.split()[0] for ln in body[:4]] == ["userver-nb-30K-4p", "8,000", "12,500", "20,000"]
    assert body[4].startswith("knot-c-20K-100w-1000MB")  # labels in order of first appearance
    assert body[8].startswith("watpipe")
    assert "468.0 ± 7.2" in body[0] or "468.0 ± 7.3" in body[0]
    assert body[0].rstrip().endswith("cpu 14,000")
    assert body[4].rstrip().endswith("cpu 12,600")
    # columns are aligned: every row as wide as the header or narrower
    assert len({len(ln) for ln in lines[:2]}) == 1
    assert format_table([]) == "(no results)"


def test_cpu_level_is_read_against_a_cfs_quota():
    """A server held to 15 % of its core by a CFS quota is saturated at 15 % busy: the bottleneck
    report says cpu at 100 %, not 'nothing saturated'."""
    from sim.bottleneck import SweepPointResult, busiest

    def point(quota):
        return SweepPointResult(label="s", architecture="sped", offered_rps=1000.0,
                                metrics={"cpu_util": Estimate(0.1497, 0.0, 2)}, bounds={}, replications=2,
                                cpu_quota=quota)
    assert busiest(point(0.15)) == ("cpu", pytest.approx(0.998))
    assert busiest(point(1.0)) == ("cpu", pytest.approx(0.1497))
