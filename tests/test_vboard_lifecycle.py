"""The virtual board's life cycle: what start() leaves when it fails, and what stop() stops."""

from __future__ import annotations

import asyncio
import socket

import pytest

from boards.definitions import board
from testbed.broker import free_port
from vboard.board import VirtualBoard


async def test_a_board_whose_rom_port_is_taken_closes_its_console_again(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    console_port = free_port()
    vb = VirtualBoard(board("esp32-devkitc"), tmp_path / "flash.bin")
    with pytest.raises(OSError):
        await vb.start(console_port, taken.getsockname()[1])
    taken.close()
    with socket.socket() as again:       # the console port the failed start had opened
        again.bind(("127.0.0.1", console_port))
    assert vb.info.state == "off"


async def test_stop_cancels_a_reset_the_firmware_asked_for_just_before(tmp_path):
    vb = VirtualBoard(board("esp32-devkitc"), tmp_path / "flash.bin")
    await vb.start()
    assert vb.boots == 1                 # power-on (a blank chip: the ROM waits)
    vb.hardware_event("reset")           # machine.reset(), queued in the board's loop
    await vb.stop()
    await asyncio.sleep(0.2)
    assert vb.boots == 1 and vb.info.state == "off"
