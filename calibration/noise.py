"""How far a validation's peak error could move on this run's own noise alone.

A peak error is the simulated peak over the live one, and three things in it are
noisy: the live sweeps (repeated at the same rates, their rows spread by 5-20 % on
this host), the host level that scales a CPU case's costs (the median of the
host-level rounds, calibration/drift.py), and the simulation's own replications.
The interval here resamples each, as the validation computed it, and gives the
2.5th and 97.5th percentiles of the peak error that result:

- the live curve: the sweeps drawn again with replacement, each rate's median row
  (the lower one of an even count, as `validate.median_rows`), its highest rate;
- the CPU demand: the samples whose median set it drawn again with replacement,
  and their median. For a CPU case these are the host level's saturated rounds:
  its simulated peak is set by its CPU, whose costs all scale with the level, so
  the peak moves inversely with it (`elasticity` 1). The costs measured apart
  (wake-ups, switches, hand-offs) do not scale, so this slightly overstates the
  level's part where they weigh (the threaded case). NIC- and disk-bound cases
  are levelled too but bound elsewhere: elasticity 0. For the black box they are
  its runs past saturation, whose median is its CPU per reply;
- the simulated peak: normal, with the standard error of its replications.

What it cannot see is anything common to the whole run: the calibration's own
spell, or a spell that lasts through all of a case's sweeps. So it says whether a
verdict is firm against the noise within the run, not that the runs agree.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sim.stats import t_quantile

DRAWS = 4000
SEED = 20071


@dataclass(frozen=True)
class Interval:
    low: float          # the peak error's 2.5th percentile, %
    high: float         # its 97.5th, %
    parts: tuple        # what was resampled, in words
    live: bool = True   # the live curve was among them (more than one sweep)

    def firm(self, target_pct: float) -> bool | None:
        """The whole interval falls on one side of the target, so the verdict would not change on the
        run's noise; None when the live curve was one sweep, whose own noise the interval lacks."""
        if not self.live:
            return None
        inside = self.high <= target_pct and self.low >= -target_pct
        return inside or self.low > target_pct or self.high < -target_pct


def peak_error_interval(sweeps: list[list[float]] | None, live_peak: float, sim_peak: float,
                        sim_peak_halfwidth: float | None = None, sim_replications: int | None = None,
                        demand_us: list[float] | None = None, elasticity: float = 0.0,
                        demand_what: str = "the host level's rounds", draws: int = DRAWS,
                        seed: int = SEED) -> Interval | None:
    """The 95 % interval of the peak error (%) on the run's noise, or None when nothing is resampled.

    `sweeps` is each live sweep's reply rates at the case's rates (one list per sweep); with fewer
    than two the live curve is taken as measured. `demand_us` are the CPU per reply samples whose
    median set the simulated demand (`demand_what` names them), and the simulated peak goes as the
    demand to the power -`elasticity`; `sim_peak_halfwidth` is the 95 % half-width of the simulated
    peak over `sim_replications` replications."""
    if not live_peak > 0 or not sim_peak > 0:
        return None
    rng = np.random.default_rng(seed)
    parts = []
    live = np.full(draws, float(live_peak))
    repeated = bool(sweeps) and len(sweeps) > 1
    if repeated:
        a = np.asarray(sweeps, dtype=float)                      # sweeps x rates
        k = a.shape[0]
        drawn = a[rng.integers(0, k, size=(draws, k))]           # draws x k x rates
        live = np.sort(drawn, axis=1)[:, (k - 1) // 2, :].max(axis=1)
        parts.append(f"the {k} live sweeps")
    sim = np.full(draws, float(sim_peak))
    if demand_us and len(demand_us) > 1 and elasticity:
        r = np.asarray(demand_us, dtype=float)
        medians = np.median(r[rng.integers(0, len(r), size=(draws, len(r)))], axis=1)
        sim = sim * (np.median(r) / medians) ** elasticity
        parts.append(f"{demand_what} ({len(r)})")
    if sim_peak_halfwidth and sim_replications and sim_replications > 1 and math.isfinite(sim_peak_halfwidth):
        se = sim_peak_halfwidth / t_quantile(sim_replications)
        sim = sim + rng.normal(0.0, se, draws)
        parts.append(f"the simulation's {sim_replications} replications")
    if not parts:
        return None
    err = 100.0 * (sim - live) / live
    low, high = np.percentile(err, [2.5, 97.5])
    return Interval(float(low), float(high), tuple(parts), repeated)
