"""Progress of a multi-step operation: one bar per step on a terminal, one line per step
otherwise (logs and CI stay readable: no carriage returns, no repainting).

    progress = Progress()
    with progress.step("firmware") as step:
        step.update(done, total)
        step.result = "v1.24.1 written"

A step that raises is shown as failed and the exception passes through.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

BAR_WIDTH = 30
REDRAW_INTERVAL_S = 0.1     # a terminal repaints at most this often per step
NAME_WIDTH = 10


class Step:
    def __init__(self, progress: "Progress", name: str) -> None:
        self._progress = progress
        self.name = name
        self.result = ""          # shown after the step (what it found or did)
        self.fraction = 0.0
        self.started = time.monotonic()
        self._drawn_at = 0.0

    def update(self, done: float, total: float) -> None:
        self.fraction = min(max(done / total, 0.0), 1.0) if total > 0 else 1.0
        now = time.monotonic()
        if self._progress.live and (now - self._drawn_at >= REDRAW_INTERVAL_S
                                    or self.fraction >= 1.0):
            self._drawn_at = now
            self._progress.draw(self, final=False)

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started


class Progress:
    """``live``: draw bars (default: when ``stream`` is a terminal). ``quiet``: print nothing."""

    def __init__(self, stream: TextIO | None = None, *, live: bool | None = None,
                 quiet: bool = False, prefix: str = "") -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.live = (_isatty(self.stream) if live is None else live) and not quiet
        self.quiet = quiet
        self.prefix = prefix
        self.steps: list[Step] = []

    def step(self, name: str) -> "_StepContext":
        return _StepContext(self, name)

    def draw(self, step: Step, *, final: bool, failed: bool = False) -> None:
        if self.quiet:
            return
        if failed:
            status = "failed"
        elif final:
            status = "%5.1f s" % step.elapsed_s
        else:
            status = "%3d %%" % round(step.fraction * 100)
        label = "%s%-*s" % (self.prefix, NAME_WIDTH, step.name)
        if self.live:
            filled = round(step.fraction * BAR_WIDTH) if not failed else 0
            bar = "[" + "#" * filled + "." * (BAR_WIDTH - filled) + "]"
            line = "%s %s %7s  %s" % (label, bar, status, step.result if final else "")
            self.stream.write("\r\x1b[K" + line.rstrip() + ("\n" if final else ""))
        elif final:
            self.stream.write(("%s %7s  %s" % (label, status, step.result)).rstrip() + "\n")
        self.stream.flush()


class _StepContext:
    def __init__(self, progress: Progress, name: str) -> None:
        self._step = Step(progress, name)
        self._progress = progress

    def __enter__(self) -> Step:
        self._progress.steps.append(self._step)
        if self._progress.live:
            self._progress.draw(self._step, final=False)
        return self._step

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self._step.fraction = 1.0
        self._progress.draw(self._step, final=True, failed=exc_type is not None)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
