"""The architecture models beyond the userver: each serves a light load without errors, and each
obeys the mechanism that sets it apart (a check that fails if the mechanism is missing)."""
from __future__ import annotations

import dataclasses
import math
from collections import deque

import pytest

from models import sped
from sim.engine import build
from sim.operations import Cost, data_write
from sim.profile import load_profile
from sim.scenario import load_scenario

SMALL = """
[scenario]
name = "models-test"
profile = "study-xeon"

[hardware]
cores = {cores}
memory_mb = {memory_mb}
kernel_mb = 120

[workload]
directories = {directories}

[run]
rates = [{rate}]
warmup_s = 2.0
duration_s = {duration}
seed = 3
"""


def scenario(tmp_path, servers: str, *, rate=800, cores=1, memory_mb=2048, directories=68, duration=3.0):
    text = SMALL.format(rate=rate, cores=cores, memory_mb=memory_mb, directories=directories,
                        duration=duration) + servers
    path = tmp_path / f"s{abs(hash(text))}.toml"
    path.write_text(text)
    return load_scenario(path)


def run(sc, label, rate=None, profile=None):
    """Run one configuration; return (server, clients, replies/s, error count)."""
    if profile is not None:
        sc = dataclasses.replace(sc, profile=profile)
    spec = next(s for s in sc.servers if s.label == label)
    env, server, clients, _ = build(sc, spec, rate or sc.run.rates[0], 0)
    env.run(until=sc.run.warmup_s + sc.run.duration_s)
    return server, clients, clients.replies / sc.run.duration_s, clients.timeouts + clients.connect_failures


LIGHT = """
[[server]]
label = "knot-b"
architecture = "knot"
variant = "knot-b"
threads = 5000
workers = 20

[[server]]
label = "knot-nb"
architecture = "knot"
variant = "knot-nb"
threads = 5000
workers = 20

[[server]]
label = "knot-c"
architecture = "knot"
variant = "knot-c"
threads = 5000
workers = 20
cache_mb = 100

[[server]]
label = "watpipe"
architecture = "watpipe"
writers = 5

[[server]]
label = "seda"
architecture = "seda"

[[server]]
label = "amped"
architecture = "amped"
helpers = 4

[[server]]
label = "threaded"
architecture = "threaded"
threads = 0

[[server]]
label = "threaded-gil"
architecture = "threaded"
threads = 0
gil = true
"""


@pytest.mark.parametrize("label", ["knot-b", "knot-nb", "knot-c", "watpipe", "seda", "amped",
                                   "threaded", "threaded-gil"])
def test_light_load_is_served_without_errors(tmp_path, label):
    sc = scenario(tmp_path, LIGHT)
    server, clients, rps, errors = run(sc, label)
    assert errors == 0
    assert clients.resets_during_send == 0
    assert 0.85 * 800 < rps < 1.15 * 800, rps
    assert server.cpu.busy > 0


def test_knot_switches_user_threads_and_the_userver_does_not(tmp_path):
    sc = scenario(tmp_path, LIGHT)
    for label, lo, hi in (("knot-b", 1.5, 3.0), ("knot-nb", 1.5, 3.5), ("knot-c", 0.8, 3.0)):
        server, clients, rps, _ = run(sc, label)
        # switches are counted over warm-up and window alike (the run starts in steady state)
        total_s = sc.run.warmup_s + sc.run.duration_s
        per_reply = server.model.resumes / (rps * total_s)
        assert lo < per_reply < hi, (label, per_reply)     # Table 1: 1.47, 2.35, 2.07 per reply
    assert "ult_switch" not in sped.OPERATIONS and "handoff" not in sped.OPERATIONS


def test_a_write_from_the_servers_memory_costs_sendfiles_kernel_work_plus_the_copy():
    # Table 1: memory management + file system take 14.4 us a reply in knot-c, which writes its
    # replies from its cache, and 14.6-16.8 us in the configurations that use sendfile
    profile = load_profile("study-xeon")
    cost, reply = profile.cost, 14_900
    data = data_write(cost)
    copy = cost("write").per_unit * reply
    assert data(reply) - copy == pytest.approx(cost("sendfile")(reply) + cost("net_tx")(reply))
    # the header write with TCP_CORK is a smaller call than a write that sends the data
    assert data.fixed > cost("write").fixed


