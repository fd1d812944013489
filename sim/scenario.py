"""Load a scenario TOML file into a `sim.config.Scenario`, strictly.

A scenario names a cost profile, overrides its hardware and footprint, sets the
workload and the run control, and lists the servers to compare:

    [scenario]                  name, description, profile (bundled name or path)
    [hardware]                  sim.config.Hardware fields
    [footprint]                 sim.config.Footprint fields
    [workload]                  sim.workload.Workload fields, directories, zipf_alpha
    [run]                       sim.config.RunControl fields
    [sweep]                     parameter values to sweep over (read and checked by sim/sweep.py)
    [[server]]                  label, architecture and the architecture's knobs

Every key is checked against the dataclass that receives it (type, range and
choices come from the fields' `knob(...)` metadata), so a new architecture needs
no change here. A mistake raises `ScenarioError`, whose text is one line naming
the file, the line, the key, what is wrong and what is allowed: a user who
mistypes a knob should not have to read a traceback or wait for a run.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

from .config import Footprint, Hardware, RunControl, Scenario, ServerSpec
from .fileset import FileSet, SyntheticFileSet
from .operations import OPTIONAL_OPERATIONS
from .workload import Workload

SECTIONS = ("scenario", "hardware", "footprint", "workload", "run", "sweep", "server")
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
SAFE_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")


class ScenarioError(Exception):
    """A bad scenario or profile: `FILE:LINE: KEY: what is wrong; allowed: WHAT`, on one line."""

    def __init__(self, path, line, key, problem, allowed=""):
        super().__init__(str(path), line, key, problem, allowed)
        self.path, self.line, self.key, self.problem, self.allowed = str(path), line, key, problem, allowed

    def __str__(self):
        where = f"{self.path}:{self.line}" if self.line else self.path
        text = f"{where}: {self.key}: {self.problem}"
        if self.allowed:
            text += f"; allowed: {self.allowed}"
        return _one_line(text)


def format_error(exc: BaseException) -> str:
    """One line for the command line, whatever the exception."""
    if isinstance(exc, ScenarioError):
        return str(exc)
    return _one_line(f"{type(exc).__name__}: {exc}")


def _one_line(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")


# ---------------------------------------------------------------- reading TOML

_BARE = r"[A-Za-z0-9_-]+"
_PART = rf'(?:{_BARE}|"(?:[^"\\]|\\.)*"|\'[^\']*\')'
_DOTTED = rf"{_PART}(?:\s*\.\s*{_PART})*"
_HEADER = re.compile(rf"^\s*(\[\[?)\s*({_DOTTED})\s*\]\]?\s*(?:#.*)?$")
_KEYLINE = re.compile(rf"^\s*({_DOTTED})\s*=")


def _split_dotted(text: str) -> list[str]:
    parts = re.findall(_PART, text)
    return [p[1:-1] if p[:1] in "\"'" else p for p in parts]


class LineIndex:
    """Line numbers of the keys and table headers of a TOML text.

    tomllib gives none, so the text is scanned: a key's path is its table's path
    (the n-th `[[server]]` becomes `server`, n) plus the key. Good enough for
    error messages, not a TOML parser.
    """

    def __init__(self, text: str):
        self.lines: dict[tuple, int] = {}
        arrays: dict[tuple, int] = {}
        table: tuple = ()
        in_string = None
        for number, line in enumerate(text.splitlines(), start=1):
            if in_string:
                if in_string in line:
                    in_string = None
                continue
            header = _HEADER.match(line)
            if header:
                parts = _split_dotted(header.group(2))
                path: tuple = ()
                for i, part in enumerate(parts):
                    path += (part,)
                    if path in arrays and i < len(parts) - 1:
                        path += (arrays[path] - 1,)
                if header.group(1) == "[[":
                    arrays[path] = arrays.get(path, 0) + 1
                    path += (arrays[path] - 1,)
                table = path
                self.lines.setdefault(table, number)
                continue
            key = _KEYLINE.match(line)
            if key:
                path = table + tuple(_split_dotted(key.group(1)))
                for i in range(len(table) + 1, len(path) + 1):
                    self.lines.setdefault(path[:i], number)
                rest = line[key.end():]
                for quote in ('"""', "'''"):
                    if rest.count(quote) % 2 == 1:
                        in_string = quote

    def line_of(self, key: str) -> int | None:
        """The line of `key` (`server[2].processes`, `run.rates[3]`), else of its closest parent."""
        path = tuple(int(t[1:-1]) if t.startswith("[") else t for t in re.findall(r"\[\d+\]|[^.\[\]]+", key))
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return None


