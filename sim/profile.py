"""Cost profiles: the CPU cost of each operation on one machine, as TOML.

    [profile]            name, description
    [hardware]           defaults for sim.config.Hardware fields (any subset)
    [footprint]          sim.config.Footprint fields (any subset)
    [costs.sendfile]     one table per operation of sim.operations.OPERATIONS:
    fixed_us = 12.0        microseconds per call
    per_unit_us = 0.0009   microseconds per unit (byte, fd or event)
    [provenance]         free-form (kernel, cpu, date, fit residuals...), kept verbatim

The file speaks microseconds because that is how people read costs; the
`Profile` holds seconds, which the simulator charges. Only the operations
given are stored: a model that charges a missing one gets a KeyError naming it,
rather than a silent zero. `write_profile` writes the same format (calibration
uses it) so that a written profile loads back to the same costs, bit for bit.
"""
from __future__ import annotations

import dataclasses
import datetime
import math
import re
import tomllib
from decimal import Decimal
from pathlib import Path

from .atomic import write_text
from .config import Footprint, Hardware, Profile
from .operations import OPERATIONS, Cost
from .scenario import Checker, FieldSpec, ScenarioError, _kind, read_toml, specs_of, suggest

BUNDLED = Path(__file__).resolve().parent / "profiles"
_BARE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
PROFILE_SECTIONS = ("profile", "hardware", "footprint", "costs", "provenance")
_HEAD_SPECS = {
    "name": FieldSpec("name", "str", "the profile's name"),
    "description": FieldSpec("description", "str", "free text"),
}
_COST_SPECS = {
    "fixed_us": FieldSpec("fixed_us", "float", "microseconds per call", min=0),
    "per_unit_us": FieldSpec("per_unit_us", "float", "microseconds per unit (byte, fd or event)", min=0),
}


def bundled_profiles() -> list[str]:
    """Names of the profiles shipped in sim/profiles/."""
    return sorted(p.stem for p in BUNDLED.glob("*.toml")) if BUNDLED.is_dir() else []


def resolve_profile(name_or_path, base_dir=None) -> Path | None:
    """The file a profile reference names: a bare name is bundled, anything else a path; None if absent."""
    text = str(name_or_path)
    if _BARE_NAME.fullmatch(text) and not text.endswith(".toml"):
        path = BUNDLED / f"{text}.toml"
    else:
        path = Path(text).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
    return path if path.is_file() else None


def load_profile(name_or_path, base_dir=None) -> Profile:
    """Load and check a profile; ScenarioError (one line, naming file, line and key) on any mistake."""
    path = resolve_profile(name_or_path, base_dir)
    if path is None:
        raise ScenarioError(name_or_path, None, "profile", "no bundled profile and no such file",
                            "a bundled profile (" + (", ".join(bundled_profiles()) or "none")
                            + ") or a path to a profile TOML file")
    data, index = read_toml(path, parse_float=_Exact)
    return profile_from_dict(data, path, Checker(path, index))


def profile_from_dict(data: dict, source, checker: Checker | None = None) -> Profile:
    """A Profile from the parsed TOML tables (the shape `profile_to_dict` returns)."""
    ck = checker or Checker(source, None)
    for section, value in data.items():
        if section not in PROFILE_SECTIONS:
            ck.fail(section, f"unknown section [{section}]{suggest(section, PROFILE_SECTIONS)}",
                    "sections " + ", ".join(f"[{s}]" for s in PROFILE_SECTIONS))
        if not isinstance(value, dict):
            ck.fail(section, f"is {_kind(value)}, not a table", f"a [{section}] table")
    head = ck.table(data.get("profile", {}), "profile", _HEAD_SPECS, "profile")
    hardware = Hardware(**ck.table(data.get("hardware", {}), "hardware", specs_of(Hardware), "hardware"))
    footprint = Footprint(**ck.table(data.get("footprint", {}), "footprint", specs_of(Footprint), "footprint"))
    costs = {}
    for op, table in data.get("costs", {}).items():
        if op not in OPERATIONS:
            ck.fail(f"costs.{op}", f"unknown operation {op!r}{suggest(op, OPERATIONS)}",
                    "the operations of sim/operations.py: " + ", ".join(OPERATIONS))
        ck.table(table, f"costs.{op}", _COST_SPECS, f"costs.{op}")  # checks keys and types
        costs[op] = Cost(fixed=_seconds(table.get("fixed_us", 0.0)), per_unit=_seconds(table.get("per_unit_us", 0.0)))
    provenance = _plain_floats(data.get("provenance", {}))
    profile = Profile(name=head.get("name", Path(str(source)).stem), costs=costs, hardware=hardware,
                      footprint=footprint, description=head.get("description", ""), source=str(source))
    if "provenance" in Profile.__dataclass_fields__:
        profile = dataclasses.replace(profile, provenance=dict(provenance))
    return profile


