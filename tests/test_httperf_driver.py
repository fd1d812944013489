"""The httperf driver: session files, the output parser, instance planning, and live runs."""
import importlib.util
import json
import os
import shutil

import numpy as np
import pytest

from real import httperf as hp
from real.fileset import generate
from sim import generator as sim_generator
from sim.fileset import FileSet
from sim.workload import Workload

DATA = os.path.join(os.path.dirname(__file__), "data")
FIXTURE = os.path.join(DATA, "httperf_nginx_wsesslog.txt")
HAVE_LOAD_TOOLS = all(shutil.which(t) for t in ("httperf", "nginx", "taskset"))
HAVE_SERVE = importlib.util.find_spec("real.serve") is not None


# ---------------------------------------------------------------- session files

def test_session_file_round_trip(tmp_path):
    w = Workload(fileset=FileSet(directories=20))
    log = hp.write_wsesslog(w, np.random.default_rng(3), 1000, str(tmp_path / "s.log"))
    sessions = hp.parse_wsesslog((tmp_path / "s.log").read_text())
    assert len(sessions) == log.n_sessions == 1000
    counts = np.array([len(s) for s in sessions])
    assert counts.min() >= w.session_requests_min and counts.max() <= w.session_requests_max
    assert set(np.unique(counts)) == set(range(5, 16))  # all request counts occur
    assert abs(counts.mean() - w.mean_requests_per_session) < 0.3
    valid = {"/" + w.fileset.path(i) for i in range(w.fileset.n_files)}
    assert all(uri in valid for s in sessions for uri, _ in s)
    # every request but a session's last carries the think time that follows it; the last none
    assert all(t is not None for s in sessions for _, t in s[:-1])
    assert all(s[-1][1] is None for s in sessions)
    # think times: the mix of within-burst and between-burst pauses has the model's mean per session
    totals = np.array([sum(t for _, t in s[:-1]) for s in sessions])
    expect = w.mean_session_think_s
    assert abs(totals.mean() - expect) < 0.08 * expect
    assert [a[-1] for a in log.ages] == pytest.approx(list(totals), abs=1e-9)
    # same rng seed, same file
    hp.write_wsesslog(w, np.random.default_rng(3), 1000, str(tmp_path / "t.log"))
    assert (tmp_path / "s.log").read_bytes() == (tmp_path / "t.log").read_bytes()


def test_fixed_think_times_mark_the_bursts(tmp_path):
    w = Workload(fileset=FileSet(directories=3), think_distribution="fixed")
    hp.write_wsesslog(w, np.random.default_rng(1), 800, str(tmp_path / "s.log"))
    sessions = hp.parse_wsesslog((tmp_path / "s.log").read_text())
    thinks = [t for s in sessions for _, t in s[:-1]]
    assert set(thinks) == {0.343, 3.0}
    bursts = np.array([1 + sum(t == 3.0 for _, t in s[:-1]) for s in sessions])
    lengths = np.array([len(s) for s in sessions])
    assert np.all(bursts >= np.ceil(lengths / w.burst_requests_max)) and np.all(bursts <= lengths)
    # the burst count matches the expectation used to size the load (an independent Monte Carlo of Workload)
    rng = np.random.default_rng(9)
    mc = np.mean([len(w.session(rng)) for _ in range(20000)])
    exact_think = w.mean_session_think_s
    exact_bursts = (exact_think - (w.mean_requests_per_session - 1) * w.think_within_burst_s) / (
        w.think_between_bursts_s - w.think_within_burst_s) + 1
    assert exact_bursts == pytest.approx(mc, rel=0.02)
    assert bursts.mean() == pytest.approx(mc, rel=0.05)


def test_session_file_limits(tmp_path):
    w = Workload(fileset=FileSet(directories=1))
    for n in (0, 1001):
        with pytest.raises(ValueError, match="1 to 1000"):
            hp.write_wsesslog(w, np.random.default_rng(0), n, str(tmp_path / "x.log"))
    assert not (tmp_path / "x.log").exists()