def test_knot_c_pays_sendfiles_per_call_kernel_work_on_every_write(tmp_path):
    # knot-c never calls sendfile, so sendfile's per-call cost reaches it only through its writes
    # (sim/operations.py: data_write): raised by 20 us, knot-c's CPU per reply rises by 20 us for
    # each write of a reply, one or a little more
    sc = scenario(tmp_path, LIGHT)
    extra = 20e-6
    dearer = dataclasses.replace(sc.profile, costs={**sc.profile.costs, "sendfile": Cost(
        sc.profile.cost("sendfile").fixed + extra, sc.profile.cost("sendfile").per_unit)})
    total_s = sc.run.warmup_s + sc.run.duration_s
    per_reply = []
    for profile in (sc.profile, dearer):
        server, clients, rps, _ = run(sc, "knot-c", profile=profile)
        per_reply.append(server.cpu.busy / (rps * total_s))
    assert 0.9 * extra < per_reply[1] - per_reply[0] < 2.0 * extra, per_reply


def test_knot_c_cache_shrinks_the_page_cache_and_costs_disk_reads(tmp_path):
    # 3.2 GB of files, 1 GB of memory: knot-c's 300 MB cache is taken from the page cache
    sc = scenario(tmp_path, """
[[server]]
label = "knot-b"
architecture = "knot"
variant = "knot-b"
threads = 5000
workers = 20

[[server]]
label = "knot-c"
architecture = "knot"
variant = "knot-c"
threads = 5000
workers = 20
cache_mb = 300
""", memory_mb=1024, directories=680, rate=4000)
    b, _, rps_b, _ = run(sc, "knot-b")
    kc, _, rps_c, _ = run(sc, "knot-c")
    assert kc.cache.capacity < b.cache.capacity - 290 * 2**20
    assert kc.disk.reads > 1.2 * b.disk.reads, (kc.disk.reads, b.disk.reads)
    assert kc.model.app_hits > 0 and kc.model.app_misses > 0


def test_watpipe_with_one_writer_saturates_below_twenty_five_on_a_disk_bound_load(tmp_path):
    # 3.2 GB of files and 650 MB of memory: many sendfiles block on the disks
    sc = scenario(tmp_path, """
[[server]]
label = "w1"
architecture = "watpipe"
writers = 1

[[server]]
label = "w25"
architecture = "watpipe"
writers = 25
""", memory_mb=650, directories=680, rate=12000, duration=2.0)
    # on eight disks: a single writer blocked on one read leaves the other disks idle,
    # while on one saturated disk the writer count would not matter
    sc = dataclasses.replace(sc, hardware=dataclasses.replace(sc.hardware, disks=8))
    _, _, one, _ = run(sc, "w1")
    _, _, many, _ = run(sc, "w25")
    assert one < 0.8 * many, (one, many)


def test_gil_keeps_python_bound_threads_to_one_core(tmp_path):
    sc = scenario(tmp_path, """
[[server]]
label = "gil"
architecture = "threaded"
threads = 0
gil = true

[[server]]
label = "nogil"
architecture = "threaded"
threads = 0
""", rate=5000, duration=2.0, directories=20)
    # a CPython server: the interpreter's share dominates, the system calls are cheap
    costs = dict(sc.profile.costs)
    python = 400e-6
    costs["parse"] = Cost(python)
    costs["sendfile"] = Cost(costs["sendfile"].fixed)
    costs["net_tx"] = Cost()
    prof = dataclasses.replace(sc.profile, costs=costs)
    got = {}
    for cores in (1, 4):
        s = dataclasses.replace(sc, hardware=dataclasses.replace(sc.hardware, cores=cores))
        for label in ("gil", "nogil"):
            got[label, cores] = run(s, label, profile=prof)[2]
    # four cores run the system calls in parallel, not the Python part: one interpreter at a time
    assert got["gil", 4] <= 1.02 / (python + costs["stat"].fixed), got
    assert got["gil", 4] < 0.5 * got["nogil", 4], got
    assert got["nogil", 4] > 2.0 * got["nogil", 1], got


