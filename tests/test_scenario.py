"""Scenario and profile loading: every kind of mistake gives one line naming the key and its line."""
import dataclasses
import json
import pickle
import sys
import types
from dataclasses import dataclass

import pytest

import models
from sim.config import Footprint, Hardware, knob
from sim.operations import Cost
from sim.profile import bundled_profiles, load_profile, profile_to_dict, write_profile
from sim.scenario import ScenarioError, format_error, load_scenario, scenario_to_dict


# Two made-up architectures, so these tests do not follow the real models' knobs as they change.
@dataclass(frozen=True)
class EventedKnobs:
    processes: int = knob(1, "processes", min=1, max=100_000)
    max_conns: int = knob(30_000, "connections", min=1, max=10_000_000)
    blocking_sockets: bool = knob(False, "blocking writes")
    event_mechanism: str = knob("poll", "readiness", choices=("poll", "select", "epoll"))


@dataclass(frozen=True)
class ThreadedKnobs:
    processes: int = knob(1, "processes", min=1, max=100_000)
    max_conns: int = knob(30_000, "connections", min=1, max=10_000_000)
    threads: int = knob(100, "threads per process", min=1, max=100_000)
    stack_kb: float = knob(16.0, "stack per thread", min=1, max=1e6)

    def __post_init__(self):
        if self.threads < self.processes:
            raise ValueError("need threads >= processes")


@pytest.fixture(autouse=True)
def fake_architectures(monkeypatch):
    for name, knobs in (("evented", EventedKnobs), ("threaded", ThreadedKnobs)):
        module = types.ModuleType(f"fake_{name}")
        module.Knobs = knobs
        monkeypatch.setitem(sys.modules, module.__name__, module)
        monkeypatch.setitem(models.ARCHITECTURES, name, module.__name__)


PROFILE = """\
[profile]
name = "test-box"
description = "a small made-up profile"

[hardware]
memory_mb = 4096
nic_gbps = 10

[footprint]
process_kb = 1024

[costs.sendfile]
fixed_us = 12.0
per_unit_us = 0.0009

[costs.accept]
fixed_us = 3.1

[provenance]
kernel = "6.1.0"
date = 2026-11-26
residuals = [0.1, -0.2]

[provenance.fit]
r2 = 0.98
"""

GOOD = """\
[scenario]
name = "four-cpu"
description = "two servers on four cores"
profile = "prof.toml"

[hardware]
cores = 4
disk_mb_s = 100            # an integer is fine for a float

[footprint]
connection_kb = 4

[workload]
directories = 10
zipf_alpha = 0.8
timeout_s = 10

[run]
rates = [100, 200.5]
duration_s = 5
seed = 7

[[server]]
label = "nb-1p"
architecture = "evented"
processes = 1
event_mechanism = "epoll"

[[server]]
label = "nb-4p"
architecture = "threaded"
processes = 4
max_conns = 30000
"""


def write(tmp_path, text, name="s.toml"):
    (tmp_path / "prof.toml").write_text(PROFILE)
    path = tmp_path / name
    path.write_text(text)
    return path


def edit(old, new):
    """GOOD with one piece replaced; the piece must be there."""
    assert old in GOOD
    return GOOD.replace(old, new, 1)


def marked_line(text):
    """The line carrying the `#!` marker (1-based), or None."""
    for i, line in enumerate(text.splitlines(), start=1):
        if "#!" in line:
            return i
    return None


