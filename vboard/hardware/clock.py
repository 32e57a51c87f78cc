"""The world's clock as the hardware parts see it, and a stand-alone one for tests.

Device models, the watchdog, WiFi association and the RTC all run on simulated seconds
(``now()``) that advance at ``speed`` times wall time; the real world (vboard/world.py) is one
such clock, ``SimClock`` is the smallest. The parts take a ``Clock`` rather than the whole
world when time is all they need.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Simulated seconds (``now()``) advancing at ``speed`` x wall time."""

    @property
    def speed(self) -> float: ...

    def now(self) -> float: ...


class SimClock:
    """A world clock for tests and simple setups: simulated seconds running at ``speed`` times
    wall time (the real vboard/world.py provides the same ``now()`` and ``speed``)."""

    def __init__(self, speed: float = 1.0, start_s: float = 0.0) -> None:
        self.speed = speed
        self._mono0 = time.monotonic()
        self._sim0 = start_s

    def now(self) -> float:
        return self._sim0 + (time.monotonic() - self._mono0) * self.speed


def sim_us(clock: Clock) -> int:
    """The clock's now, in whole simulated microseconds (the VM's and the RTC's unit)."""
    return int(clock.now() * 1e6)
