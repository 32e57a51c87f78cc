"""Devices under test for the hardware-in-the-loop suite: real boards on a rack, or virtual ones.

A test asks for capabilities (a console, a ROM port, power control, a world to stimulate), not
for a concrete board; ``--rack FILE`` (its older name ``--bench`` works too) selects a rack of
real boards, described in a small TOML file, and without it every test runs on virtual
boards::

    # racks/rack-1.toml
    [[board]]
    board = "esp32-devkitc"
    console = "/dev/ttyUSB0"           # or rfc2217://rack-1:4000; it must run MicroPython
    rom = "/dev/ttyUSB0"               # the same port: esptool resets it into the ROM

A capability a rack does not have makes the test skip with the reason (a rack without a
power relay cannot cut power at the Nth flash write). The tests that take ``dut`` (any board)
or ``mp_dut`` (a board running MicroPython) run on a rack; the others need many boards or a
world model and are virtual only.
"""

from __future__ import annotations

import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from boards.definitions import Board
from boards.definitions import board as board_def
from testbed.boardthread import GroupThread
from vboard import group

BIN = Path(sys.executable).parent      # the tools installed with the project (mpremote, esptool)


def mpremote(port_url: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Unmodified mpremote on a console URL, as a person would run it."""
    return subprocess.run([str(BIN / "mpremote"), "connect", port_url, *args],
                          capture_output=True, text=True, timeout=timeout)


ECHO = False           # set by conftest.py: `pytest -s` shows the commands the tests run


def show(capsys, text: str) -> None:
    """Print a command and its output under `pytest -s` (the field guide's source)."""
    if ECHO:
        with capsys.disabled():
            print(text)


CAPABILITIES = {
    "console": "reach the board's console",
    "rom": "reach the ROM bootloader",
    "tcp-console": "offer the console as a TCP port",
    "power": "cut the power",
    "world": "stimulate the sensors",
    "flash-file": "read and write the flash as a file",
    "vm": "look inside the VM that runs the firmware",
}


class Dut:
    """A device under test."""

    board: Board
    console_url: str
    rom_url: str
    capabilities: frozenset[str] = frozenset()

    def require(self, *caps: str) -> None:
        missing = [CAPABILITIES[c] for c in caps if c not in self.capabilities]
        if missing:
            pytest.skip("this rack cannot %s" % ", ".join(missing))

    def esptool(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Unmodified esptool on the ROM port; a real board is reset into the ROM through
        DTR/RTS first and back into its firmware afterwards."""
        reset = ("no-reset", "no-reset") if self.rom_url.startswith("socket://") else (
            "default-reset", "hard-reset")
        return subprocess.run([str(BIN / "esptool"), "--chip", self.board.chip, "--port",
                               self.rom_url, "--before", reset[0], "--after", reset[1], *args],
                              capture_output=True, text=True, timeout=timeout)


class VirtualDut(Dut):
    capabilities = frozenset(CAPABILITIES)

    def __init__(self, fleet: GroupThread, board_id: str) -> None:
        self._fleet = fleet
        self.vboard = fleet.board(board_id)
        self.board = self.vboard.board
        self.world = fleet.fleet.world
        self.console_url = "socket://127.0.0.1:%d" % self.vboard.console_port
        self.rom_url = "socket://127.0.0.1:%d" % self.vboard.rom_port

    def call(self, coro, timeout: float = 60):
        return self._fleet.call(coro, timeout)

    def power_cycle(self) -> None:
        self.call(self.vboard.power_off())
        self.call(self.vboard.power_on())

    def console_text(self) -> str:
        return self._fleet.runner.call_soon(self.vboard.console.recent_text)

    def wait_console(self, text: str, timeout: float = 20, since: int = 0) -> str:
        """Wait until ``text`` appears in the console output after offset ``since``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.console_text()
            if text in out[since:]:
                return out
            time.sleep(0.05)
        raise AssertionError("%r not on the console after %.0f s; it shows:\n%s"
                             % (text, timeout, self.console_text()[-2000:]))

    @property
    def state(self) -> str:
        return self.vboard.info.state


@dataclass
class RealDut(Dut):
    board: Board
    console_url: str
    rom_url: str

    @property
    def capabilities(self) -> frozenset[str]:
        tcp = {"tcp-console"} if self.console_url.startswith("socket://127.0.0.1:") else set()
        return frozenset({"console", "rom"} | tcp)


def load_rack(path: Path) -> list[RealDut]:
    """The boards a rack file lists; pytest.UsageError names what is wrong with the file."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise pytest.UsageError("rack file %s: %s" % (path, exc)) from None
    if set(data) - {"board"}:
        raise pytest.UsageError("rack file %s: only [[board]] entries, not %s"
                                % (path, ", ".join(sorted(set(data) - {"board"}))))
    duts = []
    for i, b in enumerate(data.get("board", []), start=1):
        unknown = sorted(set(b) - {"board", "console", "rom"})
        if unknown or "board" not in b or "console" not in b:
            raise pytest.UsageError("rack file %s, board #%d: it takes board, console and rom "
                                    "(rom defaults to console)%s" % (
                                        path, i, "; unknown: %s" % ", ".join(unknown)
                                        if unknown else ""))
        try:
            definition = board_def(b["board"])
        except KeyError as exc:
            raise pytest.UsageError("rack file %s, board #%d: %s" % (path, i, exc.args[0])) \
                from None
        duts.append(RealDut(definition, b["console"], b.get("rom", b["console"])))
    return duts


def virtual_boards(workdir: Path, count: int = 1, *, board: str = "esp32-devkitc",
                  role: str | None = None, speed: float = 1.0, scenario: str | None = None,
                  flash_template: Path | None = None) -> GroupThread:
    """A GroupThread of ``count`` boards whose flash files live in ``workdir`` (blank chips,
    or copies of ``flash_template``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    specs = []
    for i in range(count):
        flash = workdir / ("board-%02d.bin" % i)
        if flash_template is not None:
            flash.write_bytes(flash_template.read_bytes())
        specs.append(group.BoardSpec(id="board-%02d" % i, board=board, flash=flash,
                                        role=role, serial=0x100 + i))
    return GroupThread(group.GroupSpec(specs, speed=speed, scenario=scenario))
