"""The TCP server of a virtual board's ROM loader, and a way to run it beside synchronous code.

``RomBootloader`` serves one board's chip to one client at a time, like an exclusively opened
serial port: the raw ROM protocol (esptool's ``socket://``) and, with ``start_rfc2217``, the
chip behind an RFC 2217 port with a DevKitC's auto-reset circuit (rfc2217.py). Each connection
is a session (session.py); the server tells the board when a session takes the chip into the
download ROM and when the chip leaves it. ``serve_in_thread`` runs a bootloader on its own
event loop in a thread, for tests and scripts.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
from typing import Awaitable, Callable, Iterator

from boards.definitions import Board
from vboard.flash import FlashFile, PowerCut
from vboard.rom.rfc2217 import Rfc2217Port
from vboard.rom.session import Session

# the logger of the module before it became a package: log lines keep their name
log = logging.getLogger("vboard.rom")

SessionCallback = Callable[[], "Awaitable[None] | None"]

HANDOVER_TIMEOUT_S = 1.0         # a new client waits this long for the previous one to go


# --- the server -----------------------------------------------------------------------------------

class RomBootloader:
    """The ESP32 ROM download mode of one virtual board, served to one TCP client at a time.

    ``on_session_start`` runs when a client has connected and synced (the board stops its
    firmware: the chip is now in the download ROM); ``on_session_end`` when the ROM session is
    over: the client disconnected, the loader was told to run user code, or a power cut
    (``PowerCut`` from the flash's fault hook) dropped the link. Both may be plain functions or
    coroutine functions; they run in the server's event loop. ``stop()`` does not call them.
    The server keeps accepting clients after a power cut (esptool reconnects and retries, as
    with a real board): a board whose power stays off should ``stop()`` its bootloader.
    """

    def __init__(self, flash: FlashFile, board: Board, serial: int, *,
                 on_session_start: SessionCallback | None = None,
                 on_session_end: SessionCallback | None = None) -> None:
        if board.chip != "esp32":
            raise ValueError("RomBootloader emulates the ESP32 ROM, board %s has a %s"
                             % (board.name, board.chip))
        if flash.size != board.flash_size:
            raise ValueError("flash file is %d bytes, board %s has %d"
                             % (flash.size, board.name, board.flash_size))
        if not 0 <= serial < 1 << 24:
            raise ValueError("serial must fit the 3 MAC bytes after the prefix (0..0xFFFFFF)")
        if len(board.mac_prefix) != 3:
            raise ValueError("board %s: mac_prefix must be 3 bytes" % board.name)
        self.flash = flash
        self.board = board
        self._mac = bytes(board.mac_prefix) + serial.to_bytes(3, "big")
        self._on_start = on_session_start
        self._on_end = on_session_end
        self._servers: list[asyncio.AbstractServer] = []
        self._active: Session | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._synced: set[Session] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.port: int | None = None
        self.rfc2217_port: int | None = None

    @property
    def mac(self) -> bytes:
        """The factory MAC in eFuse (esptool's "MAC:" line)."""
        return self._mac

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve the raw ROM protocol (esptool's ``socket://``); returns the bound port."""
        server = await asyncio.start_server(self._on_connect, host, port)
        self._servers.append(server)
        self.port = server.sockets[0].getsockname()[1]
        return self.port

    async def start_rfc2217(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve the chip behind an RFC 2217 port with a DevKitC auto-reset circuit (esptool's
        ``rfc2217://``, default reset sequences work); returns the bound port."""
        server = await asyncio.start_server(self._on_connect_rfc2217, host, port)
        self._servers.append(server)
        self.rfc2217_port = server.sockets[0].getsockname()[1]
        return self.rfc2217_port

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()

    async def _claim(self, session: Session) -> bool:
        """One client at a time, like an exclusively opened serial port. A client arriving
        just as the previous one hangs up gets a moment for that hang-up to be processed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + HANDOVER_TIMEOUT_S
        while self._active is not None:
            try:
                await asyncio.wait_for(self._idle.wait(), max(deadline - loop.time(), 0))
            except asyncio.TimeoutError:
                log.info("refusing a second client: the port is in use")
                session.writer.close()
                return False
        self._active = session
        self._idle.clear()
        return True

    async def _on_connect(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        session = Session(self, reader, writer)
        if await self._claim(session):
            await self._run(session)

    async def _on_connect_rfc2217(self, reader: asyncio.StreamReader,
                                  writer: asyncio.StreamWriter) -> None:
        session = Session(self, reader, writer)
        if await self._claim(session):
            Rfc2217Port(self, session, writer)
            await self._run(session)

    async def _run(self, session: Session) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        try:
            await session.serve()
        except PowerCut:
            log.info("power cut during a ROM session: link dropped")
        except ConnectionError:
            pass
        except asyncio.CancelledError:
            self._synced.discard(session)             # stop(): no callbacks
            raise
        finally:
            if task is not None:
                self.tasks.discard(task)
            session.writer.close()
            self._active = None
            self._idle.set()
        await self.session_ended(session)

    async def session_started(self, session: Session) -> None:
        if session in self._synced:
            return
        self._synced.add(session)
        await _call(self._on_start, "on_session_start")

    async def session_ended(self, session: Session) -> None:
        if session in self._synced:
            self._synced.discard(session)
            await _call(self._on_end, "on_session_end")

    async def leave_loader(self, session: Session, state: str) -> None:
        """The loader stops answering: it jumped to user code in flash ("app") or RAM ("ram")."""
        session.state = state
        if state == "app":
            await self.session_ended(session)


async def _call(callback: SessionCallback | None, name: str) -> None:
    if callback is None:
        return
    try:
        result = callback()
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.exception("%s callback failed", name)


# --- running a bootloader beside synchronous code (tests, scripts) --------------------------------

@contextlib.contextmanager
def serve_in_thread(flash: FlashFile, board: Board, serial: int, *, host: str = "127.0.0.1",
                    port: int = 0, rfc2217: bool = False,
                    on_session_start: SessionCallback | None = None,
                    on_session_end: SessionCallback | None = None,
                    start_timeout_s: float = 5.0) -> Iterator[RomBootloader]:
    """Run a RomBootloader on its own event loop in a daemon thread, for as long as the
    ``with`` block lasts; ``.port`` (and ``.rfc2217_port`` with ``rfc2217=True``) say where.
    Callbacks run in that thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="rom-bootloader", daemon=True)
    thread.start()
    rom = RomBootloader(flash, board, serial, on_session_start=on_session_start,
                        on_session_end=on_session_end)
    try:
        asyncio.run_coroutine_threadsafe(rom.start(host, port), loop).result(start_timeout_s)
        if rfc2217:
            asyncio.run_coroutine_threadsafe(rom.start_rfc2217(host, 0), loop).result(
                start_timeout_s)
        yield rom
    finally:
        try:
            asyncio.run_coroutine_threadsafe(rom.stop(), loop).result(start_timeout_s)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(start_timeout_s)
            loop.close()
