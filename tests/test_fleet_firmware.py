"""Firmware images and the cache, and what a board runs: read the way its bootloader reads it,
over a stand-in for the chip (a flash file with the chip's read and MD5 operations)."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from boards.app_image import build_app_image, merged_image
from boards.definitions import LAYOUT_4MB_BIGAPP, MB, Partition, board
from boards.otadata import OTA_IMG_VALID, read_otadata, write_otadata
from boards.partition_table import read_partition_table
from fleet.errors import BAD_FIRMWARE, FLASH_TOO_SMALL, IMAGE_TOO_LARGE, NO_FIRMWARE, FleetError
from fleet.firmware import (
    add_to_cache,
    cached_images,
    find_firmware,
    firmware_plan,
    load_image,
    read_board_firmware,
    version_key,
)
from vboard.flash import FlashFile

BOARD = board("esp32-devkitc")


class FlashChip:
    """What fleet.firmware asks of a chip, over a flash file."""

    def __init__(self, flash: FlashFile) -> None:
        self.flash = flash
        self.info = dataclasses.make_dataclass("Info", ["flash_size"])(flash.size)
        self.reads = 0

    def read(self, offset: int, size: int) -> bytes:
        self.reads += 1
        return self.flash.read(offset, size)

    def md5(self, offset: int, size: int) -> str:
        return hashlib.md5(self.flash.read(offset, size)).hexdigest()


@pytest.fixture
def chip(tmp_path):
    flash = FlashFile(tmp_path / "flash.bin", BOARD.flash_size)
    yield FlashChip(flash)
    flash.close()


def image_file(tmp_path: Path, version: str, *, board_def=BOARD, name: str | None = None,
               **kwargs) -> Path:
    path = tmp_path / (name or "ESP32_GENERIC-%s.bin" % version)
    path.write_bytes(merged_image(board_def, build_app_image("micropython", version, **kwargs)))
    return path


def test_a_merged_image_is_read_from_its_own_descriptor_and_table(tmp_path):
    image = load_image(image_file(tmp_path, "v1.24.1", name="whatever.bin"))
    assert (image.project, image.version, image.chip) == ("micropython", "v1.24.1", "esp32")
    assert image.merged and image.partitions == BOARD.partitions
    assert image.app_partition().name == "factory"
    app_only = tmp_path / "app.bin"
    app_only.write_bytes(build_app_image("micropython", "v1.23.0"))
    image = load_image(app_only)
    assert not image.merged and image.version == "v1.23.0" and image.app == image.data
    assert image.offset == 0 and load_image(image_file(tmp_path, "v1.24.1")).offset == 0x1000


def test_a_merged_image_starts_where_its_chip_s_bootloader_is(tmp_path):
    """The ESP32-S3's ROM loads its bootloader from 0x0, so its merged .bin starts there."""
    s3 = dataclasses.replace(BOARD, name="s3", chip="esp32s3")
    app = bytearray(build_app_image("micropython", "v1.24.1"))
    app[12:14] = (9).to_bytes(2, "little")                     # image chip id 9: ESP32-S3
    app[-32:] = hashlib.sha256(app[:-32]).digest()
    path = tmp_path / "ESP32_GENERIC_S3-v1.24.1.bin"
    path.write_bytes(merged_image(s3, bytes(app)))
    image = load_image(path)
    assert (image.chip, image.offset, image.partitions) == ("esp32s3", 0, BOARD.partitions)
    # the S3's app laid out as for an ESP32 (at 0x1000) is no image any S3 can boot
    path.write_bytes(merged_image(BOARD, bytes(app)))
    with pytest.raises(FleetError, match="its layout starts at 0x1000, but the ESP32S3's "
                                         "bootloader is at 0x0"):
        load_image(path)


