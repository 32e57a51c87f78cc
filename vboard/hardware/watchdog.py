"""machine.WDT: once started it cannot be stopped by the firmware; a feed that comes later
than the timeout (in simulated time) resets the chip.

The deadline is checked with a timer in the board's loop, at the simulated deadline converted
to wall time at the world's current speed, and again if a feed moved it meanwhile. On expiry
the VM is halted (["halt"] pushed) and the board core is told "wdt", which reboots it with
WDT_RESET.

Ops: wdt_start, wdt_feed (``Watchdog``).
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from vboard.hardware.clock import Clock


class Watchdog:
    """The task watchdog. ``loop()``: the board's loop once started (else the running one);
    ``push``: the bus's push to the VM; ``events``: the board core's lifecycle callback."""

    def __init__(self, clock: Clock, loop: Callable[[], asyncio.AbstractEventLoop | None],
                 push: Callable[..., Any], events: Callable[..., None]) -> None:
        self._clock = clock
        self._loop = loop
        self._push = push
        self._events = events
        self._timeout_s: float | None = None
        self._deadline = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def ops(self) -> dict[str, Callable[..., Any]]:
        return {"wdt_start": self.wdt_start, "wdt_feed": self.wdt_feed}

    def wdt_start(self, timeout_ms: int) -> None:
        self._timeout_s = timeout_ms / 1000
        self.wdt_feed()

    def wdt_feed(self) -> None:
        if self._timeout_s is None:
            return
        self._deadline = self._clock.now() + self._timeout_s
        if self._handle is None:
            self._arm()

    def _arm(self) -> None:
        remaining = max(0.0, self._deadline - self._clock.now())
        loop = self._loop() or asyncio.get_running_loop()
        self._handle = loop.call_later(remaining / self._clock.speed + 0.001, self._check)

    def _check(self) -> None:
        self._handle = None
        if self._timeout_s is None:
            return
        if self._clock.now() < self._deadline:
            self._arm()
            return
        self._timeout_s = None
        self._push("halt")
        self._events("wdt")

    def stop(self) -> None:
        """The chip goes down or resets (not on a soft reset: the ESP32 keeps its task
        watchdog running then)."""
        self._timeout_s = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