GIL_ONE_CORE = """
[[server]]
label = "gil"
architecture = "threaded"
threads = 3000
max_conns = 3000
gil = true
"""


def test_gil_is_taken_back_after_every_blocking_call(tmp_path):
    """CPython lets the lock go around recv, the header's send and sendfile and takes it back after
    each: three acquisitions per request. A thread takes it back while it runs, so on one core
    (bursts are not preempted) it is never held by another; on two cores the Python sections
    queue for it: hand-overs, and no more requests than one interpreter can serve."""
    sc = scenario(tmp_path, GIL_ONE_CORE, rate=3000, duration=2.0, directories=5)
    costs = dict(sc.profile.costs)
    python = 1e-3                                # 1 ms of Python per request
    costs["parse"] = Cost(python)
    prof = dataclasses.replace(sc.profile, costs=costs)
    server, _, one, _ = run(sc, "gil", profile=prof)
    gil = server.model.gil
    assert 3.0 <= gil.acquisitions / server.model.requests <= 3.6, (gil.acquisitions, server.model.requests)
    assert gil.handovers == 0 and gil.waited_s == 0
    two_cores = dataclasses.replace(sc, hardware=dataclasses.replace(sc.hardware, cores=2))
    server, _, two, _ = run(two_cores, "gil", profile=prof)
    gil = server.model.gil
    assert gil.handovers > 0.3 * server.model.requests, (gil.handovers, server.model.requests)
    assert two <= 1.02 / (python + costs["stat"].fixed + costs["handoff"].fixed), (one, two)


def test_a_thread_woken_during_a_python_section_preempts_the_holder_and_pays_a_handover(tmp_path):
    """On one core a thread woken while another runs Python preempts it, finds the lock held and
    sleeps on it: a hand-over. Nearly all of a saturated core's time is Python here, so nearly every
    wake-up on the busy core costs one; at light load the core is mostly idle and few do. On two
    cores the contention is the overlapping sections' instead (no preemption counted)."""
    got = {}
    for rate, handoff in ((300, 50e-6), (3000, 50e-6), (3000, 0.0)):
        sc = scenario(tmp_path, GIL_ONE_CORE, rate=rate, duration=2.0, directories=5)
        costs = dict(sc.profile.costs)
        costs["parse"] = Cost(1e-3)              # 1 ms of Python per request
        costs["handoff"] = Cost(handoff)
        prof = dataclasses.replace(sc.profile, costs=costs)
        server, _, replies, _ = run(sc, "gil", profile=prof)
        gil = server.model.gil
        got[rate, handoff] = gil.preemptions / server.model.requests, replies
    assert got[3000, 50e-6][0] > 0.5, got
    assert got[300, 50e-6][0] < 0.5 * got[3000, 50e-6][0], got
    # the hand-overs are CPU: the saturated core serves fewer replies for them
    lost = 1 - got[3000, 50e-6][1] / got[3000, 0.0][1]
    assert 0.5 * 50e-6 / 1e-3 < lost < 2 * 50e-6 / 1e-3, got
    sc = scenario(tmp_path, GIL_ONE_CORE, rate=3000, duration=2.0, directories=5)
    two = dataclasses.replace(sc, hardware=dataclasses.replace(sc.hardware, cores=2),
                              profile=dataclasses.replace(sc.profile, costs=costs))
    server, _, _, _ = run(two, "gil", profile=two.profile)
    assert server.model.gil.preemptions == 0


