"""The SPECweb99-style static file set, shared by the simulator and the live file-set generator.

PAPER.md section 7.5: each directory holds 4 classes of 9 files; class k file j
(j = 1..9) is `j * base_k` bytes with bases 102.4, 1,024, 10,240 and 102,400
bytes, so 36 sizes from 102 to 921,600 bytes; classes are requested 35/50/14/1 %
of the time; directories are chosen by Zipf (alpha = 1). Within a class the nine
files are ranked by popularity as SPECweb99's load generator does, the middle
sizes most popular (an assumption: PAPER.md names SEDA's mapping of 8 ranks, not
the exact 9-file rule), with Zipf weights over the ranks.

680 directories give the study's 24,480 files and 3.2 GB.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

CLASS_BASES = (102.4, 1024.0, 10240.0, 102400.0)
CLASS_SHARES = (0.35, 0.50, 0.14, 0.01)
FILES_PER_CLASS = 9
# popularity rank (1 = most popular) of file j = 1..9 within its class
RANK_OF_FILE = (8, 6, 4, 2, 1, 3, 5, 7, 9)
STUDY_DIRECTORIES = 680


@dataclass(frozen=True)
class FileSet:
    """A file set of `directories` directories; `zipf_alpha` skews directory popularity."""

    directories: int = STUDY_DIRECTORIES
    zipf_alpha: float = 1.0

    def __post_init__(self):
        if self.directories < 1:
            raise ValueError("a file set needs at least one directory")

    @property
    def n_files(self) -> int:
        return self.directories * len(CLASS_BASES) * FILES_PER_CLASS

    @cached_property
    def sizes(self) -> np.ndarray:
        """Size in bytes of every file, indexed as `directory*36 + class*9 + (j-1)`."""
        one_dir = np.array([int(base * j) for base in CLASS_BASES for j in range(1, FILES_PER_CLASS + 1)],
                           dtype=np.int64)
        return np.tile(one_dir, self.directories)

    @cached_property
    def probabilities(self) -> np.ndarray:
        """Probability that a request asks for each file (independent reference model)."""
        d = np.arange(1, self.directories + 1, dtype=float) ** -self.zipf_alpha
        d /= d.sum()
        r = 1.0 / np.array(RANK_OF_FILE, dtype=float)
        r /= r.sum()
        within = np.concatenate([share * r for share in CLASS_SHARES])
        return np.outer(d, within).ravel()

    @cached_property
    def _cdf(self) -> np.ndarray:
        c = np.cumsum(self.probabilities)
        c[-1] = 1.0
        return c

    @property
    def total_bytes(self) -> int:
        return int(self.sizes.sum())

    @property
    def mean_reply_bytes(self) -> float:
        """Mean file bytes per request."""
        return float(self.probabilities @ self.sizes)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Draw `n` file indices by popularity."""
        return np.searchsorted(self._cdf, rng.random(n), side="right")

    def path(self, index: int) -> str:
        """Relative URL path of file `index`, as the generator lays it out on disk."""
        d, rest = divmod(int(index), len(CLASS_BASES) * FILES_PER_CLASS)
        k, j = divmod(rest, FILES_PER_CLASS)
        return f"dir{d:05d}/class{k}_{j + 1}"


@dataclass(frozen=True)
class SyntheticFileSet:
    """`files` equally popular files whose sizes are fixed or drawn from an exponential law.

    Not the study's workload: it makes the simulator reduce to textbook queues
    (one file and a per-byte cost give M/D/1; exponential sizes give M/M/1).
    """

    files: int = 1
    mean_bytes: float = 10_000.0
    size_distribution: str = "fixed"  # or "exponential"
    seed: int = 0

    def __post_init__(self):
        if self.files < 1 or self.mean_bytes <= 0:
            raise ValueError("a synthetic file set needs files >= 1 and mean_bytes > 0")
        if self.size_distribution not in ("fixed", "exponential"):
            raise ValueError("size_distribution must be 'fixed' or 'exponential'")

    @property
    def n_files(self) -> int:
        return self.files

    @cached_property
    def sizes(self) -> np.ndarray:
        if self.size_distribution == "fixed":
            return np.full(self.files, int(round(self.mean_bytes)), dtype=np.int64)
        rng = np.random.default_rng(self.seed)
        return np.maximum(1, np.rint(rng.exponential(self.mean_bytes, self.files))).astype(np.int64)

    @cached_property
    def probabilities(self) -> np.ndarray:
        return np.full(self.files, 1.0 / self.files)

    @property
    def total_bytes(self) -> int:
        return int(self.sizes.sum())

    @property
    def mean_reply_bytes(self) -> float:
        return float(self.sizes.mean())

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.integers(0, self.files, n)

    def path(self, index: int) -> str:
        return f"file{int(index):07d}"
