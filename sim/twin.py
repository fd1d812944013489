"""The analytic twin of a run: each resource's demand per request and the rate that saturates it.

The CPU demand is the architecture's own (each model says what one request
costs, a lower bound that leaves out what depends on batching, such as a poll
call's share); the NIC demand is the mean reply over the links' bandwidth; the
disk demand is the page cache's miss ratio (Che's approximation for the LRU, its
two-list counterpart for Linux's lists) times the mean service time of a missed
file. The saturation rates are upper bounds on the reply rate.
"""
from __future__ import annotations

import numpy as np

import models

from .analytic import Demand, che_lru_hit_ratio, saturation_rates, two_list_hit_ratio
from .config import Scenario, ServerSpec
from .hardware import Disk


def request_shares(workload) -> np.ndarray:
    """Each file's share of the requests: its popularity, or with replayed sessions their own counts
    (a few hundred sessions can ask for bigger or smaller files than the popularity says)."""
    fs = workload.fileset
    if not workload.session_templates:
        return fs.probabilities
    counts = np.bincount([f for files, _ in workload.templates() for f in files], minlength=len(fs.sizes))
    return counts / counts.sum()


def reply_stats(scenario: Scenario) -> tuple[float, float]:
    """Mean reply bytes and mean number of socket-buffer pieces per reply."""
    fs = scenario.workload.fileset
    sizes = fs.sizes + scenario.workload.header_bytes
    sndbuf = scenario.hardware.sndbuf_kb * 1024
    pieces = np.ceil(sizes / sndbuf)
    share = request_shares(scenario.workload)
    return float(share @ sizes), float(share @ pieces)


def miss_probabilities(fileset, cache_bytes: float, policy: str = "lru") -> np.ndarray | None:
    """Each file's share of the requests that miss the page cache (None if nothing misses): Che's
    approximation for the LRU, the two-list approximation (sim/analytic.py) for Linux's lists."""
    p, sizes = fileset.probabilities, fileset.sizes.astype(float)
    if policy == "two-list":
        hit = two_list_hit_ratio(p, sizes, cache_bytes)
        return hit.miss if hit.hit_ratio < 1 else None
    hit = che_lru_hit_ratio(p, sizes, cache_bytes)
    return p * np.exp(-p * hit.char_time) if hit.hit_ratio < 1 else None


def demands(scenario: Scenario, spec: ServerSpec) -> list[Demand]:
    hw, wl, prof = scenario.hardware, scenario.workload, scenario.profile
    module = models.module_of(spec.architecture)
    mean_bytes, pieces = reply_stats(scenario)
    cpu_s, cpu_servers, footprint_kb = module.demand(prof, hw, wl, spec.knobs, mean_bytes, pieces)
    fs = wl.fileset
    cache_bytes = max(0.0, (hw.memory_mb - hw.kernel_mb) * 2**20 - footprint_kb * 1024)
    miss_p = miss_probabilities(fs, cache_bytes, hw.page_cache)
    disk_s = 0.0
    if miss_p is not None and miss_p.sum() > 0 and hw.disk_throttle_iops > 0:
        # a rate limit on reads and on bytes: whichever a request's expected misses use more of
        windows = np.maximum(1, np.ceil(fs.sizes / (hw.disk_readahead_kb * 1024)))
        disk_s = max(float(miss_p @ windows) / hw.disk_throttle_iops,
                     float(miss_p @ fs.sizes) / (hw.disk_throttle_mb_s * 1e6))
    elif miss_p is not None and miss_p.sum() > 0:
        disk = Disk(None, 1, hw.disk_seek_ms / 1e3, hw.disk_mb_s * 1e6, hw.disk_readahead_kb * 1024,
                    indirect=hw.file_system == "ext3")     # the simulated disk's own service rule
        sizes, which = np.unique(fs.sizes, return_inverse=True)    # a few dozen distinct sizes
        service = np.array([disk.service_time(b) for b in sizes.tolist()])[which]
        disk_s = float(miss_p @ service)
    return [
        Demand("cpu", cpu_s / hw.cpu_quota, cpu_servers),   # under a CFS quota a core gives that share
        Demand("nic", mean_bytes / (hw.nic_gbps * 1e9 / 8), hw.nics),
        Demand("disk", disk_s, hw.disks),
    ]


def bounds(scenario: Scenario, spec: ServerSpec) -> dict[str, float]:
    """Requests/s at which each resource saturates."""
    return saturation_rates(demands(scenario, spec))
