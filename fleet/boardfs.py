"""The node's filesystem as provisioning sees it: the littlefs image it writes (app, config,
sequence mark), and the few files it reads back from the board before overwriting it.

Reading goes through littlefs itself over the chip, block by block as littlefs asks for them,
so finding config.json and the OSCORE sequence mark reads a handful of 4 KB blocks instead of
the whole partition (2 MB at serial speed would take most of a minute on a real board).
"""

from __future__ import annotations

import json

from littlefs import LittleFS, LittleFSError, UserContext

from boards.definitions import Partition
from boards.errors import ImageError
from boards.fsimage import BLOCK_SIZE, LFS_PARAMS, build_littlefs
from fleet.errors import IMAGE_TOO_LARGE, FleetError

CONFIG_FILE = "config.json"
SEQ_FILE = "oscore.seq"          # firmware/app/node.py SEQ_FILE; SeqStore also keeps SEQ_FILE.tmp


class _ChipBlocks(UserContext):
    """A read-only littlefs block device over the chip's flash."""

    def __init__(self, flash, part: Partition) -> None:
        self._flash = flash     # anything with read(offset, length): fleet.firmware.ChipFlash
        self._part = part
        self.blocks_read = 0

    def read(self, cfg, block: int, off: int, size: int) -> bytearray:
        self.blocks_read += 1
        return bytearray(self._flash.read(self._part.offset + block * BLOCK_SIZE + off, size))

    def prog(self, cfg, block: int, off: int, data: bytes) -> int:
        return LittleFSError.Error.LFS_ERR_IO      # read-only: mounting never writes

    def erase(self, cfg, block: int) -> int:
        return LittleFSError.Error.LFS_ERR_IO

    def sync(self, cfg) -> int:
        return 0


def read_node_files(flash, part: Partition) -> dict[str, bytes]:
    """config.json and the sequence mark files from the board's filesystem; {} when the
    partition holds no littlefs (blank, or formatted by other firmware)."""
    fs = LittleFS(context=_ChipBlocks(flash, part), mount=False,
                  block_count=part.size // BLOCK_SIZE, **LFS_PARAMS)
    try:
        fs.mount()
    except LittleFSError:
        return {}
    found = {}
    for name in (CONFIG_FILE, SEQ_FILE, SEQ_FILE + ".tmp"):
        try:
            with fs.open(name, "rb") as f:
                found[name] = f.read()
        except (LittleFSError, OSError):
            continue
    return found


def node_id(files: dict[str, bytes]) -> str | None:
    """The device id the board's config.json names, None when there is none."""
    try:
        cfg = json.loads(files[CONFIG_FILE])
    except (KeyError, ValueError):
        return None
    return cfg.get("id") if isinstance(cfg, dict) else None


def seq_mark(files: dict[str, bytes]) -> int | None:
    """The node's sequence mark as its SeqStore reads it on boot (the larger of the file and
    its .tmp copy), None when neither is readable."""
    marks = []
    for name in (SEQ_FILE, SEQ_FILE + ".tmp"):
        text = files.get(name, b"")
        if len(text) > 1 and text.endswith(b"\n") and text[:-1].isdigit():
            marks.append(int(text[:-1]))
    return max(marks) if marks else None


def build_node_image(app_files: dict[str, bytes], config: bytes, part: Partition, *,
                     mark: int | None = None) -> bytes:
    """The littlefs image for ``part``: the app, config.json and, when the node has used its
    key before, the sequence mark it continues from."""
    files = dict(app_files)
    files[CONFIG_FILE] = config
    if mark is not None:
        files[SEQ_FILE] = b"%d\n" % mark
    try:
        return build_littlefs(files, part.size)
    except ImageError:
        total = sum(len(d) for d in files.values())
        raise FleetError("image too large: the app and its configuration (%d files, %d KB) do "
                         "not fit the %d KB filesystem partition %r of this firmware: use "
                         "firmware with a larger filesystem, or a smaller app"
                         % (len(files), -(-total // 1024), part.size // 1024, part.name),
                         IMAGE_TOO_LARGE) from None
