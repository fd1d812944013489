"""Plain dataclasses that describe one run: platform, costs, workload, servers and run control.

The platform (hardware and costs) is kept apart from the application (the
architecture and its knobs), as SimGrid does: any server runs on any profile.
`sim/scenario.py` builds these from TOML and validates them; the engine only
reads them.

A field's `metadata` gives what the scenario loader allows: "min"/"max" for
numbers, "choices" for strings, and "help" for the error message.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .operations import Cost
from .workload import Workload


def knob(default, help: str, *, min=None, max=None, choices=None):
    """A dataclass field with the range the scenario loader enforces."""
    meta = {"help": help}
    if min is not None:
        meta["min"] = min
    if max is not None:
        meta["max"] = max
    if choices is not None:
        meta["choices"] = tuple(choices)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Hardware:
    """The server machine and its operating system settings."""

    cores: int = knob(1, "CPU cores", min=1, max=1024)
    memory_mb: float = knob(2048.0, "main memory in MB", min=16, max=16_777_216)
    kernel_mb: float = knob(120.0, "memory held by the kernel and base system, not page cache", min=0, max=1_048_576)
    nics: int = knob(4, "network interfaces; connections are spread over them", min=1, max=256)
    nic_gbps: float = knob(1.0, "bandwidth of each NIC in Gbit/s", min=0.001, max=1000)
    nic_queue_flows: int = knob(0, "flows a NIC's queue holds at once, the rest waiting their turn (a shaped "
                                   "link's qdisc: its byte limit over two frames per TCP socket); 0: no limit",
                                min=0, max=10_000_000)
    disk_seek_ms: float = knob(5.5, "disk positioning time per read (seek + rotation) in ms", min=0, max=1000)
    disk_mb_s: float = knob(70.0, "disk transfer rate in MB/s", min=0.1, max=100_000)
    disk_readahead_kb: float = knob(128.0, "readahead window; each window of a missed file is one positioned read",
                                    min=4, max=1_048_576)
    disks: int = knob(1, "independent disks (the file set is striped over them)", min=1, max=256)
    sndbuf_kb: float = knob(64.0, "socket send buffer per connection in KB", min=1, max=65536)
    sndbuf_initial_kb: float = knob(0.0, "a new connection's send buffer in KB (tcp_wmem[1]); it grows with the "
                                    "congestion window as Linux 2.6's autotuning grows it, up to sndbuf_kb, and "
                                    "never shrinks; 0 = every connection has sndbuf_kb from the start",
                                    min=0, max=65536)
    listen_backlog: int = knob(1024, "listen queue length; a SYN beyond it is dropped", min=1, max=1_000_000)
    syn_retry_s: float = knob(3.0, "TCP SYN retransmission timeout (doubles on each retry)", min=0.01, max=120)
    membus_gb_s: float = knob(0.0, "memory bus bandwidth shared by all cores in GB/s; 0 = unlimited, the bus off "
                              "(sim/membus.py)", min=0, max=1e6)
    membus_gb_per_cpu_s: float = knob(0.5, "memory traffic of one CPU-second of server work in GB (cache misses, "
                                      "DMA, copies); used when membus_gb_s > 0", min=0, max=1e6)
    cpu_quota: float = knob(1.0, "CFS bandwidth limit: the share of the cores' time the server may use in each "
                            "period (cpu.cfs_quota_us over cpu.cfs_period_us x cores); it runs at full speed until "
                            "the period's share is spent, then waits for the next period; 1 = no limit",
                            min=0.001, max=1.0)
    cpu_period_ms: float = knob(100.0, "CFS period of `cpu_quota` in ms (the kernel's default is 100)",
                                min=0.1, max=1000)
    disk_throttle_iops: float = knob(0.0, "blkio read throttle: reads per second (0 = none; then the disk is a FIFO)",
                                     min=0, max=1e9)
    disk_throttle_mb_s: float = knob(0.0, "blkio read throttle: MB per second", min=0, max=1e9)
    disk_throttle_slice_ms: float = knob(100.0, "blkio throttle slice: each slice allows iops and bytes for its length",
                                         min=1, max=1000)
    page_cache: str = knob("lru", "page cache policy: 'lru', one LRU over whole files, or 'two-list', Linux's "
                           "inactive and active lists (a file touched twice is protected; sim/hardware.py)",
                           choices=("lru", "two-list"))
    file_system: str = knob("extents", "how the file system maps a file's blocks: 'ext3', through indirect blocks "
                            "that a missed file past 48 KB reads from disk too, or 'extents' (ext4, xfs, btrfs), "
                            "from the inode (sim/hardware.py, Disk)", choices=("ext3", "extents"))


@dataclass(frozen=True)
class Footprint:
    """Resident memory taken from the page cache by the servers (KB)."""

    process_kb: float = knob(2048.0, "per server process (code, heap, descriptors)", min=0, max=1e9)
    kernel_thread_kb: float = knob(64.0, "per kernel thread (stack, task struct)", min=0, max=1e9)
    user_thread_kb: float = knob(16.0, "per user-level thread stack", min=0, max=1e9)
    connection_kb: float = knob(8.0, "per open connection (socket buffers in use, state)", min=0, max=1e9)


@dataclass(frozen=True)
class Profile:
    """Costs of the operations on one machine, its default hardware and footprints."""

    name: str
    costs: dict[str, Cost]
    hardware: Hardware = field(default_factory=Hardware)
    footprint: Footprint = field(default_factory=Footprint)
    description: str = ""
    source: str = ""
    provenance: dict = field(default_factory=dict, compare=False)  # how it was made (calibration)

    def cost(self, op: str) -> Cost:
        try:
            return self.costs[op]
        except KeyError:
            raise KeyError(f"profile {self.name!r} has no cost for operation {op!r}") from None


@dataclass(frozen=True)
class RunControl:
    """Offered rates, duration, warm-up and the stopping rule of the replications."""

    rates: tuple[float, ...] = knob((1000.0,), "offered request rates (requests/s)")
    warmup_s: float = knob(10.0, "simulated seconds discarded before measuring", min=0, max=1e6)
    duration_s: float = knob(30.0, "simulated seconds measured per replication", min=0.001, max=1e7)
    replications: int = knob(3, "replications run at first (independent seeds)", min=1, max=1000)
    max_replications: int = knob(6, "replications at most while the CI is too wide", min=1, max=1000)
    batches: int = knob(0, "batch means: cut each replication's measured window into this many batches, each one "
                           "sample of the CI; 0: each replication is one sample", min=0, max=1000)
    ci_target_pct: float = knob(5.0, "stop when the 95% CI half-width of throughput is below this % of the mean",
                                min=0, max=100)
    seed: int = knob(1, "base seed; replication i uses seed + i", min=0, max=2**62)


@dataclass(frozen=True)
class ServerSpec:
    """One server configuration of the scenario: a label, an architecture and its knobs."""

    label: str
    architecture: str
    knobs: object  # the architecture's Knobs dataclass instance


@dataclass(frozen=True)
class Scenario:
    name: str
    profile: Profile
    hardware: Hardware
    workload: Workload
    run: RunControl
    servers: tuple[ServerSpec, ...]
    description: str = ""
    source: str = ""
