"""Parking bays on virtual boards: deep-sleep sampling of the QMC5883L through its driver, the
occupancy decision (hysteresis, debounce, settling, drift), and neighbours' cars."""

from __future__ import annotations

import json
import time
from pathlib import Path

import paho.mqtt.publish as publish
import pytest

from testbed import bed as tb
from testbed.bed import BoardNode, heap_reports
from testbed.gatewayproc import PREFIX
from testbed.mqttwatch import MqttWatch, outcomes_of
from vboard.scenarios import Scenario

SCENARIO = Path(__file__).parent / "scenarios" / "bays.toml"
SPEED = 20
SETTLE_S = 4            # the world's cars take 4 s to manoeuvre into or out of a bay
WITHIN_S = 80           # a flip reaches MQTT this soon (simulated s) after the car settled:
#                         on a chip ~18 s, but at SPEED the host's time in each of the ~4 wakes
#                         (a VM start, 0.3-1 s) counts 20-fold. Unchanged, 300 s (heartbeat).
HEAP_BUDGET = 110 * 1024
BAYS = ("bay-01", "bay-02", "bay-03")


@pytest.fixture
def lot(tmp_path, broker):
    bed = tb.Testbed(tmp_path, broker=broker).start()
    seen: list[tuple[str, dict, float]] = []
    holder: dict = {}

    def on_message(topic, payload):
        if topic.endswith("/up"):
            world = holder.get("world")       # None for frames before the boards were up
            frame = {r["n"]: r.get("v", r.get("vb")) for r in json.loads(payload)}
            seen.append((topic.split("/")[2], frame, world.elapsed() if world else 0.0))

    watch = MqttWatch(broker.url, PREFIX + "/#", on_message=on_message)
    try:
        fleet = bed.add_boards([BoardNode(b, "parking", interval_s=300) for b in BAYS],
                               scenario=SCENARIO, speed=SPEED)
        holder["world"] = fleet.world
        yield bed, fleet, watch, seen
    finally:
        watch.close()
        bed.stop(broker=False)


def flips(seen, bay):
    """(occupied, simulated time it arrived) for each change of occupancy on MQTT."""
    out = []
    last = None
    for device, frame, at in list(seen):
        if device == bay and "occ" in frame and frame["occ"] != last:
            out.append((frame["occ"], at))
            last = frame["occ"]
    return out


def test_cars_parking_and_leaving_flip_occupancy_within_seconds_and_neighbours_do_not(lot):
    bed, fleet, watch, seen = lot
    cars = Scenario.load(SCENARIO).cars
    deadline = time.monotonic() + 60
    while [o for o, _ in flips(seen, "bay-01")][-2:] != [True, False]:   # the van came, went
        assert time.monotonic() < deadline, (flips(seen, "bay-01"), flips(seen, "bay-02"))
        time.sleep(0.1)
    for bay in ("bay-01", "bay-02"):
        car = next(c for c in cars if c.bay == bay)
        changes = flips(seen, bay)
        # empty until the car came (the boot report says so, unless it went before the test
        # watched), then occupied, then empty again
        assert [occ for occ, _ in changes][-2:] == [True, False], changes
        assert len(changes) <= 3 and (len(changes) == 2 or changes[0][0] is False), changes
        arrived, left = changes[-2][1], changes[-1][1]
        # reported after the car settled, and within seconds of it
        assert car.arrive_s + SETTLE_S <= arrived <= car.arrive_s + SETTLE_S + WITHIN_S, changes
        assert car.leave_s <= left <= car.leave_s + SETTLE_S + WITHIN_S, changes
    # bay-03 sits 2.5 m from bay-02's car the whole time: it never counts as occupied.
    assert [occupied for occupied, _ in flips(seen, "bay-03")] == [False]
    for bay in BAYS:
        used = heap_reports(fleet.lines[bay])
        assert used and max(used) <= HEAP_BUDGET, (bay, used)


def test_calibrate_command_takes_a_new_baseline_and_is_acknowledged(lot, broker):
    bed, fleet, watch, seen = lot
    deadline = time.monotonic() + 20
    while not flips(seen, "bay-03"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    publish.single("%s/north/bay-03/down" % PREFIX, json.dumps({"cmd": "calibrate"}), qos=1,
                   hostname="127.0.0.1", port=broker.port)
    deadline = time.monotonic() + 60        # a sleeping node takes it at its next contact
    while not any(o["outcome"] == "acknowledged" for o in outcomes_of(watch.messages, "bay-03")):
        assert time.monotonic() < deadline, (outcomes_of(watch.messages, "bay-03"),
                                             list(fleet.lines["bay-03"])[-30:])
        time.sleep(0.1)
    fleet.wait_line("bay-03", "parking: baseline", 5)
    assert any("command 1 calibrate {}: done" in line for line in fleet.lines["bay-03"])
