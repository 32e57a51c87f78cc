"""Over-the-air update of one virtual lamp at speed 1: bytes fetched, time to confirmed, heap.

A release that changes one file (app/node.mpy, its version) is built with `fleet release
build` and given to a running lamp with `fleet update` (the installed commands, as an operator
runs them). Figures, each against a baseline of the same run:
- bytes the node fetched (its status frames' ``updb``) against the size of the changed file
  (goal <= 1.2) and against the whole app (the saving of fetching only what changed);
- seconds from starting `fleet update` to its exit with the node confirmed, against the seconds
  the same board took from power-on to its first status frame;
- the heap the app used at the update's peak (``ota: heap peak``) against the firmware's heap
  (budget 0.5) and against the lamp's own use before the update.

``python -m bench.bench_update`` also prints the commands' output (docs/updates.md shows it).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Result
from fleet.appbuild import build_app
from protocol import manifest as mf
from testbed.appvariant import app_source
from testbed.bed import BoardNode, Testbed, heap_reports
from testbed.mqttwatch import MqttWatch, records_of
from vboard.vm import ESP32_HEAP_BYTES, POINTER_SIZE_RATIO

FLEET = str(Path(sys.executable).parent / "fleet")
UPDATABLE = ("app/", "lib/", "drivers/")
SHOWN: list[str] = []        # the commands and their output, for __main__


def _fleet(registry: str, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([FLEET, "--registry", registry, *args], capture_output=True,
                          text=True, timeout=600)
    SHOWN.append("$ fleet %s\n%s%s" % (" ".join(args), proc.stdout, proc.stderr))
    if proc.returncode != 0:
        raise RuntimeError("fleet %s failed:\n%s%s" % (args, proc.stdout, proc.stderr))
    return proc


def measure() -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = root / "releases"
        store.mkdir()
        bed = Testbed(root / "bed", gateway_toml=(
            '[files]\nsource = "%s"\nsync_interval_s = 1\n' % store)).start()
        watch = MqttWatch(bed.broker.url, "#")
        try:
            key = root / "release-key.pem"
            _fleet(bed.registry_url, "release", "key", "create", "--key", str(key))
            src = app_source(root, "0.3.0")
            _fleet(bed.registry_url, "release", "build", "0.3.0", "--app-source", str(src),
                   "--key", str(key), "--store", str(store), "--notes", "the lamp's new version")
            new = {p: d for p, d in build_app(src).items() if p.startswith(UPDATABLE)}
            changed = mf.Manifest.from_body(mf.unpack(
                (store / "0.3.0" / mf.MANIFEST).read_bytes())[0])
            started = time.monotonic()
            nodes = bed.add_boards([BoardNode("lamp-01", "lighting", interval_s=30, extra={
                "status_s": 600})], speed=1)
            nodes.wait_line("lamp-01", "status sent", 60)
            boot_s = time.monotonic() - started
            started = time.monotonic()
            _fleet(bed.registry_url, "update", "lamp-01", "--release", "0.3.0", "--store",
                   str(store), "--mqtt", bed.broker.url, "--timeout", "300")
            update_s = time.monotonic() - started
            fetched = max(r["v"] for r in records_of(watch.messages, "lamp-01", "status")
                          if r["n"] == "updb")
            lines = nodes.lines["lamp-01"]
            peaks = [int(line.split()[3]) for line in lines
                     if line.startswith("ota: heap peak ")]
            return {"fetched": fetched, "file": len(new["app/node.mpy"]),
                    "app": changed.app_bytes(), "update_s": update_s, "boot_s": boot_s,
                    "peak": max(peaks), "own": heap_reports(lines)[0]}
        finally:
            watch.close()
            bed.stop()


def run() -> list[Result]:
    m = measure()
    heap = ESP32_HEAP_BYTES * POINTER_SIZE_RATIO
    return [
        Result("bytes fetched, release changing one file", m["fetched"], "bytes",
               "that file's size", m["file"], higher_is_better=False),
        Result("bytes fetched, release changing one file", m["fetched"], "bytes",
               "the whole app", m["app"], higher_is_better=False),
        Result("fleet update to confirmed, speed 1", m["update_s"], "s",
               "power-on to first status", m["boot_s"], higher_is_better=False),
        Result("heap at the update's peak (lamp, VM)", m["peak"], "bytes",
               "firmware heap", heap, higher_is_better=False),
        Result("heap at the update's peak (lamp, VM)", m["peak"], "bytes",
               "the lamp's own use before", m["own"], higher_is_better=False),
    ]


if __name__ == "__main__":
    for r in run():
        print(r.line())
    print()
    print("\n".join(SHOWN))
