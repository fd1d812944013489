"""`simrun`: the one entry point.

`simrun SCENARIO.toml [--out DIR] [--seed N] [--jobs N]` runs a scenario; the
other jobs are subcommands (`simrun serve --help`, `simrun fileset --help`, ...).
"""
from __future__ import annotations

import importlib
import sys

# subcommand -> (module, one-line help); each module has main(argv) -> int
SUBCOMMANDS = {
    "run": ("sim.runner", "run a scenario (the default when the first argument is a .toml file)"),
    "serve": ("real.serve", "start a live server of one architecture"),
    "fileset": ("real.fileset", "generate the SPECweb99-style file set on disk"),
    "load": ("real.httperf", "drive a live server with httperf at a set of offered rates"),
    "calibrate": ("calibration.calibrate", "measure a live server here under httperf and fit a cost profile"),
    "blackbox": ("calibration.blackbox", "service demands of any live server from its pid and port (utilisation law)"),
    "validate": ("calibration.validate", "live servers against the simulator: errors per case, report and plots"),
    "across": ("calibration.across", "several validation runs side by side: each case's mean error and its interval"),
    "capacity": ("sim.capacity", "smallest cores/NICs/memory/... meeting throughput and response targets"),
}


def usage() -> str:
    lines = ["usage: simrun SCENARIO.toml [--out DIR] [--seed N] [--jobs N]",
             "       simrun COMMAND [--help]", "", "commands:"]
    lines += [f"  {name:<10} {text}" for name, (_, text) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name = argv[0]
    if name in SUBCOMMANDS:
        argv = argv[1:]
    elif name.startswith("-") or name.endswith(".toml") or "/" in name:
        name = "run"
    else:
        print(f"simrun: unknown command {name!r}\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    try:
        return int(module.main(argv) or 0)
    except KeyboardInterrupt:
        print("simrun: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
