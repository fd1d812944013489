"""SYMPED: several SPED processes sharing one listen socket (PAPER.md section 4.2)."""
from __future__ import annotations

from .sped import Knobs  # noqa: F401  (same knobs: processes > 1 is the point)