def test_offered_in_window_counts_the_requests_of_the_sessions_started(tmp_path):
    """Sessions replay the file's sessions in turn from their start instants; each request counts in the
    window its issue instant (start + think times before it) falls in, once."""
    w = Workload(fileset=FileSet(directories=2))
    log = hp.write_wsesslog(w, np.random.default_rng(0), 3, str(tmp_path / "s.log"))
    log.ages = [[0.0, 1.0, 2.5], [0.0], [0.0, 0.5]]       # issue ages, as the file's think times give them
    starts = [np.array([0.0, 0.2, 0.4, 3.0]), np.array([1.0])]   # two processes; the first replays session 0 again
    # process 0: session 0 at 0 (0, 1, 2.5), session 1 at 0.2 (0.2), session 2 at 0.4 (0.4, 0.9), session 0 at 3
    # (3, 4, 5.5); process 1: session 0 at 1 (1, 2, 3.5)
    assert hp.offered_in_window([log, log], starts, 0.0, 1e6) == 12
    assert hp.offered_in_window([log, log], starts, 1.0, 3.0) == 4          # 1 and 2.5 (p0), 1 and 2 (p1); not 3
    assert hp.offered_in_window([log, log], starts, 0.0, 1.0) == 4
    many = [sim_generator.start_instants(i, 4.0, 40) for i in range(2)]
    whole = hp.offered_in_window([log, log], many, 0.0, 1e6)
    assert whole == 2 * sum(len(log.ages[j % 3]) for j in range(40))
    assert sum(hp.offered_in_window([log, log], many, a, a + 5.0) for a in range(0, 40, 5)) == whole


# ---------------------------------------------------------------- instances

def test_instances_follow_the_descriptor_limit():
    w = Workload(fileset=FileSet(directories=1))
    k, conc = hp.plan_instances(w, 100.0)
    assert k == 1 and conc == pytest.approx(10 * w.mean_session_think_s)
    k, conc = hp.plan_instances(w, 3000.0)
    assert k == int(np.ceil(conc / hp.CONNS_PER_INSTANCE)) and k > 1
    with pytest.raises(hp.LoadError, match="FD_SETSIZE"):
        hp.plan_instances(w, 100_000.0)


# ---------------------------------------------------------------- output parser

def test_parse_real_httperf_output():
    r = hp.parse_httperf(open(FIXTURE).read())
    assert (r["connections"], r["requests"], r["replies"]) == (120, 1201, 1201)
    assert r["test_duration_s"] == 30.045
    assert (r["response_ms"], r["transfer_ms"], r["connect_ms"]) == (0.3, 0.0, 0.0)
    assert r["reply_bytes"] == 15194.0 and r["status_2xx"] == 1201 and r["max_concurrent"] == 103
    assert r["samples"] == [101.0, 87.8, 32.8, 8.0, 5.2, 5.2]
    assert (r["sessions_completed"], r["sessions_failed"]) == (120, 0)
    assert r["errors"] == 0 and all(r[k] == 0 for k in hp.ERROR_KINDS)
    assert r["net_mbps"] == 4.9 and r["cpu_pct"] == 97.1


def test_parse_error_lines_and_merge():
    text = open(FIXTURE).read()
    bad = (text.replace("Errors: total 0 client-timo 0 socket-timo 0 connrefused 0 connreset 0",
                        "Errors: total 21 client-timo 7 socket-timo 1 connrefused 2 connreset 3")
               .replace("Errors: fd-unavail 0 addrunavail 0 ftab-full 0 other 0",
                        "Errors: fd-unavail 4 addrunavail 1 ftab-full 2 other 1")
               .replace("(120/120)", "(110/120)"))
    r = hp.parse_httperf(bad)
    assert [r[k] for k in hp.ERROR_KINDS] == [7, 1, 2, 3, 4, 1, 2, 1] and r["errors"] == 21
    assert (r["sessions_completed"], r["sessions_failed"]) == (110, 10)
    m = hp.merge([hp.parse_httperf(text), r])
    assert m["replies"] == 2402 and m["errors"] == 21 and m["client_timo"] == 7
    assert m["samples"] == [2 * x for x in [101.0, 87.8, 32.8, 8.0, 5.2, 5.2]]
    assert m["response_ms"] == pytest.approx(0.3)
    for broken in ("", "httperf: can't open /nope\n", text.replace("Reply time", "Reply tim")):
        with pytest.raises(hp.HttperfOutputError):
            hp.parse_httperf(broken)


