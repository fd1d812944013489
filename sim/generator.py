"""httperf's session generator, which both sides share: when its sessions start, and which ones.

httperf's rate generator (gen/rate.c) draws each interarrival time of `--period=e<mean>` as
-mean x log(1 - u), with u from erand48 seeded by constants XORed with the `--client` id.
So one process at one rate starts its sessions at the same instants in every run: one
fixed sample of the Poisson stream, not a fresh one. The first session starts at once, the
next after the first draw, and so on. A process replays the sessions of its file in turn
from the first (wsesslog.c).

Knowing the instants, the live side counts the requests a run really offered in its
measured window, and the simulator can offer the very same ones (`workload.arrivals =
"httperf"`). Measured 2026-11-28: at 2,470 requests/s every 5 s sample of a live server
that kept up matched the requests these instants put in it to 0.1 %, against 0.975-1.023 of
the Poisson mean; in the validation's 15 s runs the samples of 5-15 s hold 2.1 % fewer than the
mean, which every run's light-load row had shown.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

_A, _C, _MASK = 0x5DEECE66D, 0xB, (1 << 48) - 1     # erand48's linear congruence, 48 bits


def seed_state(client_id: int) -> int:
    """erand48's state as rate_generator_start seeds it for `--client=<client_id>/k`."""
    x0 = (0x1234 ^ client_id) & 0xFFFF
    x1 = (0x5678 ^ (client_id << 8)) & 0xFFFF
    x2 = (0x9ABC ^ ~client_id) & 0xFFFF
    return x0 | x1 << 16 | x2 << 32


def period_s(session_rate: float) -> float:
    """The mean interarrival time as httperf's command line carries it (`--period=e%.9f`)."""
    return float(f"{1.0 / session_rate:.9f}")


@lru_cache(maxsize=64)
def _starts(client_id: int, mean: float, n: int) -> tuple:
    x, t, out = seed_state(client_id), 0.0, [0.0] * n
    for i in range(1, n):
        x = (_A * x + _C) & _MASK
        t += -mean * math.log(1.0 - x / 281474976710656.0)      # erand48: the state over 2**48
        out[i] = t
    return tuple(out)


def start_instants(client_id: int, session_rate: float, n: int) -> np.ndarray:
    """Seconds after its start at which process `client_id` starts each of its `n` sessions."""
    if n <= 0:
        return np.empty(0)
    return np.array(_starts(client_id, period_s(session_rate), n))


def session_counts(total: int, processes: int) -> list[int]:
    """Sessions each of `processes` httperf processes starts (equal to within one; none with 0)."""
    counts = [total // processes + (1 if i < total % processes else 0) for i in range(processes)]
    return [c for c in counts if c > 0]


def template_shares(n_templates: int, counts: list[int]) -> list[list[int]]:
    """Which templates each process replays: a contiguous share each, cut to as many sessions as it
    starts (one template when there are fewer templates than processes)."""
    k = len(counts)
    bounds = [n_templates * i // k for i in range(k + 1)]
    return [(list(range(bounds[i], bounds[i + 1])) or [i % n_templates])[:max(1, c)] for i, c in enumerate(counts)]


def sessions(total: int, processes: int, session_rate: float, n_templates: int = 0):
    """The sessions httperf starts: (instant, process, template index or -1) in order of instant.

    `total` sessions over `processes` processes at `session_rate` in all, each process at its
    share of the rate; a process replays its share of `n_templates` in turn (-1: drawn sessions)."""
    counts = session_counts(total, processes)
    shares = template_shares(n_templates, counts) if n_templates else None
    out = []
    for i, c in enumerate(counts):
        at = start_instants(i, session_rate * c / total, c).tolist()
        share = shares[i] if shares else None
        out += [(t, i, share[j % len(share)] if share else -1) for j, t in enumerate(at)]
    out.sort()
    return out
