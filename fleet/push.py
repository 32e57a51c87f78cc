"""`fleet push`: the development loop. Copy the app files that changed to a running board over
its MicroPython console (mpremote's transport), then soft-reset it so main.py runs them.

What changed is decided by SHA-256: the board hashes all its files in one command and only
files whose hash differs are sent. Modules the build no longer has (.py/.mpy) are removed,
so a stale app/x.py cannot shadow a new app/x.mpy. The node's own state (config.json, the
OSCORE sequence mark, its reading queue) is never touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import time
from dataclasses import dataclass, field
from typing import Callable

from fleet.errors import CONSOLE, NO_PORT, FleetError

CONSOLE_BAUD = 115200
RAW_REPL_TIMEOUT_S = 10.0     # interrupting the app and entering the raw REPL
SOFT_RESET_TIMEOUT_S = 10.0
CHUNK_BYTES = 1024            # per write command (raw-paste mode keeps the board's pace)
MODULE_SUFFIXES = (".py", ".mpy")
NODE_STATE = ("config.json", "oscore.seq", "oscore.seq.tmp")

# Runs on the board: every file with its SHA-256 ("F path hex"), every folder ("D path").
_HASH_ALL = """\
import os, hashlib, binascii
def _walk(d):
    for e in (os.ilistdir(d) if d else os.ilistdir()):
        p = d + "/" + e[0] if d else e[0]
        if e[1] & 0x4000:
            print("D", p)
            _walk(p)
        else:
            h = hashlib.sha256()
            b = bytearray(512)
            with open(p, "rb") as f:
                while True:
                    n = f.readinto(b)
                    if not n:
                        break
                    h.update(b[:n])
            print("F", p, binascii.hexlify(h.digest()).decode())
_walk("")
"""


@dataclass
class PushResult:
    sent: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    bytes_sent: int = 0
    seconds: float = 0.0


def plan_push(files: dict[str, bytes], on_board: dict[str, str]) -> tuple[list[str], list[str]]:
    """(paths to send, paths to remove) for ``files`` against the board's {path: sha256}."""
    send = [p for p in sorted(files) if on_board.get(p) != hashlib.sha256(files[p]).hexdigest()]
    remove = sorted(p for p in on_board if p not in files and p.endswith(MODULE_SUFFIXES)
                    and p not in NODE_STATE)
    return send, remove


def push(url: str, files: dict[str, bytes], *, dry_run: bool = False,
         progress: Callable[[int, int], None] | None = None,
         console_timeout_s: float = RAW_REPL_TIMEOUT_S) -> PushResult:
    """Bring the board's app files to ``files`` and soft-reset it (unless ``dry_run``)."""
    started = time.monotonic()
    transport = _open(url)
    try:
        _enter_raw_repl(transport, url, console_timeout_s)
        on_board, folders = _board_files(transport)
        send, remove = plan_push(files, on_board)
        result = PushResult(unchanged=len(files) - len(send))
        if dry_run:
            result.sent, result.removed = send, remove
            transport.exit_raw_repl()
            return result
        total = sum(len(files[p]) for p in send) or 1
        for path in send:
            _make_folders(transport, path, folders)
            _call(transport.fs_writefile, url, path, files[path], chunk_size=CHUNK_BYTES)
            result.sent.append(path)
            result.bytes_sent += len(files[path])
            if progress is not None:
                progress(result.bytes_sent, total)
        for path in remove:
            _call(transport.fs_rmfile, url, path)
            result.removed.append(path)
        _soft_reset(transport, url)
        result.seconds = time.monotonic() - started
        return result
    finally:
        transport.close()


def _open(url: str):
    from mpremote.transport import TransportError
    from mpremote.transport_serial import SerialTransport

    try:
        return SerialTransport(url, baudrate=CONSOLE_BAUD)
    except TransportError:
        raise FleetError("cannot open the console port %s: is the board plugged in (or the "
                         "virtual board running), and no other program using the port?"
                         % url, NO_PORT) from None


def _enter_raw_repl(transport, url: str, timeout_s: float) -> None:
    from mpremote.transport import TransportError

    try:
        # Interrupts the app; the soft reset into the raw REPL does not run main.py. (mpremote
        # prints what it got when that fails; the error below says it for a person.)
        with contextlib.redirect_stdout(io.StringIO()):
            transport.enter_raw_repl(soft_reset=True, timeout_overall=timeout_s)
    except (TransportError, OSError) as exc:
        raise FleetError("the board on %s does not give a MicroPython prompt (%s): is it "
                         "running MicroPython (provision it first), and no other program "
                         "connected to it?" % (url, str(exc) or "no answer"), CONSOLE) from None


def _board_files(transport) -> tuple[dict[str, str], set[str]]:
    files: dict[str, str] = {}
    folders: set[str] = set()
    out = _call(transport.exec, "the board", _HASH_ALL).decode(errors="replace")
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "F":
            files[parts[1]] = parts[2]
        elif len(parts) == 2 and parts[0] == "D":
            folders.add(parts[1])
    return files, folders


def _make_folders(transport, path: str, folders: set[str]) -> None:
    parts = path.split("/")[:-1]
    for i in range(1, len(parts) + 1):
        folder = "/".join(parts[:i])
        if folder not in folders:
            _call(transport.fs_mkdir, "the board", folder)
            folders.add(folder)


def _soft_reset(transport, url: str) -> None:
    """Ctrl-D at the friendly REPL: a soft reset that runs boot.py and main.py."""
    transport.exit_raw_repl()
    transport.serial.write(b"\x04")
    seen = transport.read_until(1, b"soft reboot", timeout=SOFT_RESET_TIMEOUT_S)
    if not seen.endswith(b"soft reboot"):
        raise FleetError("the files were copied, but the board on %s did not soft-reset: "
                         "press its EN (RST) button" % url, CONSOLE)


def _call(fn, where: str, *args, **kwargs):
    from mpremote.transport import TransportError

    try:
        return fn(*args, **kwargs)
    except (TransportError, OSError) as exc:
        raise FleetError("the board's console failed during the copy (%s): run `fleet push` "
                         "again (it sends only what is still missing)" % (str(exc).strip()
                                                                          or where),
                         CONSOLE) from None
