"""One module per server architecture, each charging the shared operation vocabulary.

Each module named in ARCHITECTURES has a `Knobs` dataclass (fields made with
`sim.config.knob`, so the scenario loader can check them) and a `start(server)`
function that starts the architecture's SimPy processes on a `sim.server.Server`,
and `OPERATIONS`, the operations of sim/operations.py that it charges.
"""
from __future__ import annotations

import importlib

# architecture name used in scenarios -> module
ARCHITECTURES: dict[str, str] = {
    "sped": "models.sped",
    "symped": "models.symped",
    "knot": "models.knot",
    "watpipe": "models.watpipe",
    "threaded": "models.threaded",
    "seda": "models.seda",
    "amped": "models.amped",
}


def module_of(architecture: str):
    try:
        return importlib.import_module(ARCHITECTURES[architecture])
    except KeyError:
        raise KeyError(f"unknown architecture {architecture!r}; known: {', '.join(sorted(ARCHITECTURES))}") from None


def knobs_class(architecture: str):
    """The Knobs dataclass of an architecture (its fields are the allowed scenario keys)."""
    return module_of(architecture).Knobs
