"""A memory bus shared by all cores: why adding cores stops paying (PAPER.md section 9, Genevès).

Kernel network code is memory-bound: every CPU-second of server work moves
`membus_gb_per_cpu_s` GB over the bus (cache misses on socket buffers and
descriptors, the NIC's DMA of the reply, copies), so an operation moves bytes in
proportion to its CPU cost. The bus carries `membus_gb_s`, shared by the bursts
that move bytes at the same time. A burst of s CPU-seconds needs b = s x
intensity / bandwidth seconds of the whole bus; sharing it fairly with the other
busy cores, its bytes are through after b plus the others' outstanding bus work,
at most b per other busy core (processor sharing). The burst ends when both its
computing and its bytes are done. While the cores together ask for less than the
bandwidth there is no outstanding work and nothing changes; past it every burst
stretches by k x intensity / bandwidth with k cores busy, and a saturated
machine serves bandwidth / (bytes per request) requests per second whatever its
core count: the architectures converge, as Genevès reports at 8 cores. The
outstanding work is kept as one number (when the bus will have moved every byte
booked so far), so the bus costs no SimPy event.

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
        own = seconds * self.bus_s_per_cpu_s
        free = self.bus_free_at
        others = free - now if free > now else 0.0
        self.bus_free_at = now + others + own
        sharing = self.cores - len(self.free) - 1  # other busy cores (this one is off the free list)
        through = own + (others if others < own * sharing else own * sharing)
        if through > seconds:
            seconds = through  # the core stalls until its bytes have moved
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
