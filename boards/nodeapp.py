"""The node application: where its sources live, and its files as they go onto a board.

The application is MicroPython code in the repository's firmware/ folder (main.py, app/,
drivers/, lib/); fleet/appbuild.py compiles it for a board, the virtual board and the testbed
copy it onto flash. Everything that needs the folder takes it from here.
"""

from __future__ import annotations

from pathlib import Path

FIRMWARE = Path(__file__).resolve().parent.parent / "firmware"


def app_dir_files(app_dir: Path) -> dict[str, bytes]:
    """Every file below ``app_dir`` by its path on the board, skipping caches."""
    return {p.relative_to(app_dir).as_posix(): p.read_bytes()
            for p in sorted(app_dir.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts and not p.name.startswith(".")}
