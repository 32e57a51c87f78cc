"""The virtual board's SPI flash: one file, NOR semantics, the ESP32 partition table and app
images, read the way the ROM and the second-stage bootloader read them.

NOR flash: erase sets a 4 KB sector to 0xFF; programming can only clear bits (new = old AND
data). littlefs and the ROM's write path both rely on erase-before-program, so a missed erase is
a visible bug here as on the chip.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from boards.definitions import Board, Partition

SECTOR = 4096
PARTITION_TABLE_OFFSET = 0x8000
PARTITION_TABLE_SIZE = 0xC00
_ENTRY = struct.Struct("<2sBBII16sI")
_ENTRY_MAGIC = b"\xaa\x50"
_MD5_MAGIC = b"\xeb\xeb"
_TYPES = {"app": 0x00, "data": 0x01}
_SUBTYPES = {
    "app": {"factory": 0x00, "ota_0": 0x10, "ota_1": 0x11, "test": 0x20},
    "data": {"ota": 0x00, "phy": 0x01, "nvs": 0x02, "coredump": 0x03, "nvs_keys": 0x04,
             "efuse": 0x05, "undefined": 0x06, "fat": 0x81, "spiffs": 0x82, "littlefs": 0x83,
             "romfs": 0x84},
}
APP_DESC_MAGIC = 0xABCD5432
IMAGE_MAGIC = 0xE9


class FlashError(Exception):
    """The flash holds something the boot path cannot use; the message says what."""


class PowerCut(Exception):
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


# --- partition table ----------------------------------------------------------------------------

def build_partition_table(partitions: tuple[Partition, ...]) -> bytes:
    """The binary table MicroPython's image carries at 0x8000 (gen_esp32part.py's format)."""
    out = bytearray()
    for p in partitions:
        name = p.name.encode()[:16].ljust(16, b"\x00")
        out += _ENTRY.pack(_ENTRY_MAGIC, _TYPES[p.type], _SUBTYPES[p.type][p.subtype],
                           p.offset, p.size, name, 0)
    out += _MD5_MAGIC + b"\xff" * 14 + hashlib.md5(out).digest()
    return bytes(out.ljust(PARTITION_TABLE_SIZE, b"\xff"))


def parse_partition_table(data: bytes) -> tuple[Partition, ...]:
    """Read the table as the second-stage bootloader does; FlashError when there is none."""
    names_by_type = {t: {v: k for k, v in subs.items()} for t, subs in _SUBTYPES.items()}
    type_names = {v: k for k, v in _TYPES.items()}
    parts = []
    for pos in range(0, len(data) - _ENTRY.size + 1, _ENTRY.size):
        chunk = data[pos:pos + _ENTRY.size]
        if chunk[:2] == _MD5_MAGIC:
            if hashlib.md5(data[:pos]).digest() != chunk[16:32]:
                raise FlashError("partition table MD5 mismatch")
            break
        if chunk[:2] != _ENTRY_MAGIC:
            break
        _, ptype, subtype, offset, size, name, _flags = _ENTRY.unpack(chunk)
        tname = type_names.get(ptype, "0x%02x" % ptype)
        sname = names_by_type.get(tname, {}).get(subtype, "0x%02x" % subtype)
        parts.append(Partition(name.rstrip(b"\x00").decode("ascii", "replace"), tname, sname,
                               offset, size))
    if not parts:
        raise FlashError("no partition table at 0x%x" % PARTITION_TABLE_OFFSET)
    return tuple(parts)


def read_partition_table(flash: FlashFile) -> tuple[Partition, ...]:
    return parse_partition_table(flash.read(PARTITION_TABLE_OFFSET, PARTITION_TABLE_SIZE))


def filesystem_partition(parts: tuple[Partition, ...]) -> Partition:
    """MicroPython's filesystem partition: named "vfs" (subtype fat or littlefs)."""
    for p in parts:
        if p.name == "vfs" or (p.type == "data" and p.subtype == "littlefs"):
            return p
    raise FlashError("the partition table has no filesystem partition (vfs)")


# --- app images -----------------------------------------------------------------------------------

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


