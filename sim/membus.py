"""A memory bus shared by all cores: why adding cores stops paying (PAPER.md section 9, Genevès).

Kernel network code is memory-bound: every CPU-second of server work moves
`membus_gb_per_cpu_s` GB over the bus (cache misses on socket buffers and
descriptors, the NIC's DMA of the reply, copies), so an operation moves bytes in
proportion to its CPU cost. The bus carries `membus_gb_s`. When k cores are busy
at once they ask for k x intensity; past the bandwidth each core stalls and its
burst stretches by the factor k x intensity / bandwidth. A saturated machine then
serves at most bandwidth / (bytes per request), whatever its core count: the
architectures converge, as Genevès reports at 8 cores.

The stretch is fixed when a burst starts, from the cores busy at that instant (a
burst does not speed up when others finish): exact while the load is steady,
and it costs no SimPy event. With `membus_gb_s = 0` (the default) nothing here
is installed and the CPU is the plain one, so the numbers are the same as
without this module.
"""
from __future__ import annotations

from .hardware import CPU


class BusCPU(CPU):
    """Cores that share one memory bus: a burst stretches while the bus is oversubscribed."""

    __slots__ = ("bus_bytes_per_s", "bytes_per_cpu_s", "bus_bytes")

    def __init__(self, env, cores: int, switch_cost: float, bus_gb_s: float, gb_per_cpu_s: float):
        super().__init__(env, cores, switch_cost)
        self.bus_bytes_per_s = bus_gb_s * 1e9
        self.bytes_per_cpu_s = gb_per_cpu_s * 1e9
        self.bus_bytes = 0.0  # bytes the bursts started so far move over the bus

    def _start(self, core, entity, seconds, done):
        busy = self.cores - len(self.free)  # this core included: it has been taken off the free list
        self.bus_bytes += seconds * self.bytes_per_cpu_s
        wanted = busy * self.bytes_per_cpu_s
        if wanted > self.bus_bytes_per_s:
            seconds *= wanted / self.bus_bytes_per_s
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
