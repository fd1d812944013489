"""The blkio throttle in front of a fast disk: a rate limit in slices, not a service time."""
import pytest
import simpy

from sim.hardware import ThrottledDisk


def disk():
    return ThrottledDisk(simpy.Environment(), 1, 0.00005, 1.9e9, 512 * 1024, 200, 20e6, 0.1)


def test_reads_pass_a_slice_at_a_time_at_the_device_speed():
    """20 reads of 4 KB per 100 ms slice pass at once, the 21st waits for the next slice (as
    measured under blk-throttle at 200 reads/s); 1 MB reads at 20 MB/s pass two per slice
    after the first, the allowance rounding up to whole slices."""
    d = disk()
    assert [d._dispatch(0.0, 4096) for _ in range(41)] == [0.0] * 20 + [0.1] * 20 + [0.2]
    d = disk()
    assert [round(d._dispatch(0.0, 1 << 20), 6) for _ in range(6)] == [0.0, 0.1, 0.1, 0.2, 0.2, 0.3]


def test_an_idle_throttle_starts_afresh_and_a_read_costs_the_device_time():
    d = disk()
    for _ in range(25):
        d._dispatch(0.0, 4096)
    assert d._dispatch(5.0, 4096) == 5.0 and d._dispatch(5.0, 4096) == 5.0
    d = disk()
    d.read(3, 300 * 1024)                        # one window, within the slice: the device's time only
    d.env.run()
    assert d.env.now == pytest.approx(0.00005 + 300 * 1024 / 1.9e9)
    assert d.reads == 1 and d.busy == pytest.approx(max(1 / 200, 300 * 1024 / 20e6))
