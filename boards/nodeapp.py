"""The node application: where its sources live, and its files as they go onto a board.

The application is MicroPython code in the repository's firmware/ folder (main.py, app/,
drivers/, lib/); fleet/appbuild.py compiles it for a board, the virtual board and the testbed
copy it onto flash. Everything that needs the folder takes it from here.

It has two stages. The files at the root (``boot.py``, ``main.py``, and any other root-level
file) are the boot stage: the ESP32 port runs them by name, and they must keep running
whatever an update does, so they are written by provisioning only, never by an update. The
files inside ``UPDATABLE_DIRS`` are the updatable stage: a signed release (fleet/release.py,
docs/updates.md) carries exactly those.
"""

from __future__ import annotations

from pathlib import Path

FIRMWARE = Path(__file__).resolve().parent.parent / "firmware"

# The folders an update may write (a release's files are paths inside them); everything else
# on the board's filesystem is the boot stage, config.json and the node's own data.
UPDATABLE_DIRS = ("app", "lib", "drivers")


def is_updatable(path: str) -> bool:
    """Whether the file at ``path`` on the board (``app/node.mpy``) belongs to an update."""
    head, sep, _ = path.partition("/")
    return bool(sep) and head in UPDATABLE_DIRS


def app_dir_files(app_dir: Path) -> dict[str, bytes]:
    """Every file below ``app_dir`` by its path on the board, skipping caches."""
    return {p.relative_to(app_dir).as_posix(): p.read_bytes()
            for p in sorted(app_dir.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts and not p.name.startswith(".")}
