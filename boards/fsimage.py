"""littlefs2 filesystem images built on the host, mountable by MicroPython's VfsLfs2.

The parameters are MicroPython's on the ESP32: 4096-byte blocks (the flash sector), read and
program size 32, lookahead 32; the block count must equal the partition size / 4096, or the
firmware refuses the superblock and formats the partition on boot.
"""

from __future__ import annotations

from collections.abc import Mapping

from littlefs import LittleFS, LittleFSError

from boards.definitions import SECTOR
from boards.errors import ImageError

BLOCK_SIZE = SECTOR
LFS_PARAMS = dict(block_size=BLOCK_SIZE, read_size=32, prog_size=32, lookahead_size=32)


def build_littlefs(files: Mapping[str, bytes], size: int) -> bytes:
    """An image of ``size`` bytes holding ``files`` ({"lib/cbor.py": b"..."}; folders made)."""
    if size % BLOCK_SIZE:
        raise ImageError("filesystem size %d is not a multiple of %d" % (size, BLOCK_SIZE))
    fs = LittleFS(block_count=size // BLOCK_SIZE, **LFS_PARAMS)
    try:
        for path, data in sorted(files.items()):
            path = path.lstrip("/")
            folder = path.rpartition("/")[0]
            if folder:
                fs.makedirs(folder, exist_ok=True)
            with fs.open(path, "wb") as f:
                f.write(data)
    except LittleFSError as exc:
        total = sum(len(d) for d in files.values())
        raise ImageError("%d files (%d bytes) do not fit a %d KB filesystem: %s"
                         % (len(files), total, size // 1024, exc)) from None
    return bytes(fs.context.buffer)


def read_littlefs(image: bytes) -> dict[str, bytes]:
    """Every file in an image, by path (for tests and for `vboard` inspection)."""
    fs = LittleFS(block_count=len(image) // BLOCK_SIZE, mount=False, **LFS_PARAMS)
    fs.context.buffer = bytearray(image)
    try:
        fs.mount()
    except LittleFSError as exc:
        raise ImageError("not a littlefs image with MicroPython's parameters: %s" % exc) from None
    out: dict[str, bytes] = {}
    for root, _dirs, names in fs.walk("/"):
        for name in names:
            path = (root.rstrip("/") + "/" + name).lstrip("/")
            with fs.open(path, "rb") as f:
                out[path] = f.read()
    return out