def read_toml(path, parse_float=float) -> tuple[dict, LineIndex]:
    """Parse a TOML file; any failure is a one-line ScenarioError."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise ScenarioError(path, None, "(file)", f"cannot read it: {e.strerror or e}",
                            "a readable TOML file") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ScenarioError(path, raw[:e.start].count(b"\n") + 1, "(file)", "not UTF-8 text",
                            "a UTF-8 TOML file") from None
    try:
        data = tomllib.loads(text, parse_float=parse_float)
    except tomllib.TOMLDecodeError as e:
        message = str(e)
        m = re.search(r"\s*\(at line (\d+), column (\d+)\)", message)
        line = None
        if m:
            line = int(m.group(1))
            message = f"{message[:m.start()]} at column {m.group(2)}"
        raise ScenarioError(path, line, "(syntax)", f"TOML syntax error: {message}",
                            "TOML 1.0 (https://toml.io)") from None
    return data, LineIndex(text)


# ---------------------------------------------------------------- field checking

@dataclass(frozen=True)
class FieldSpec:
    """What one key accepts: a type ('int', 'float', 'bool', 'str', 'floats') and its limits."""

    name: str
    type: str
    help: str = ""
    min: float | None = None
    max: float | None = None
    choices: tuple | None = None
    positive: bool = False  # strictly above zero (each element, for 'floats')


_TYPES = {"int": "int", "float": "float", "bool": "bool", "str": "str",
          "tuple[float, ...]": "floats", "tuple[int, ...]": "floats"}


def specs_of(cls, extra: dict | None = None) -> dict[str, FieldSpec]:
    """The keys a dataclass accepts, from its annotations and `knob(...)` metadata."""
    out = {}
    for f in dataclasses.fields(cls):
        t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if t not in _TYPES:
            continue  # not a scenario key (e.g. Workload.fileset)
        meta = dict(f.metadata)
        meta.update((extra or {}).get(f.name, {}))
        out[f.name] = FieldSpec(f.name, _TYPES[t], meta.get("help", ""), meta.get("min"), meta.get("max"),
                                tuple(meta["choices"]) if meta.get("choices") is not None else None,
                                meta.get("positive", False))
    return out


def _num(x) -> str:
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        x = int(x)
    return str(x)


def allowed_text(spec: FieldSpec) -> str:
    """What a key allows, in words, for the error message."""
    noun = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
            "floats": "a non-empty list of numbers"}[spec.type]
    if spec.choices is not None:
        text = "one of " + ", ".join(repr(c) for c in spec.choices)
    else:
        bounds = []
        if spec.positive:
            bounds.append("> 0")
        if spec.min is not None and spec.max is not None and not spec.positive:
            bounds = [f"from {_num(spec.min)} to {_num(spec.max)}"]
        else:
            if spec.min is not None:
                bounds.append(f">= {_num(spec.min)}")
            if spec.max is not None:
                bounds.append(f"<= {_num(spec.max)}")
        text = noun + (" " + " and ".join(bounds) if bounds else "")
        if spec.type == "floats" and bounds:
            text = noun + ", each " + " and ".join(bounds)
    return f"{text} ({spec.help})" if spec.help else text


def _kind(v) -> str:
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a float"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, dict):
        return "a table"
    if isinstance(v, (list, tuple)):
        return "an array"
    return f"a {type(v).__name__}"


def _show(v) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def suggest(name: str, known) -> str:
    """' (did you mean 'x'?)' for the closest known name, else ''."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Checker:
    """Raises errors located in one file; knows which keys came from overrides."""

    def __init__(self, path, index: LineIndex | None):
        self.path = str(path)
        self.index = index
        self.overridden: dict[str, str] = {}  # canonical key -> the key as the user wrote it

    def _override_of(self, key: str) -> str | None:
        for k, text in self.overridden.items():
            if key == k or key.startswith(k + "[") or key.startswith(k + "."):
                return text
        return None

    def fail(self, key: str, problem: str, allowed: str = ""):
        text = self._override_of(key)
        if text is not None:
            shown = f"override {text}" + (f" ({key})" if text != key else "")
            raise ScenarioError(self.path, None, shown, problem, allowed)
        line = self.index.line_of(key) if self.index else None
        raise ScenarioError(self.path, line, key, problem, allowed)

    def check(self, key: str, spec: FieldSpec, value):
        """The value converted to the field's type, or a ScenarioError."""
        if isinstance(value, str) and spec.type != "str" and self._override_of(key) is not None:
            value = self._coerce(key, spec, value)
        allowed = allowed_text(spec)
        if spec.type == "bool":
            if not isinstance(value, bool):
                self.fail(key, f"{_show(value)} is {_kind(value)}, not a boolean", allowed)
            return value
        if spec.type == "str":
            if not isinstance(value, str):
                self.fail(key, f"{_show(value)} is {_kind(value)}, not a string", allowed)
            if spec.choices is not None and value not in spec.choices:
                self.fail(key, f"{value!r} is not a choice{suggest(value, spec.choices)}", allowed)
            return value
        if spec.type == "floats":
            if not isinstance(value, (list, tuple)):
                self.fail(key, f"{_show(value)} is {_kind(value)}, not a list", allowed)
            if not value:
                self.fail(key, "the list is empty", allowed)
            item = replace(spec, type="float", help="")
            out = tuple(self.check(f"{key}[{i}]", item, v) for i, v in enumerate(value))
            for i, v in enumerate(out):
                if v in out[:i]:
                    self.fail(f"{key}[{i}]", f"{_num(v)} is listed twice", "each value once")
            return out
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if spec.type == "int" and not (numeric and isinstance(value, int)):
            self.fail(key, f"{_show(value)} is {_kind(value)}, not an integer", allowed)
        if spec.type == "float":
            if not numeric:
                self.fail(key, f"{_show(value)} is {_kind(value)}, not a number", allowed)
            value = float(value)
            if not math.isfinite(value):
                self.fail(key, f"{value} is not a finite number", allowed)
        if spec.positive and not value > 0:
            self.fail(key, f"{_num(value)} is not above 0", allowed)
        if spec.min is not None and value < spec.min:
            self.fail(key, f"{_num(value)} is below the minimum {_num(spec.min)}", allowed)
        if spec.max is not None and value > spec.max:
            self.fail(key, f"{_num(value)} is above the maximum {_num(spec.max)}", allowed)
        return value

    def _coerce(self, key: str, spec: FieldSpec, text: str):
        """Read an override given as a string by the field's type."""
        s = text.strip()
        allowed = allowed_text(spec)
        if spec.type == "int":
            if re.fullmatch(r"[+-]?\d+(_\d+)*", s):
                return int(s)
            self.fail(key, f"cannot read {text!r} as an integer", allowed)
        if spec.type == "float":
            try:
                return float(s)
            except ValueError:
                self.fail(key, f"cannot read {text!r} as a number", allowed)
        if spec.type == "bool":
            if s.lower() in ("true", "yes", "on", "1"):
                return True
            if s.lower() in ("false", "no", "off", "0"):
                return False
            self.fail(key, f"cannot read {text!r} as true or false", allowed)
        if spec.type == "floats":
            items = [x.strip() for x in s.strip("[]").split(",")] if s.strip("[] ") else []
            out = []
            for i, x in enumerate(items):
                try:
                    out.append(float(x))
                except ValueError:
                    self.fail(f"{key}[{i}]", f"cannot read {x!r} as a number", allowed)
            return out
        return text

    def table(self, value, key: str, specs: dict[str, FieldSpec], what: str) -> dict:
        """Check every key of a TOML table against `specs`; return the converted values."""
        if not isinstance(value, dict):
            self.fail(key, f"is {_kind(value)}, not a table", f"a [{what}] table")
        out = {}
        for name, v in value.items():
            k = f"{key}.{name}"
            if name not in specs:
                self.fail(k, f"unknown key {name!r}{suggest(name, specs)}", f"keys of [{what}]: {', '.join(specs)}")
            out[name] = self.check(k, specs[name], v)
        return out


