"""The firmware's requests that end the running VM: reset, soft reset, deep sleep, a power cut
its flash writes ran into; light sleep, which does not end it; and the reset causes and wake
reasons the next VM is booted with.

The VM cannot be stopped from inside a handler, so a request answers ["halt"] (BusHalt) and
the board core (vboard/board.py) is told through ``events(kind, **details)`` right after, in
the loop; it stops the VM and boots the next one via ``BoardHardware.next_boot``. The board
core is also told "intr_taken" when the VM has raised KeyboardInterrupt for a console Ctrl-C.

Ops: reset, soft_reset, deepsleep, power.cut, lightsleep, intr_taken (``Lifecycle``).
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from vboard.bus import BusHalt

# machine.reset_cause() values and wake reasons of the ESP32 port (ports/esp32/modmachine.c)
PWRON_RESET, HARD_RESET, WDT_RESET, DEEPSLEEP_RESET, SOFT_RESET = 1, 2, 3, 4, 5
WAKE_UNDEFINED, EXT0_WAKE, EXT1_WAKE, TIMER_WAKE = 0, 2, 3, 4

# next_boot(cause): the reset cause it gives, and whether the chip lost power (RTC memory and
# the RTC clock gone)
_CAUSES = {
    "poweron": (PWRON_RESET, True),
    "powercut": (PWRON_RESET, True),
    "brownout": (PWRON_RESET, True),      # esp_reset_reason() BROWNOUT maps to PWRON_RESET
    "reset": (HARD_RESET, False),         # machine.reset(): esp_restart()
    "wdt": (WDT_RESET, False),
    "deepsleep": (DEEPSLEEP_RESET, False),
    "soft_reset": (SOFT_RESET, False),
    "soft": (SOFT_RESET, False),
}


def boot_cause(cause: str) -> tuple[int, bool]:
    """(machine.reset_cause(), whether the chip lost power) for a boot after ``cause``
    ("poweron", "powercut", "brownout", "reset", "wdt", "deepsleep", "soft_reset", "soft")."""
    try:
        return _CAUSES[cause]
    except KeyError:
        raise ValueError("unknown boot cause %r; one of %s"
                         % (cause, ", ".join(_CAUSES))) from None


class Lifecycle:
    """Going down, as the firmware asks. ``push``: the bus's push to the VM; ``events``: the
    board core's callback; ``stop_watchdog``: the watchdog does not outlive the VM;
    ``light_sleep(ms)``: what light sleep does to WiFi."""

    def __init__(self, push: Callable[..., Any], events: Callable[..., None],
                 stop_watchdog: Callable[[], None],
                 light_sleep: Callable[[int | None], None]) -> None:
        self._push = push
        self._events = events
        self._stop_watchdog = stop_watchdog
        self._light_sleep = light_sleep
        self.lightsleeps = 0

    def ops(self) -> dict[str, Callable[..., Any]]:
        return {"reset": self.reset, "soft_reset": self.soft_reset,
                "deepsleep": self.deepsleep, "power.cut": self.power_cut_op,
                "lightsleep": self.lightsleep, "intr_taken": self.intr_taken}

    def _going_down(self, kind: str, **details: Any) -> None:
        self._stop_watchdog()
        asyncio.get_running_loop().call_soon(lambda: self._events(kind, **details))
        raise BusHalt()

    def reset(self) -> None:
        self._going_down("reset")

    def intr_taken(self) -> None:
        self._events("intr_taken")

    def soft_reset(self) -> None:
        self._going_down("soft_reset")

    def deepsleep(self, ms: int | None, wake: Any = None) -> None:
        # ms 0: no timer (only a wake pin, which the board core does not model, or a reset)
        self._going_down("deepsleep", ms=ms or 0, wake=wake)

    def power_cut(self) -> None:
        """The world cut the power: the VM stops now; the board core calls
        next_boot("powercut") when power returns."""
        self._stop_watchdog()
        self._push("halt")
        self._events("powercut")

    def power_cut_op(self) -> None:
        """"power.cut": the VM's flash layer (_vflash.py) spent the world's write budget."""
        self.power_cut()
        raise BusHalt()

    def lightsleep(self, ms: int | None) -> None:
        self.lightsleeps += 1
        self._light_sleep(ms)