class QuotaCPU:
    """One FIFO core under a CFS quota, with the contract the threaded model reads: a burst runs
    at full speed while the period's share lasts and waits out the rest of the period; its event
    carries `cut`, the CPU seconds into it where the share ran out; `queue` holds the bursts not
    yet started; `free` the idle cores; `switches` and `switch_cost` what a blocking send charges
    for its wake-ups (no switches here otherwise)."""

    def __init__(self, env, share_s, period_s):
        self.env, self.share, self.period = env, share_s, period_s
        self.switches, self.switch_cost = 0, 3e-6
        self.k, self.left = -1, 0.0
        self.starts: deque = deque()
        self.busy_until = 0.0

    @property
    def free(self):
        """The idle cores: the threaded model asks whether a woken thread finds one."""
        return [0] if self.busy_until <= self.env.now else []

    @property
    def queue(self):
        while self.starts and self.starts[0] <= self.env.now:
            self.starts.popleft()
        return self.starts

    def run(self, entity, seconds):
        env = self.env
        now = max(env.now, self.busy_until)
        if now > env.now:
            self.starts.append(now)
        k = int(now / self.period)
        if k > self.k:
            self.k, self.left = k, self.share
        t, left, cut = now, seconds, -1.0
        while True:
            use = min(left, self.left)
            self.left -= use
            left -= use
            t += use
            if left <= 0:
                break
            if cut < 0:
                cut = t - now
            self.k += 1
            self.left = self.share
            t = max(t, self.k * self.period)
        self.busy_until = t
        ev = env.timeout(t - env.now)
        if cut >= 0:
            ev.cut = cut
        return ev


def test_gil_convoy_when_the_cpu_quota_throttles_a_holder(tmp_path):
    """On one core the lock is never held by another thread, unless the CFS quota runs out while a
    thread is in its Python section: then the others run first, find it held and sleep on it."""
    sc = scenario(tmp_path, GIL_ONE_CORE + GIL_ONE_CORE.replace('label = "gil"', 'label = "nogil"').replace(
        "gil = true", "gil = false"), rate=1500, duration=2.0, directories=5)
    costs = dict(sc.profile.costs)
    costs["parse"] = Cost(300e-6)                # a Python-heavy request, 1 ms of quota every 6.7 ms
    prof = dataclasses.replace(sc.profile, costs=costs)
    sc = dataclasses.replace(sc, profile=prof)
    got = {}
    for label in ("gil", "nogil"):
        spec = next(x for x in sc.servers if x.label == label)
        env, server, clients, _ = build(sc, spec, 1500, 0)
        server.cpu = QuotaCPU(env, 1e-3, 1e-3 / 0.15)
        env.run(until=sc.run.warmup_s + sc.run.duration_s)
        got[label] = clients.replies / sc.run.duration_s, server.model.gil
    (with_lock, gil), (without, _) = got["gil"], got["nogil"]
    assert gil.convoys > 0 and gil.futile > gil.convoys, (gil.convoys, gil.futile)
    assert with_lock < 0.9 * without, got


def test_seda_controller_adds_threads_under_load_and_removes_idle_ones(tmp_path):
    sc = scenario(tmp_path, """
[[server]]
label = "seda"
architecture = "seda"
cache_mb = 20
""", memory_mb=600, directories=680, rate=5000, duration=6.0)
    server, _, _, _ = run(sc, "seda")
    file_stage = server.model.file
    assert file_stage.added > 1 and file_stage.peak_threads > 1
    # light load: threads added by hand go idle and the controller retires them after 5 s (requests
    # at their drawn instants: two on one tick of the load generator would keep a second thread busy)
    sc2 = scenario(tmp_path, """
[[server]]
label = "seda"
architecture = "seda"
""", rate=50, duration=10.0)
    sc2 = dataclasses.replace(sc2, workload=dataclasses.replace(sc2.workload, generator_tick_s=0.0))
    spec = sc2.servers[0]
    env, server, _, _ = build(sc2, spec, 50, 0)
    for _ in range(5):
        server.model.parse.add_thread()
    env.run(until=2.5)
    assert len(server.model.parse.threads) == 6
    env.run(until=12.0)
    assert len(server.model.parse.threads) == 1 and server.model.parse.removed == 5


