"""MicroPython firmware images (a file, or the local firmware cache) and what a board already
runs (read from the chip the way its bootloader reads it: partition table, boot app, app
descriptor).

The firmware cache is a folder, ``$FLEET_FIRMWARE_CACHE`` or ``~/.cache/citytestbed/firmware``,
with one subfolder per board definition holding the images for that board as downloaded from
micropython.org (file names are free: the version is read from each image's app descriptor)::

    ~/.cache/citytestbed/firmware/
        esp32-devkitc/ESP32_GENERIC-20241129-v1.24.1.bin
        esp32-devkitc-ota/ESP32_GENERIC-OTA-20241129-v1.24.1.bin
        lolin-d32/ESP32_GENERIC-20240602-v1.23.0.bin

Nothing is downloaded: `fleet firmware add FILE --board NAME` checks an image and files it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from boards.app_image import IMAGE_MAGIC, parse_app_desc
from boards.definitions import SECTOR, Board, Partition
from boards.errors import FlashError
from boards.firmware_image import (
    INVALID,
    TOO_LARGE,
    UNREADABLE,
    FirmwareFileError,
    FirmwareImage,
    read_firmware_file,
)
from boards.otadata import select_boot_partition
from boards.partition_table import (
    PARTITION_TABLE_OFFSET,
    PARTITION_TABLE_SIZE,
    filesystem_partition,
    parse_partition_table,
)
from fleet.chip import chip_label
from fleet.errors import BAD_FIRMWARE, FLASH_TOO_SMALL, IMAGE_TOO_LARGE, NO_FIRMWARE, FleetError

CACHE_ENV = "FLEET_FIRMWARE_CACHE"
DEFAULT_CACHE = Path("~/.cache/citytestbed/firmware")
_APP_DESC_AT = 24 + 8     # image header (ESP32 extended) + first segment header
_HEAD_BYTES = 0x1000      # read from an app partition to find its descriptor


def cache_dir(explicit: str | Path | None = None) -> Path:
    """--firmware-cache DIR, else $FLEET_FIRMWARE_CACHE, else ~/.cache/citytestbed/firmware."""
    return Path(explicit or os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def load_image(path: Path) -> FirmwareImage:
    """Read and check a firmware file (boards/firmware_image.py); FleetError when it cannot be
    used, with the kind provisioning reports."""
    try:
        return read_firmware_file(path)
    except FirmwareFileError as exc:
        raise FleetError(str(exc), _FILE_ERROR_KINDS[exc.kind]) from None


_FILE_ERROR_KINDS = {UNREADABLE: NO_FIRMWARE, INVALID: BAD_FIRMWARE, TOO_LARGE: IMAGE_TOO_LARGE}


def version_key(version: str) -> tuple:
    """Order MicroPython versions: v1.9 < v1.24.0-preview < v1.24.0 < v1.24.1."""
    m = re.match(r"v?(\d+)\.(\d+)(?:\.(\d+))?(.*)", version)
    if not m:
        return (-1,)
    major, minor, patch, rest = m.groups()
    return (int(major), int(minor), int(patch or 0), 0 if rest else 1, rest)


def cached_images(cache: Path, board: Board) -> list[FirmwareImage]:
    """The usable images in the cache folder for ``board``, newest first (bad files skipped)."""
    folder = cache / board.name
    images = []
    for path in sorted(folder.glob("*.bin")) if folder.is_dir() else []:
        try:
            images.append(load_image(path))
        except FleetError:
            continue
    return sorted(images, key=lambda i: version_key(i.version), reverse=True)


def find_firmware(spec: str | None, board: Board, cache: Path) -> FirmwareImage:
    """``spec``: a file, a version ("v1.24.1") to find in the cache, or None for the newest
    image the cache has for ``board``."""
    if spec and (os.sep in spec or spec.endswith(".bin") or Path(spec).is_file()):
        image = load_image(Path(spec).expanduser())
    else:
        images = cached_images(cache, board)
        matching = [i for i in images if spec is None or i.version == spec
                    or i.version == "v" + spec]
        if not matching:
            have = ", ".join(i.version for i in images) or "nothing"
            raise FleetError("no MicroPython %sfor board %s in the firmware cache %s (it has "
                             "%s): add one with `fleet firmware add FILE --board %s`, or give "
                             "--firmware FILE" % (spec + " " if spec else "", board.name,
                                                 cache / board.name, have, board.name),
                             NO_FIRMWARE)
        image = matching[0]
    if image.chip != board.chip:
        raise FleetError("%s is built for the %s, board %s has an %s: use the image for the "
                         "%s" % (image.path, chip_label(image.chip), board.name,
                                 chip_label(board.chip), chip_label(board.chip)), BAD_FIRMWARE)
    return image


def add_to_cache(path: Path, board: Board, cache: Path) -> Path:
    """Check an image and copy it into the cache folder of ``board``."""
    image = load_image(path)
    if image.chip != board.chip:
        raise FleetError("%s is built for the %s, board %s has an %s"
                         % (path, chip_label(image.chip), board.name, chip_label(board.chip)),
                         BAD_FIRMWARE)
    if not image.merged:
        raise FleetError("%s is an app image only: the cache holds full images (bootloader, "
                         "partition table and app, as micropython.org's .bin files) so that a "
                         "blank board can be flashed from it" % path, BAD_FIRMWARE)
    folder = cache / board.name
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / Path(path).name
    shutil.copyfile(path, target)
    return target


# --- what the board runs ------------------------------------------------------------------------

@dataclass(frozen=True)
class BoardFirmware:
    """What a board's flash holds, read from the chip."""

    partitions: tuple[Partition, ...] | None
    app_partition: Partition | None
    project: str | None
    version: str | None
    problem: str = ""      # why it does not boot MicroPython ("" when it does)

    def filesystem(self) -> Partition | None:
        if self.partitions is None:
            return None
        try:
            return filesystem_partition(self.partitions)
        except FlashError:
            return None

    def __str__(self) -> str:
        if self.problem:
            return self.problem
        return "%s %s in %s" % (self.project, self.version, self.app_partition.name)


