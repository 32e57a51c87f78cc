"""fleet.chip against the virtual board's ROM bootloader (in-process, no VM): esptool's Python
API identifies, writes, verifies and reads; what goes wrong on a bench becomes one FleetError
whose message says what to do."""

from __future__ import annotations

import dataclasses
import socket
import struct
import time

import pytest

from boards.definitions import MB, board
from fleet.chip import ChipInfo, _from_esptool, open_chip
from fleet.errors import (
    FLASH_MISMATCH,
    FLASH_TOO_SMALL,
    NO_ANSWER,
    NO_PORT,
    PORT_BUSY,
    VERIFY_FAILED,
    WRONG_CHIP,
    FleetError,
)
from vboard.flash import FlashFile
from vboard.rom.server import serve_in_thread
from vboard.rom.slip import slip_encode

BOARD = board("esp32-devkitc")


@pytest.fixture
def rom(tmp_path):
    flash = FlashFile(tmp_path / "flash.bin", BOARD.flash_size)
    with serve_in_thread(flash, BOARD, 0x123456) as server:
        server.flash_file = flash
        yield server
    flash.close()


def url(rom) -> str:
    return "socket://127.0.0.1:%d" % rom.port


@pytest.mark.parametrize("stub", [True, False], ids=["stub", "rom-only"])
def test_identify_write_verify_and_read(rom, stub):
    data = bytes(range(256)) * 64 + b"tail"
    seen = []
    with open_chip(url(rom), stub=stub) as chip:
        assert chip.info == ChipInfo("esp32", "ESP32-D0WD-V3 (revision v3.1)",
                                     "24:0a:c4:12:34:56", 4 * MB)
        assert not chip.can_reset              # socket:// has no DTR/RTS
        chip.write(0x200000, data, lambda done, total: seen.append((done, total)))
        chip.verify(0x200000, data, "filesystem")
        assert chip.read(0x200000, len(data)) == data
    assert seen and seen[-1][0] == seen[-1][1]          # the step's bar reached its end
    assert rom.flash_file.read(0x200000, len(data)) == data


def test_esptool_stays_quiet_and_its_logger_is_restored(rom, capsys):
    from esp_pylib.logger import EspLog

    before = EspLog.instance
    with open_chip(url(rom)) as chip:
        chip.write(0x10000, b"\x01" * 5000)
    assert EspLog.instance is before
    out, err = capsys.readouterr()
    assert out == "" and err == ""


def test_a_verify_mismatch_is_a_verify_failure(rom):
    with open_chip(url(rom)) as chip:
        chip.write(0x10000, b"\x01" * 4096)
        with pytest.raises(FleetError, match="verify failed: the firmware read back from "
                                             "0x10000 differs") as exc:
            chip.verify(0x10000, b"\x02" * 4096, "firmware")
    assert exc.value.kind == VERIFY_FAILED


def test_board_definition_mismatches_are_refused_with_what_to_do():
    esp32 = ChipInfo("esp32", "ESP32-D0WD-V3 (revision v3.1)", "24:0a:c4:00:00:01", 4 * MB)
    esp32.check(BOARD)
    cases = [
        (dataclasses.replace(esp32, chip="esp32s3", description="ESP32-S3 (QFN56)"), WRONG_CHIP,
         "the chip on this port is an ESP32-S3 (ESP32-S3 (QFN56)), but board esp32-devkitc has "
         "an ESP32: pick the right --board"),
        (dataclasses.replace(esp32, flash_size=2 * MB), FLASH_TOO_SMALL,
         "this chip has 2 MB of flash, board esp32-devkitc needs 4 MB"),
        (dataclasses.replace(esp32, flash_size=8 * MB), FLASH_MISMATCH,
         "this chip has 8 MB of flash, board esp32-devkitc has 4 MB: pick the --board"),
    ]
    for info, kind, message in cases:
        with pytest.raises(FleetError) as exc:
            info.check(BOARD)
        assert (exc.value.kind, message in str(exc.value)) == (kind, True), str(exc.value)


def test_a_smaller_flash_is_measured_from_the_chip(tmp_path):
    small = dataclasses.replace(BOARD, flash_size=2 * MB)
    flash = FlashFile(tmp_path / "small.bin", small.flash_size)
    try:
        with serve_in_thread(flash, small, 1) as server:
            with open_chip("socket://127.0.0.1:%d" % server.port) as chip:
                assert chip.info.flash_size == 2 * MB
                with pytest.raises(FleetError, match="needs 4 MB") as exc:
                    chip.info.check(BOARD)
    finally:
        flash.close()
    assert exc.value.kind == FLASH_TOO_SMALL


def test_a_busy_port_is_told_apart_from_a_silent_one(rom):
    holder = socket.create_connection(("127.0.0.1", rom.port))
    try:
        holder.sendall(slip_encode(struct.pack("<BBHI", 0, 8, 36, 0)
                                   + b"\x07\x07\x12\x20" + b"\x55" * 32))
        time.sleep(0.2)
        # The board's port drops a second client after a second; the default attempts outlast it.
        with pytest.raises(FleetError, match="is busy: another program") as exc:
            with open_chip(url(rom)):
                pass
        assert exc.value.kind == PORT_BUSY
    finally:
        holder.close()

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    try:
        where = "socket://127.0.0.1:%d" % silent.getsockname()[1]
        message = "no ESP chip answered on %s: hold BOOT" % where
        with pytest.raises(FleetError, match=message) as exc:
            with open_chip(where, connect_attempts=1):
                pass
        assert exc.value.kind == NO_ANSWER
    finally:
        silent.close()


def test_nothing_at_the_address():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    with pytest.raises(FleetError, match="nothing listens at socket://127.0.0.1:%d" % free) as exc:
        with open_chip("socket://127.0.0.1:%d" % free):
            pass
    assert exc.value.kind == NO_PORT


@pytest.mark.parametrize("text,kind,message", [
    ("Could not open /dev/ttyUSB9, the port is busy or doesn't exist.\n([Errno 2] could not "
     "open port /dev/ttyUSB9: [Errno 2] No such file or directory: '/dev/ttyUSB9')\n",
     NO_PORT, "no serial port /dev/ttyUSB9: is the board plugged in?"),
    ("Could not open /dev/ttyUSB0, the port is busy or doesn't exist.\n(Could not exclusively "
     "lock port /dev/ttyUSB0: [Errno 11] Resource temporarily unavailable)\n",
     PORT_BUSY, "/dev/ttyUSB0 is busy"),
    ("Could not open /dev/ttyUSB0, the port is busy or doesn't exist.\n([Errno 13] could not "
     "open port /dev/ttyUSB0: [Errno 13] Permission denied: '/dev/ttyUSB0')\n",
     NO_PORT, "add yourself to the dialout group"),
    ("Failed to connect to ESP32: Wrong boot mode detected (0x13)! The chip needs to be in "
     "download mode.", NO_ANSWER, "hold BOOT, tap EN (RST), release BOOT"),
    ("MD5 of file does not match data in flash!", VERIFY_FAILED, "verify failed"),
])
def test_esptool_errors_become_field_engineer_messages(text, kind, message):
    error = _from_esptool("/dev/ttyUSB0" if "USB0" in text else "/dev/ttyUSB9", text, True)
    assert error.kind == kind and message in str(error)
    assert "\n" not in str(error)
