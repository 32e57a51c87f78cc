"""What the chip says it is: its name in os.uname() and the REPL banner, its MAC, the release.

The board core (vboard/board.py) prints the banner with ``machine_name``; ``BoardHardware``
hands the VM the rest as environment variables, so the firmware reads the same identity an
ESP32 running MicroPython's ESP32_GENERIC build would report.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from boards.app_image import AppInfo
from boards.definitions import Board


def machine_name(board: Board) -> str:
    """os.uname().machine and the REPL banner's board, as MicroPython's ESP32_GENERIC builds
    name themselves (the OTA variant says so)."""
    ota = any(p.subtype.startswith("ota_") for p in board.partitions)
    return "Generic ESP32 module%s with ESP32" % (" with OTA" if ota else "")


def default_mac(board: Board, board_id: str) -> bytes:
    """A base MAC for a board without a ROM's eFuse MAC: the board's OUI, then bytes from
    ``board_id``, so that each board id keeps its MAC from run to run."""
    return board.mac_prefix + hashlib.sha256(board_id.encode()).digest()[:6 - len(
        board.mac_prefix)]


def uname_environment(board: Board, app_info: AppInfo | None) -> dict[str, str]:
    """os.uname()'s machine, release and version for the VM (VBOARD_MACHINE, VBOARD_RELEASE,
    VBOARD_VERSION): the release and build date from the running app's image header."""
    out = {"VBOARD_MACHINE": machine_name(board)}
    if app_info is not None:
        version = app_info.version
        try:
            built = datetime.strptime(" ".join(app_info.date.split()), "%b %d %Y")
            date = built.strftime("%Y-%m-%d")
        except ValueError:
            date = app_info.date
        out["VBOARD_RELEASE"] = version.lstrip("v").split("-")[0]
        out["VBOARD_VERSION"] = "%s on %s" % (version, date)
    return out