def provenance_of(profile: Profile) -> dict:
    """The profile's [provenance] table.

    Profile has no field for it, so it is read again from the profile's source
    file (empty if that file is gone or is not a profile).
    """
    if "provenance" in Profile.__dataclass_fields__:
        return dict(getattr(profile, "provenance") or {})
    try:
        data = tomllib.loads(Path(profile.source).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    value = data.get("provenance", {})
    return value if isinstance(value, dict) else {}


class _Exact(float):
    """A TOML float that remembers its text, so microseconds convert to seconds exactly."""

    def __new__(cls, text):
        value = super().__new__(cls, text)
        value.text = text
        return value


def _seconds(us) -> float:
    """Microseconds (as written in the file) to seconds, correctly rounded."""
    if isinstance(us, _Exact):
        return float(Decimal(us.text).scaleb(-6))
    return float(Decimal(repr(float(us))).scaleb(-6))


def _us_text(seconds: float) -> str:
    """Microseconds as TOML text that reads back (via `_seconds`) as exactly `seconds`."""
    if seconds == 0:
        return "0.0"
    text = str(Decimal(repr(float(seconds))).scaleb(6))
    return text if any(c in text for c in ".eE") else text + ".0"


def _plain_floats(value):
    if isinstance(value, dict):
        return {k: _plain_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_floats(v) for v in value]
    return float(value) if isinstance(value, _Exact) else value


def profile_to_dict(profile: Profile, provenance: dict | None = None) -> dict:
    """The profile as the tables of its TOML file (costs in microseconds), JSON-able."""
    costs = {op: {"fixed_us": float(_us_text(c.fixed)), "per_unit_us": float(_us_text(c.per_unit))}
             for op, c in sorted(profile.costs.items(), key=lambda kv: list(OPERATIONS).index(kv[0])
                                 if kv[0] in OPERATIONS else len(OPERATIONS))}
    return {
        "profile": {"name": profile.name, "description": profile.description, "source": profile.source},
        "hardware": dataclasses.asdict(profile.hardware),
        "footprint": dataclasses.asdict(profile.footprint),
        "costs": costs,
        "provenance": _jsonable(provenance if provenance is not None else provenance_of(profile)),
    }


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


# ---------------------------------------------------------------- TOML writing

def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_string(key)


def _toml_string(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch in "\b\t\n\f\r":
            out.append({"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _toml_string(v)
    if isinstance(v, (datetime.date, datetime.time)):
        return v.isoformat()
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(str(k))} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _toml_table(lines: list[str], path: tuple[str, ...], table: dict) -> None:
    lines.append("[" + ".".join(_toml_key(p) for p in path) + "]")
    subtables = []
    for k, v in table.items():
        if isinstance(v, dict):
            subtables.append((k, v))
        else:
            lines.append(f"{_toml_key(str(k))} = {_toml_value(v)}")
    for k, v in subtables:
        lines.append("")
        _toml_table(lines, path + (str(k),), v)


def profile_to_toml(profile: Profile, provenance: dict | None = None) -> str:
    """The profile in its TOML format."""
    d = profile_to_dict(profile)
    d["profile"].pop("source")
    prov = provenance if provenance is not None else provenance_of(profile)
    lines = [f"# Cost profile {profile.name}: costs in microseconds (sim/profile.py describes the format).", ""]
    for section in ("profile", "hardware", "footprint"):
        _toml_table(lines, (section,), d[section])
        lines.append("")
    for op in d["costs"]:
        cost = profile.costs[op]
        lines += [f"[costs.{op}]", f"fixed_us = {_us_text(cost.fixed)}", f"per_unit_us = {_us_text(cost.per_unit)}", ""]
    if prov:
        _toml_table(lines, ("provenance",), prov)
        lines.append("")
    return "\n".join(lines)


def write_profile(profile: Profile, path, provenance: dict | None = None) -> Path:
    """Write the profile as TOML, atomically (temporary file, then rename)."""
    path = Path(path)
    text = profile_to_toml(profile, provenance)
    tomllib.loads(text)  # never leave a file that does not parse
    write_text(path, text)
    return path
