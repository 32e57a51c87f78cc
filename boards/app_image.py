"""ESP32 app images: header, segments, checksum and SHA-256, and the app descriptor
(esp_app_desc_t) that names the project and its version; merged images as micropython.org
ships them; stand-in images for tests and virtual boards.

esptool reads and writes the image format; this module reads the descriptor and the
layout around it.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

from boards.definitions import Board, FlashReader, Partition
from boards.errors import AppImageError, FlashError
from boards.partition_table import PARTITION_TABLE_OFFSET, build_partition_table

APP_DESC_MAGIC = 0xABCD5432
IMAGE_MAGIC = 0xE9


@dataclass(frozen=True)
class AppInfo:
    project: str
    version: str
    idf_version: str
    date: str
    partition: str
    size: int


_APP_DESC = struct.Struct("<II8s32s32s16s16s32s32s")


def parse_app_desc(segment_data: bytes) -> tuple[str, str, str, str] | None:
    """(project, version, idf_version, date) from an esp_app_desc_t, or None without one."""
    if len(segment_data) < _APP_DESC.size:
        return None
    magic, _sv, _r, version, project, _time, date, idf, _sha = _APP_DESC.unpack_from(
        segment_data)
    if magic != APP_DESC_MAGIC:
        return None

    def text(b: bytes) -> str:
        return b.split(b"\x00", 1)[0].decode("ascii", "replace")
    return text(project), text(version), text(idf), text(date)



def check_app_image(data: bytes) -> tuple[tuple[str, str, str, str], int]:
    """Validate an app image (header, segments, checksum, SHA-256) with esptool's reader and
    read its descriptor: ((project, version, idf_version, date), length in bytes).
    AppImageError when the bootloader would refuse it."""
    from esptool.bin_image import ESP32FirmwareImage  # esptool parses images, we don't

    try:
        image = ESP32FirmwareImage(io.BytesIO(data))
    except Exception as exc:  # esptool raises FatalError and struct errors alike
        raise AppImageError("invalid", str(exc)) from None
    if image.append_digest and image.stored_digest != image.calc_digest:
        raise AppImageError("digest", "SHA-256 digest mismatch")
    desc = parse_app_desc(image.segments[0].data) if image.segments else None
    if desc is None:
        raise AppImageError("descriptor", "no app descriptor")
    return desc, image.data_length or 0


def read_app(flash: FlashReader, part: Partition) -> AppInfo:
    """The app image in ``part``, checked as check_app_image() does; FlashError when the
    bootloader would refuse it."""
    head = flash.read(part.offset, 1)
    if head[0] != IMAGE_MAGIC:
        raise FlashError("invalid header: 0x%08x" % struct.unpack(
            "<I", flash.read(part.offset, 4))[0])
    try:
        desc, length = check_app_image(flash.read(part.offset, part.size))
    except AppImageError as exc:
        raise FlashError("app image in %s: %s" % (part.name, exc)) from None
    project, version, idf, date = desc
    return AppInfo(project, version, idf, date, part.name, length)


def build_app_image(project: str, version: str, *, idf_version: str = "v5.2.2",
                    date: str = "Jan  1 2025", payload_size: int = 1024) -> bytes:
    """A stand-in ESP32 app image: valid header, a DROM segment starting with esp_app_desc_t,
    checksum and SHA-256, as esptool's ``elf2image`` would produce. Real images from
    micropython.org are recognised by the same reader."""
    from esptool.bin_image import ELFSection, ESP32FirmwareImage

    desc = _APP_DESC.pack(APP_DESC_MAGIC, 0, b"\x00" * 8, version.encode()[:32],
                          project.encode()[:32], b"00:00:00", date.encode()[:16],
                          idf_version.encode()[:32], b"\x00" * 32)
    desc = desc.ljust(256, b"\x00")
    image = ESP32FirmwareImage()
    image.entrypoint = 0x40080000
    image.segments = [
        ELFSection(b".flash.appdesc", 0x3F400020, desc + b"\x00" * payload_size, 0),
        ELFSection(b".iram0.text", 0x40080000, b"\x00" * 64, 0),
    ]
    out = image.save(None)
    if out is None:
        raise FlashError("esptool did not return the image bytes")
    return bytes(out)


def bootloader_offset(chip: str) -> int:
    """Where the chip's ROM loads the second-stage bootloader from, and so where a merged
    image starts: 0x1000 on the ESP32, 0x0 on the S3 and C3 (esptool knows each chip's)."""
    from esptool.targets import CHIP_DEFS
    return CHIP_DEFS[chip].BOOTLOADER_FLASH_OFFSET


def merged_image(board: Board, app: bytes, *, bootloader: bytes | None = None) -> bytes:
    """What micropython.org ships as a merged .bin: written at the chip's bootloader offset,
    holding the bootloader, the partition table (at 0x8000) and the app (at the first app
    partition)."""
    start = bootloader_offset(board.chip)
    app_part = next(p for p in board.partitions if p.type == "app")
    out = bytearray(b"\xff" * (app_part.offset + len(app) - start))
    if bootloader is None:
        bootloader = build_bootloader_image()
    out[0:len(bootloader)] = bootloader
    table = build_partition_table(board.partitions)
    out[PARTITION_TABLE_OFFSET - start:PARTITION_TABLE_OFFSET - start + len(table)] = table
    out[app_part.offset - start:] = app
    return bytes(out)



def build_bootloader_image() -> bytes:
    """A stand-in second-stage bootloader (a valid ESP32 image at 0x1000); the virtual board
    checks that one is there, as the ROM does, and then boots by the partition table."""
    from esptool.bin_image import ELFSection, ESP32FirmwareImage

    image = ESP32FirmwareImage(append_digest=True)
    image.entrypoint = 0x40080400
    image.segments = [ELFSection(b".iram_loader.text", 0x40078000, b"\x00" * 256, 0)]
    out = image.save(None)
    if out is None:
        raise FlashError("esptool did not return the image bytes")
    return bytes(out)
