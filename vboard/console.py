"""The board's serial console: the VM on a pseudo-terminal, and a TCP port standing in for the
USB-UART cable.

The pty is set up as a serial line to a MicroPython board behaves: no echo and no line editing
by the kernel (the REPL echoes itself), no CR/LF translation, no flow control, and no signals:
Ctrl-C is a byte like any other here. The board delivers it (vboard/board.py), because the
unix port's SIGINT handler raises KeyboardInterrupt by longjmp from wherever the VM is, even
the middle of a garbage collection, which leaves the heap locked (the REPL then dies with
"FATAL: uncaught NLR"). The ESP32 port raises it at the VM's next safe point instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import logging
import os
import pty
import signal
import struct
import termios
from collections import deque
from typing import Callable

log = logging.getLogger("vboard.console")

_PR_SET_PDEATHSIG = 1
INPUT_BUFFER = 64 * 1024      # console input waiting for the VM to read it
OUTPUT_BUFFER = 256 * 1024    # console output waiting for a client that does not read


def _serial_line_attrs(fd: int) -> None:
    attrs = termios.tcgetattr(fd)
    attrs[0] &= ~(termios.ICRNL | termios.INLCR | termios.IGNCR | termios.IXON | termios.IXOFF
                  | termios.ISTRIP | termios.BRKINT | termios.PARMRK | termios.INPCK)
    attrs[1] &= ~termios.OPOST
    attrs[3] &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.IEXTEN | termios.ISIG)
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


def _vm_child_setup() -> None:
    """In the child: own session with the pty as controlling terminal, and die with the board
    process."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class VmProcess:
    """One run of the VM, from boot until it exits or is killed."""

    def __init__(self, cmd: list[str], env: dict[str, str], cwd: str,
                 on_output: Callable[[bytes], None]) -> None:
        self._cmd = cmd
        self._env = env
        self._cwd = cwd
        self._on_output = on_output
        self._master = -1
        self._slave_name = ""
        self._pending = bytearray()    # stdin bytes the pty could not take yet
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        master, slave = pty.openpty()
        _serial_line_attrs(slave)
        self._slave_name = os.ttyname(slave)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self._cmd, stdin=slave, stdout=slave, stderr=slave, env=self._env,
                cwd=self._cwd, preexec_fn=_vm_child_setup)
        finally:
            os.close(slave)
        self._master = master
        os.set_blocking(master, False)
        asyncio.get_running_loop().add_reader(master, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self._master, 65536)
        except BlockingIOError:
            return
        except OSError:  # EIO: the VM closed its end (exited)
            data = b""
        if not data:
            self._close_master()
            return
        self._on_output(data)

    def _close_master(self) -> None:
        if self._master >= 0:
            asyncio.get_running_loop().remove_reader(self._master)
            asyncio.get_running_loop().remove_writer(self._master)
            self._pending.clear()
            os.close(self._master)
            self._master = -1

    def write(self, data: bytes) -> None:
        """Input for the VM's stdin. What the pty cannot take now waits (up to INPUT_BUFFER
        bytes, then the rest is lost, as on a UART without flow control) and is written when
        the VM reads; nothing here blocks the loop the other boards share."""
        if self._master < 0:
            return
        if not self._pending:
            try:
                data = data[os.write(self._master, data):]
            except BlockingIOError:
                pass
            except OSError:
                return
            if not data:
                return
            asyncio.get_running_loop().add_writer(self._master, self._flush)
        room = INPUT_BUFFER - len(self._pending)
        if len(data) > room:
            log.warning("console input overflow: %d bytes lost", len(data) - room)
        self._pending += data[:room]

    def unread_input(self) -> int:
        """Bytes written for the VM's stdin that it has not read yet."""
        if self._master < 0:
            return 0
        try:
            fd = os.open(self._slave_name, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError:
            return len(self._pending)
        try:
            queued = struct.unpack("i", fcntl.ioctl(fd, termios.TIOCINQ, bytes(4)))[0]
        finally:
            os.close(fd)
        return queued + len(self._pending)

    def interrupt(self) -> None:
        """SIGINT: the VM raises KeyboardInterrupt at once, wherever it is (see the top)."""
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGINT)

    def _flush(self) -> None:
        try:
            n = os.write(self._master, self._pending)
        except BlockingIOError:
            return
        except OSError:
            n = len(self._pending)
        del self._pending[:n]
        if not self._pending:
            asyncio.get_running_loop().remove_writer(self._master)

    async def wait(self) -> int:
        assert self.proc is not None
        code = await self.proc.wait()
        # Collect what the VM printed last, before it exited.
        while self._master >= 0:
            self._readable()
        return code

    async def kill(self) -> None:
        """Power is gone: no chance to clean up, as on the chip."""
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
        self._close_master()


class ConsoleServer:
    """UART0 on a TCP port. One client at a time, like a serial port; output goes to the client
    (if any), to a ring buffer of recent output, and to listeners (logs, `vboard run`)."""

    def __init__(self, on_input: Callable[[bytes], None], *, keep: int = 64 * 1024) -> None:
        self._on_input = on_input
        self._server: asyncio.Server | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.recent: deque[bytes] = deque()
        self.dropped = 0    # output bytes a client too slow to read did not get
        self._recent_bytes = 0
        self._keep = keep
        self.listeners: list[Callable[[bytes], None]] = []
        self.port = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._server = await asyncio.start_server(self._client, host, port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._writer is not None:  # a serial port is opened by one program at a time
            writer.write(b"console busy: another client is connected\r\n")
            await writer.drain()
            writer.close()
            return
        self._writer = writer
        try:
            while data := await reader.read(4096):
                self._on_input(data)
        except ConnectionError:
            pass
        finally:
            self._writer = None
            writer.close()

    @property
    def connected(self) -> bool:
        return self._writer is not None

    def emit(self, data: bytes) -> None:
        if not data:
            return
        if self._writer is not None:
            # A client that stops reading loses output (a UART does not wait either) rather
            # than growing this process without bound.
            if self._writer.transport.get_write_buffer_size() < OUTPUT_BUFFER:
                self._writer.write(data)
            else:
                self.dropped += len(data)
        self.recent.append(data)
        self._recent_bytes += len(data)
        while self._recent_bytes > self._keep and len(self.recent) > 1:
            self._recent_bytes -= len(self.recent.popleft())
        for listener in self.listeners:
            listener(data)

    def recent_text(self) -> str:
        return b"".join(self.recent).decode("utf-8", "replace")
