"""Control groups (v1) made and removed by a run: a memory limit, and a CPU share of one core.

Memory (the disk-bound case): a child of this process's own memory cgroup with
`memory.limit_in_bytes` below the file set, so the server's page cache is
bounded and its misses go to the disk; `drop_caches` first, so the run starts cold.

CPU (the CPU-bound cases): a child of this process's own cpu cgroup with a CFS
quota, so the server gets a fixed fraction of its core in slices of a few
milliseconds. A Python server on a whole core answers faster than one
httperf on the other core can ask; on a fraction f of the core it saturates
within the load generator's reach, and to the simulator it is a core f times
as fast (every cost divided by f: `scaled_profile`). CPU time accounting is not
affected by the quota, so the costs measured under it are the core's own.

Disk (the disk-bound case): a blkio child group throttling reads from the file
set's disk to a number of requests and bytes per second.

Every group is removed in `close()` (the server must have exited first).
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import os
import time

from sim.config import Profile
from sim.operations import Cost

ROOT = "/sys/fs/cgroup"


class CgroupError(Exception):
    pass


def own_cgroup(controller: str) -> str:
    """This process's cgroup directory in a v1 hierarchy, e.g. /sys/fs/cgroup/memory/..."""
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, ctrls, path = line.rstrip("\n").split(":", 2)
                if controller in ctrls.split(","):
                    return os.path.join(ROOT, controller, path.lstrip("/"))
    except OSError as e:
        raise CgroupError(f"cannot read /proc/self/cgroup: {e}") from None
    raise CgroupError(f"no cgroup v1 {controller} controller for this process")


_serial = itertools.count()


class Group:
    """A child cgroup of this process's own, created now and removed by close()."""

    def __init__(self, controller: str, name: str, settings: dict[str, str]):
        parent = own_cgroup(controller)
        if not os.path.isdir(parent):
            raise CgroupError(f"{parent} is not mounted here")
        # several groups of one kind may be up at once (a host-level round between a case's sweeps)
        self.path = os.path.join(parent, f"{name}-{os.getpid()}-{next(_serial)}")
        try:
            os.mkdir(self.path)
        except OSError as e:
            raise CgroupError(f"cannot create {self.path}: {e.strerror}") from None
        try:
            for key, value in settings.items():
                with open(os.path.join(self.path, key), "w") as f:
                    f.write(str(value))
        except OSError as e:
            self.close()
            raise CgroupError(f"cannot set {key} = {value} in {self.path}: {e.strerror}") from None

    @property
    def procs(self) -> str:
        return os.path.join(self.path, "cgroup.procs")

    def read(self, key: str) -> str:
        with open(os.path.join(self.path, key)) as f:
            return f.read().strip()

    def close(self) -> None:
        """Remove the group (retried briefly: its last process may still be exiting)."""
        if not self.path or not os.path.isdir(self.path):
            return
        for _ in range(40):
            try:
                os.rmdir(self.path)
                return
            except OSError:
                time.sleep(0.25)
        raise CgroupError(f"could not remove {self.path}: still in use")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def memory_limit(limit_mb: float) -> Group:
    """A memory cgroup holding at most `limit_mb` (page cache included, no swap here)."""
    return Group("memory", "websim-disk", {"memory.limit_in_bytes": str(int(limit_mb * 2 ** 20))})


# the kernel's smallest CFS quota: the period is the shortest that gives the fraction with it, so the
# server runs in slices as short as allowed, closest to a core that is uniformly slower (a long period
# lets requests pile up while throttled and be served in big, cheap batches)
MIN_QUOTA_US = 1000


def cpu_share(fraction: float, period_us: int | None = None) -> Group:
    """A cpu cgroup allowed `fraction` of one core per `period_us` (default: the shortest possible)."""
    if not 0.01 <= fraction <= 1.0:
        raise CgroupError(f"CPU fraction must be in 0.01..1, got {fraction}")
    if period_us is None:
        period_us = max(MIN_QUOTA_US, int(round(MIN_QUOTA_US / fraction)))
    return Group("cpu", "websim-cpu", {"cpu.cfs_period_us": str(period_us),
                                       "cpu.cfs_quota_us": str(int(round(fraction * period_us)))})


