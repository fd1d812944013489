"""The page cache's two policies: Linux's inactive and active lists beside the whole-file LRU."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sim.analytic import che_lru_hit_ratio, two_list_hit_ratio, two_list_ratio
from sim.engine import build, simulate
from sim.fileset import FileSet
from sim.hardware import Disk as RealDisk, PageCache, TwoListCache, indirect_blocks
from sim.scenario import ScenarioError, load_scenario
from sim.twin import bounds

ROOT = Path(__file__).resolve().parents[1]
KB = 1024


class Read:
    """A disk read that the test completes at once (no SimPy clock needed)."""

    def __init__(self):
        self.callbacks = []


class Disk:
    def __init__(self):
        self.reads = 0

    def read(self, file, nbytes):
        self.reads += 1
        return Read()


def touch(cache, file, nbytes):
    """One request: a hit, or a miss whose read completes before the next request."""
    ev = cache.touch(file, nbytes)
    if ev is not None:
        for cb in ev.callbacks:
            cb(ev)
    return ev is None


def check_lists(c: TwoListCache):
    """The lists, the states and the byte counts agree."""
    assert set(c.inactive) | set(c.active) == set(c.lru) and not set(c.inactive) & set(c.active)
    assert all(c.lru[f] < 2 for f in c.inactive) and all(c.lru[f] >= 2 for f in c.active)
    assert c.used == pytest.approx(sum(c.inactive.values()) + sum(c.active.values()))
    assert c.active_bytes == pytest.approx(sum(c.active.values()))


def scan(cache, popular, large):
    """The popular small set used twice, then a stream of large files each read once, the popular
    set in use again between them; returns the popular set's hits over the last round."""
    for _ in range(2):
        for f in popular:
            touch(cache, f, 10 * KB)
    for i, f in enumerate(large):
        touch(cache, f, 200 * KB)
        if i % 10 == 9:              # the popular set is asked for now and then, a tenth as often
            touch(cache, popular[i // 10 % len(popular)], 10 * KB)
    hits0 = cache.hits
    for f in popular:
        touch(cache, f, 10 * KB)
    return cache.hits - hits0


def test_scan_resistance():
    """Large files read once do not evict a popular small set under two lists; under LRU they do."""
    popular, large = list(range(50)), list(range(1000, 1200))    # 0.5 MB used often, 40 MB once
    two = TwoListCache(None, Disk(), 2 * 2**20)
    lru = PageCache(None, Disk(), 2 * 2**20)
    assert scan(two, popular, large) == len(popular)
    assert scan(lru, popular, large) < len(popular) // 2
    check_lists(two)
    assert two.used <= two.capacity


def test_promotion_and_demotion():
    c = TwoListCache(None, Disk(), 100 * KB, refault=False)
    assert not touch(c, 1, 10 * KB)                 # a miss: inactive, referenced by the read
    assert c.lru[1] == 1 and 1 in c.inactive
    assert touch(c, 1, 10 * KB)                     # the second touch promotes
    assert c.lru[1] == 2 and 1 in c.active and c.promotions == 1
    assert touch(c, 1, 10 * KB) and c.lru[1] == 3   # active: marked, not moved
    for f in range(2, 7):                           # five more files, each touched twice: 60 KB active
        touch(c, f, 10 * KB)
        touch(c, f, 10 * KB)
    assert list(c.active) == [1, 2, 3, 4, 5, 6] and c.demotions == 0
    for f in range(10, 14):                         # 40 KB more, touched once: the cache is full
        touch(c, f, 10 * KB)
    assert c.used == 100 * KB and c.demotions == 0
    touch(c, 20, 10 * KB)                           # reclaim: active (60) > inactive (50): demote its tail
    check_lists(c)
    assert c.demotions == 1 and list(c.active) == [2, 3, 4, 5, 6]
    assert list(c.inactive) == [11, 12, 13, 20, 1]  # file 10, the inactive tail, was evicted
    assert c.lru[1] == 1                            # demoted to the inactive head, its mark kept
    assert c.lru[2] == 2
    assert c.active_bytes <= two_list_ratio(c.used) * (c.used - c.active_bytes)
    assert touch(c, 1, 10 * KB) and 1 in c.active   # one touch brings a marked file back
    assert touch(c, 11, 10 * KB) and 11 in c.active  # read in (the first touch), then asked for again


def test_refault_of_a_recent_eviction_goes_active():
    c = TwoListCache(None, Disk(), 100 * KB)
    for f in range(5):
        touch(c, f, 10 * KB)
        touch(c, f, 10 * KB)                        # 50 KB active
    for f in range(10, 16):                         # the sixth evicts file 10 from the inactive tail
        touch(c, f, 10 * KB)
    assert 10 not in c.lru and 10 in c.shadows
    touch(c, 10, 10 * KB)                           # read in again soon after: a refault
    assert c.refaults == 1 and 10 in c.active
    off = TwoListCache(None, Disk(), 100 * KB, refault=False)
    for f in [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 10, 11, 12, 13, 14, 15, 10]:
        touch(off, f, 10 * KB)
    assert off.refaults == 0 and 10 in off.inactive


@pytest.mark.parametrize("cls", [PageCache, TwoListCache])
def test_capacity_honoured_as_the_footprint_grows(cls):
    c = cls(None, Disk(), 4 * 2**20)
    rng = np.random.default_rng(3)
    for f in rng.integers(0, 400, 3000).tolist():
        touch(c, f, (f % 40 + 1) * 4 * KB)
        assert c.used <= c.capacity
    for grow in (1 * 2**20, 1.5 * 2**20, 1.4 * 2**20):
        c.footprint += grow
        c.shrink()
        assert c.used <= c.capacity
        if cls is TwoListCache:
            check_lists(c)
            # balanced before each eviction, as reclaim does: off by at most the file evicted last
            assert c.active_bytes <= (c.used - c.active_bytes) + 160 * KB
    c.footprint = c.memory + 1                      # no room at all: everything goes, nothing is kept
    c.shrink()
    assert c.used == 0 and not c.lru
    assert touch(c, 5, 4 * KB) is False and not c.lru


def test_deterministic():
    """The same requests give the same lists, in the same order, and the same counts."""
    fs = FileSet(10)
    files = fs.sample(np.random.default_rng(7), 20000).tolist()
    states = []
    for _ in range(2):
        c = TwoListCache(None, Disk(), 8 * 2**20)
        for f in files:
            touch(c, f, float(fs.sizes[f]))
        states.append((list(c.inactive.items()), list(c.active.items()), dict(c.lru), dict(c.shadows),
                       c.hits, c.misses, c.promotions, c.demotions, c.refaults))
    assert states[0] == states[1]


@pytest.mark.parametrize("refault", [False, True])
def test_approximation_matches_the_simulated_lists(refault):
    """The two-list approximation (the twin's and the warm start's) against the cache itself."""
    fs = FileSet(20)                                # 98 MB; a 16 MB cache misses some 10 % of requests
    cap = 16 * 2**20
    c = TwoListCache(None, Disk(), cap, refault=refault)
    files = fs.sample(np.random.default_rng(11), 250_000).tolist()
    sizes = fs.sizes.tolist()
    for i, f in enumerate(files):
        if i == 100_000:
            h0, m0 = c.hits, c.misses
        touch(c, f, sizes[f])
    sim_miss = (c.misses - m0) / 150_000
    est = two_list_hit_ratio(fs.probabilities, fs.sizes.astype(float), cap, refault=refault)
    lru = che_lru_hit_ratio(fs.probabilities, fs.sizes.astype(float), cap)
    assert 0.03 < sim_miss < 0.3
    assert abs((1 - est.hit_ratio) - sim_miss) < 0.1 * sim_miss, (est.hit_ratio, sim_miss)
    assert 1 - est.hit_ratio < 1 - lru.hit_ratio     # two lists miss less than the LRU here
    assert est.active @ fs.sizes == pytest.approx(cap / 2, rel=1e-3)   # the active list at its share
    assert np.all(est.active <= est.resident + 1e-12) and est.miss.sum() == pytest.approx(1 - est.hit_ratio)


def scenario(tmp_path, policy: str, file_system: str | None = None):
    fs_line = f'file_system = "{file_system}"' if file_system else ""
    (tmp_path / "s.toml").write_text(f"""
[scenario]
name = "pc"
profile = "study-xeon"
[hardware]
memory_mb = 36
kernel_mb = 20
page_cache = "{policy}"
{fs_line}
[workload]
directories = 40
[run]
rates = [600]
warmup_s = 1
duration_s = 3
[[server]]
label = "sped"
architecture = "sped"
[[server]]
label = "amped"
architecture = "amped"
""")
    return load_scenario(tmp_path / "s.toml")


def test_runs_every_model_and_repeats_itself(tmp_path):
    sc = scenario(tmp_path, "two-list")
    lru = dataclasses.replace(sc, hardware=dataclasses.replace(sc.hardware, page_cache="lru"))
    for spec in sc.servers:                          # amped asks `cache.lru` whether a file is resident
        a, b = simulate(sc, spec, 600.0, 0), simulate(sc, spec, 600.0, 0)
        assert a == b and a["reply_rps"] > 0
    # sped, 16 MB of cache for 195 MB: the LRU misses some 12 % of requests, two lists some 10 %
    hits = [simulate(s, sc.servers[0], 600.0, 0)["cache_hit_pct"] for s in (lru, sc)]
    assert hits[0] + 2.0 < hits[1] < 100.0, hits
    # the twin's disk bound follows the policy: fewer misses, a higher bound
    assert bounds(sc, sc.servers[0])["disk"] > bounds(lru, lru.servers[0])["disk"]


def test_bad_policy_is_a_scenario_error(tmp_path):
    with pytest.raises(ScenarioError) as info:
        scenario(tmp_path, "arc")
    msg = str(info.value)
    assert info.value.key == "hardware.page_cache" and "'arc' is not a choice" in msg and "'two-list'" in msg
    r = subprocess.run([sys.executable, "-m", "sim.cli", str(tmp_path / "s.toml"), "--out", str(tmp_path / "o")],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "Traceback" not in r.stderr and "hardware.page_cache" in r.stderr
    assert not (tmp_path / "o" / "results.csv").exists()


def test_ext3_reads_an_indirect_block_for_a_file_past_twelve_blocks():
    """A missed file beyond ext3's 12 direct blocks (48 KB) costs two more positionings per indirect
    block (its own read, then the blocks before it come round again); past 12 + 1,024 blocks a
    double-indirect block and a second indirect one."""
    seek, rate = 0.005, 50e6
    disk = RealDisk(None, 1, seek, rate, 128 * KB)
    flat = RealDisk(None, 1, seek, rate, 128 * KB, indirect=False)
    assert [indirect_blocks(b) for b in (1, 48 * KB, 48 * KB + 1, 4144 * KB, 4144 * KB + 1)] == [0, 0, 1, 1, 3]
    for nbytes in (1_000, 48 * KB):
        assert disk.service_time(nbytes) == flat.service_time(nbytes) == pytest.approx(seek + nbytes / rate)
    assert disk.service_time(51_200) == pytest.approx(3 * seek + (51_200 + 4 * KB) / rate)
    assert flat.service_time(51_200) == pytest.approx(seek + 51_200 / rate)
    assert disk.service_time(921_600) - flat.service_time(921_600) == pytest.approx(2 * seek + 4 * KB / rate)
    assert disk.service_time(5 * 2**20) - flat.service_time(5 * 2**20) == pytest.approx(6 * seek + 12 * KB / rate)


def test_the_simulated_server_reads_indirect_blocks_on_misses(tmp_path):
    """The study's server is ext3 (study-xeon's `file_system`): SPED's misses of files past 48 KB
    read indirect blocks, and each read then takes longer on average than with extents."""
    seen = []
    for fs in (None, "extents"):
        sc = scenario(tmp_path, "lru", fs)
        env, server, _clients, _ = build(sc, sc.servers[0], 600.0, 0)
        assert server.disk.indirect == (fs is None)
        env.run(until=3.0)
        seen.append((server.disk.busy / max(1, server.disk.reads), server.disk.meta_reads))
    assert seen[0][1] > 0 and seen[1][1] == 0, seen
    assert seen[0][0] > seen[1][0], seen