def test_amped_helpers_keep_the_event_loop_off_the_disk(tmp_path):
    # 3.2 GB of files, 1 GB of memory: SPED blocks on every miss, AMPED's loop never does
    sc = scenario(tmp_path, """
[[server]]
label = "sped"
architecture = "symped"
processes = 1

[[server]]
label = "amped"
architecture = "amped"
helpers = 8
""", memory_mb=1024, directories=680, rate=10000, duration=2.0)
    s, _, rps_sped, _ = run(sc, "sped")
    a, _, rps_amped, _ = run(sc, "amped")
    assert a.model.offloaded > 0
    assert a.model.main.blocked_s == 0 and sum(h.blocked_s for h in a.model.helpers) > 0
    assert rps_amped > 1.5 * rps_sped, (rps_amped, rps_sped)


def test_sped_pays_a_wakeup_only_for_passes_after_poll_slept(tmp_path):
    """A pass that follows a poll which slept pays `wakeup` (the scheduler and cold caches); a pass
    that finds work at once pays none. At light load nearly every request wakes the loop, so the
    CPU per reply grows by about the wake-up; in overload the loop never sleeps, so the peak stays."""
    servers = '\n[[server]]\nlabel = "sped"\narchitecture = "symped"\nprocesses = 1\n'
    wake = 100e-6

    def cpu_per_reply(rate, wakeup):
        sc = scenario(tmp_path, servers, rate=rate, directories=5, duration=2.0)
        costs = dict(sc.profile.costs)
        if wakeup:
            costs["wakeup"] = Cost(wakeup)
        sc = dataclasses.replace(sc, profile=dataclasses.replace(sc.profile, costs=costs))
        env, server, clients, _ = build(sc, sc.servers[0], rate, 0)
        env.run(until=sc.run.warmup_s)
        busy = server.cpu.busy
        env.run(until=sc.run.warmup_s + sc.run.duration_s)
        return (server.cpu.busy - busy) / clients.replies, clients.replies / sc.run.duration_s

    light0, _ = cpu_per_reply(300, 0.0)
    light1, _ = cpu_per_reply(300, wake)
    # about one wake-up per reply: a few more for the accepts and the closes, a few fewer when
    # two requests arrive in one sleep
    assert 0.8 * wake < light1 - light0 <= 1.2 * wake, (light0, light1)
    # busier, most passes find a descriptor ready as they start (a pass per reply would pay 1 x)
    busy0, _ = cpu_per_reply(3000, 0.0)
    busy1, _ = cpu_per_reply(3000, wake)
    assert 0 < busy1 - busy0 < 0.5 * wake, (busy0, busy1)
    _, peak0 = cpu_per_reply(20000, 0.0)
    _, peak1 = cpu_per_reply(20000, wake)
    assert peak1 > 0.97 * peak0, (peak0, peak1)


def test_symped_processes_keep_the_cpu_for_a_slice_not_one_descriptor(tmp_path):
    """Linux lets a runnable process keep the CPU until it blocks or its slice ends: four CPU-bound
    userver processes switch about once per slice (Table 1: 107 switches/s at 10,122 replies/s),
    not once per descriptor served, and the replies of a burst still all leave."""
    servers = '\n[[server]]\nlabel = "symped-4p"\narchitecture = "symped"\nprocesses = 4\n'
    sc = scenario(tmp_path, servers, rate=20000, directories=5, duration=2.0)
    env, server, clients, _ = build(sc, sc.servers[0], 20000, 0)
    env.run(until=sc.run.warmup_s)
    busy, switches = server.cpu.busy, server.cpu.switches
    env.run(until=sc.run.warmup_s + sc.run.duration_s)
    dur = sc.run.duration_s
    assert (server.cpu.busy - busy) / dur > 0.99                 # saturated: every process has work
    rps = clients.replies / dur
    assert rps > 5000, rps
    per_s = (server.cpu.switches - switches) / dur
    assert 0.5 / sped.SLICE_S < per_s < 2.0 / sped.SLICE_S, per_s   # about one switch per slice
    assert per_s < 0.05 * rps, (per_s, rps)


