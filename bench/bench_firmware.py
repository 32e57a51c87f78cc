"""Node firmware budgets: heap per role, bytes on the wire, time awake per battery cycle.

Each figure is printed against a baseline measured in the same run:
- heap: the app's own use on the virtual board (console "heap: N B used by the app", the
  largest of its status frames) against the heap the VM leaves the firmware after the shims
  (the modelled ESP32's 110 KB, doubled for the 64-bit VM); the budget is ratio <= 0.5;
- wire: the UDP payload the firmware sends for a water-level reading (live, and from the
  queue) against the same reading as plain SenML JSON with a base name (what an unprotected
  JSON node would send as its payload alone); the budget is 64 bytes for the live one;
- awake: simulated ms awake per battery wake (speed 1) with the gateway reachable, a reporting
  wake against a measuring-only one; battery life on two AA lithium cells at a 15-minute
  interval from those times and the currents in CURRENTS (docs/firmware.md), against the life
  the sleep current alone would allow.
"""

from __future__ import annotations

import json
import re
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import Result
from boards.nodeapp import FIRMWARE
from testbed.bed import BoardNode, Testbed, heap_reports
from testbed.broker import Broker
from testbed.netem import UdpSink
from vboard.vm import HEAP_FLAG, SHIMS, board_heap_flag, run_source

SCENARIO = Path(__file__).resolve().parent.parent / "hil_tests" / "scenarios" / "one-of-each.toml"
RUN_S = 45

# Datasheet currents and assumptions (docs/firmware.md, "Battery life").
CURRENTS = {
    "radio_ma": 110.0,       # ESP32-WROOM-32, WiFi associating/TX/RX, averaged over the wake
    "cpu_ma": 40.0,          # CPU at 160 MHz, radio off (datasheet modem-sleep 30-68 mA)
    "boot_s": 0.35,          # ROM + 2nd-stage bootloader + MicroPython start, before ticks count
    "sleep_ua": 10.0 + 4.0 + 16.0,   # deep sleep (RTC timer+memory) + LDO Iq + 2x100k divider
    "sonar_ma": 30.0,        # JSN-SR04T while powered (switched off between measurements)
    "sonar_s": 0.8,          # 300 ms start-up + 7 pings x 70 ms
    "capacity_mah": 2550.0,  # 2 x Energizer L91 (3000 mAh), 85 % usable to the cut-off
}


def battery_days(radio_wakes: float, radio_s: float, quiet_wakes: float, quiet_s: float,
                 sensor_mas: float = 0.0) -> float:
    """Days on the cells for a day of `radio_wakes` wakes of `radio_s` with the radio and
    `quiet_wakes` of `quiet_s` without; `sensor_mas` extra mA*s per day."""
    c = CURRENTS
    boot = (radio_wakes + quiet_wakes) * c["boot_s"] * c["cpu_ma"]
    awake = radio_wakes * radio_s * c["radio_ma"] + quiet_wakes * quiet_s * c["cpu_ma"]
    awake_s = (radio_wakes * radio_s + quiet_wakes * quiet_s
               + (radio_wakes + quiet_wakes) * c["boot_s"])
    sleep = (86400 - awake_s) * c["sleep_ua"] / 1000
    mah_per_day = (boot + awake + sleep + sensor_mas) / 3600
    return c["capacity_mah"] / mah_per_day


def available_heap() -> int:
    """What the VM leaves the firmware: its heap after the shims are loaded, as on a board."""
    src = ("import gc\nfor n in ('_vbus','time','select','os','machine','network','esp32',"
           "'esp'):\n    __import__(n)\ngc.collect()\nprint(gc.mem_free())\n")
    proc = run_source(src, [".frozen", SHIMS], heap_flag=board_heap_flag())
    return int(proc.stdout.split()[-1])


def wire_sizes() -> dict[str, int]:
    """Datagrams the firmware sends for a shaft reading: live, and queued with bt."""
    sink = UdpSink(3)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = {"id": "shaft-01", "role": "shaft", "site": "north",
               "gateway": {"host": "127.0.0.1", "port": sink.port},
               "oscore": {"sid": "0001", "rid": "", "secret": "00" * 16, "salt": "11" * 8},
               "max_retransmit": 0, "ack_timeout_ms": 200}
        (Path(tmp) / "config.json").write_text(json.dumps(cfg))
        (Path(tmp) / "oscore.seq").write_text("70000\n")      # a 3-byte Partial IV
        run_source("""
import asyncio, time
from app import config, state as st
from app.node import Node
from app.store import ABSOLUTE
node = Node(config.load(), st.State())
reading = [("level", 1234), ("temp", 1150), ("batt", 3012)]
node.submit(reading)
asyncio.run(node.flush())
node.state.stage = bytearray()
node.queue.put(time.time() - 300, 0, reading)
asyncio.run(node.flush())
node.state.stage = bytearray()
node.queue.put(1795000000, ABSOLUTE, reading)
asyncio.run(node.flush())
""", [".frozen", FIRMWARE, FIRMWARE / "lib", SHIMS], cwd=Path(tmp), heap_flag=HEAP_FLAG)
    sizes = [len(d) for d in sink.collected()]
    return {"live": sizes[0], "queued, rel. bt": sizes[1], "queued, abs. bt": sizes[2]}


