"""A node on the host: the firmware running on the MicroPython VM, a host folder as its flash.

This is the thin runner the walking skeleton needs: it installs the firmware files and a
config.json into a folder, starts ``micropython`` there (boot.py, then main.py, as the ESP32 port
does) and collects the console output. The full virtual board (flash image, littlefs, serial
console for mpremote, ROM bootloader for esptool) builds on the same VM settings.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

from boards.nodeapp import FIRMWARE
from testbed.proc import spawn, stop
from vboard.vm import SHIMS, vm_command, vm_env

# The ESP32 port runs boot.py and then main.py from the filesystem root.
_BOOTSTRAP = """\
import os
for _f in ("boot.py", "main.py"):
    try:
        os.stat(_f)
    except OSError:
        continue
    exec(open(_f).read(), {"__name__": "__main__"})
"""


def install_firmware(root: Path, config: dict) -> None:
    """Copy the firmware's .py files and ``config`` (as config.json) into ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for src in FIRMWARE.rglob("*.py"):
        dst = root / src.relative_to(FIRMWARE)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    (root / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    (root / "_vboot.py").write_text(_BOOTSTRAP)


class HostNode:
    """One firmware instance on the VM. ``on_line`` sees each console line as it arrives."""

    def __init__(self, root: Path, *, on_line: Callable[[str], None] | None = None) -> None:
        self.root = root
        self.lines: list[str] = []
        self._on_line = on_line
        self._proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._cond = threading.Condition()

    def start(self) -> "HostNode":
        self._proc = spawn(
            vm_command("_vboot.py"), cwd=self.root,
            # the VM's frozen modules (asyncio) first, as on a chip
            env=vm_env([".frozen", self.root, self.root / "lib", SHIMS]),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for raw in self._proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
            if self._on_line:
                self._on_line(line)

    def wait_for_line(self, predicate: Callable[[str], bool], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    if predicate(line):
                        return line
                seen = len(self.lines)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("no matching console line in %.0f s; last lines:\n%s"
                                       % (timeout, "\n".join(self.lines[-20:])))
                self._cond.wait(remaining)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        if self._proc is None:
            return
        stop(self._proc)
        if self._reader is not None:
            self._reader.join(2)
        self._proc = None