def test_load_generator_descriptor_limit_caps_open_sessions_and_fails_the_rest_at_once(tmp_path):
    """Like httperf's select-bound processes: with `generator_fd_limit`, no more sessions are open
    than the processes can hold, and a session beyond it fails at once (counted as a connection
    failure); without it the same load keeps more open and nothing fails."""
    def open_and_failures(extra):
        path = tmp_path / f"g{len(extra)}.toml"
        path.write_text(SMALL.format(rate=1500, cores=1, memory_mb=2048, directories=20, duration=3.0)
                        .replace("directories = 20", "directories = 20\n" + extra)
                        + '[[server]]\nlabel = "sped"\narchitecture = "sped"\nmax_conns = 100000\n')
        sc = load_scenario(path)
        env, server, clients, _ = build(sc, sc.servers[0], sc.run.rates[0], 0)
        most = []

        def watch():
            while True:
                most.append(clients.open_sessions)
                yield env.timeout(0.01)
        env.process(watch())
        env.run(until=sc.run.warmup_s + sc.run.duration_s)
        return max(most), clients.connect_failures, clients.replies, sc.workload
    free, failed_free, replies_free, w = open_and_failures("")
    # 150 sessions/s, each open some 7 s thinking: about a thousand open
    assert w.max_open_sessions(1500) == 0 and free > 600 and failed_free == 0
    capped, failed, replies, w = open_and_failures("generator_fd_limit = 300\ngenerator_sessions_per_process = 2000")
    assert w.generator_processes(1500) == 1 and w.max_open_sessions(1500) == 300
    assert capped <= 300 and failed > 0 and replies < replies_free
    # the planner's processes are the ones the limit multiplies
    k = math.ceil(150 * w.mean_session_think_s / 300)
    assert k > 1 and dataclasses.replace(w, generator_sessions_per_process=300).max_open_sessions(1500) == 300 * k


def _ticked(tmp_path, servers, rate, tick):
    """A small scenario whose clients think briefly (as the validation's do), with the load
    generator's tick set to `tick`."""
    sc = scenario(tmp_path, servers, rate=rate, directories=5, duration=2.0)
    return dataclasses.replace(sc, workload=dataclasses.replace(
        sc.workload, generator_tick_s=tick, think_within_burst_s=0.02, think_between_bursts_s=0.2))


def test_the_load_generator_starts_sessions_and_ends_think_times_on_its_ticks(tmp_path):
    """httperf's timer fires on 1 ms ticks: a session starts on the first tick past its drawn
    instant and a think time ends on a tick, each generator process on a grid of its own. The drawn
    instants are kept, so the session rate is the offered one; with the tick off, requests go out
    at their drawn instants."""
    servers = '\n[[server]]\nlabel = "sped"\narchitecture = "symped"\nprocesses = 1\n'

    def sends(tick, per_process=800):
        sc = _ticked(tmp_path, servers, 2000, tick)
        sc = dataclasses.replace(sc, workload=dataclasses.replace(
            sc.workload, generator_sessions_per_process=per_process))
        env, server, clients, _ = build(sc, sc.servers[0], 2000, 0)
        out, send, start = [], clients._send, clients._start

        def recorded(conn):
            out.append((conn.id, env.now))
            send(conn)

        def started(conn):                             # drawn now: how late it will start
            lateness.append(conn.born - env.now)
            start(conn)
        clients._send, clients._start = recorded, started
        env.run(until=sc.run.warmup_s + sc.run.duration_s)
        return out, clients, sc.workload.generator_processes(2000)

    def off_grid(records, tick, k):
        return [(cid, t) for cid, t in records
                if abs((t - tick * (cid % k) / k) / tick - round((t - tick * (cid % k) / k) / tick)) > 1e-6]

    lateness = []
    exact, _, _ = sends(0.0)
    assert len(exact) > 5000 and len(off_grid(exact, 0.001, 1)) > 0.95 * len(exact)
    for per_process in (800, 40):                      # one generator process, then several
        lateness.clear()
        ticked, clients, k = sends(0.001, per_process)
        assert (k == 1) == (per_process == 800) and len(ticked) > 5000
        assert not off_grid(ticked, 0.001, k)
        if k > 1:                                      # each process on its own grid
            assert len(off_grid(ticked, 0.001, 1)) > 0.5 * len(ticked)
        # each session starts within a tick of its drawn instant: the offered session rate is kept
        assert len(lateness) > 500 and all(0.0 <= d < 0.001 + 1e-9 for d in lateness)