def run_roles() -> tuple[dict[str, int], dict[str, list[tuple[int, bool]]]]:
    """Heap used per role, and (awake ms, radio) per battery wake, from nodes on virtual
    boards at speed 1 talking to a real gateway."""
    with tempfile.TemporaryDirectory() as tmp, Broker(log_path=Path(tmp) / "broker.log") as b:
        bed = Testbed(Path(tmp), broker=b).start()
        try:
            fleet = bed.add_boards([
                BoardNode("lamp-01", "lighting", interval_s=10, extra={"status_s": 15}),
                BoardNode("bay-01", "parking", interval_s=30, extra={"status_s": 40}),
                BoardNode("shaft-01", "shaft", interval_s=30, extra={
                    "status_s": 40, "shaft": {"mode": "uart", "sample_s": 10}})],
                scenario=SCENARIO, speed=1.0)
            time.sleep(RUN_S)
            lines = {k: list(v) for k, v in fleet.lines.items()}
        finally:
            bed.stop(broker=False)
    heap = {}
    for k, v in lines.items():
        used = heap_reports(v)
        if not used:
            raise RuntimeError("%s reported no heap use in %d s: nothing to measure" % (k, RUN_S))
        heap[k] = max(used)
    awake = {}
    pattern = re.compile(r"awake (\d+) ms \((radio|no radio)\)")
    for k, v in lines.items():
        found = [pattern.search(line) for line in v]
        # the first wake after power-on also sends the boot status: not a steady cycle
        awake[k] = [(int(m.group(1)), m.group(2) == "radio") for m in found if m][1:]
    return heap, awake


def run() -> list[Result]:
    results = []
    avail = available_heap()
    heap, awake = run_roles()
    for role, device in (("lighting", "lamp-01"), ("parking", "bay-01"), ("shaft", "shaft-01")):
        results.append(Result("heap used by the app, %s" % role, heap[device] / 1024,
                              "KB", "heap for the firmware", avail / 1024,
                              higher_is_better=False))
    sizes = wire_sizes()     # the water-level uplink
    json_size = len(json.dumps([{"bn": "urn:dev:id:shaft-01:", "n": "level", "u": "mm",
                                 "v": 1234}, {"n": "temp", "u": "Cel", "v": 11.5},
                                {"n": "batt", "u": "mV", "v": 3012}], separators=(",", ":")))
    for what, size in sizes.items():
        results.append(Result("level uplink on the wire, %s" % what, size, "B",
                              "SenML JSON payload alone", json_size, higher_is_better=False))
    for role, device in (("shaft", "shaft-01"), ("parking", "bay-01")):
        radio = [ms for ms, r in awake[device] if r]
        quiet = [ms for ms, r in awake[device] if not r]
        if not radio or not quiet:
            raise RuntimeError("%s: no %s wake in %d s to measure" % (
                device, "radio" if not radio else "measuring-only", RUN_S))
        r_ms, q_ms = statistics.median(radio), statistics.median(quiet)
        results.append(Result("awake, %s wake with the radio" % role, r_ms, "ms",
                              "%s wake measuring only" % role, q_ms, higher_is_better=False))
        if role == "shaft":       # 96 reports + 192 measuring wakes a day (15 min / 5 min)
            days = battery_days(96, r_ms / 1000, 192, q_ms / 1000,
                                sensor_mas=288 * CURRENTS["sonar_ma"] * CURRENTS["sonar_s"])
        else:                     # heartbeat every 30 min + 20 changes; a sample every 10 s
            days = battery_days(68, r_ms / 1000, 8640, q_ms / 1000)
        sleep_only = CURRENTS["capacity_mah"] / (CURRENTS["sleep_ua"] * 24 / 1000)
        results.append(Result("battery life, %s, 2xAA lithium" % role, days, "days",
                              "deep sleep alone", sleep_only))
    return results
