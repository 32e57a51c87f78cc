"""The virtual board's hardware bus: an AF_UNIX stream socket between a board process and the
MicroPython VM it runs, carrying one JSON line per request and one per reply.

Wire format (UTF-8 JSON, one value per line; the VM side is vboard/shims/_vbus.py):

    VM -> board    [op, arg, ...]
    board -> VM    ["ok", result]               the op's result (null when it has none)
                   ["err", errno, message]      the VM raises OSError(errno[, message]);
                                                errno null: OSError(message)
                   ["val", message]             the VM raises ValueError(message)
                   ["halt"]                     the board is going down (deep sleep, reset,
                                                power cut); the VM runs no more code
                   [kind, arg, ...]             unsolicited, at any time: an event the VM
                                                queues and dispatches itself (["irq", gpio, level])

Bytes travel as lowercase hex strings. Which arguments and results are bytes is part of each
op's signature (vboard/hardware/core.py lists the ops); a handler that returns bytes gets them
hex-encoded here. The VM has one request outstanding at a time, so requests are answered in
order; pushes may come between replies.

One server per board, all in the board process's asyncio loop: a connection costs one
StreamReader and a task, so 50+ boards share a loop comfortably. A new connection (the VM after
a reset) replaces the old one.
"""

from __future__ import annotations

import asyncio
import errno as errnos
import inspect
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping

from vboard.errors import VBoardError

log = logging.getLogger(__name__)

MAX_LINE = 1 << 20   # a 64 KB flash write is 128 KB of hex; allow generous headroom


class BusError(VBoardError):
    """Raise from a handler: the VM raises OSError(errno) (with ``message``, if given)."""

    def __init__(self, errno: int | None, message: str | None = None) -> None:
        super().__init__(errno, message)
        self.errno = errno
        self.message = message


class BusValueError(VBoardError):
    """Raise from a handler: the VM raises ValueError(message)."""


class BusHalt(VBoardError):
    """Raise from a handler: the VM stops running code (the board goes down)."""


def _encode(obj: Any) -> Any:
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj).hex()
    raise TypeError("bus results must be JSON values or bytes, not %s" % type(obj).__name__)


def _line(msg: list) -> bytes:
    return json.dumps(msg, separators=(",", ":"), default=_encode).encode() + b"\n"


class BusServer:
    """Serve ``handlers`` (op name -> function(*args) -> JSON-able result, or an awaitable of
    one) to the VM connected at ``path``."""

    def __init__(self, path: Path | str, handlers: Mapping[str, Callable[..., Any]], *,
                 on_connect: Callable[[], None] | None = None) -> None:
        self.path = Path(path)
        self.handlers = dict(handlers)
        self.requests = 0
        self._on_connect = on_connect
        self._server: asyncio.AbstractServer | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        if len(os.fsencode(self.path)) > 107:
            raise ValueError("bus socket path too long for AF_UNIX: %s" % self.path)
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path),
                                                       limit=MAX_LINE)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._writer is not None:
            self._writer.close()     # the connection's reader sees EOF and its task ends
            self._writer = None
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    @property
    def connected(self) -> bool:
        return self._writer is not None

    def push(self, kind: str, *args: Any) -> bool:
        """Send an unsolicited event to the connected VM; False when none is connected."""
        if self._writer is None:
            return False
        self._writer.write(_line([kind, *args]))
        return True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        if self._writer is not None:
            self._writer.close()
        self._writer = writer
        if self._on_connect is not None:
            self._on_connect()
        try:
            while True:
                try:
                    raw = await reader.readline()
                except ConnectionError:
                    break  # the VM died (power cut, reset): nothing to answer
                except (asyncio.LimitOverrunError, ValueError):
                    log.warning("bus %s: unreadable request, closing", self.path)
                    break
                if not raw:
                    break
                writer.write(_line(await self._dispatch(raw)))
        finally:
            if self._writer is writer:
                self._writer = None
            writer.close()
            if task is not None:
                self._tasks.discard(task)

    async def _dispatch(self, raw: bytes) -> list:
        self.requests += 1
        try:
            op, *args = json.loads(raw)
            handler = self.handlers[op]
        except (ValueError, TypeError, KeyError):
            return ["val", "bad bus request %r" % raw[:60]]
        try:
            result = handler(*args)
            if inspect.isawaitable(result):
                result = await result
            return ["ok", result]
        except BusError as exc:
            return ["err", exc.errno, exc.message]
        except BusValueError as exc:
            return ["val", str(exc)]
        except BusHalt:
            return ["halt"]
        except Exception as exc:  # a bug in a model or handler: tell the VM, keep serving
            log.exception("bus op %s%r failed", op, tuple(args))
            return ["err", errnos.EIO, "vboard host: %s: %s" % (type(exc).__name__, exc)]
