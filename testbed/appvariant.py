"""Variants of the node application for update tests and benchmarks: the firmware copied with
another version (what a release of it reports), optionally with an app that crashes at boot."""

from __future__ import annotations

import shutil
from pathlib import Path

from boards.nodeapp import FIRMWARE

PROVISIONED_VERSION = "0.2.0"          # APP_VERSION in firmware/app/node.py


def app_source(root: Path, version: str, *, broken: bool = False) -> Path:
    """``root``/src-<version>: the firmware whose node reports ``version`` (one changed
    module), and with ``broken`` a ``main`` that raises before the app runs."""
    src = root / ("src-" + version)
    shutil.copytree(FIRMWARE, src, ignore=shutil.ignore_patterns("__pycache__"))
    node = src / "app" / "node.py"
    text = node.read_text()
    old = 'APP_VERSION = "%s"' % PROVISIONED_VERSION
    if old not in text:
        raise ValueError("firmware/app/node.py no longer says %s" % old)
    node.write_text(text.replace(old, 'APP_VERSION = "%s"' % version))
    if broken:
        run = src / "app" / "run.py"
        run.write_text(run.read_text().replace(
            "def main(heap_base=0):\n",
            "def main(heap_base=0):\n    raise RuntimeError('broken release')\n"))
    return src
