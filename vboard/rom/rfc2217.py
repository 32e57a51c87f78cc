"""The virtual ESP32 behind an RFC 2217 port with a DevKitC's auto-reset circuit.

``RomBootloader.start_rfc2217`` (server.py) serves the chip this way, so esptool's default DTR/RTS
reset sequences switch the board between its firmware and the ROM (recognised by intent, as
esptool's esp_rfc2217_server does, because RFC 2217 cannot carry the line timing). pyserial's
``PortManager`` does the telnet and RFC 2217 option handling.
"""

from __future__ import annotations

import asyncio
from typing import Callable, Protocol

from vboard.rom.chip import DOWNLOAD_LINES, ROM_BANNER, ROM_BAUD, ROM_RESET_LINE
from vboard.rom.session import Session

_DOWNLOAD_BOOT = (ROM_BANNER + DOWNLOAD_LINES).encode()
_FLASH_BOOT = (ROM_BANNER + ROM_RESET_LINE["poweron"] + "\r\n").encode()


class _Bootloader(Protocol):
    """What the port needs from the bootloader that serves it (server.RomBootloader, which
    builds on this module)."""

    tasks: set[asyncio.Task[None]]

    async def session_started(self, session: Session) -> None: ...

    async def session_ended(self, session: Session) -> None: ...


class _ModemLines:
    """The serial port object pyserial's PortManager drives. On a DevKitC, RTS pulls EN low
    and DTR pulls GPIO0 low; but RFC 2217 delivers each line change a network round trip (in
    pyserial's client at least 50 ms) apart, so transient line states last far longer than the
    board's EN delay masks. Like esptool's esp_rfc2217_server, the sequences are therefore
    recognised by intent: asserting DTR starts a reset into the download ROM (esptool's
    classic reset), releasing RTS outside that sequence is a hard reset into the firmware,
    releasing DTR ends the sequence."""

    def __init__(self, on_reset: Callable[[bool], None]) -> None:
        self._on_reset = on_reset
        self._dtr = False
        self._rts = False
        self._download_sequence = False
        self.baudrate = ROM_BAUD
        self.bytesize = 8
        self.parity = "N"
        self.stopbits = 1
        self.xonxoff = False
        self.rtscts = False
        self.break_condition = False
        self.cts = self.dsr = self.ri = self.cd = False

    @property
    def dtr(self) -> bool:
        return self._dtr

    @dtr.setter
    def dtr(self, value: bool) -> None:
        self._dtr = bool(value)
        if not self._dtr:
            self._download_sequence = False
        elif not self._download_sequence:
            self._download_sequence = True
            self._on_reset(True)                 # EN pulsed with GPIO0 held low

    @property
    def rts(self) -> bool:
        return self._rts

    @rts.setter
    def rts(self, value: bool) -> None:
        self._rts = bool(value)
        if not self._rts and not self._download_sequence:
            self._on_reset(False)                # EN pulsed, GPIO0 high: boot from flash

    def reset_input_buffer(self) -> None:
        pass

    def reset_output_buffer(self) -> None:
        pass


class Rfc2217Port:
    """Telnet/RFC 2217 framing around a session whose chip runs its firmware until a reset
    with GPIO0 low starts the download ROM."""

    def __init__(self, rom: _Bootloader, session: Session,
                 writer: asyncio.StreamWriter) -> None:
        from serial.rfc2217 import PortManager  # pyserial is esptool's dependency

        self.rom = rom
        self.session = session
        self.lines = _ModemLines(self._reset)
        self.manager = PortManager(self.lines, _TelnetConnection(writer))
        session.frame_filter = lambda data: b"".join(self.manager.filter(data))
        session.wire_escape = lambda data: b"".join(self.manager.escape(data))
        session.state = "app"           # the board runs its firmware until reset into the ROM

    def _reset(self, download: bool) -> None:
        session = self.session
        session.reset_chip()
        session.drop_input()
        session.state = "reset"         # in reset until the boot below runs
        task = asyncio.ensure_future(self._boot(download))
        self.rom.tasks.add(task)
        task.add_done_callback(self.rom.tasks.discard)

    async def _boot(self, download: bool) -> None:
        session = self.session
        session.send_raw(_DOWNLOAD_BOOT if download else _FLASH_BOOT)
        if download:
            session.state = "waiting"
            await self.rom.session_started(session)     # firmware stops: the ROM waits for SYNC
        else:
            session.state = "app"
            await self.rom.session_ended(session)       # the board boots its firmware again


class _TelnetConnection:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    def write(self, data: bytes) -> None:
        self._writer.write(data)
