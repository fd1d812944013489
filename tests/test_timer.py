"""call_later must fire in exactly the order SimPy Timeouts would, parked or not."""
import numpy as np
import pytest
import simpy

from sim.timer import Environment


def _fire_order(env_cls, delays_by_step, use_call_later):
    """Each fired timer starts the next group of timers; return (time, label) in firing order."""
    env = env_cls()
    fired = []
    groups = iter(delays_by_step)

    def arm(label_base):
        try:
            delays = next(groups)
        except StopIteration:
            return
        for i, d in enumerate(delays):
            label = f"{label_base}.{i}"
            if use_call_later:
                env.call_later(d, on_fire, label)
            else:
                env.timeout(d).callbacks.append(lambda _e, lab=label: on_fire(_Fake(lab)))

    def on_fire(call):
        fired.append((env.now, call.arg))
        if call.arg.endswith(".0"):
            arm(call.arg)

    arm("root")
    env.run()
    return fired


class _Fake:
    def __init__(self, arg):
        self.arg = arg


def test_call_later_keeps_timeout_order():
    rng = np.random.default_rng(5)
    # near and far delays, exact bucket multiples, ties and zero delays
    steps = []
    for _ in range(300):
        d = list(rng.choice([0.0, 0.01, 0.02, 0.005, 0.03], 3)) + list(rng.exponential(0.3, 4)) + [0.01 * 7]
        steps.append([float(x) for x in d])
    reference = _fire_order(simpy.Environment, steps, use_call_later=False)
    parked = _fire_order(Environment, steps, use_call_later=True)
    assert len(reference) > 1000
    assert parked == reference


def test_far_timers_are_parked_and_on_time():
    env = Environment(bucket_s=0.01)
    seen = []
    for d in (5.0, 0.001, 2.5, 0.0151, 0.02):
        env.call_later(d, lambda c: seen.append((env.now, c.arg)), d)
    assert len(env._queue) < 5 + 3          # the far ones wait in buckets, an opener each
    env.run()
    assert seen == [(d, d) for d in sorted((5.0, 0.001, 2.5, 0.0151, 0.02))]


def test_negative_delay_is_refused():
    with pytest.raises(ValueError):
        Environment().call_later(-1.0, lambda c: None)
