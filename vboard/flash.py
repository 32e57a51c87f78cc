"""The virtual board's SPI flash: one file with NOR semantics, and the power cut that can
stop a write.

NOR flash: erase sets a 4 KB sector to 0xFF; programming can only clear bits (new = old AND
data). littlefs and the ROM's write path both rely on erase-before-program, so a missed erase is
a visible bug here as on the chip. What the flash holds is read with boards/ (partition table,
app images, otadata), as the ROM and the second-stage bootloader read it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from boards.definitions import SECTOR
from boards.errors import FlashError
from vboard.errors import VBoardError


class PowerCut(VBoardError):
    """Raised by a write that the world's power-cut fault stopped (the data was not written)."""


class FlashFile:
    """A flash chip backed by a file of exactly ``size`` bytes (created erased when missing).

    ``before_write`` (if set) is called with (offset, length) before every program operation and
    may raise PowerCut: the write then does not happen, which is what a brown-out mid-write does
    to the sector being programmed at worst (we model the whole write as lost).
    """

    def __init__(self, path: Path, size: int) -> None:
        self.path = Path(path)
        self.size = size
        if not self.path.exists():
            with open(self.path, "wb") as f:
                f.truncate(0)
                f.write(b"\xff" * size)
        actual = self.path.stat().st_size
        if actual != size:
            raise FlashError("%s is %d bytes, but this board's flash is %d bytes"
                             % (self.path, actual, size))
        self._f = open(self.path, "r+b", buffering=0)
        self.before_write: Callable[[int, int], None] | None = None
        self.writes = 0

    def close(self) -> None:
        self._f.close()

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise FlashError("flash access 0x%x+0x%x beyond the %d-byte chip"
                             % (offset, length, self.size))

    def read(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        self._f.seek(offset)
        return self._f.read(length)

    def erase(self, offset: int, length: int) -> None:
        if offset % SECTOR or length % SECTOR:
            raise FlashError("erase 0x%x+0x%x is not sector aligned" % (offset, length))
        self._check(offset, length)
        self._f.seek(offset)
        self._f.write(b"\xff" * length)

    def program(self, offset: int, data: bytes) -> None:
        """NOR program: each byte becomes old AND new."""
        self._check(offset, len(data))
        if self.before_write is not None:
            self.before_write(offset, len(data))
        old = self.read(offset, len(data))
        new = (int.from_bytes(old, "little") & int.from_bytes(data, "little")).to_bytes(
            len(data), "little")
        self._f.seek(offset)
        self._f.write(new)
        self.writes += 1

    def write(self, offset: int, data: bytes) -> None:
        """Erase the sectors covering [offset, offset+len) and program ``data`` (the ROM's and
        esptool's write path); bytes of those sectors outside the range are kept."""
        if not data:
            return
        start = offset - offset % SECTOR
        end = -(-(offset + len(data)) // SECTOR) * SECTOR
        self._check(start, end - start)
        keep = bytearray(self.read(start, end - start))
        keep[offset - start:offset - start + len(data)] = data
        if self.before_write is not None:
            self.before_write(offset, len(data))
        self.erase(start, end - start)
        self._f.seek(start)
        self._f.write(keep)
        self.writes += 1

    def sync(self) -> None:
        os.fsync(self._f.fileno())