# (id, scenario text with `#!` on the line the error must name, key, a phrase of the message)
BAD = [
    ("unknown-section", edit("[footprint]", "[hardwre] #!"), "hardwre", "did you mean 'hardware'"),
    ("unknown-key", edit("cores = 4", "corse = 4 #!"), "hardware.corse", "did you mean 'cores'"),
    ("unknown-subtable", edit("[footprint]", "[hardware.extra] #!\nx = 1\n[footprint]"), "hardware.extra",
     "unknown key"),
    ("unknown-knob", edit("processes = 4", "procesess = 4 #!"), "server[1].procesess", "did you mean 'processes'"),
    ("bool-for-int", edit("cores = 4", "cores = true #!"), "hardware.cores", "not an integer"),
    ("float-for-int", edit("cores = 4", "cores = 4.0 #!"), "hardware.cores", "not an integer"),
    ("string-for-float", edit("disk_mb_s = 100", 'disk_mb_s = "100" #!'), "hardware.disk_mb_s", "not a number"),
    ("nan-float", edit("disk_mb_s = 100", "disk_mb_s = nan #!"), "hardware.disk_mb_s", "finite"),
    ("table-for-int", edit("cores = 4", "cores = {n = 4} #!"), "hardware.cores", "a table"),
    ("below-min", edit("cores = 4", "cores = 0 #!"), "hardware.cores", "below the minimum 1"),
    ("quoted-key", edit("cores = 4", '"cores" = 0   #! a comment'), "hardware.cores", "below the minimum 1"),
    ("inline-table", "hardware = {cores = 0} #!\n" + edit(
        "[hardware]\ncores = 4\ndisk_mb_s = 100            # an integer is fine for a float\n", ""),
     "hardware.cores", "below the minimum 1"),
    ("above-max", edit("cores = 4", "cores = 5000 #!"), "hardware.cores", "above the maximum 1024"),
    # the second [[server]]'s `processes`, not the first's
    ("knob-out-of-range", edit("processes = 4", "processes = 0 #!"), "server[1].processes", "below the minimum"),
    ("not-a-choice", edit('"epoll"', '"kqueue" #!'), "server[0].event_mechanism", "not a choice"),
    ("unknown-architecture", edit('"threaded"', '"threaed" #!'), "server[1].architecture", "did you mean 'threaded'"),
    ("knobs-refused", edit("max_conns = 30000", "threads = 2 #!"), "server[1].threads", "need threads >= processes"),
    ("missing-architecture", edit('label = "nb-4p"\narchitecture = "threaded"', 'label = "nb-4p"').replace(
        "[[server]]\nlabel = \"nb-4p\"", "[[server]] #!\nlabel = \"nb-4p\""), "server[1].architecture", "missing"),
    ("missing-label", edit('[[server]]\nlabel = "nb-1p"', "[[server]] #!"), "server[0].label", "missing"),
    ("duplicate-label", edit('label = "nb-4p"', 'label = "nb-1p" #!'), "server[1].label", "also the label of server[0]"),
    ("unsafe-label", edit('label = "nb-4p"', 'label = "nb 4p/x" #!'), "server[1].label", "not a plain label"),
    ("no-servers", GOOD[:GOOD.index("[[server]]")], "server", "no servers"),
    ("server-not-array", GOOD[:GOOD.index("[[server]]")] + '[server] #!\nlabel = "x"\n', "server",
     "array of tables"),
    ("rate-negative", edit("rates = [100, 200.5]", "rates = [100, -5, 200] #!"), "run.rates[1]", "not above 0"),
    ("rate-string", edit("rates = [100, 200.5]", 'rates = [100, 200, "300"] #!'), "run.rates[2]", "not a number"),
    ("rates-empty", edit("rates = [100, 200.5]", "rates = [] #!"), "run.rates", "empty"),
    ("rates-duplicate", edit("rates = [100, 200.5]", "rates = [100, 200, 100.0] #!"), "run.rates[2]", "twice"),
    ("rates-multiline", edit("rates = [100, 200.5]", "rates = [ #!\n  100,\n  true,\n]"), "run.rates[1]",
     "not a number"),
    ("replications", edit("seed = 7", "seed = 7\nreplications = 9 #!"), "run.replications", "max_replications"),
    ("one-sample", edit("seed = 7", "seed = 7\nreplications = 1 #!"), "run.replications", "at least two samples"),
    ("one-batch", edit("seed = 7", "seed = 7\nreplications = 1\nbatches = 1 #!"), "run.batches",
     "at least two samples"),
    ("seed-negative", edit("seed = 7", "seed = -1 #!"), "run.seed", "below the minimum 0"),
    ("workload-min-max", edit("timeout_s = 10", "timeout_s = 10\nsession_requests_min = 20 #!"),
     "workload.session_requests_min", "above session_requests_max"),
    ("think-zero", edit("timeout_s = 10", "timeout_s = 10\nthink_within_burst_s = 0 #!"),
     "workload.think_within_burst_s", "not above 0"),
    ("timeout-zero", edit("timeout_s = 10", "timeout_s = 0 #!"), "workload.timeout_s", "not above 0"),
    ("directories", edit("directories = 10", "directories = 200000 #!"), "workload.directories", "above the maximum"),
    ("think-distribution", edit("timeout_s = 10", 'timeout_s = 10\nthink_distribution = "normal" #!'),
     "workload.think_distribution", "not a choice"),
    ("kernel-above-memory", edit("cores = 4", "cores = 4\nkernel_mb = 5000 #!"), "hardware.kernel_mb",
     "page cache"),
    ("footprint-negative", edit("connection_kb = 4", "connection_kb = -4 #!"), "footprint.connection_kb", "below"),
    ("unsafe-name", edit('name = "four-cpu"', 'name = "../four" #!'), "scenario.name", "safe folder name"),
    ("missing-profile-file", edit('profile = "prof.toml"', 'profile = "nowhere/p.toml" #!'), "scenario.profile",
     "no file"),
    ("missing-bundled-profile", edit('profile = "prof.toml"', 'profile = "no-such-profile" #!'),
     "scenario.profile", "no bundled profile"),
    ("no-profile-key", edit('[scenario]\nname = "four-cpu"', '[scenario] #!\nname = "four-cpu"').replace(
        'profile = "prof.toml"\n', ""), "scenario.profile", "missing"),
    ("syntax-error", edit("cores = 4", "cores = = 4 #!"), "(syntax)", "TOML syntax error"),
    ("duplicate-key", edit("cores = 4", "cores = 4\ncores = 5 #!"), "(syntax)", "TOML syntax error"),
    # a multi-line string that looks like a [hardware] table must not fool the line scanner
    ("multiline-string", edit('description = "two servers on four cores"',
                              'description = """\n[hardware]\ncores = 1\n"""').replace("cores = 4", "cores = 0 #!"),
     "hardware.cores", "below the minimum"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_scenario(tmp_path, case):
    _, text, key, phrase = case
    path = write(tmp_path, text)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    e = info.value
    message = str(e)
    assert "\n" not in message and format_error(e) == message
    assert e.key == key, message
    assert e.line == marked_line(text), message
    assert phrase in message, message
    where = f"{path}:{e.line}: " if e.line else f"{path}: "
    assert message.startswith(where + key + ": "), message
    assert "; allowed: " in message


def test_costs_the_model_charges_must_be_in_the_profile(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules["fake_threaded"], "OPERATIONS", ("accept", "poll", "sendfile", "close"),
                        raising=False)
    path = write(tmp_path, GOOD)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    e = info.value
    assert e.key == "server[1].architecture" and e.line == GOOD.splitlines().index('architecture = "threaded"') + 1
    assert "threaded charges poll, close, which profile 'test-box'" in str(e)
    monkeypatch.setattr(sys.modules["fake_threaded"], "OPERATIONS", ("accept", "sendfile"))
    assert load_scenario(path).servers[1].architecture == "threaded"


def test_unreadable_and_non_utf8(tmp_path):
    with pytest.raises(ScenarioError) as info:
        load_scenario(tmp_path / "missing.toml")
    assert info.value.key == "(file)" and info.value.line is None and "cannot read" in str(info.value)
    with pytest.raises(ScenarioError) as info:
        load_scenario(tmp_path)  # a directory
    assert info.value.key == "(file)"
    path = write(tmp_path, GOOD)
    path.write_bytes(GOOD.encode() + b"# caf\xe9\n")
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert info.value.key == "(file)" and info.value.line == GOOD.count("\n") + 1


def test_bad_profile_is_located_in_the_profile(tmp_path):
    path = write(tmp_path, GOOD)
    (tmp_path / "prof.toml").write_text(PROFILE.replace("[costs.accept]", "[costs.acept]"))
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    e = info.value
    assert e.path == str(tmp_path / "prof.toml") and e.key == "costs.acept"
    assert e.line == PROFILE.splitlines().index("[costs.accept]") + 1
    assert "did you mean 'accept'" in str(e) and "\n" not in str(e)


def test_good_scenario(tmp_path):
    path = write(tmp_path, GOOD)
    s = load_scenario(path)
    assert s.name == "four-cpu" and s.description == "two servers on four cores" and s.source == str(path)
    # hardware: the profile's defaults, then the scenario's; untouched fields keep the dataclass default
    assert s.hardware.cores == 4 and s.hardware.memory_mb == 4096 and s.hardware.nic_gbps == 10
    assert s.hardware.disk_mb_s == 100.0 and isinstance(s.hardware.disk_mb_s, float)
    assert s.hardware.kernel_mb == Hardware().kernel_mb
    assert s.profile.footprint == dataclasses.replace(Footprint(), process_kb=1024, connection_kb=4)
    assert s.profile.cost("sendfile") == Cost(12e-6, 0.0009e-6) and s.profile.cost("accept") == Cost(3.1e-6, 0)
    with pytest.raises(KeyError, match="poll"):
        s.profile.cost("poll")
    assert s.workload.fileset.directories == 10 and s.workload.fileset.zipf_alpha == 0.8
    assert s.workload.timeout_s == 10.0 and s.workload.think_between_bursts_s == 3.0
    assert s.run.rates == (100.0, 200.5) and s.run.duration_s == 5.0 and s.run.seed == 7
    assert [x.label for x in s.servers] == ["nb-1p", "nb-4p"]
    assert [x.architecture for x in s.servers] == ["evented", "threaded"]
    assert s.servers[1].knobs == ThreadedKnobs(processes=4)
    assert s.servers[0].knobs.event_mechanism == "epoll" and s.servers[1].knobs.processes == 4

    d = scenario_to_dict(s)
    assert json.loads(json.dumps(d)) == d
    assert d["hardware"]["cores"] == 4 and d["run"]["rates"] == [100.0, 200.5]
    assert d["workload"]["directories"] == 10 and d["footprint"]["connection_kb"] == 4
    assert d["servers"][1] == {"label": "nb-4p", "architecture": "threaded",
                               "knobs": dataclasses.asdict(s.servers[1].knobs)}
    assert d["profile"]["costs"]["sendfile"] == {"fixed_us": 12.0, "per_unit_us": 0.0009}
    assert d["profile"]["provenance"]["date"] == "2026-11-26"
    assert scenario_to_dict(load_scenario(path)) == d  # same input, same output

    # the name defaults to the file stem
    path = write(tmp_path, GOOD.replace('name = "four-cpu"\n', ""), name="my-box.toml")
    assert load_scenario(path).name == "my-box"


OVERRIDES_GOOD = [
    ({"hardware.cores": "8"}, lambda s: s.hardware.cores == 8),
    ({"hardware.nic_gbps": "2.5"}, lambda s: s.hardware.nic_gbps == 2.5),
    ({"run.rates": "100,200,300"}, lambda s: s.run.rates == (100.0, 200.0, 300.0)),
    ({"run.rates": [50, 60]}, lambda s: s.run.rates == (50.0, 60.0)),
    ({"server.nb-4p.processes": "2"}, lambda s: s.servers[1].knobs.processes == 2),
    ({"server[0].event_mechanism": "select"}, lambda s: s.servers[0].knobs.event_mechanism == "select"),
    ({"server[0].blocking_sockets": "true"}, lambda s: s.servers[0].knobs.blocking_sockets is True),
    ({"server[1].architecture": "evented"}, lambda s: s.servers[1].knobs == EventedKnobs(processes=4)),
    ({"server[1].stack_kb": "8"}, lambda s: s.servers[1].knobs.stack_kb == 8.0),
    ({"workload.think_distribution": "fixed"}, lambda s: s.workload.think_distribution == "fixed"),
    ({"workload.directories": 20}, lambda s: s.workload.fileset.directories == 20),
    ({"footprint.process_kb": "0"}, lambda s: s.profile.footprint.process_kb == 0.0),
    ({"scenario.name": "other"}, lambda s: s.name == "other"),
    ({"run.seed": "11"}, lambda s: s.run.seed == 11),
]


@pytest.mark.parametrize("overrides,ok", OVERRIDES_GOOD, ids=[next(iter(o)) for o, _ in OVERRIDES_GOOD])
def test_override(tmp_path, overrides, ok):
    assert ok(load_scenario(write(tmp_path, GOOD), overrides=overrides))


def test_seed_argument(tmp_path):
    path = write(tmp_path, GOOD)
    assert load_scenario(path, seed=99).run.seed == 99
    assert load_scenario(path, seed=99, overrides={"run.seed": "5"}).run.seed == 99
    with pytest.raises(ScenarioError, match="override run.seed: -1 is below"):
        load_scenario(path, seed=-1)


OVERRIDES_BAD = [
    ({"hardware.cores": "abc"}, "override hardware.cores", "cannot read 'abc' as an integer"),
    ({"hardware.cores": "0"}, "override hardware.cores", "below the minimum"),
    ({"hardware.cores": True}, "override hardware.cores", "not an integer"),
    ({"hardware.corse": "4"}, "override hardware.corse", "did you mean 'cores'"),
    ({"hardwre.cores": "4"}, "override hardwre.cores", "did you mean 'hardware'"),
    ({"cores": "4"}, "override cores", "not a key"),
    ({"run.rates": "100,x"}, "override run.rates (run.rates[1])", "cannot read 'x'"),
    ({"run.rates": ""}, "override run.rates", "empty"),
    ({"server.nb-9p.processes": "2"}, "override server.nb-9p.processes", "no server is labelled 'nb-9p'"),
    ({"server[5].processes": "2"}, "override server[5].processes", "no server[5]"),
    ({"server.nb-4p.processes": "2.5"}, "override server.nb-4p.processes (server[1].processes)",
     "cannot read '2.5' as an integer"),
    ({"server[0].blocking_sockets": "maybe"}, "override server[0].blocking_sockets", "true or false"),
    ({"server[0].threads": "4"}, "override server[0].threads", "unknown knob"),
    ({"server[1].architecture": "apache"}, "override server[1].architecture", "not a choice"),
    ({"server[1].threads": "2"}, "override server[1].threads", "need threads >= processes"),
    ({"run.rates": "100,100"}, "override run.rates (run.rates[1])", "twice"),
]


@pytest.mark.parametrize("overrides,key,phrase", OVERRIDES_BAD, ids=[next(iter(o)) for o, _, _ in OVERRIDES_BAD])
def test_bad_override(tmp_path, overrides, key, phrase):
    path = write(tmp_path, GOOD)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path, overrides=overrides)
    message = str(info.value)
    assert "\n" not in message and info.value.line is None
    assert message.startswith(f"{path}: {key}: "), message
    assert phrase in message, message


def test_error_survives_pickling():
    e = ScenarioError("a.toml", 3, "hardware.cores", "0 is below the minimum 1", "an integer")
    assert str(pickle.loads(pickle.dumps(e))) == str(e) == "a.toml:3: hardware.cores: 0 is below the minimum 1; " \
                                                           "allowed: an integer"
    assert format_error(ValueError("two\nlines")) == "ValueError: two lines"


def test_profile_round_trip(tmp_path):
    (tmp_path / "prof.toml").write_text(PROFILE)
    p = load_profile(tmp_path / "prof.toml")
    assert p.name == "test-box" and set(p.costs) == {"sendfile", "accept"}
    assert p.hardware.memory_mb == 4096 and p.footprint.process_kb == 1024
    # awkward values must come back bit for bit
    odd = dataclasses.replace(p, costs={**p.costs, "poll": Cost(1 / 3 * 1e-6, 7.123456789012345e-9),
                                        "close": Cost(2.5e-300, 0.0)})
    out = write_profile(odd, tmp_path / "out.toml", provenance={"fit": {"r2": 0.5}, "note": 'say "hi"\n\x7f'})
    q = load_profile(out)
    assert q.costs == odd.costs and q.hardware == odd.hardware and q.footprint == odd.footprint
    assert (q.name, q.description) == (odd.name, odd.description)
    assert profile_to_dict(q)["provenance"] == {"fit": {"r2": 0.5}, "note": 'say "hi"\n\x7f'}
    assert sorted(f.name for f in tmp_path.iterdir()) == ["out.toml", "prof.toml"]  # no temporary left
    # without a provenance argument, the profile's own is kept
    r = load_profile(write_profile(p, tmp_path / "again.toml"))
    assert profile_to_dict(r)["provenance"] == profile_to_dict(p)["provenance"]
    assert profile_to_dict(r)["provenance"]["residuals"] == [0.1, -0.2]
    # a bare name is looked up among the bundled profiles only
    with pytest.raises(ScenarioError, match="no bundled profile"):
        load_profile("out", base_dir=tmp_path)
    # a failed write leaves nothing behind
    with pytest.raises(OSError):
        write_profile(p, tmp_path / "no-dir" / "x.toml")
    assert sorted(f.name for f in tmp_path.iterdir()) == ["again.toml", "out.toml", "prof.toml"]


@pytest.mark.parametrize("old,new,key,phrase", [
    ("[costs.sendfile]", "[costs.sendfil]", "costs.sendfil", "unknown operation 'sendfil'"),
    ("fixed_us = 12.0", "fixed_us = -1.0", "costs.sendfile.fixed_us", "below the minimum 0"),
    ("fixed_us = 12.0", "fixed = 12.0", "costs.sendfile.fixed", "did you mean 'fixed_us'"),
    ("memory_mb = 4096", "memory_mb = 0", "hardware.memory_mb", "below the minimum"),
    ("[provenance]", "[provenanse]", "provenanse", "unknown section"),
])
def test_bad_profile(tmp_path, old, new, key, phrase):
    text = PROFILE.replace(old, new, 1)
    (tmp_path / "p.toml").write_text(text)
    with pytest.raises(ScenarioError) as info:
        load_profile(tmp_path / "p.toml")
    e = info.value
    assert e.key == key and e.line == text.splitlines().index(new) + 1, str(e)
    assert phrase in str(e) and "\n" not in str(e)


@pytest.mark.skipif("study-xeon" not in bundled_profiles(), reason="bundled profile not written yet")
def test_bundled_study_profile_loads():
    p = load_profile("study-xeon")
    assert p.costs and all(c.fixed >= 0 and c.per_unit >= 0 for c in p.costs.values())


def test_every_registered_architecture_loads_with_each_knob(tmp_path):
    """Generic over the registry: each knob of each architecture can be written and reads back."""
    from sim.profile import _toml_value

    from sim.operations import OPERATIONS

    (tmp_path / "full.toml").write_text("".join(f"[costs.{op}]\nfixed_us = 1.0\n" for op in OPERATIONS))
    text = GOOD[:GOOD.index("[[server]]")].replace('"prof.toml"', '"full.toml"')
    expected = {}
    for i, architecture in enumerate(sorted(models.ARCHITECTURES)):
        knobs = models.knobs_class(architecture)()
        text += f'\n[[server]]\nlabel = "s{i}"\narchitecture = "{architecture}"\n'
        text += "".join(f"{f.name} = {_toml_value(getattr(knobs, f.name))}\n" for f in dataclasses.fields(knobs))
        expected[f"s{i}"] = knobs
    s = load_scenario(write(tmp_path, text))
    assert {x.label: x.knobs for x in s.servers} == expected
