"""Batch provisioning: boards are provisioned as they are plugged in (a port appears ->
provision -> done -> next), and a table says how each went.

Where ports come from is a function returning the ports present now, polled:
``usb_serial_ports`` for USB-serial adapters (pyserial's list_ports), ``ports_in_folder`` for
a folder of files each holding one port URL (a rack of RFC 2217 servers, virtual boards, or a
test that adds boards one by one). A port is provisioned once; unplugged and plugged in
again, it counts as a new board.
"""

from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from fleet.errors import FleetError
from fleet.progress import Progress
from fleet.provision import Options, Result, Target, provision
from registry.db import Registry

PORT_POLL_S = 0.5


@dataclass
class BatchRow:
    port: str
    device_id: str = "-"
    mac: str = "-"
    outcome: str = "provisioned"      # "provisioned" or the FleetError kind
    seconds: float = 0.0
    detail: str = ""


def usb_serial_ports(pattern: str | None = None) -> Callable[[], list[str]]:
    """Serial ports on USB adapters (a board's USB-UART), optionally matching a glob."""
    from serial.tools import list_ports

    def ports() -> list[str]:
        found = [p.device for p in list_ports.comports() if p.vid is not None]
        return sorted(p for p in found if pattern is None or fnmatch.fnmatch(p, pattern))
    return ports


def ports_in_folder(folder: Path) -> Callable[[], list[str]]:
    """One port URL per file (``*.port``) in ``folder``, in file-name order."""
    def ports() -> list[str]:
        urls = []
        for path in sorted(Path(folder).glob("*.port")):
            try:
                text = path.read_text().strip()
            except OSError:
                continue             # being written; next poll
            if text:
                urls.append(text)
        return urls
    return ports


def appearing_ports(source: Callable[[], Iterable[str]], *, idle_timeout_s: float | None,
                    poll_s: float = PORT_POLL_S,
                    sleep: Callable[[float], None] = time.sleep,
                    clock: Callable[[], float] = time.monotonic) -> Iterator[str]:
    """Each port when it appears; ends after ``idle_timeout_s`` without a new one (None:
    never; Ctrl-C ends it)."""
    handed_out: set[str] = set()
    idle_since = clock()
    while True:
        present = list(source())
        handed_out &= set(present)       # unplugged: next time it is a new board
        fresh = [p for p in present if p not in handed_out]
        for port in fresh:
            handed_out.add(port)
            yield port
            idle_since = clock()
        if not fresh:
            if idle_timeout_s is not None and clock() - idle_since >= idle_timeout_s:
                return
            sleep(poll_s)


def provision_batch(registry: Registry, ports: Iterable[str], target: Target, options: Options,
                    *, count: int | None = None,
                    progress_for: Callable[[int, str], Progress] | None = None,
                    on_row: Callable[[BatchRow], None] | None = None) -> list[BatchRow]:
    """Provision each port from ``ports`` (until ``count`` boards), one after another."""
    rows: list[BatchRow] = []
    for n, port in enumerate(ports, start=1):
        progress = progress_for(n, port) if progress_for else Progress(quiet=True)
        started = time.monotonic()
        try:
            result: Result = provision(registry, port, target, options, progress)
        except FleetError as exc:
            row = BatchRow(port, outcome=exc.kind, seconds=time.monotonic() - started,
                           detail=str(exc))
        else:
            row = BatchRow(port, result.device_id, result.mac, "provisioned", result.seconds,
                           "%s%s" % ("firmware written" if result.firmware_written
                                     else "firmware kept",
                                     ", uplink after %.1f s" % result.uplink_s
                                     if result.uplink else ""))
        rows.append(row)
        if on_row is not None:
            on_row(row)
        if count is not None and len(rows) >= count:
            break
    return rows


def table(rows: list[BatchRow]) -> str:
    header = ("PORT", "DEVICE", "MAC", "RESULT", "TIME", "DETAIL")
    lines = [header] + [(r.port, r.device_id, r.mac, r.outcome, "%.1f s" % r.seconds, r.detail)
                        for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)) + "  " + line[-1]
                     for line in lines)
