"""httperf's session generator (sim/generator.py): the instants httperf itself draws, and the
simulated clients offering the very same sessions at them."""
import re
import shutil
import socket
import subprocess

import numpy as np
import pytest

from sim import generator
from sim.engine import build
from sim.scenario import load_scenario


@pytest.mark.skipif(shutil.which("httperf") is None, reason="httperf not installed")
@pytest.mark.parametrize("client,k,rate", [(0, 1, 100.0), (3, 4, 2.0)])
def test_the_instants_are_httperfs_own(tmp_path, client, k, rate):
    """httperf prints each interarrival time it draws (`-v -v -v`, to 0.1 ms); ours are the same ones."""
    (tmp_path / "one.log").write_text("/x\n\n")
    with socket.socket() as s:                  # a port of ours that nobody listens on: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        proc = subprocess.run(
            ["httperf", f"--server=127.0.0.1", f"--port={port}", f"--wsesslog=12,0,{tmp_path / 'one.log'}",
             f"--period=e{generator.period_s(rate):.9f}", "-v", "-v", "-v", f"--client={client}/{k}", "--timeout=1"],
            capture_output=True, text=True, timeout=60)
    printed = re.findall(r"next arrival delay = ([0-9.]+)", proc.stderr)
    starts = generator.start_instants(client, rate, 13)
    # session 0 starts at once and the first draw is taken then, unprinted; each later session prints the next
    assert starts[0] == 0.0 and printed == [f"{d:.4f}" for d in np.diff(starts)[1:12]]


def test_processes_share_the_sessions_and_the_templates():
    plan = generator.sessions(10, 3, 5.0, n_templates=7)
    assert [sum(1 for _, p, _ in plan if p == i) for i in range(3)] == generator.session_counts(10, 3) == [4, 3, 3]
    assert [t for t, _, _ in plan] == sorted(t for t, _, _ in plan)
    for i, share in enumerate(generator.template_shares(7, [4, 3, 3])):
        mine = [(t, m) for t, p, m in plan if p == i]
        assert [m for _, m in mine] == [share[j % len(share)] for j in range(len(mine))]
        # each process at its share of the rate, from its own seed
        assert [t for t, _ in mine] == generator.start_instants(i, 5.0 * len(mine) / 10, len(mine)).tolist()
    assert generator.template_shares(7, [4, 3, 3]) == [[0, 1], [2, 3], [4, 5, 6]]
    assert generator.template_shares(2, [5, 5, 5]) == [[0], [0], [1]]     # fewer templates: one each
    # a Poisson stream all the same: 4,000 arrivals at 50/s take about 80 s
    assert generator.start_instants(0, 50.0, 4001)[-1] == pytest.approx(80.0, rel=0.05)


def test_simulated_clients_start_httperfs_sessions_from_an_empty_start(tmp_path):
    """With arrivals = "httperf" no session is under way at 0, and each starts on its process's first tick
    past httperf's instant, with the template that process replays next."""
    (tmp_path / "s.toml").write_text(
        '[scenario]\nname = "t"\nprofile = "study-xeon"\n[workload]\ndirectories = 2\n'
        'think_within_burst_s = 0.02\nthink_between_bursts_s = 0.2\nsession_templates = 9\ntemplate_seed = 3\n'
        'arrivals = "httperf"\ngenerator_sessions_per_process = 10\n'
        '[run]\nrates = [300.0]\nwarmup_s = 1.0\nduration_s = 2.0\nreplications = 2\n'
        '[[server]]\nlabel = "sped"\narchitecture = "sped"\n')
    scen = load_scenario(str(tmp_path / "s.toml"))
    w = scen.workload
    env, server, clients, _ = build(scen, scen.servers[0], 300.0, 0)
    assert server.open_conns == 0 and clients.procs > 1
    started, start = [], clients._start

    def record(conn):
        started.append((conn.born, conn.id, conn.tpl))
        start(conn)

    clients._start = record
    env.run(until=3.0)
    total = round(w.session_rate(300.0) * 3.0)
    plan = generator.sessions(total, clients.procs, w.session_rate(300.0), 9)
    # httperf's own stream: the sessions it starts by the end, no more (its last ones may fall later)
    assert len(plan) == total and len(started) == sum(1 for at, _p, _m in plan if at < 3.0 - w.generator_tick_s)
    tpl, k, seen = w.templates(), clients.procs, [0] * clients.procs
    for (born, cid, t), (at, proc, m) in zip(started, plan):
        assert cid == seen[proc] * k + proc and t is tpl[m]
        seen[proc] += 1
        assert at - 1e-9 <= born < at + w.generator_tick_s       # on a tick of its own process's grid
    # replications differ in nothing the sessions do: the same requests, so the same replies
    replies = []
    for rep in (0, 1):
        env, _s, c, _ = build(scen, scen.servers[0], 300.0, rep)
        env.run(until=3.0)
        replies.append(list(c.reply_at))
    assert replies[0] == replies[1] and len(replies[0]) > 300
