"""The ESP32 partition table: the binary table at 0x8000 that MicroPython's images carry.

Written by gen_esp32part.py when an image is built, read by the second-stage bootloader, by
``esp32.Partition`` on the chip, by the fleet tools (what does this board hold?) and by the
virtual board (how is its flash laid out?). MicroPython's layouts changed between releases
(boards/definitions.py), so nothing may assume a fixed filesystem offset: read the table.
"""

from __future__ import annotations

import hashlib
import struct

from boards.definitions import FlashReader, Partition
from boards.errors import FlashError

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


def read_partition_table(flash: FlashReader) -> tuple[Partition, ...]:
    return parse_partition_table(flash.read(PARTITION_TABLE_OFFSET, PARTITION_TABLE_SIZE))


def filesystem_partition(parts: tuple[Partition, ...]) -> Partition:
    """MicroPython's filesystem partition: named "vfs" (subtype fat or littlefs)."""
    for p in parts:
        if p.name == "vfs" or (p.type == "data" and p.subtype == "littlefs"):
            return p
    raise FlashError("the partition table has no filesystem partition (vfs)")

