"""A pseudo-terminal in front of a board's console port, for tools that need a tty (mpremote's
`repl`, screen, miniterm): bytes pass unchanged both ways until either side closes."""

from __future__ import annotations

import asyncio
import os
import pty
import signal
import termios
import tty
from pathlib import Path


async def bridge(host: str, port: int, link: Path | None = None) -> int:
    reader, writer = await asyncio.open_connection(host, port)
    master, slave = pty.openpty()
    tty.setraw(slave, termios.TCSANOW)  # a serial line: no echo, no translation, no signals
    name = os.ttyname(slave)
    if link is not None:
        if link.is_symlink():
            link.unlink()
        link.symlink_to(name)
    print("console %s:%d is on %s%s (Ctrl-C here ends the bridge)"
          % (host, port, name, " (%s)" % link if link else ""), flush=True)
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    os.set_blocking(master, False)

    def from_pty() -> None:
        try:
            data = os.read(master, 4096)
        except BlockingIOError:
            return
        except OSError:  # EIO while no program has the pty open: wait for the next one
            return
        writer.write(data)

    async def to_pty() -> None:
        while data := await reader.read(4096):
            view = memoryview(data)
            while view:
                try:
                    view = view[os.write(master, view):]
                except BlockingIOError:
                    await asyncio.sleep(0.001)
        done.set()

    loop.add_reader(master, from_pty)
    pump = asyncio.create_task(to_pty())
    try:
        await done.wait()
    finally:
        loop.remove_reader(master)
        pump.cancel()
        writer.close()
        os.close(master)
        os.close(slave)
        if link is not None and link.is_symlink():
            link.unlink()
    return 0