class AppImageError(ValueError):
    """What is wrong with an app image: ``kind`` is "invalid", "digest" or "descriptor"."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(detail or kind)
        self.kind = kind


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


def read_app(flash: FlashFile, part: Partition) -> AppInfo:
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


# --- OTA data and boot selection (ESP-IDF's second-stage bootloader with app rollback) ---

OTA_IMG_NEW, OTA_IMG_PENDING_VERIFY, OTA_IMG_VALID = 0, 1, 2
OTA_IMG_INVALID, OTA_IMG_ABORTED, OTA_IMG_UNDEFINED = 3, 4, 0xFFFFFFFF
_OTA_ENTRY = struct.Struct("<I20sII")    # ota_seq, seq_label, ota_state, crc


def ota_crc(seq: int) -> int:
    """bootloader_common_ota_select_crc: esp_rom_crc32_le(UINT32_MAX, &ota_seq, 4)."""
    return zlib.crc32(struct.pack("<I", seq), 0xFFFFFFFF) & 0xFFFFFFFF


@dataclass
class OtaSelect:
    seq: int
    label: bytes
    state: int
    crc: int

    @property
    def valid(self) -> bool:
        """bootloader_common_ota_select_valid"""
        return (self.seq != 0xFFFFFFFF and self.state not in (OTA_IMG_INVALID, OTA_IMG_ABORTED)
                and self.crc == ota_crc(self.seq))

    def pack(self) -> bytes:
        return _OTA_ENTRY.pack(self.seq, self.label, self.state, self.crc)


def otadata_partition(parts: tuple[Partition, ...]) -> Partition | None:
    return next((p for p in parts if p.type == "data" and p.subtype == "ota"), None)


def ota_slots(parts: tuple[Partition, ...]) -> list[Partition]:
    """ota_0, ota_1, ... as get_ota_partition_count() counts them (consecutive from ota_0)."""
    by_sub = {p.subtype: p for p in parts if p.type == "app"}
    slots = []
    while "ota_%d" % len(slots) in by_sub:
        slots.append(by_sub["ota_%d" % len(slots)])
    return slots


def read_otadata(flash: FlashFile, parts: tuple[Partition, ...] | None = None
                 ) -> list[OtaSelect]:
    """The two ota_select entries (empty list when the table has no otadata partition)."""
    parts = parts or read_partition_table(flash)
    od = otadata_partition(parts)
    if od is None:
        return []
    return [OtaSelect(*_OTA_ENTRY.unpack(flash.read(od.offset + i * SECTOR, _OTA_ENTRY.size)))
            for i in (0, 1)]


def active_otadata(entries: list[OtaSelect]) -> int:
    """bootloader_common_get_active_otadata: the valid entry with the highest seq, or -1."""
    valid = [i for i in (0, 1) if entries[i].valid]
    if not valid:
        return -1
    return max(valid, key=lambda i: (entries[i].seq, -i))


def write_otadata(flash: FlashFile, od: Partition, index: int, entry: OtaSelect) -> None:
    entry.crc = ota_crc(entry.seq)
    flash.erase(od.offset + index * SECTOR, SECTOR)
    flash.program(od.offset + index * SECTOR, entry.pack())


def default_app(parts: tuple[Partition, ...]) -> Partition | None:
    """find_default_boot_partition: factory, else the first OTA slot, else test."""
    apps = [p for p in parts if p.type == "app"]
    for wanted in ["factory"] + ["ota_%d" % i for i in range(16)] + ["test"]:
        for p in apps:
            if p.subtype == wanted:
                return p
    return None


def select_boot_partition(flash: FlashFile, parts: tuple[Partition, ...], *,
                          commit: bool = True) -> tuple[Partition, str]:
    """Which app the bootloader starts, and why; applies app rollback as ESP-IDF does: a new
    image is marked pending-verify on its first boot; if it is still pending on the next boot
    (the app never called mark_app_valid_cancel_rollback), it is marked aborted and the other
    slot boots. ``commit=False`` only looks (for tools that inspect a flash file)."""
    fallback = default_app(parts)
    if fallback is None:
        raise FlashError("the partition table has no app partition")
    od, slots = otadata_partition(parts), ota_slots(parts)
    if od is None or not slots:
        return fallback, "no OTA data"
    entries = read_otadata(flash, parts)
    active = active_otadata(entries)
    if active < 0:
        return fallback, "OTA data blank"
    entry = entries[active]
    if entry.state == OTA_IMG_PENDING_VERIFY:
        if commit:
            entry.state = OTA_IMG_ABORTED
            write_otadata(flash, od, active, entry)
        other = entries[active ^ 1]
        if other.valid:
            return slots[(other.seq - 1) % len(slots)], "rollback: the new app was never confirmed"
        return fallback, "rollback to the factory app"
    if entry.state == OTA_IMG_NEW:
        if commit:
            entry.state = OTA_IMG_PENDING_VERIFY
            write_otadata(flash, od, active, entry)
        return slots[(entry.seq - 1) % len(slots)], "new app, pending verification"
    return slots[(entry.seq - 1) % len(slots)], "OTA sequence %d" % entry.seq


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