@pytest.mark.parametrize("content,kind,message", [
    (b"", BAD_FIRMWARE, "is not an ESP32 firmware image"),
    (b"PK\x03\x04 a zip", BAD_FIRMWARE, "is not an ESP32 firmware image"),
    (build_app_image("nuttx", "12.0"), BAD_FIRMWARE, "is not MicroPython: its app descriptor "
                                                     "names 'nuttx'"),
])
def test_files_that_are_not_micropython_are_refused(tmp_path, content, kind, message):
    path = tmp_path / "x.bin"
    path.write_bytes(content)
    with pytest.raises(FleetError, match=message) as exc:
        load_image(path)
    assert exc.value.kind == kind


def test_a_damaged_or_oversized_image_is_refused(tmp_path):
    app = bytearray(build_app_image("micropython", "v1.24.1"))
    app[300] ^= 0xFF                  # a byte of the descriptor segment
    path = tmp_path / "bad.bin"
    path.write_bytes(bytes(app))
    with pytest.raises(FleetError, match="download it again") as exc:
        load_image(path)
    assert exc.value.kind == BAD_FIRMWARE
    with pytest.raises(FleetError, match="larger than its own app partition") as exc:
        load_image(image_file(tmp_path, "v1.24.1", payload_size=0x1D0000))
    assert exc.value.kind == IMAGE_TOO_LARGE
    with pytest.raises(FleetError, match="cannot read the firmware file") as exc:
        load_image(tmp_path / "missing.bin")
    assert exc.value.kind == NO_FIRMWARE


def test_versions_order_like_micropython_releases():
    ordered = ["v1.9.4", "v1.23.0", "v1.24.0-preview.100.gabc", "v1.24.0", "v1.24.1", "v2.0"]
    assert sorted(reversed(ordered), key=version_key) == ordered


def test_the_cache_gives_the_newest_image_or_the_version_asked_for(tmp_path):
    cache = tmp_path / "cache"
    for version in ("v1.23.0", "v1.24.1", "v1.22.2"):
        add_to_cache(image_file(tmp_path, version), BOARD, cache)
    (cache / BOARD.name / "notes.bin").write_bytes(b"not firmware")      # skipped
    assert [i.version for i in cached_images(cache, BOARD)] == ["v1.24.1", "v1.23.0", "v1.22.2"]
    assert find_firmware(None, BOARD, cache).version == "v1.24.1"
    assert find_firmware("v1.23.0", BOARD, cache).version == "v1.23.0"
    assert find_firmware("1.23.0", BOARD, cache).version == "v1.23.0"
    with pytest.raises(FleetError, match=r"no MicroPython v1\.25\.0 for board esp32-devkitc in "
                                         r"the firmware cache .* \(it has v1\.24\.1, v1\.23\.0, "
                                         r"v1\.22\.2\): add one with `fleet firmware add") as exc:
        find_firmware("v1.25.0", BOARD, cache)
    assert exc.value.kind == NO_FIRMWARE
    with pytest.raises(FleetError, match="it has nothing"):
        find_firmware(None, board("lolin-d32"), cache)
    explicit = image_file(tmp_path, "v1.20.0")
    assert find_firmware(str(explicit), BOARD, cache).version == "v1.20.0"


def test_the_cache_keeps_only_full_images(tmp_path):
    app_only = tmp_path / "app.bin"
    app_only.write_bytes(build_app_image("micropython", "v1.24.1"))
    with pytest.raises(FleetError, match="app image only"):
        add_to_cache(app_only, BOARD, tmp_path / "cache")


# --- what the board runs, and what to write -------------------------------------------------------

def test_blank_board_gets_the_whole_image_at_0x1000(tmp_path, chip):
    image = load_image(image_file(tmp_path, "v1.24.1"))
    board_fw = read_board_firmware(chip)
    assert board_fw.partitions is None and str(board_fw) == "no partition table (a blank board)"
    offset, data, why = firmware_plan(image, board_fw, chip)
    assert (offset, data, why) == (0x1000, image.data, "no partition table (a blank board)")


def test_the_same_version_intact_is_not_written_again(tmp_path, chip):
    image = load_image(image_file(tmp_path, "v1.24.1"))
    chip.flash.write(0x1000, image.data)
    board_fw = read_board_firmware(chip)
    assert (board_fw.version, board_fw.app_partition.name) == ("v1.24.1", "factory")
    assert board_fw.filesystem() == Partition("vfs", "data", "fat", 0x200000, 0x200000)
    assert firmware_plan(image, board_fw, chip) == (0, b"", "")
    assert chip.reads <= 3        # the table and the app's first sector, not the whole app


