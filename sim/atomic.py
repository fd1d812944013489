"""Writing a file so that readers see the old content or the new, never half of it.

Every result, profile, manifest and report the project writes goes through here:
a temporary file beside the target, flushed to disk, then renamed over it; on any
failure the temporary file is removed and the target is left as it was.
"""
from __future__ import annotations

import io
import itertools
import os
from pathlib import Path
from typing import Callable

_counter = itertools.count()


def write_via(path, write: Callable[[io.IOBase], None], binary: bool = False) -> Path:
    """Call `write(file)` on a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{next(_counter)}.tmp")
    try:
        with open(tmp, "xb" if binary else "x", **({} if binary else {"encoding": "utf-8", "newline": ""})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def write_text(path, text: str) -> Path:
    return write_via(path, lambda f: f.write(text))


def write_bytes(path, data: bytes) -> Path:
    return write_via(path, lambda f: f.write(data), binary=True)