def device_of(path: str) -> str:
    """major:minor of the block device holding `path` (what blkio throttles name)."""
    st = os.stat(path)
    return f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"


def memory_charge(group: Group) -> dict[str, int]:
    """The group's own charge in bytes: `usage` (memory.usage_in_bytes) and memory.stat's `cache`
    and `rss`. A file page is charged to the group that first touched it, so the shared libraries
    a server maps, already resident for other processes, are not in here (they are in VmRSS)."""
    stat = {}
    for line in group.read("memory.stat").splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            stat[key] = int(value)
    try:
        return {"usage": int(group.read("memory.usage_in_bytes")), "cache": stat["cache"], "rss": stat["rss"]}
    except (KeyError, ValueError) as e:
        raise CgroupError(f"no usable memory charge in {group.path}: {e}") from None


def read_ahead_kb(path: str) -> int:
    """The readahead limit (KB) of the block device holding `path` (a partition: its disk's)."""
    dev = os.path.realpath(f"/sys/dev/block/{device_of(path)}")
    for d in (dev, os.path.dirname(dev)):
        try:
            with open(os.path.join(d, "queue", "read_ahead_kb")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            continue
    raise CgroupError(f"no read_ahead_kb for the device of {path} ({dev})")


def sendfile_readahead_kb(device_kb: float, request_kb: float = 64.0) -> float:
    """One readahead window standing for the kernel's ramp on a file read from its start.

    mm/readahead.c: the first window for a `request_kb` read (a splice, as sendfile does, asks for
    64 KB) is 4x the request rounded up to a power of two if that is at most max/32, 2x if at most
    max/4, else max; the next is 4x the first below max/16, 2x up to max/2, else max. The model
    has one window per file, so it gets the geometric mean of these two (256 and 1,024 KB at
    8,192 KB: 512; the device's own value when that is 128 KB or less)."""
    size = 2 ** math.ceil(math.log2(max(1.0, request_kb)))
    first = size * 4 if size <= device_kb / 32 else size * 2 if size <= device_kb / 4 else device_kb
    nxt = first * 4 if first < device_kb / 16 else first * 2 if first <= device_kb / 2 else device_kb
    return float(min(device_kb, math.sqrt(first * min(nxt, device_kb))))


def disk_throttle(path: str, read_iops: int, read_mb_s: float) -> Group:
    """A blkio cgroup whose reads from the disk holding `path` are held to `read_iops` requests and
    `read_mb_s` MB/s: a real, slow disk (the machine's own disk is a host-cached virtual one)."""
    dev = device_of(path)
    return Group("blkio", "websim-blkio", {"blkio.throttle.read_iops_device": f"{dev} {int(read_iops)}",
                                           "blkio.throttle.read_bps_device": f"{dev} {int(read_mb_s * 1e6)}"})


def run_inside(group: Group, fn, *args, **kw):
    """Run fn in this process while it is a member of `group` (put back in its own cgroup after)."""
    controller = group.path[len(ROOT) + 1:].split("/", 1)[0]
    home = own_cgroup(controller)
    with open(group.procs, "w") as f:
        f.write(str(os.getpid()))
    try:
        return fn(*args, **kw)
    finally:
        with open(os.path.join(home, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))


def drop_caches() -> None:
    """Write back and drop the page cache (root only), so a disk-bound run starts cold."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError as e:
        raise CgroupError(f"cannot drop caches: {e.strerror}") from None


def scaled_profile(profile: Profile, fraction: float) -> Profile:
    """The profile of a core `fraction` times as fast: every CPU cost divided by it."""
    costs = {op: Cost(c.fixed / fraction, c.per_unit / fraction) for op, c in profile.costs.items()}
    return dataclasses.replace(profile, name=f"{profile.name}-cpu{fraction:g}", costs=costs,
                               description=f"{profile.description}; core at {fraction:g} of its speed")
