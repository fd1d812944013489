"""A cache of replication results, so that a killed or repeated sweep recomputes nothing.

One replication is a pure function of the server it runs, the platform (hardware,
footprint, cost profile), the workload, the warm-up, duration and seed, the
offered rate, the replication number and the simulator's own code. The key is a
SHA-256 over all of these (the code as the bytes of every source file under
sim/ and models/), so editing a model or a cost invalidates exactly what it
should. The offered-rate list, the stopping rule and the other servers are not
part of the key: a replication computed for one sweep serves any later one.

Each entry is a small JSON file written to a temporary name and renamed, so a
run killed at any instant leaves either a whole entry or none. JSON floats are
written with `repr`, which reads back to the same bits.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path

CODE_PACKAGES = ("sim", "models")
_code_version: str | None = None


def code_version() -> str:
    """SHA-256 of the simulator's sources (every .py and .toml under sim/ and models/)."""
    global _code_version
    if _code_version is None:
        root = Path(__file__).resolve().parent.parent
        h = hashlib.sha256()
        for package in CODE_PACKAGES:
            base = root / package
            for path in sorted(p for p in base.rglob("*") if p.suffix in (".py", ".toml") and p.is_file()):
                if "__pycache__" in path.parts:
                    continue
                h.update(str(path.relative_to(root)).encode() + b"\0")
                h.update(path.read_bytes() + b"\0")
        _code_version = h.hexdigest()
    return _code_version


def _encode_metrics(metrics: dict) -> dict:
    """Floats as JSON (NaN and infinities spelt out); batch means' `batches` as a list of the same."""
    out = {k: _encode(float(v)) for k, v in metrics.items() if k != "batches"}
    if "batches" in metrics:
        out["batches"] = [_encode_metrics(b) for b in metrics["batches"]]
    return out


def _decode_metrics(doc: dict) -> dict:
    out = {k: float(_decode(v)) for k, v in doc.items() if k != "batches"}
    if "batches" in doc:
        out["batches"] = [_decode_metrics(b) for b in doc["batches"]]
    return out


def replication_key(scenario, spec, rate: float, rep: int) -> str:
    """The cache key of one replication: everything its result depends on, hashed."""
    profile = dataclasses.replace(scenario.profile, description="", source="")
    run = scenario.run
    parts = {
        "code": code_version(),
        "profile": repr(profile),
        "hardware": repr(scenario.hardware),
        "workload": repr(scenario.workload),
        "run": repr((float(run.warmup_s), float(run.duration_s), int(run.seed))
                    + ((int(run.batches),) if run.batches else ())),
        "server": repr(spec),
        "rate": repr(float(rate)),
        "rep": int(rep),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _encode(x):
    if isinstance(x, float) and not math.isfinite(x):
        return {"nonfinite": repr(x)}
    return x


def _decode(x):
    if isinstance(x, dict) and set(x) == {"nonfinite"}:
        return float(x["nonfinite"])
    return x


class ResultCache:
    """Replication metrics on disk, one file per key, under `root` (created when first written)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.hits = 0
        self.stored = 0

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        """The metrics stored under `key`, or None (an unreadable entry counts as absent)."""
        try:
            with open(self._path(key), encoding="utf-8") as f:
                doc = json.load(f)
            metrics = _decode_metrics(doc["metrics"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        self.hits += 1
        return metrics

    def put(self, key: str, metrics: dict, about: dict | None = None) -> None:
        """Store atomically; a failure to write only loses the cache entry, never the run."""
        path = self._path(key)
        body = json.dumps({"key": key, "about": about or {},
                           "metrics": _encode_metrics(metrics)},
                          allow_nan=False, sort_keys=False) + "\n"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            self.stored += 1
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass

    def entries(self) -> int:
        """How many entries are stored (for tests and messages)."""
        if not self.root.is_dir():
            return 0
        return sum(1 for _ in self.root.glob("*/*.json"))

    def sweep_stale(self) -> int:
        """Remove temporary files left by writers that no longer run (a killed earlier run)."""
        removed = 0
        if not self.root.is_dir():
            return 0
        for tmp in self.root.glob("*/.*.tmp"):
            try:
                pid = int(tmp.name.rsplit(".", 2)[-2])
            except (ValueError, IndexError):
                continue
            if pid != os.getpid() and not _alive(pid):
                try:
                    tmp.unlink()
                    removed += 1
                except OSError:
                    pass
        return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