# ---------------------------------------------------------------- the sections

_SCENARIO_SPECS = {
    "name": FieldSpec("name", "str", "the scenario's name, also its results folder"),
    "description": FieldSpec("description", "str", "free text"),
    "profile": FieldSpec("profile", "str", "a bundled profile name or a path relative to the scenario file"),
}

_WORKLOAD_LIMITS = {
    "session_requests_min": {"min": 1, "max": 100_000, "help": "fewest requests on one persistent connection"},
    "session_requests_max": {"min": 1, "max": 100_000, "help": "most requests on one persistent connection"},
    "burst_requests_min": {"min": 1, "max": 100_000, "help": "fewest requests in one burst"},
    "burst_requests_max": {"min": 1, "max": 100_000, "help": "most requests in one burst"},
    "think_within_burst_s": {"positive": True, "max": 1e6, "help": "mean think time within a burst, s"},
    "think_between_bursts_s": {"positive": True, "max": 1e6, "help": "mean think time between bursts, s"},
    "think_distribution": {"choices": ("exponential", "fixed"), "help": "how think times are drawn"},
    "timeout_s": {"positive": True, "max": 1e6, "help": "a request unanswered this long is an error, s"},
    "header_bytes": {"min": 0, "max": 1_000_000, "help": "HTTP response header bytes per reply"},
}
# A synthetic file set instead of SPECweb99's (textbook checks): `fileset = "synthetic"` and these keys.
_SYNTHETIC_LIMITS = {
    "files": {"min": 1, "max": 10_000_000, "help": "equally popular files"},
    "mean_bytes": {"positive": True, "max": 1e12, "help": "mean file size in bytes"},
    "size_distribution": {"choices": ("fixed", "exponential"), "help": "how file sizes are drawn"},
}
_FILESET_KIND = FieldSpec("fileset", "str", "which file set", choices=("specweb99", "synthetic"))
_FILESET_LIMITS = {
    "directories": {"min": 1, "max": 100_000, "help": "SPECweb99 directories of 36 files; the study used 680"},
    "zipf_alpha": {"min": 0, "max": 10, "help": "Zipf exponent of directory popularity; the study used 1"},
}


