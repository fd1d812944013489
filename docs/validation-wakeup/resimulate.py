"""Simulate a committed live CPU case again with another calibrated profile, and compare.

    python docs/validation-wakeup/resimulate.py SRC CASE PROFILE OUT

SRC is a `simrun validate` folder (validation.json and CASE/scenario.toml). PROFILE is a profile
as `simrun calibrate` writes it (the core's own costs); like `simrun validate`, it is simulated
as a core `cpu_fraction` times as fast (the fraction the live case ran with). The live rows are
taken as they are, so two profiles (or two versions of a model) are compared on the same live
data, free of the machine's run-to-run noise. OUT/CASE gets the scenario and profile as run,
and OUT/CASE.json the live and simulated rows with the peak error and MAPE.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from calibration.cgroup import scaled_profile  # noqa: E402
from calibration.validate import Settings, compare, simulate  # noqa: E402
from sim.profile import load_profile, write_profile  # noqa: E402
from sim.scenario import ScenarioError, load_scenario  # noqa: E402


def main(argv) -> int:
    if len(argv) != 4:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    src, name, profile_path, out = argv
    try:
        doc = json.loads(Path(src, "validation.json").read_text())
        case = next(c for c in doc["cases"] if c["case"] == name)
        fraction = float(case["setting"].get("cpu_fraction", 1.0))
        base = load_profile(profile_path)
    except (OSError, ValueError, StopIteration, ScenarioError) as e:
        print(f"resimulate: cannot read {src} case {name} or {profile_path}: {e}", file=sys.stderr)
        return 2
    d = Path(out, name)
    d.mkdir(parents=True, exist_ok=True)
    write_profile(scaled_profile(base, fraction), d / "profile.toml",
                  {**dict(base.provenance or {}), "resimulated_from": os.path.abspath(profile_path),
                   "cpu_fraction": fraction})
    text = Path(src, case["scenario"]).read_text()
    (d / "scenario.toml.tmp").write_text(text)
    os.replace(d / "scenario.toml.tmp", d / "scenario.toml")
    sim = simulate(load_scenario(str(d / "scenario.toml")), Settings(out=out, jobs=2))
    live = [r["live"] for r in case["rates"]]
    res = {"source": src, "case": name, "profile": profile_path, "cpu_fraction": fraction,
           "committed": {"peak_error_pct": case["peak_error_pct"], "mape_pct": case["mape_pct"]},
           **compare(live, sim), "rates": [{"live": l, "sim": s} for l, s in zip(live, sim)]}
    tmp = Path(out, f"{name}.json.tmp")
    tmp.write_text(json.dumps(res, indent=1, default=str) + "\n")
    os.replace(tmp, Path(out, f"{name}.json"))
    print(f"{src} {name} with {profile_path}: peak error {res['peak_error_pct']:+.1f} %, MAPE {res['mape_pct']:.1f} % "
          f"(committed {case['peak_error_pct']:+.1f} % / {case['mape_pct']:.1f} %)")
    for l, s in zip(live, sim):
        print(f"  offered {l['offered_rps']:>6.0f}  live {l['reply_rps']:>7.1f}  sim {s['reply_rps']:>7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
