"""Several validation runs side by side: is a case's error the model's, or one run's noise?

On this shared host one run of `simrun validate` gives a CPU case's peak error with a
95 % interval of about +-10 points on the run's own noise (calibration/noise.py), so a
verdict on a 5 % target often turns on the run. Runs made at different times are
independent draws of that noise: their mean error estimates the model's own error,
and its Student-t interval narrows as the runs add up. `simrun across RUN ...` reads
each run's validation.json and writes, per case, every run's figures, the mean with
its 95 % interval, and a verdict on the mean: *holds* when the whole interval lies
within the target, *misses* when it lies outside, *undecided* when it crosses it.

    simrun across /tmp/val1 /tmp/val2 /tmp/val3 [--out across]

Runs whose simulator code (a hash of sim/ and models/) or settings differ validated
different things; the report says so, and `--same-code` keeps only the runs of the
newest code.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass, field

from sim.atomic import write_bytes, write_text
from sim.stats import estimate

from .validate import BLACKBOX_TARGET_PCT, MAPE_TARGET_PCT, PEAK_TARGET_PCT, strict_json

# what each figure is held to, and whether its sign matters (two-sided) or only its size
METRICS = (("peak_error_pct", "peak error %", True), ("mape_pct", "MAPE %", False),
           ("blackbox_error_pct", "saturation error %", True))
# (a run that did not record its targets was held to the present ones)
DEFAULT_TARGETS = {"peak_error_pct": PEAK_TARGET_PCT, "mape_pct": MAPE_TARGET_PCT,
                   "blackbox_error_pct": BLACKBOX_TARGET_PCT}


class AcrossError(Exception):
    pass


@dataclass
class Run:
    """One validation run: where it came from and what it found."""

    label: str
    date: str
    code: str | None              # hash of the simulator's sources, if the run recorded it
    settings: dict
    targets: dict
    cases: dict = field(default_factory=dict)     # case name -> its entry in validation.json


def load_run(path: str) -> Run:
    """A run's validation.json (`path` is the file or the folder holding it)."""
    file = os.path.join(path, "validation.json") if os.path.isdir(path) else path
    try:
        with open(file, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise AcrossError(f"{path}: no validation.json there") from None
    except (OSError, ValueError) as e:
        raise AcrossError(f"{file}: not readable as JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("cases"), list):
        raise AcrossError(f"{file}: not a validation.json (no list of cases)")
    cases = {}
    for c in doc["cases"]:
        if not isinstance(c, dict) or not isinstance(c.get("case"), str):
            raise AcrossError(f"{file}: a case without a name")
        cases[c["case"]] = c
    label = os.path.basename(os.path.dirname(os.path.abspath(file))) or file
    return Run(label=label, date=str((doc.get("machine") or {}).get("date", "?")), code=doc.get("simulator_code"),
               settings=doc.get("settings") or {}, targets={**DEFAULT_TARGETS, **(doc.get("targets") or {})},
               cases=cases)


def _number(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


@dataclass
class Spread:
    """One figure of one case over the runs: the values, their mean and its 95 % half-width."""

    values: list
    mean: float
    halfwidth: float          # nan with one value
    target: float
    signed: bool

    @property
    def n(self) -> int:
        return len(self.values)

    def verdict(self) -> str:
        if self.n < 2:
            return "one run"
        lo, hi = self.mean - self.halfwidth, self.mean + self.halfwidth
        if self.signed:
            inside, outside = -self.target <= lo and hi <= self.target, lo > self.target or hi < -self.target
        else:
            inside, outside = hi <= self.target, lo > self.target
        return "holds" if inside else "misses" if outside else "undecided"

    def within(self) -> int:
        """Runs whose own figure met the target."""
        return sum(1 for v in self.values if (abs(v) if self.signed else v) <= self.target)


def spread(values: list[float], target: float, signed: bool) -> Spread:
    e = estimate(values)
    return Spread(list(values), e.mean, e.halfwidth, target, signed)


def summarize(runs: list[Run]) -> dict:
    """Per case, per figure: the runs' values (None where a run lacks it) and their Spread."""
    names = []
    for r in runs:
        names += [n for n in r.cases if n not in names]
    out = {}
    for name in names:
        figures = {}
        for key, _title, signed in METRICS:
            per_run = [_number(r.cases[name].get(key)) if name in r.cases else None for r in runs]
            got = [v for v in per_run if v is not None]
            if got:
                figures[key] = (per_run, spread(got, runs[-1].targets[key], signed))
        held = [r.cases[name].get("held_out") for r in runs if name in r.cases]
        out[name] = {"held_out": bool(held and held[-1]), "figures": figures,
                     "intervals": [r.cases[name].get("peak_error_ci95_pct") if name in r.cases else None
                                   for r in runs]}
    return out


def differences(runs: list[Run]) -> list[str]:
    """What differs between the runs besides their noise: the simulator's code, the settings."""
    notes = []
    known = sorted({r.code[:12] for r in runs if r.code})
    unrecorded = [r.label for r in runs if not r.code]
    if len(known) > 1:
        notes.append(f"the runs validated {len(known)} versions of the simulator ({', '.join(known)}): their "
                     "spread is not noise alone")
    if unrecorded:
        notes.append(("the runs" if len(unrecorded) == len(runs) else ", ".join(unrecorded))
                     + " did not record the simulator's code: check by hand that they validated the same one")
    keys = sorted({k for r in runs for k in r.settings})
    for k in keys:
        vals = {json.dumps(r.settings[k], sort_keys=True) if k in r.settings else "not recorded" for r in runs}
        if len(vals) > 1:
            notes.append(f"setting `{k}` differs: " + ", ".join(sorted(vals)))
    return notes


def _f(v, fmt="{:+.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def report_md(runs: list[Run], summary: dict, notes: list[str]) -> str:
    lines = ["# Validation runs side by side", "",
             f"{len(runs)} runs of `simrun validate`, each a draw of this host's noise: "
             + ", ".join(f"`{r.label}` ({r.date})" for r in runs) + ".", "",
             "Per case and figure: each run's value, the mean over the runs with its 95 % interval (Student's t), "
             "how many runs met the target on their own, and the verdict on the mean: *holds* (the whole interval "
             "within the target), *misses* (outside it), *undecided* (it crosses the target: more runs would "
             "tell). A live peak is the highest of several noisy rows, so even a model that is exactly right "
             "shows a mean peak error a little below zero where the live curve is noisy (docs/calibration.md).", ""]
    if notes:
        lines += ["**Not like for like:** " + "; ".join(notes) + ".", ""]
    head = "| case | held out | figure | target | " + " | ".join(r.label for r in runs) + \
           " | mean | its 95 % interval | runs within | verdict on the mean |"
    lines += [head, "|" + "---|" * (len(runs) + 8)]
    for name, s in summary.items():
        for key, title, signed in METRICS:
            if key not in s["figures"]:
                continue
            per_run, sp = s["figures"][key]
            fmt = "{:+.1f}" if signed else "{:.1f}"
            low = sp.mean - sp.halfwidth if signed else max(0.0, sp.mean - sp.halfwidth)   # a MAPE is not below 0
            band = "-" if math.isnan(sp.halfwidth) else f"{fmt.format(low)} to {fmt.format(sp.mean + sp.halfwidth)}"
            lines.append(f"| {name} | {'yes' if s['held_out'] else 'no'} | {title} | "
                         f"{'+-' if signed else '<= '}{sp.target:g} | "
                         + " | ".join(_f(v, fmt) for v in per_run)
                         + f" | {fmt.format(sp.mean)} | {band} | {sp.within()} of {sp.n} | {sp.verdict()} |")
    return "\n".join(lines) + "\n"


def plot(runs: list[Run], summary: dict, path: str) -> None:
    """Each run's peak error with its own interval, and the mean's interval, against the target band."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cases = [n for n, s in summary.items() if "peak_error_pct" in s["figures"]]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(cases) + 2), 4.5))
    target = runs[-1].targets["peak_error_pct"]
    ax.axhspan(-target, target, color="0.92", zorder=0, label=f"target +-{target:g} %")
    ax.axhline(0, color="0.6", lw=0.8)
    width = 0.6
    for i, name in enumerate(cases):
        per_run, sp = summary[name]["figures"]["peak_error_pct"]
        k = len(per_run)
        for j, (v, band) in enumerate(zip(per_run, summary[name]["intervals"])):
            if v is None:
                continue
            x = i - width / 2 + width * (j + 0.5) / k
            if band and all(isinstance(b, (int, float)) for b in band):
                ax.plot([x, x], band, color="tab:blue", lw=0.8, alpha=0.6)
            ax.plot(x, v, "o", color="tab:blue", ms=4, label="a run, with its interval" if i == j == 0 else None)
        if not math.isnan(sp.halfwidth):
            ax.errorbar(i + width / 2 + 0.12, sp.mean, yerr=sp.halfwidth, fmt="D", color="tab:red", capsize=4,
                        label="mean of the runs, 95 %" if i == 0 else None)
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels(cases, rotation=20, ha="right")
    ax.set_ylabel("peak error, simulated vs live, %")
    ax.set_title(f"Peak error over {len(runs)} validation runs", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    write_bytes(path, buf.getvalue())


def as_json(runs: list[Run], summary: dict, notes: list[str]) -> dict:
    cases = []
    for name, s in summary.items():
        entry = {"case": name, "held_out": s["held_out"]}
        for key, (per_run, sp) in s["figures"].items():
            entry[key] = {"runs": per_run, "mean": sp.mean, "ci95_halfwidth": sp.halfwidth, "target": sp.target,
                          "runs_within_target": sp.within(), "verdict": sp.verdict()}
        cases.append(entry)
    return strict_json({"runs": [{"label": r.label, "date": r.date, "simulator_code": r.code} for r in runs],
                        "not_like_for_like": notes, "cases": cases})


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise AcrossError(message)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="simrun across", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="validation output folders (or their validation.json files)")
    p.add_argument("--out", default="across", help="output folder (default across/)")
    p.add_argument("--same-code", action="store_true",
                   help="keep only the runs that validated the newest run's simulator code")
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser().parse_args(argv)
        runs = [load_run(p) for p in args.runs]
        if len({r.label for r in runs}) < len(runs):       # folders of one name: label them by their path
            for r, p in zip(runs, args.runs):
                r.label = p.rstrip("/")
        runs.sort(key=lambda r: r.date)
        if args.same_code:
            code = runs[-1].code
            if code is None:
                raise AcrossError("--same-code: the newest run did not record its simulator code")
            dropped = [r.label for r in runs if r.code != code]
            runs = [r for r in runs if r.code == code]
            if dropped:
                print(f"simrun across: left out (other code): {', '.join(dropped)}", file=sys.stderr)
        summary = summarize(runs)
        notes = differences(runs)
        os.makedirs(args.out, exist_ok=True)
        write_text(os.path.join(args.out, "across.md"), report_md(runs, summary, notes))
        write_text(os.path.join(args.out, "across.json"), json.dumps(as_json(runs, summary, notes), indent=1) + "\n")
        plot(runs, summary, os.path.join(args.out, "across.png"))
    except (AcrossError, OSError) as e:
        print(f"simrun across: error: {e}", file=sys.stderr)
        return 2
    for name, s in summary.items():
        if "peak_error_pct" in s["figures"]:
            _r, sp = s["figures"]["peak_error_pct"]
            band = "" if math.isnan(sp.halfwidth) else f" +- {sp.halfwidth:.1f}"
            print(f"{name:<16} peak error over {sp.n} runs: {sp.mean:+.1f}{band} % -> {sp.verdict()} "
                  f"({sp.within()} of {sp.n} runs within {sp.target:g} %)")
    print(f"wrote {args.out}/across.md, across.json and across.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
