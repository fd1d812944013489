"""`simrun fileset DIR`: lay out the SPECweb99-style file set on disk.

The sizes and names come from `sim.fileset.FileSet` (one description for the
simulator and the live servers). Each file's bytes are drawn from a generator
seeded with (seed, file index), so the content of a file does not depend on
which other files a run had to write: same seed, same bytes, file by file.

Safe to run again: a file already present with the right size is kept, each
file is written under a temporary name and renamed, and a manifest
(`DIR/.fileset.json`, written first with `complete: false`) records the
directory count and seed so that a later run, or the load driver, can check it
uses the right set. A DIR holding anything else (files we did not write, or a
set made with another seed) is refused unless `--force`, which rewrites every
file of the set and leaves the other files alone.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass

import numpy as np

from sim.atomic import write_text
from sim.fileset import CLASS_BASES, FILES_PER_CLASS, FileSet

MANIFEST = ".fileset.json"
FORMAT = 1
DEFAULT_DIRECTORIES = 10
_OURS_DIR = re.compile(r"dir\d{5}$")
_OURS_FILE = re.compile(r"class\d_\d$")
_OURS_TMP = re.compile(r"\.class\d_\d\.tmp\.\d+$")


class FileSetError(Exception):
    """A problem with the target directory or the arguments, told in one line."""


@dataclass
class Summary:
    root: str
    directories: int
    seed: int
    n_files: int
    total_bytes: int
    written_files: int
    written_bytes: int
    kept_files: int
    seconds: float


def file_bytes(seed: int, index: int, size: int) -> bytes:
    """The content of file `index`: pseudo-random bytes from a generator seeded by (seed, index)."""
    return np.random.default_rng([int(seed), int(index)]).bytes(int(size))


def read_manifest(root: str) -> dict:
    """The manifest of a generated set; FileSetError if there is none or it is unreadable."""
    path = os.path.join(root, MANIFEST)
    try:
        with open(path, encoding="utf-8") as f:
            m = json.load(f)
    except FileNotFoundError:
        raise FileSetError(f"{root}: no {MANIFEST}; generate the set with `simrun fileset {root}`") from None
    except (OSError, ValueError) as e:
        raise FileSetError(f"{path}: unreadable manifest ({e})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT or not isinstance(m.get("directories"), int):
        raise FileSetError(f"{path}: not a file-set manifest of format {FORMAT}")
    return m


def check(root: str, fileset: FileSet | None = None) -> dict:
    """Check that `root` holds a complete generated set (of `fileset`'s size if given); return the manifest."""
    m = read_manifest(root)
    if not m.get("complete"):
        raise FileSetError(f"{root}: the file set is incomplete; run `simrun fileset {root}` again")
    if fileset is not None and m["directories"] < fileset.directories:
        raise FileSetError(f"{root}: holds {m['directories']} directories, the workload needs {fileset.directories}")
    return m


def _write_manifest(root: str, manifest: dict) -> None:
    write_text(os.path.join(root, MANIFEST), json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def _survey(root: str, fileset: FileSet) -> tuple[list[str], list[str]]:
    """(foreign entries, our stale temporary files) found under root."""
    per_dir = len(CLASS_BASES) * FILES_PER_CLASS
    expected_dirs = {os.path.dirname(fileset.path(d * per_dir)) for d in range(fileset.directories)}
    foreign, stale = [], []
    for name in sorted(os.listdir(root)):
        full = os.path.join(root, name)
        if name == MANIFEST:
            continue
        if re.fullmatch(rf"\.{re.escape(MANIFEST)}\.tmp\.\d+", name):
            stale.append(full)
            continue
        if not (_OURS_DIR.match(name) and name in expected_dirs and os.path.isdir(full)
                and not os.path.islink(full)):
            foreign.append(name)
            continue
        for sub in os.listdir(full):
            p = os.path.join(full, sub)
            if _OURS_TMP.match(sub):
                stale.append(p)
            elif not (_OURS_FILE.match(sub) and os.path.isfile(p) and not os.path.islink(p)):
                foreign.append(f"{name}/{sub}")
    return foreign, stale


class _Progress:
    """A one-line progress bar on stderr, drawn only for runs long enough to need one."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.enabled = max(total, 1), 0, enabled
        self.tty = sys.stderr.isatty()
        self.t0 = time.monotonic()
        self.last_pct = -1

    def add(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        pct = int(100 * self.done / self.total)
        step = 1 if self.tty else 10
        if pct // step != self.last_pct // step:
            self.last_pct = pct
            bar = "#" * (pct // 4) + "." * (25 - pct // 4)
            rate = self.done / max(time.monotonic() - self.t0, 1e-6) / 1e6
            text = f"fileset [{bar}] {pct:3d}% {self.done / 1e6:,.0f} MB {rate:,.0f} MB/s"
            sys.stderr.write(("\r" + text) if self.tty else (text + "\n"))
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()


def generate(root: str, fileset: FileSet, seed: int = 0, *, force: bool = False, checksums: bool = False,
             progress: bool = False) -> Summary:
    """Write the files of `fileset` under `root` with content seeded by `seed`; return what was done."""
    t0 = time.monotonic()
    seed = int(seed)
    if seed < 0:
        raise FileSetError(f"seed must be >= 0, got {seed}")
    if os.path.exists(root) and not os.path.isdir(root):
        raise FileSetError(f"{root}: exists and is not a directory")
    os.makedirs(root, exist_ok=True)

    old = None
    if os.path.exists(os.path.join(root, MANIFEST)):
        old = read_manifest(root) if not force else None
    foreign, stale = _survey(root, fileset)
    has_set_files = any(os.path.exists(os.path.join(root, fileset.path(i))) for i in range(fileset.n_files))
    if not force:
        if foreign:
            more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
            raise FileSetError(f"{root}: holds files that are not part of a {fileset.directories}-directory set "
                               f"({', '.join(foreign[:3])}{more}); use another DIR or --force")
        if old is None and has_set_files:
            raise FileSetError(f"{root}: holds set files but no {MANIFEST} (unknown seed); use --force to rewrite")
        if old is not None and old.get("seed") != seed:
            raise FileSetError(f"{root}: was generated with seed {old.get('seed')}, not {seed}; "
                               "use --force to rewrite")
    for p in stale:
        os.unlink(p)

    sizes = fileset.sizes
    manifest = {"format": FORMAT, "directories": fileset.directories, "seed": seed, "n_files": fileset.n_files,
                "total_bytes": fileset.total_bytes, "complete": False}
    _write_manifest(root, manifest)

    bar = _Progress(fileset.total_bytes, progress and fileset.total_bytes >= 64 << 20)
    written = written_bytes = kept = 0
    digests = {}
    made_dirs = set()
    for i in range(fileset.n_files):
        rel, size = fileset.path(i), int(sizes[i])
        path = os.path.join(root, rel)
        d = os.path.dirname(path)
        if d not in made_dirs:
            os.makedirs(d, exist_ok=True)
            made_dirs.add(d)
        data = None
        if not force and os.path.isfile(path) and os.path.getsize(path) == size:
            kept += 1
        else:
            data = file_bytes(seed, i, size)
            tmp = os.path.join(d, f".{os.path.basename(path)}.tmp.{os.getpid()}")
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
            written += 1
            written_bytes += size
        if checksums:
            if data is None:
                with open(path, "rb") as f:
                    data = f.read()
            digests[rel] = hashlib.sha256(data).hexdigest()
        bar.add(size)
    bar.close()

    manifest["complete"] = True
    if checksums:
        manifest["sha256"] = digests
    _write_manifest(root, manifest)
    return Summary(root=root, directories=fileset.directories, seed=seed, n_files=fileset.n_files,
                   total_bytes=fileset.total_bytes, written_files=written, written_bytes=written_bytes,
                   kept_files=kept, seconds=round(time.monotonic() - t0, 3))


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise FileSetError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="simrun fileset",
                description="Generate the SPECweb99-style file set (36 files per directory, 102 B to 900 KB, "
                            "4.9 MB per directory) under DIR, with seeded content. Safe to rerun: present files "
                            "of the right size are kept.")
    p.add_argument("dir", metavar="DIR", help="target directory (created if missing)")
    p.add_argument("--directories", type=int, default=DEFAULT_DIRECTORIES,
                   help=f"number of directories (default {DEFAULT_DIRECTORIES}; 680 is the study's 3.2 GB set)")
    p.add_argument("--seed", type=int, default=0, help="content seed (default 0)")
    p.add_argument("--force", action="store_true",
                   help="rewrite every file, even if present, and proceed if DIR holds other files (left alone)")
    p.add_argument("--checksums", action="store_true", help="record each file's sha256 in the manifest")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parser().parse_args(argv)
        if args.directories < 1 or args.directories > 99999:
            raise FileSetError(f"--directories must be between 1 and 99999, got {args.directories}")
        fs = FileSet(directories=args.directories)
        s = generate(args.dir, fs, args.seed, force=args.force, checksums=args.checksums, progress=not args.quiet)
    except FileSetError as e:
        print(f"simrun fileset: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"simrun fileset: error: {e.filename or args.dir}: {e.strerror}", file=sys.stderr)
        return 1
    print(f"{s.root}: {s.directories} directories, {s.n_files} files, {s.total_bytes / 1e6:,.1f} MB "
          f"(seed {s.seed}): wrote {s.written_files} files ({s.written_bytes / 1e6:,.1f} MB), "
          f"kept {s.kept_files}, {s.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