def test_another_version_a_damaged_app_or_another_table_is_rewritten(tmp_path, chip):
    new = load_image(image_file(tmp_path, "v1.24.1"))
    chip.flash.write(0x1000, load_image(image_file(tmp_path, "v1.23.0")).data)
    assert firmware_plan(new, read_board_firmware(chip), chip)[2] == "the board runs v1.23.0"

    chip.flash.write(0x1000, new.data)
    chip.flash.write(0x10000 + 0x200, b"\x55" * 16)      # bytes changed inside the app
    assert firmware_plan(new, read_board_firmware(chip), chip)[2] == (
        "the board's v1.24.1 image is damaged")

    old_layout = dataclasses.replace(BOARD, partitions=LAYOUT_4MB_BIGAPP)
    chip.flash.write(0x1000, load_image(image_file(tmp_path, "v1.24.1", board_def=old_layout,
                                                   name="old.bin")).data)
    assert read_board_firmware(chip).filesystem().offset == 0x310000
    assert firmware_plan(new, read_board_firmware(chip), chip)[2] == (
        "the board's partition table differs from the image's")


def test_the_app_the_bootloader_would_start_is_the_one_read(tmp_path, chip):
    ota = board("esp32-devkitc-ota")
    chip.flash.write(0x1000, load_image(image_file(tmp_path, "v1.23.0", board_def=ota)).data)
    slot1 = next(p for p in ota.partitions if p.name == "ota_1")
    chip.flash.write(slot1.offset, build_app_image("micropython", "v1.24.1"))
    otadata = next(p for p in read_partition_table(chip.flash) if p.subtype == "ota")
    entry = read_otadata(chip.flash)[0]
    entry.seq, entry.state = 2, OTA_IMG_VALID                 # sequence 2 selects ota_1
    write_otadata(chip.flash, otadata, 0, entry)
    board_fw = read_board_firmware(chip)
    assert (board_fw.app_partition.name, board_fw.version) == ("ota_1", "v1.24.1")


def test_an_image_for_a_bigger_flash_or_an_app_that_does_not_fit_is_refused(tmp_path, chip):
    eight = dataclasses.replace(BOARD, flash_size=8 * MB, partitions=BOARD.partitions[:-1] + (
        Partition("vfs", "data", "fat", 0x200000, 0x600000),))
    image = load_image(image_file(tmp_path, "v1.24.1", board_def=eight))
    with pytest.raises(FleetError, match="partition table needs 8 MB of flash, this chip has "
                                         "4 MB") as exc:
        firmware_plan(image, read_board_firmware(chip), chip)
    assert exc.value.kind == FLASH_TOO_SMALL

    app_only = tmp_path / "app.bin"
    app_only.write_bytes(build_app_image("micropython", "v1.24.1", payload_size=0x200000))
    with pytest.raises(FleetError, match="app image only, and this board has no firmware"):
        firmware_plan(load_image(app_only), read_board_firmware(chip), chip)
    chip.flash.write(0x1000, load_image(image_file(tmp_path, "v1.23.0")).data)
    with pytest.raises(FleetError, match="does not fit the board's app partition factory") as exc:
        firmware_plan(load_image(app_only), read_board_firmware(chip), chip)
    assert exc.value.kind == IMAGE_TOO_LARGE


def test_an_app_image_goes_into_the_partition_that_boots(tmp_path, chip):
    chip.flash.write(0x1000, load_image(image_file(tmp_path, "v1.23.0")).data)
    app_only = tmp_path / "app.bin"
    app_only.write_bytes(build_app_image("micropython", "v1.24.1"))
    image = load_image(app_only)
    offset, data, why = firmware_plan(image, read_board_firmware(chip), chip)
    assert (offset, data, why) == (0x10000, image.app, "the board runs v1.23.0")
