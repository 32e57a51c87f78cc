"""The RTC domain: the calendar clock and RTC user memory, which survive deep sleep and resets
but not a loss of power.

The VM keeps the RTC clock itself as an offset from the simulated clock (VBOARD_RTC), so
reading the time costs no round trip; it reports changes (RTC().datetime(...)) with
rtc_set, and new RTC memory contents with rtc_mem, so that both outlive the VM. ``power_on()``
is what the chip sees after power-on: empty memory and the clock at ``clock_at_power_on``.

Ops: rtc_set, rtc_mem (``Rtc``).
"""

from __future__ import annotations

from typing import Any, Callable

from vboard.bus import BusValueError
from vboard.hardware.clock import Clock, sim_us

RTC_USER_MEM_MAX = 2048          # MICROPY_HW_RTC_USER_MEM_MAX
_SECONDS_1970_TO_2000 = 946684800


class Rtc:
    """RTC memory (``memory``) and the RTC clock (``offset_us``: RTC time since 2000-01-01
    minus simulated time, in microseconds). ``clock_at_power_on``: the RTC clock after
    power-on, in seconds since 2000-01-01 (the ESP32 starts at 0); None: the world's calendar
    (``world.now()`` taken as Unix time)."""

    def __init__(self, clock: Clock, clock_at_power_on: float | None) -> None:
        self._clock = clock
        self.clock_at_power_on = clock_at_power_on
        self.memory = b""
        self.offset_us = 0
        self.power_on()

    def ops(self) -> dict[str, Callable[..., Any]]:
        return {"rtc_set": self.rtc_set, "rtc_mem": self.rtc_mem}

    def power_on(self) -> None:
        self.memory = b""
        if self.clock_at_power_on is None:
            clock_us = sim_us(self._clock) - _SECONDS_1970_TO_2000 * 1000000
        else:
            clock_us = int(self.clock_at_power_on * 1e6)
        self.offset_us = clock_us - sim_us(self._clock)

    def rtc_set(self, offset_us: int) -> None:
        self.offset_us = offset_us

    def rtc_mem(self, data: str) -> None:
        payload = bytes.fromhex(data)
        if len(payload) > RTC_USER_MEM_MAX:
            raise BusValueError("buffer too long")
        self.memory = payload
