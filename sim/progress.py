"""Progress of a batch of runs on stderr: an overall bar and a bar for each point in progress.

On a terminal the bars are redrawn in place and each finished point leaves one
line above them; elsewhere (a log file, a test) only the finished points' lines
and a line per tenth of the runs are written, so logs stay short.
"""
from __future__ import annotations

import sys
import time

BAR = 24
MAX_POINT_LINES = 6


def _bar(frac: float, width: int = BAR) -> str:
    n = max(0, min(width, int(round(width * frac))))
    return "#" * n + "-" * (width - n)


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 60}:{s % 60:02d}"


class Progress:
    """Counts runs (replications) and points (a server at a rate in one sweep point)."""

    def __init__(self, label: str, enabled: bool = True, stream=None):
        self.label = label
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.monotonic()
        self.points: dict = {}      # id -> [name, done, planned]
        self.active: dict = {}      # ids with runs in flight, in order of start
        self.total_points = 0
        self.done_points = 0
        self.runs_planned = 0
        self.runs_done = 0
        self.runs_cached = 0
        self._drawn = 0
        self._decile = -1

    # -- counting ------------------------------------------------------------------------
    def add_point(self, pid, name: str, planned: int) -> None:
        self.points[pid] = [name, 0, planned]
        self.total_points += 1
        self.runs_planned += planned

    def plan_more(self, pid, n: int = 1) -> None:
        self.points[pid][2] += n
        self.runs_planned += n

    def run_done(self, pid, cached: bool = False) -> None:
        p = self.points[pid]
        p[1] += 1
        self.runs_done += 1
        if cached:
            self.runs_cached += 1
        self._update()

    def submitted(self, pid) -> None:
        """A run of this point has gone to a worker: the point is in progress."""
        self.active.setdefault(pid, None)

    def point_done(self, pid, text: str) -> None:
        self.done_points += 1
        self.active.pop(pid, None)
        if not self.enabled:
            return
        line = f"[{self.done_points}/{self.total_points}] {self.points[pid][0]}: {text}"
        if self.tty:
            self._erase()
            self.stream.write(line + "\n")
            self._draw()
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self._erase()
            self.stream.write(self._overall() + "\n")
            self.stream.flush()

    # -- drawing -------------------------------------------------------------------------
    def _overall(self) -> str:
        elapsed = time.monotonic() - self.start
        frac = self.runs_done / max(1, self.runs_planned)
        fresh = self.runs_done - self.runs_cached
        left = ""
        if 0 < fresh and self.runs_done < self.runs_planned:
            rate = elapsed / fresh
            left = f"  ~{_clock(rate * (self.runs_planned - self.runs_done))} left"
        cached = f" ({self.runs_cached} cached)" if self.runs_cached else ""
        return (f"{self.label} [{_bar(frac)}] {self.runs_done}/{self.runs_planned} runs{cached}  "
                f"{self.done_points}/{self.total_points} points  {_clock(elapsed)}{left}")

    def _lines(self) -> list[str]:
        lines = [self._overall()]
        ids = list(self.active)
        for pid in ids[:MAX_POINT_LINES]:
            name, done, planned = self.points[pid]
            lines.append(f"  {name[:60]:<60} [{_bar(done / max(1, planned), 10)}] {done}/{planned}")
        if len(ids) > MAX_POINT_LINES:
            lines.append(f"  ... and {len(ids) - MAX_POINT_LINES} more points in progress")
        return lines

    def _erase(self) -> None:
        if self._drawn:
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def _draw(self) -> None:
        lines = self._lines()
        self.stream.write("\n".join(lines) + "\n")
        self._drawn = len(lines)

    def _update(self) -> None:
        if not self.enabled:
            return
        if self.tty:
            self._erase()
            self._draw()
            self.stream.flush()
            return
        decile = int(10 * self.runs_done / max(1, self.runs_planned))
        if decile > self._decile:
            self._decile = decile
            self.stream.write(self._overall() + "\n")
            self.stream.flush()
