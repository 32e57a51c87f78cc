"""OTA data and boot selection, as ESP-IDF's second-stage bootloader does them with app
rollback: which of the OTA slots boots, and what happens to an image that was never confirmed.

The virtual board boots by these rules, and the fleet tools read a real chip with them (with
``commit=False``, which only looks).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from boards.definitions import SECTOR, FlashReader, FlashWriter, Partition
from boards.errors import FlashError
from boards.partition_table import read_partition_table

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


def read_otadata(flash: FlashReader, parts: tuple[Partition, ...] | None = None
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


def write_otadata(flash: FlashWriter, od: Partition, index: int, entry: OtaSelect) -> None:
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


def select_boot_partition(flash: FlashWriter, parts: tuple[Partition, ...], *,
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

