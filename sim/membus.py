"""A memory bus shared by all cores: why adding cores stops paying (PAPER.md section 9, Genevès).

Kernel network code is memory-bound: every CPU-second of server work moves
`membus_gb_per_cpu_s` GB over the bus (cache misses on socket buffers and
descriptors, the NIC's DMA of the reply, copies), so an operation moves bytes in
proportion to its CPU cost. The bus carries `membus_gb_s`, one transfer after
another: a burst of s CPU-seconds books s x intensity / bandwidth seconds of bus
time behind the bookings already made, and ends when both its computing and its
bytes are done. While the cores together ask for less than the bandwidth the
bookings never queue and nothing changes; past it they queue, bursts stretch,
and a saturated machine serves at most bandwidth / (bytes per request) requests
per second whatever its core count: the architectures converge, as Genevès
reports at 8 cores. The bound is exact (the bus never moves more than its
bandwidth) and it costs no SimPy event.

With `membus_gb_s = 0` (the default) nothing here is installed and the CPU is
the plain one, so the numbers are the same as without this module.
"""
from __future__ import annotations

from .hardware import CPU


class BusCPU(CPU):
    """Cores that share one memory bus: a burst stretches while the bus is oversubscribed."""

    __slots__ = ("bus_s_per_cpu_s", "bytes_per_cpu_s", "bus_bytes", "bus_free_at")

    def __init__(self, env, cores: int, switch_cost: float, bus_gb_s: float, gb_per_cpu_s: float):
        super().__init__(env, cores, switch_cost)
        self.bytes_per_cpu_s = gb_per_cpu_s * 1e9
        self.bus_s_per_cpu_s = gb_per_cpu_s / bus_gb_s  # bus seconds booked per CPU-second
        self.bus_bytes = 0.0    # bytes the bursts started so far move over the bus
        self.bus_free_at = 0.0  # when the bus has moved every byte booked so far

    def _start(self, core, entity, seconds, done):
        now = self.env.now
        self.bus_bytes += seconds * self.bytes_per_cpu_s
        free = self.bus_free_at
        self.bus_free_at = (free if free > now else now) + seconds * self.bus_s_per_cpu_s
        if self.bus_free_at > now + seconds:
            seconds = self.bus_free_at - now  # the core stalls until its bytes have moved
        return CPU._start(self, core, entity, seconds, done)


def enabled(hw) -> bool:
    return getattr(hw, "membus_gb_s", 0.0) > 0.0


def attach(server, hw) -> None:
    """Give `server` a bus-limited CPU when the scenario has a memory bus; else leave it alone.

    Call before the architecture starts its entities.
    """
    if not enabled(hw):
        return
    old = server.cpu
    server.cpu = BusCPU(server.env, old.cores, old.switch_cost, hw.membus_gb_s, hw.membus_gb_per_cpu_s)


def counters(server) -> dict[str, float]:
    cpu = server.cpu
    return {"membus_bytes": cpu.bus_bytes} if isinstance(cpu, BusCPU) else {}


def metrics(hw, delta: dict, duration_s: float) -> dict[str, float]:
    """`membus_util`: the bus's busy fraction over the window (none when the bus is off)."""
    if not enabled(hw) or "membus_bytes" not in delta:
        return {}
    return {"membus_util": min(1.0, delta["membus_bytes"] / (hw.membus_gb_s * 1e9 * duration_s))}


def bound(hw, cpu_s_per_request: float) -> dict[str, float]:
    """The analytic twin's bus bound: requests/s at which the bus saturates (none when off)."""
    if not enabled(hw):
        return {}
    per_request = cpu_s_per_request * hw.membus_gb_per_cpu_s * 1e9
    return {"membus": float("inf") if per_request <= 0 else hw.membus_gb_s * 1e9 / per_request}