def workload_specs() -> dict[str, FieldSpec]:
    specs = specs_of(Workload, _WORKLOAD_LIMITS)
    specs.update(specs_of(FileSet, _FILESET_LIMITS))
    specs.update(specs_of(SyntheticFileSet, _SYNTHETIC_LIMITS))
    specs.pop("seed", None)
    specs["fileset"] = _FILESET_KIND
    return specs


def run_specs() -> dict[str, FieldSpec]:
    return specs_of(RunControl, {"rates": {"positive": True}})


def _knobs_specs(architecture: str) -> dict[str, FieldSpec]:
    import models
    return specs_of(models.knobs_class(architecture))


def _apply_overrides(ck: Checker, data: dict, overrides: dict) -> None:
    """Put each `section.key` (or `server[i].key`, `server.LABEL.key`) override into the parsed data."""
    for raw_key, value in overrides.items():
        text = str(raw_key).strip()
        shown = f"override {text}"
        servers = data.get("server", [])
        m = re.fullmatch(r"server\[(\d+)\]\.([^.]+)", text)
        if m or text.startswith("server."):
            if m:
                i, name = int(m.group(1)), m.group(2)
                if i >= len(servers):
                    raise ScenarioError(ck.path, None, shown, f"there is no server[{i}]",
                                        f"server[0] to server[{len(servers) - 1}]" if servers else "no servers")
            else:
                label, _, name = text[len("server."):].rpartition(".")
                labels = [s.get("label") for s in servers]
                if not label or label not in labels:
                    known = [x for x in labels if isinstance(x, str)]
                    raise ScenarioError(ck.path, None, shown, f"no server is labelled {label!r}{suggest(label, known)}",
                                        "server.LABEL.KEY with a label of the scenario: " + ", ".join(known))
                i = labels.index(label)
            servers[i][name] = value
            ck.overridden[f"server[{i}].{name}"] = text
            continue
        section, dot, name = text.partition(".")
        if not dot or not name or "." in name or section not in SECTIONS:
            hint = suggest(section, SECTIONS) if section not in SECTIONS else ""
            raise ScenarioError(ck.path, None, shown, f"not a key of the scenario{hint}",
                                "SECTION.KEY (sections: " + ", ".join(SECTIONS[:-1])
                                + "), server[N].KEY or server.LABEL.KEY")
        data.setdefault(section, {})[name] = value
        ck.overridden[f"{section}.{name}"] = text


