"""Simulate a committed live disk-cgroup run again under another page-cache policy, and compare.

    python docs/validation-disk-2list/resimulate.py SRC OUT [--page-cache two-list] [--set key=value ...]

SRC is a `simrun validate` folder (validation.json and disk-cgroup/ with scenario.toml and
profile.toml). The live rows are taken as they are; the simulator runs the same scenario with
`hardware.page_cache` (and any --set) changed. OUT gets the scenario as run, report.md,
validation.json and the plot, in the format of `simrun validate`, with the old simulated peak
error and MAPE beside the new ones.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from calibration.validate import _atomic_json, _clean, compare, plot_case, report_md, verdict  # noqa: E402
from sim.runner import run_scenario  # noqa: E402
from sim.scenario import load_scenario  # noqa: E402

SIM_KEYS = ("reply_rps", "throughput_mbps", "response_ms_mean", "response_ms_p90", "errors_pct",
            "cpu_util", "nic_util", "disk_util", "cache_hit_pct")


def with_table(text: str, table: str, settings: dict) -> str:
    """The TOML text with `settings` written into its [table] (replacing a key already there)."""
    lines, out, section = text.splitlines(), [], None
    done = set()
    for line in lines:
        s = line.strip()
        if s.startswith("[") and section == table:
            blank = []
            while out and not out[-1].strip():
                blank.append(out.pop())
            out += [f"{k} = {json.dumps(v)}" for k, v in settings.items() if k not in done] + blank
            done |= set(settings)
        if s.startswith("["):
            section = s.strip("[]").strip()
        key = s.split("=", 1)[0].strip() if "=" in s else None
        if section == table and key in settings:
            out.append(f"{key} = {json.dumps(settings[key])}")
            done.add(key)
            continue
        out.append(line)
    if section == table:
        out += [f"{k} = {json.dumps(v)}" for k, v in settings.items() if k not in done]
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src")
    ap.add_argument("out")
    ap.add_argument("--page-cache", default="two-list")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="another [hardware] setting, e.g. disk_readahead_kb=512")
    ap.add_argument("--footprint", action="append", default=[], metavar="KEY=VALUE",
                    help="a [footprint] setting of the profile, e.g. connection_kb=0")
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    src, out = Path(a.src), Path(a.out)
    doc = json.loads((src / "validation.json").read_text())
    case = next(c for c in doc["cases"] if c["case"] == "disk-cgroup")
    settings = {"page_cache": a.page_cache}
    for kv in a.set:
        k, v = kv.split("=", 1)
        settings[k.strip()] = float(v)
    footprint = {k.strip(): float(v) for k, v in (kv.split("=", 1) for kv in a.footprint)}
    (out / "disk-cgroup").mkdir(parents=True, exist_ok=True)
    ptext = (src / "disk-cgroup" / "profile.toml").read_text()
    ppath = out / "disk-cgroup" / "profile.toml"
    ppath.with_suffix(".tmp").write_text(with_table(ptext, "footprint", footprint) if footprint else ptext)
    os.replace(ppath.with_suffix(".tmp"), ppath)
    text = with_table((src / "disk-cgroup" / "scenario.toml").read_text(), "hardware", settings)
    spath = out / "disk-cgroup" / "scenario.toml"
    tmp = spath.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, spath)
    scen = load_scenario(spath)
    sim = []
    for p in run_scenario(scen, jobs=a.jobs, progress=False):
        row = {"offered_rps": p.offered_rps, "replications": p.replications}
        for k in SIM_KEYS:
            if k in p.metrics:
                row[k] = p.metrics[k].mean
                row[k + "_ci"] = p.metrics[k].halfwidth
        sim.append(row)
    live = [r["live"] for r in case["rates"]]
    before = {k: case[k] for k in ("sim_peak_rps", "peak_error_pct", "mape_pct", "mbps_mape_pct")}
    before["cache_hit_pct"] = [r["sim"].get("cache_hit_pct") for r in case["rates"]]
    new = dict(case, **compare(live, sim))
    new["rates"] = [{"live": l, "sim": s} for l, s in zip(live, sim)]
    new["verdict"] = verdict(new, case["held_out"])
    new["setting"] = dict(case["setting"], **{f"sim_{k}": v for k, v in {**settings, **footprint}.items()})
    new["before"] = before
    doc = dict(doc, cases=[new], calibration=None, command=f"{doc['command']}; simulated again: python docs/validation-disk-2list/"
                                        f"resimulate.py {a.src} {a.out} --page-cache {a.page_cache}"
                                        + "".join(f" --set {kv}" for kv in a.set)
                                        + "".join(f" --footprint {kv}" for kv in a.footprint))
    _atomic_json(str(out / "validation.json"), _clean(doc))
    md = report_md(doc)
    md += ("\n## Before (the same live rows against the simulator as first run)\n\n"
           f"sim peak {before['sim_peak_rps']:.1f}/s, peak error {before['peak_error_pct']:+.1f} %, "
           f"MAPE {before['mape_pct']:.1f} %; simulated page-cache hits per rate "
           + ", ".join(f"{h:.2f} %" for h in before["cache_hit_pct"] if h is not None)
           + f".\n\nNow: simulated page-cache hits per rate "
           + ", ".join(f"{r['sim']['cache_hit_pct']:.2f} %" for r in new["rates"]) + ".\n")
    tmp = out / "report.md.tmp"
    tmp.write_text(md)
    os.replace(tmp, out / "report.md")
    plot_case(new, str(out / "disk-cgroup.png"))
    print(f"{a.src}: peak error {before['peak_error_pct']:+.1f} % -> {new['peak_error_pct']:+.1f} %, "
          f"MAPE {before['mape_pct']:.1f} % -> {new['mape_pct']:.1f} %; sim peak {new['sim_peak_rps']:.0f}/s, "
          f"hits {[round(r['sim']['cache_hit_pct'], 2) for r in new['rates']]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
