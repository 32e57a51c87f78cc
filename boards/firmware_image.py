"""A MicroPython firmware file as micropython.org ships it: a merged image (bootloader,
partition table and app, written at the chip's bootloader offset) or an app image alone.

What the file is and whether it can be used is read here, once, for the fleet tools (which
flash it onto real boards) and the virtual board (which boots it from its flash file).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from boards.app_image import IMAGE_MAGIC, bootloader_offset, check_app_image
from boards.definitions import Partition
from boards.errors import AppImageError, BoardsError, FlashError
from boards.partition_table import (
    PARTITION_TABLE_OFFSET,
    PARTITION_TABLE_SIZE,
    parse_partition_table,
)

# FirmwareFileError.kind
UNREADABLE = "unreadable"      # the file cannot be read
INVALID = "invalid"            # not an image, damaged, or not MicroPython
TOO_LARGE = "too-large"        # its app does not fit its own partition table


class FirmwareFileError(BoardsError):
    """A firmware file that cannot be used; the message names the file and what to do."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class FirmwareImage:
    path: Path
    data: bytes                                  # the whole file
    project: str
    version: str
    date: str
    chip: str                                    # esptool's name of the chip it is built for
    partitions: tuple[Partition, ...] | None     # the table a merged image carries
    app: bytes                                   # the app image alone
    offset: int = 0        # a merged image: where it is written (the chip's bootloader offset)

    @property
    def merged(self) -> bool:
        """Bootloader + partition table + app (micropython.org's .bin), written at ``offset``."""
        return self.partitions is not None

    def app_partition(self) -> Partition:
        assert self.partitions is not None
        return next(p for p in self.partitions if p.type == "app")

    def __str__(self) -> str:
        return "%s %s" % (self.project, self.version)


def read_firmware_file(path: Path) -> FirmwareImage:
    """Read and check a firmware file: an ESP32 image whose app descriptor names MicroPython.
    FirmwareFileError says what is wrong with it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FirmwareFileError("cannot read the firmware file %s: %s" % (path, exc.strerror),
                                UNREADABLE) from None
    if not data or data[0] != IMAGE_MAGIC:
        raise FirmwareFileError("%s is not an ESP32 firmware image (it must start with 0xE9)"
                                % path, INVALID)
    partitions = None
    app = data
    # A merged image starts at its chip's bootloader offset (0x1000, 0x0 or 0x2000), so its
    # partition table sits at 0x8000 minus that; an app image has none there.
    from esptool.targets import CHIP_DEFS
    offset = next((o for o in sorted({c.BOOTLOADER_FLASH_OFFSET for c in CHIP_DEFS.values()})
                   if data[PARTITION_TABLE_OFFSET - o:PARTITION_TABLE_OFFSET - o + 2]
                   == b"\xaa\x50"), None)
    if offset is not None:
        table_at = PARTITION_TABLE_OFFSET - offset
        try:
            partitions = parse_partition_table(data[table_at:table_at + PARTITION_TABLE_SIZE])
        except FlashError as exc:
            raise FirmwareFileError("%s: its partition table is damaged (%s): download it "
                                    "again" % (path, exc), INVALID) from None
        app_part = next((p for p in partitions if p.type == "app"), None)
        if app_part is None:
            raise FirmwareFileError("%s: its partition table has no app partition" % path,
                                    INVALID)
        app = data[app_part.offset - offset:]
        if len(app) > app_part.size:
            raise FirmwareFileError("%s: its app (%s bytes) is larger than its own app "
                                    "partition (%s bytes): the file is damaged or not built "
                                    "for this layout" % (path, format(len(app), ","),
                                                         format(app_part.size, ",")), TOO_LARGE)
    project, version, date, chip = _describe_app(path, app)
    if project != "micropython":
        raise FirmwareFileError("%s is not MicroPython: its app descriptor names %r"
                                % (path, project), INVALID)
    if offset is not None and chip in CHIP_DEFS and bootloader_offset(chip) != offset:
        raise FirmwareFileError("%s: its layout starts at 0x%x, but the %s's bootloader is at "
                                "0x%x: the file is damaged or not a merged image" % (
                                    path, offset, chip.upper(), bootloader_offset(chip)),
                                INVALID)
    return FirmwareImage(path, data, project, version, date, chip, partitions, app,
                         offset or 0)


def _describe_app(path: Path, app: bytes) -> tuple[str, str, str, str]:
    from esptool.targets import CHIP_DEFS

    try:
        (project, version, _idf, date), _ = check_app_image(app)
    except AppImageError as exc:
        why = {"descriptor": "has no app descriptor (not an ESP-IDF app)",
               "digest": "is damaged (SHA-256 mismatch): download it again"}.get(
            exc.kind, "is not valid (%s): download it again" % exc)
        raise FirmwareFileError("%s: the app image %s" % (path, why), INVALID) from None
    chip_id = struct.unpack_from("<H", app, 12)[0]
    chip = next((name for name, cls in CHIP_DEFS.items()
                 if getattr(cls, "IMAGE_CHIP_ID", None) == chip_id), "chip id %d" % chip_id)
    return project, version, date, chip