def load_scenario(path, *, seed=None, overrides=None) -> Scenario:
    """Load, override and validate a scenario file; ScenarioError on any mistake."""
    from . import profile as profiles

    data, index = read_toml(path)
    ck = Checker(path, index)
    for section, value in data.items():
        if section not in SECTIONS:
            ck.fail(section, f"unknown section [{section}]{suggest(section, SECTIONS)}",
                    "sections " + ", ".join(f"[{s}]" for s in SECTIONS[:-1]) + " and [[server]]")
        if section == "server":
            if not isinstance(value, list) or not all(isinstance(s, dict) for s in value):
                ck.fail("server", "must be an array of tables", "one or more [[server]] tables")
        elif not isinstance(value, dict):
            ck.fail(section, f"is {_kind(value)}, not a table", f"a [{section}] table")
    overrides = dict(overrides or {})
    if seed is not None:
        overrides["run.seed"] = seed
    _apply_overrides(ck, data, overrides)

    head = ck.table(data.get("scenario", {}), "scenario", _SCENARIO_SPECS, "scenario")
    name = head.get("name", Path(path).stem)
    if not SAFE_NAME.fullmatch(name):
        ck.fail("scenario.name", f"{name!r} is not a safe folder name",
                "letters, digits, '.', '_' and '-', starting with a letter or digit, at most 100")
    if "profile" not in head:
        ck.fail("scenario.profile", "missing", _SCENARIO_SPECS["profile"].help
                + "; bundled: " + (", ".join(profiles.bundled_profiles()) or "none"))
    found = profiles.resolve_profile(head["profile"], Path(path).parent)
    if found is None:
        ck.fail("scenario.profile", f"no bundled profile and no file {head['profile']!r}",
                "a bundled profile (" + (", ".join(profiles.bundled_profiles()) or "none")
                + ") or a path relative to the scenario file")
    profile = profiles.load_profile(found)

    hardware = replace(profile.hardware, **ck.table(data.get("hardware", {}), "hardware",
                                                    specs_of(Hardware), "hardware"))
    if hardware.kernel_mb >= hardware.memory_mb:
        ck.fail("hardware.kernel_mb", f"{_num(hardware.kernel_mb)} MB leaves no memory of "
                f"{_num(hardware.memory_mb)} MB for the page cache", "less than hardware.memory_mb")
    footprint = replace(profile.footprint, **ck.table(data.get("footprint", {}), "footprint",
                                                      specs_of(Footprint), "footprint"))

    w = ck.table(data.get("workload", {}), "workload", workload_specs(), "workload")
    for lo, hi in (("session_requests_min", "session_requests_max"), ("burst_requests_min", "burst_requests_max")):
        a = w.get(lo, getattr(Workload, lo))
        b = w.get(hi, getattr(Workload, hi))
        if a > b:
            key = f"workload.{lo}" if lo in w else f"workload.{hi}"
            ck.fail(key, f"{lo} ({a}) is above {hi} ({b})", f"{lo} <= {hi}")
    kind = w.pop("fileset", "specweb99")
    spec_keys = {k: w.pop(k) for k in list(w) if k in _FILESET_LIMITS}
    synth_keys = {k: w.pop(k) for k in list(w) if k in _SYNTHETIC_LIMITS}
    if kind == "synthetic":
        if spec_keys:
            ck.fail(f"workload.{next(iter(spec_keys))}", "is a SPECweb99 file-set key, but fileset = \"synthetic\"",
                    ", ".join(_SYNTHETIC_LIMITS))
        fileset = SyntheticFileSet(**synth_keys)
    else:
        if synth_keys:
            ck.fail(f"workload.{next(iter(synth_keys))}", "needs fileset = \"synthetic\"",
                    ", ".join(_FILESET_LIMITS))
        fileset = FileSet(**spec_keys)
    try:
        workload = Workload(fileset=fileset, **w)
    except ValueError as e:
        ck.fail("workload", str(e))

    r = ck.table(data.get("run", {}), "run", run_specs(), "run")
    run = RunControl(**r)
    if run.replications > run.max_replications:
        key = "run.replications" if "replications" in r else "run.max_replications"
        ck.fail(key, f"replications ({run.replications}) is above max_replications ({run.max_replications})",
                "replications <= max_replications")
    if run.batches == 1 or (run.batches == 0 and run.replications < 2):
        key = "run.batches" if run.batches == 1 else "run.replications"
        ck.fail(key, "a confidence interval needs at least two samples",
                "batches >= 2 (batch means), or batches = 0 with replications >= 2")

    servers = tuple(_servers(ck, data.get("server", [])))
    _check_costs(ck, profile, servers)
    return Scenario(name=name, profile=replace(profile, footprint=footprint), hardware=hardware,
                    workload=workload, run=run, servers=servers,
                    description=head.get("description", ""), source=str(path))