def test_requests_on_one_tick_share_the_cores_wake_up(tmp_path, monkeypatch):
    """Requests whose think times end on the same tick reach the server together: the first wakes
    the idle core and the others queue behind it. So fewer bursts start on an idle core (the
    threaded server's wake-ups) than with requests at their drawn instants; live, the threaded
    server's core entered idle 0.35 times a reply at 3,740 requests/s (2026-11-27)."""
    from sim.hardware import CPU
    servers = '\n[[server]]\nlabel = "t"\narchitecture = "threaded"\nthreads = 0\n'

    def idle_starts_per_reply(tick):
        sc = _ticked(tmp_path, servers, 3000, tick)
        assert sc.workload.generator_processes(3000) == 1
        env, server, clients, _ = build(sc, sc.servers[0], 3000, 0)
        env.run(until=sc.run.warmup_s)
        count, run = [0], CPU.run

        def counted(cpu, entity, seconds):
            count[0] += bool(cpu.free)
            return run(cpu, entity, seconds)
        monkeypatch.setattr(CPU, "run", counted)
        env.run(until=sc.run.warmup_s + sc.run.duration_s)
        monkeypatch.setattr(CPU, "run", run)
        return count[0] / clients.replies

    exact, ticked = idle_starts_per_reply(0.0), idle_starts_per_reply(0.001)
    assert exact > 0.8 and ticked < 0.6 * exact, (exact, ticked)


def _one_connection(tmp_path, initial_kb, ceiling_kb=128):
    """A server built from a small scenario, and one accepted connection on it."""
    from sim.clients import Connection
    sc = scenario(tmp_path, '\n[[server]]\nlabel = "b"\narchitecture = "symped"\nprocesses = 2\n'
                  'blocking_sockets = true\n', rate=1)
    sc = dataclasses.replace(sc, hardware=dataclasses.replace(sc.hardware, sndbuf_initial_kb=initial_kb,
                                                              sndbuf_kb=ceiling_kb, nics=1, nic_gbps=0.01))
    env, server, clients, entities = build(sc, sc.servers[0], 1, 0)
    conn = Connection(10**9, 1, 0.0)
    server._attach(entities[0], conn)
    return env, server, entities, conn


def test_send_buffer_starts_small_and_grows_with_the_window_but_never_shrinks(tmp_path):
    """Linux 2.6's autotuning: a new connection has tcp_wmem[1]; the buffer follows 2 x cwnd x a
    segment's memory as a reply's bytes leave, up to tcp_wmem[2], and keeps what it reached."""
    from sim.server import autotuned_sndbuf
    env, server, _, conn = _one_connection(tmp_path, 16)
    assert conn.sndbuf == 16 * 1024
    conn.size = conn.unsent = 40_000
    server.send(conn, 40_000, lambda c: None)
    assert conn.sndbuf == pytest.approx(autotuned_sndbuf(40_000)) and 16 * 1024 < conn.sndbuf < 128 * 1024
    grown = conn.sndbuf
    conn.size = conn.unsent = 2_000                   # a small reply later (cwnd restarted after idle)
    server.send(conn, 2_000, lambda c: None)
    assert conn.sndbuf == grown                       # the buffer does not shrink
    conn.size = conn.unsent = 1_000_000
    server.send(conn, 1_000_000, lambda c: None)
    assert conn.sndbuf == 128 * 1024                  # the ceiling
    _, server, _, fresh = _one_connection(tmp_path, 16)
    x = server.must_leave(fresh, 40_000)              # a blocking send of 40 KB on a fresh socket
    assert 0 < x < 40_000 - 16 * 1024                 # less than with a fixed 16 KB: the buffer grows
    assert 40_000 - x == pytest.approx(autotuned_sndbuf(x))              # ... and the rest just fits
    _, _, _, fixed = _one_connection(tmp_path, 0)
    assert fixed.sndbuf == 128 * 1024                 # 0: every connection starts at the ceiling


