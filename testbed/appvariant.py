"""Variants of the node application for update tests and benchmarks: the firmware copied with
another version (what a release of it reports), optionally with an app that crashes at boot or
one whose uplinks never get through (both must be rolled back by the node)."""

from __future__ import annotations

import shutil
from pathlib import Path

from boards.nodeapp import FIRMWARE

PROVISIONED_VERSION = "0.2.0"          # APP_VERSION in firmware/app/node.py


def app_source(root: Path, version: str, *, broken: bool = False,
               unreachable: bool = False) -> Path:
    """``root``/src-<version>: the firmware whose node reports ``version`` (one changed
    module); with ``broken`` a ``main`` that raises before the app runs, with ``unreachable``
    a link whose every POST is kept for later (the gateway never answers this app)."""
    src = root / ("src-" + version)
    shutil.copytree(FIRMWARE, src, ignore=shutil.ignore_patterns("__pycache__"))
    node = src / "app" / "node.py"
    text = node.read_text()
    old = 'APP_VERSION = "%s"' % PROVISIONED_VERSION
    if old not in text:
        raise ValueError("firmware/app/node.py no longer says %s" % old)
    node.write_text(text.replace(old, 'APP_VERSION = "%s"' % version))
    if broken:
        _patch(src / "app" / "run.py", "def main(heap_base=0):\n",
               "    raise RuntimeError('broken release')\n")
    if unreachable:
        _patch(src / "app" / "link.py",
               'return DONE, DROP, KEEP or WAIT."""\n',
               '        return KEEP    # a release whose link is broken\n')
    return src


def _patch(path: Path, after: str, line: str) -> None:
    """Insert ``line`` after the text ``after`` (which must be there once)."""
    text = path.read_text()
    if text.count(after) != 1:
        raise ValueError("%s: %r is no longer there once" % (path, after))
    path.write_text(text.replace(after, after + line))
