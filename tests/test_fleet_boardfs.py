"""The node's filesystem as provisioning writes and reads it: the image, the config, and the
OSCORE sequence mark carried from the board's old filesystem (read lazily, a few blocks)."""

from __future__ import annotations

import json

import pytest

from boards.definitions import Partition, board
from boards.fsimage import build_littlefs, read_littlefs
from fleet.boardfs import build_node_image, node_id, read_node_files, seq_mark
from fleet.errors import IMAGE_TOO_LARGE, FleetError
from fleet.firmware import ChipFlash

VFS = board("esp32-devkitc").partition("vfs")


class ImageChip:
    """A chip whose filesystem partition holds ``image``; counts sector reads."""

    def __init__(self, image: bytes, part: Partition) -> None:
        self.image, self.part, self.reads = image, part, 0

    def read(self, offset: int, size: int) -> bytes:
        self.reads += 1
        start = offset - self.part.offset
        return self.image[start:start + size]


def test_the_image_holds_app_config_and_the_mark_the_node_continues_from():
    image = build_node_image({"main.py": b"import app\n", "app/node.mpy": b"M\x06"},
                             b'{"id": "shaft-01"}', VFS, mark=640)
    assert len(image) == VFS.size
    assert read_littlefs(image) == {"main.py": b"import app\n", "app/node.mpy": b"M\x06",
                                    "config.json": b'{"id": "shaft-01"}', "oscore.seq": b"640\n"}
    assert "oscore.seq" not in read_littlefs(build_node_image({}, b"{}", VFS))


def test_too_much_for_the_partition_says_what_does_not_fit():
    small = Partition("vfs", "data", "fat", 0x200000, 0x4000)
    with pytest.raises(FleetError, match=r"the app and its configuration \(2 files, 30 KB\) do "
                                         r"not fit the 16 KB filesystem partition 'vfs'") as exc:
        build_node_image({"big.mpy": b"x" * 30000}, b"{}", small)
    assert exc.value.kind == IMAGE_TOO_LARGE


def test_config_and_mark_are_read_back_through_littlefs_a_few_blocks_at_a_time():
    files = {"config.json": json.dumps({"id": "shaft-03"}).encode(), "oscore.seq": b"128\n",
             "oscore.seq.tmp": b"192\n", "app/node.mpy": b"m" * 40000, "q/0001": b"r" * 9000}
    chip = ImageChip(build_littlefs(files, VFS.size), VFS)
    found = read_node_files(ChipFlash(chip), VFS)
    assert found == {k: files[k] for k in ("config.json", "oscore.seq", "oscore.seq.tmp")}
    assert chip.reads <= 8         # sectors, of the partition's 512
    assert node_id(found) == "shaft-03" and seq_mark(found) == 192


def test_a_blank_or_foreign_partition_holds_nothing():
    assert read_node_files(ChipFlash(ImageChip(b"\xff" * VFS.size, VFS)), VFS) == {}
    assert read_node_files(ChipFlash(ImageChip(b"\x00" * VFS.size, VFS)), VFS) == {}


@pytest.mark.parametrize("files,mark", [
    ({}, None),
    ({"oscore.seq": b"64\n"}, 64),
    ({"oscore.seq": b"64\n", "oscore.seq.tmp": b"128\n"}, 128),
    ({"oscore.seq": b"6"}, None),                 # half written: not a mark
    ({"oscore.seq": b"x\n", "oscore.seq.tmp": b"9\n"}, 9),
])
def test_the_mark_is_read_as_the_node_reads_it(files, mark):
    assert seq_mark(files) == mark


def test_node_id_needs_a_readable_config():
    assert node_id({}) is None
    assert node_id({"config.json": b"{not json"}) is None
    assert node_id({"config.json": b"[1]"}) is None
    assert node_id({"config.json": b'{"id": "lamp-01"}'}) == "lamp-01"
