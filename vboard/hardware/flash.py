"""The firmware's raw flash writes (esp.flash_write / flash_erase, esp32.Partition writes)
onto the board's flash file (vboard/flash.py ``FlashFile``), with NOR semantics: programming
only clears bits, erasing works on whole sectors.

A write that the flash file refuses with PowerCut (its ``before_write`` hook: a power-cut
fault) does not happen; the VM is halted and the board core told "powercut" through
``power_cut``. Other flash errors reach the firmware as OSError(EIO).

Ops: flash_write, flash_erase (``FlashWrites``).
"""

from __future__ import annotations

import errno
from typing import Any, Callable

from boards.errors import FlashError
from vboard.bus import BusError, BusHalt
from vboard.flash import FlashFile, PowerCut


class FlashWrites:
    """Writes from the VM into ``flash``; ``power_cut()``: what a power cut does to the board
    (``Lifecycle.power_cut``)."""

    def __init__(self, flash: FlashFile, power_cut: Callable[[], None]) -> None:
        self._flash = flash
        self._power_cut = power_cut

    def ops(self) -> dict[str, Callable[..., Any]]:
        return {"flash_write": self.flash_write, "flash_erase": self.flash_erase}

    def flash_write(self, offset: int, data: str, mode: int) -> None:
        """mode 0: program (NOR: bits only clear); 1: erase [offset, +len) first (must be
        sector aligned); 2: erase the covering sectors, keeping bytes outside the range."""
        payload = bytes.fromhex(data)
        try:
            if mode == 2:
                self._flash.write(offset, payload)
                return
            if mode == 1:
                self._flash.erase(offset, len(payload))
            self._flash.program(offset, payload)
        except PowerCut:
            self._power_cut()
            raise BusHalt() from None
        except FlashError as exc:
            raise BusError(errno.EIO, str(exc)) from None

    def flash_erase(self, offset: int, length: int) -> None:
        try:
            self._flash.erase(offset, length)
        except FlashError as exc:
            raise BusError(errno.EIO, str(exc)) from None