class ChipFlash:
    """boards.flash readers want an object with ``read(offset, length)``: this one reads the
    chip over esptool, a sector at a time, and keeps what it read."""

    def __init__(self, chip) -> None:
        self._chip = chip
        self._sectors: dict[int, bytes] = {}

    def read(self, offset: int, length: int) -> bytes:
        out = bytearray()
        end = offset + length
        while offset < end:
            base = offset - offset % SECTOR
            if base not in self._sectors:
                self._sectors[base] = self._chip.read(base, SECTOR)
            chunk = self._sectors[base][offset - base:min(end - base, SECTOR)]
            out += chunk
            offset += len(chunk)
        return bytes(out)


def read_board_firmware(chip) -> BoardFirmware:
    flash = ChipFlash(chip)
    try:
        parts = parse_partition_table(flash.read(PARTITION_TABLE_OFFSET, PARTITION_TABLE_SIZE))
    except FlashError:
        return BoardFirmware(None, None, None, None, "no partition table (a blank board)")
    try:
        app_part, _why = select_boot_partition(flash, parts, commit=False)
    except FlashError as exc:
        return BoardFirmware(parts, None, None, None, str(exc))
    head = flash.read(app_part.offset, _HEAD_BYTES)
    desc = parse_app_desc(head[_APP_DESC_AT:]) if head[0] == IMAGE_MAGIC else None
    if desc is None:
        return BoardFirmware(parts, app_part, None, None, "no app in %s" % app_part.name)
    project, version, _idf, _date = desc
    problem = "" if project == "micropython" else "%s runs %r, not MicroPython" % (
        app_part.name, project)
    return BoardFirmware(parts, app_part, project, version, problem)


def firmware_plan(image: FirmwareImage, board_fw: BoardFirmware, chip, *,
                  force: bool = False) -> tuple[int, bytes, str]:
    """(offset, data, reason) to write, or (0, b"", "") when the board already runs
    ``image`` intact (and ``force`` is not set). Refuses images that cannot fit this chip."""
    flash_size = chip.info.flash_size
    if image.merged:
        assert image.partitions is not None
        need = max(p.offset + p.size for p in image.partitions)
        if need > flash_size:
            raise FleetError("%s's partition table needs %d MB of flash, this chip has %d MB: "
                             "use the image built for this board" % (
                                 image.path.name, -(-need // (1 << 20)), flash_size >> 20),
                             FLASH_TOO_SMALL)
        offset, data = image.offset, image.data
    else:
        if board_fw.app_partition is None:
            raise FleetError("%s is an app image only, and this board has no firmware to put "
                             "it into: use the full image (micropython.org's .bin with "
                             "bootloader and partition table)" % image.path.name, BAD_FIRMWARE)
        if len(image.app) > board_fw.app_partition.size:
            raise FleetError("%s (%s bytes) does not fit the board's app partition %s (%s "
                             "bytes): use a full image whose partition table has room for it"
                             % (image.path.name, format(len(image.app), ","),
                                board_fw.app_partition.name,
                                format(board_fw.app_partition.size, ",")), IMAGE_TOO_LARGE)
        offset, data = board_fw.app_partition.offset, image.app
    reason = _why_write(image, board_fw, chip) or ("forced" if force else "")
    return (offset, data, reason) if reason else (0, b"", "")


def _why_write(image: FirmwareImage, board_fw: BoardFirmware, chip) -> str:
    if board_fw.partitions is None or board_fw.app_partition is None:
        return board_fw.problem
    if image.merged and board_fw.partitions != image.partitions:
        return "the board's partition table differs from the image's"
    if board_fw.problem:
        return board_fw.problem
    if board_fw.version != image.version:
        return "the board runs %s" % board_fw.version
    if chip.md5(board_fw.app_partition.offset, len(image.app)) != _md5(image.app):
        return "the board's %s image is damaged" % board_fw.version
    if image.merged:
        table_at = PARTITION_TABLE_OFFSET - image.offset
        if chip.md5(image.offset, table_at) != _md5(image.data[:table_at]):
            return "the board's bootloader differs from the image's"
    return ""


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()