def test_cli_rejects_bad_arguments(capsys, tmp_path):
    for argv in (["--rates", "100"], ["--port", "8080", "--rates", "a,b"], ["--port", "8080", "--rates", "-5"],
                 ["--port", "0", "--rates", "100"], ["--port", "8080", "--rates", "100", "--root", str(tmp_path)],
                 ["--port", "8080", "--rates", "1000000"]):
        assert hp.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("simrun load: error:") and err.count("\n") == 1, err


# ---------------------------------------------------------------- live runs

@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("fileset") / "www")
    generate(root, FileSet(directories=2), seed=0)
    return root


def check_low_load_run(r):
    assert r["errors"] == 0 and r["errors_pct"] == 0.0
    assert r["replies"] == r["replies_2xx"] > 300
    assert 0 <= r["requests"] - r["replies"] <= 5  # a few in flight when httperf was stopped
    assert r["reply_rps_basis"] == "samples 5-10 s"
    # the server keeps up with what the sessions offered in the measured window: httperf's own session
    # starts (sim/generator.py) plus the think times, so the two differ only by response times and ticks
    assert r["reply_rps"] == pytest.approx(r["offered_window_rps"], rel=0.03)
    assert 0.4 * r["offered_rps"] < r["reply_rps"] < 1.2 * r["offered_rps"]
    assert 7_000 < r["throughput_mbps"] * 1e6 / 8 / r["reply_rps"] < 30_000  # ~15 KB per reply
    assert r["response_ms_mean"] < 200


@pytest.mark.skipif(not HAVE_LOAD_TOOLS, reason="httperf, nginx or taskset not installed")
def test_run_against_nginx_through_the_cli(small_set, tmp_path, capsys):
    out = tmp_path / "load.json"
    with hp.Nginx(small_set, cpu=0) as ng:
        rc = hp.main(["--port", str(ng.port), "--rates", "150", "--duration", "10", "--root", small_set,
                      "--core", "1", "--no-tail", "--json", str(out)])
        assert ng.proc.poll() is None
    assert rc == 0
    table = capsys.readouterr().out
    assert "reply/s" in table and "150" in table
    doc = json.loads(out.read_text())
    assert doc["directories"] == 2 and len(doc["runs"]) == 1
    check_low_load_run(doc["runs"][0])
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp")]


@pytest.mark.skipif(not HAVE_LOAD_TOOLS, reason="httperf, nginx or taskset not installed")
@pytest.mark.skipif(not HAVE_SERVE, reason="real/serve.py (simrun serve) does not exist yet")
def test_run_against_the_python_sped_server(small_set, server_factory):
    w = Workload(fileset=FileSet(directories=2))
    s = server_factory("sped", small_set)
    r = hp.run_httperf("127.0.0.1", s.port, w, 150, 10, cpu=1, seed=1, stop_after_s=10.5)
    assert s.alive()
    check_low_load_run(r)


# ---------------------------------------------------------------- replayed session templates

def test_templates_are_a_session_file_and_are_shared_out_over_instances(tmp_path):
    """The workload's templates are what write_wsesslog draws for seed [S, 0] (so an earlier live run's
    first session file can be simulated again); instances get contiguous shares, as many as they start."""
    base = Workload(fileset=FileSet(directories=3), think_within_burst_s=0.02, think_between_bursts_s=0.2)
    w = Workload(fileset=base.fileset, think_within_burst_s=0.02, think_between_bursts_s=0.2,
                 session_templates=2500, template_seed=7)
    tpl = w.templates()
    assert len(tpl) == 2500 and tpl is w.templates()
    hp.write_wsesslog(base, np.random.default_rng([7, 0]), 1000, str(tmp_path / "a.log"))
    hp.write_templates(w, tpl[:1000], str(tmp_path / "b.log"))
    assert (tmp_path / "a.log").read_text() == (tmp_path / "b.log").read_text()
    shares = hp.template_slices(w, [900, 900, 5])
    assert [len(s) for s in shares] == [833, 833, 5]
    assert shares[0] == list(tpl[:833]) and shares[1] == list(tpl[833:1666]) and shares[2] == list(tpl[1666:1671])
    with pytest.raises(hp.LoadError):
        hp.template_slices(w, [2000, 2000])             # 1,250 in one file: more than httperf holds