def _servers(ck: Checker, tables: list) -> list[ServerSpec]:
    import models

    if not tables:
        ck.fail("server", "no servers", "one or more [[server]] tables, each with a label and an architecture")
    architectures = tuple(sorted(models.ARCHITECTURES))
    label_spec = FieldSpec("label", "str", "unique name of this server configuration")
    arch_spec = FieldSpec("architecture", "str", "the server's architecture", choices=architectures)
    seen: dict[str, int] = {}
    out = []
    for i, table in enumerate(tables):
        key = f"server[{i}]"
        for required in ("label", "architecture"):
            if required not in table:
                ck.fail(f"{key}.{required}", "missing", allowed_text(label_spec if required == "label" else arch_spec))
        label = ck.check(f"{key}.label", label_spec, table["label"])
        if not SAFE_LABEL.fullmatch(label):
            ck.fail(f"{key}.label", f"{label!r} is not a plain label",
                    "letters, digits, '.', '_', '+' and '-', starting with a letter or digit, at most 100")
        if label in seen:
            ck.fail(f"{key}.label", f"{label!r} is also the label of server[{seen[label]}]", "a unique label")
        seen[label] = i
        architecture = ck.check(f"{key}.architecture", arch_spec, table["architecture"])
        specs = _knobs_specs(architecture)
        knobs = {}
        for name, v in table.items():
            if name in ("label", "architecture"):
                continue
            if name not in specs:
                ck.fail(f"{key}.{name}", f"unknown knob {name!r} of {architecture}{suggest(name, specs)}",
                        f"label, architecture and the knobs of {architecture}: {', '.join(specs)}")
            knobs[name] = ck.check(f"{key}.{name}", specs[name], v)
        try:
            instance = models.knobs_class(architecture)(**knobs)
        except (ValueError, TypeError) as e:
            ck.fail(_blamed(ck, key, knobs, str(e)), str(e), f"the knobs of {architecture}: {', '.join(specs)}")
        out.append(ServerSpec(label=label, architecture=architecture, knobs=instance))
    return out


def _check_costs(ck: Checker, profile, servers) -> None:
    """Every operation a server's model charges must have a cost: better now than mid-run."""
    import models

    for i, spec in enumerate(servers):
        needed = getattr(models.module_of(spec.architecture), "OPERATIONS", ())
        missing = [op for op in needed if op not in profile.costs and op not in OPTIONAL_OPERATIONS]
        if missing:
            ck.fail(f"server[{i}].architecture", f"{spec.architecture} charges {', '.join(missing)}, which profile "
                    f"{profile.name!r} ({profile.source}) has no cost for",
                    "a profile with a [costs.OP] table for each operation the architecture charges")


def _blamed(ck: Checker, key: str, given: dict, message: str) -> str:
    """The key a dataclass's own complaint is about: a given knob it names (an overridden one first)."""
    found = [(m.start(), n) for n in given for m in [re.search(rf"\b{re.escape(n)}\b", message)] if m]
    named = [n for _, n in sorted(found)]  # in the order the message names them
    named.sort(key=lambda n: ck._override_of(f"{key}.{n}") is None)
    return f"{key}.{named[0]}" if named else key


# ---------------------------------------------------------------- writing out

def _plain(value):
    """JSON-able copy: tuples become lists, dataclasses dicts."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def scenario_to_dict(scenario: Scenario) -> dict:
    """The effective scenario (after profile defaults and overrides), JSON-able, for results.json."""
    from .profile import profile_to_dict

    wl = scenario.workload
    fs = wl.fileset
    if isinstance(fs, SyntheticFileSet):
        workload = {"fileset": "synthetic", "files": fs.files, "mean_bytes": fs.mean_bytes,
                    "size_distribution": fs.size_distribution}
    else:
        workload = {"fileset": "specweb99", "directories": fs.directories, "zipf_alpha": fs.zipf_alpha}
    workload.update({f.name: _plain(getattr(wl, f.name)) for f in dataclasses.fields(wl) if f.name != "fileset"})
    return {
        "name": scenario.name,
        "description": scenario.description,
        "source": scenario.source,
        "profile": profile_to_dict(scenario.profile),
        "hardware": _plain(scenario.hardware),
        "footprint": _plain(scenario.profile.footprint),
        "workload": workload,
        "run": _plain(scenario.run),
        "servers": [{"label": s.label, "architecture": s.architecture, "knobs": _plain(s.knobs)}
                    for s in scenario.servers],
    }