def _blocking_send_under_a_hog(tmp_path, initial_kb, hog_burst_s):
    """A 1 MB blocking send on a fresh connection while another process takes the CPU in bursts of
    `hog_burst_s`: (bytes sent blocked, times the sender ran, (last byte's time, link busy time))."""
    env, server, _, conn = _one_connection(tmp_path, initial_kb)
    from sim.server import Entity
    hog, sender = Entity(server, "hog"), Entity(server, "sender")
    runs, left_nic = [], []

    class CountingCPU:                                # the server's CPU, noting the sender's bursts
        def __init__(self, cpu):
            self.cpu = cpu

        def __getattr__(self, name):
            return getattr(self.cpu, name)

        def run(self, entity, seconds):
            if entity is sender:
                runs.append(env.now)
            return self.cpu.run(entity, seconds)
    server.cpu = CountingCPU(server.cpu)
    unblock = server._unblock

    def last_byte_left(c):
        if c is conn:                                 # the link's busy time since the send began
            left_nic.append((env.now, server.links[0].busy_time(env.now)))
        unblock(c)
    server._unblock = last_byte_left
    size = 1_000_000
    conn.size = conn.unsent = size
    x = server.must_leave(conn, size)

    def hogging():
        while True:
            yield server.cpu.run(hog, hog_burst_s)
    env.process(hogging())
    env.process(server.blocking_send(sender, conn, x))
    env.run(until=5.0)
    assert size - x <= conn.sndbuf * (1 + 1e-9) and conn.unsent == pytest.approx(size - x)
    assert x == pytest.approx(size - 128 * 1024)      # a long reply: the rest fits the ceiling
    (last_byte, busy), = left_nic
    assert busy == pytest.approx(last_byte, rel=1e-9)                  # the link never waited
    assert last_byte >= x / server.links[0].rate * (1 - 1e-9)         # (the clients' few replies share it)
    return x, runs, last_byte


@pytest.mark.parametrize("initial_kb", [16, 0])
def test_blocking_send_wakes_the_sender_per_third_of_a_buffer_and_the_link_never_waits(tmp_path, initial_kb):
    """A sender blocked on a full socket is woken each time a third of its buffer has drained, and
    each wake is a trip through the CPU (here held by another process in short bursts); the bytes
    keep leaving at the link's rate meanwhile, and the send ends once the rest fits the buffer."""
    x, runs, _ = _blocking_send_under_a_hog(tmp_path, initial_kb, 0.005)
    if initial_kb == 0:                               # a fixed buffer: one wake per third of it
        assert len(runs) == math.ceil(x / (128 * 1024 / 3)) - 1
    else:                                             # growing: the thirds grow too, so fewer wakes
        assert 3 <= len(runs) < math.ceil(x / (16 * 1024 / 3))


def test_a_sender_still_waiting_for_the_cpu_is_not_woken_twice(tmp_path):
    """When the CPU is held longer than a third of the buffer takes to drain, the wake-ups that
    come while the sender waits for it are one: it runs once per hog burst at most."""
    x, runs, last_byte = _blocking_send_under_a_hog(tmp_path, 0, 0.2)
    thirds = math.ceil(x / (128 * 1024 / 3)) - 1
    assert 0 < len(runs) <= last_byte / 0.2 + 1 < thirds