FAKE_HTTPERF = """#!/bin/sh
# records its session file, then answers with a real httperf report
for a in "$@"; do case "$a" in --wsesslog=*) cp "${a##*,}" "$(dirname "${a##*,}")/seen-$$.log";; esac; done
cat "%s"
"""


def test_run_plans_one_httperf_per_thousand_templates(tmp_path):
    """At a rate one httperf could carry, 2,500 templates still take three processes, and their
    session files hold consecutive templates in order."""
    fake = tmp_path / "httperf"
    fake.write_text(FAKE_HTTPERF % FIXTURE)
    fake.chmod(0o755)
    w = Workload(fileset=FileSet(directories=3), think_within_burst_s=0.02, think_between_bursts_s=0.2,
                 session_templates=2500, template_seed=1)
    work = tmp_path / "work"
    r = hp.run_httperf("127.0.0.1", 9, w, 400.0, 3.0, cpu=None, httperf=str(fake), workdir=str(work))
    assert r["instances"] == 3 and r["sessions"] == 120
    seen = [hp.parse_wsesslog(p.read_text()) for p in sorted(work.glob("sessions-*.log"))]
    expect = [[[(f"/{w.fileset.path(f)}", None if j == len(files) - 1 else t) for j, (f, t) in
                enumerate(zip(files, thinks))] for files, thinks in share]
              for share in hp.template_slices(w, [40, 40, 40])]
    assert seen == expect and len(list(work.glob("seen-*.log"))) == 3


def test_simulated_clients_replay_the_templates_in_turn(tmp_path):
    """With session_templates the simulator's sessions are the templates, taken in turn from the
    first, each with its own files and think times (the sessions under way at 0 took the ones before)."""
    from sim.engine import build
    from sim.scenario import load_scenario
    (tmp_path / "s.toml").write_text(
        '[scenario]\nname = "t"\nprofile = "study-xeon"\n[workload]\ndirectories = 2\n'
        'think_within_burst_s = 0.02\nthink_between_bursts_s = 0.2\nsession_templates = 7\ntemplate_seed = 3\n'
        '[run]\nrates = [300.0]\nwarmup_s = 0.0\nduration_s = 3.0\nreplications = 2\n'
        '[[server]]\nlabel = "sped"\narchitecture = "sped"\n')
    scen = load_scenario(str(tmp_path / "s.toml"))
    assert scen.workload.session_templates == 7
    env, server, clients, _ = build(scen, scen.servers[0], 300.0, 0)
    sent, send = {}, clients._send

    def record(conn):
        send(conn)
        sent.setdefault(conn.id, []).append((conn.file, clients.env.now))

    clients._send = record
    first_new = clients.next_id
    env.run(until=3.0)
    tpl = scen.workload.templates()
    new = sorted(c for c in sent if c >= first_new)
    assert len(new) > 50
    for k, cid in enumerate(new):
        files, thinks = tpl[k % 7]
        got = [f for f, _ in sent[cid]]
        assert got == list(files[:len(got)])
        # the next request follows the reply by the template's think time (and the reply's own time)
        times = [t for _, t in sent[cid]]
        assert all(b - a >= thinks[j] - 1e-9 for j, (a, b) in enumerate(zip(times, times[1:])))
    for cid in sent:
        if cid < first_new:
            got = [f for f, _ in sent[cid]]
            assert any(got == list(t[0][j:j + len(got)]) for t in tpl for j in range(1, len(t[0])))
