"""Street lighting on virtual boards: the compiled firmware with its real drivers, the world's
people and light, the gateway's neighbour rule and commands, all the way to MQTT.

Simulated time runs SPEED times faster than the wall clock, so a person walking past three
lamps (and the lamps' hold time) takes seconds."""

from __future__ import annotations

import json
import time
from pathlib import Path

import paho.mqtt.publish as publish
import pytest

from testbed import bed as tb
from testbed.bed import BoardNode, heap_reports
from testbed.gatewayproc import PREFIX
from testbed.mqttwatch import MqttWatch, outcomes_of, records_of

SCENARIO = Path(__file__).parent / "scenarios" / "street-night.toml"
SPEED = 10
LAMPS = ("lamp-01", "lamp-02", "lamp-03")
HOLD_S = 20
NIGHT, FULL = 20, 100
HEAP_BUDGET = 110 * 1024     # half the modelled ESP32 heap, in the 64-bit VM's bytes
GATEWAY = "[neighbours]\nenabled = true\ndistance_m = 40\nlevel = 100\nhold_s = 30\n"


@pytest.fixture
def street(tmp_path, broker):
    bed = tb.Testbed(tmp_path, broker=broker, gateway_toml=GATEWAY).start()
    watch = MqttWatch(broker.url, PREFIX + "/#")
    nodes = [BoardNode(i, "lighting", interval_s=60,
                       extra={"status_s": 60, "lighting": {"hold_s": HOLD_S}}) for i in LAMPS]
    try:
        fleet = bed.add_boards(nodes, scenario=SCENARIO, speed=SPEED, reload_gateway=True)
        yield bed, fleet, watch
    finally:
        watch.close()
        bed.stop(broker=False)


def wait_record(watch, device, pred, timeout, leaf="up", after=None):
    """The first record of ``device`` matching ``pred`` (waits for it), in a frame after the
    one of record ``after`` if given."""
    deadline = time.monotonic() + timeout
    while True:
        for rec in records_of(watch.messages, device, leaf):
            if pred(rec) and (after is None or rec["frame"] > after["frame"]):
                return rec
        if time.monotonic() > deadline:
            raise AssertionError("no matching %s record from %s in %.0f s; got %s" % (
                leaf, device, timeout, records_of(watch.messages, device, leaf)[-20:]))
        time.sleep(0.05)


def frame(watch, device, rec):
    """All records of the frame ``rec`` came in, by name."""
    return {r["n"]: r["v"] for r in records_of(watch.messages, device) if
            r["frame"] == rec["frame"]}


def test_people_walking_past_raise_and_lower_the_light_and_boost_neighbours(street):
    bed, fleet, watch = street
    # Night: every lamp settles at its floor level.
    for lamp in LAMPS:
        wait_record(watch, lamp, lambda r: r["n"] == "dim" and r["v"] == NIGHT, 30)
    # The walker reaches lamp 1: presence, full light in the same frame.
    seen = wait_record(watch, "lamp-01", lambda r: r["n"] == "pres" and r["v"] is True, 40)
    assert frame(watch, "lamp-01", seen)["dim"] == FULL
    # The gateway boosts lamp 2 (30 m on) before the walker gets there: its light rises in a
    # frame of its own, before its radar sees anyone.
    boosted = wait_record(watch, "lamp-02", lambda r: r["n"] == "dim" and r["v"] == FULL, 10)
    own = wait_record(watch, "lamp-02", lambda r: r["n"] == "pres" and r["v"] is True, 30)
    assert boosted["frame"] < own["frame"]
    assert "pres" not in frame(watch, "lamp-02", boosted)
    assert any(o["cmd"] == "boost" and o["outcome"] == "acknowledged"
               for o in outcomes_of(watch.messages, "lamp-02"))
    # ... and the lamp really is lit: the PWM output to its LED driver is at full duty.
    hw = fleet.board("lamp-02").hardware
    assert hw.pwm_outputs[25][1] > 0.95 * 65535
    # Lamp 3 is boosted by lamp 2's presence (lamp 1 is 60 m away: beyond the rule's 40 m).
    boosted3 = wait_record(watch, "lamp-03", lambda r: r["n"] == "dim" and r["v"] == FULL, 30)
    own3 = wait_record(watch, "lamp-03", lambda r: r["n"] == "pres" and r["v"] is True, 30)
    assert boosted3["frame"] < own3["frame"]
    # The walker has gone: after the hold time lamp 1 says so, and drops to the night floor
    # (once the boost lamp 2's presence gave it has run out as well).
    gone = wait_record(watch, "lamp-01", lambda r: r["n"] == "pres" and r["v"] is False, 20,
                       after=seen)
    assert gone["t"] - seen["t"] >= HOLD_S / SPEED
    wait_record(watch, "lamp-01", lambda r: r["n"] == "dim" and r["v"] == NIGHT, 20, after=gone)
    # Steady-state heap of the running app stays within half the modelled ESP32 heap.
    used = heap_reports(fleet.lines["lamp-01"])
    assert used and max(used) <= HEAP_BUDGET, used


def test_operator_commands_force_and_levels_are_carried_out_and_acknowledged(street, broker):
    bed, fleet, watch = street

    def command(cmd, args):
        publish.single("%s/north/lamp-01/down" % PREFIX, json.dumps({"cmd": cmd, "args": args}),
                       qos=1, hostname="127.0.0.1", port=broker.port)
    wait_record(watch, "lamp-01", lambda r: r["n"] == "dim" and r["v"] == NIGHT, 30)
    command("force", {"mode": "off"})
    wait_record(watch, "lamp-01", lambda r: r["n"] == "dim" and r["v"] == 0, 15)
    command("levels", {"night": 35})
    command("force", {"mode": "auto"})
    wait_record(watch, "lamp-01", lambda r: r["n"] == "dim" and r["v"] == 35, 15)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        done = [o for o in outcomes_of(watch.messages, "lamp-01") if o["outcome"] ==
                "acknowledged"]
        if len(done) >= 3:
            break
        time.sleep(0.1)
    assert sorted(o["cmd"] for o in done) == ["force", "force", "levels"]
    assert not [o for o in outcomes_of(watch.messages, "lamp-01") if o["outcome"] == "rejected"]
    # The new night level survives a reboot: it went into config.json.
    command("reboot", {})
    fleet.wait_line("lamp-01", "rebooting (command)", 20)
    n = len(fleet.lines["lamp-01"])
    fleet.wait_line("lamp-01", "boot 2", 20, since=n)
    before = len(records_of(watch.messages, "lamp-01"))
    deadline = time.monotonic() + 20
    while True:
        later = records_of(watch.messages, "lamp-01")[before:]
        if any(r["n"] == "dim" and r["v"] == 35 for r in later):
            break
        assert time.monotonic() < deadline, later
        time.sleep(0.1)
    # The reboot command, delivered again after the reboot until acknowledged, ran once.
    assert not any("boot 3" in line for line in fleet.lines["lamp-01"])
    assert any(o["cmd"] == "reboot" and o["outcome"] == "acknowledged"
               for o in outcomes_of(watch.messages, "lamp-01"))
    # A node provisioned without the fleet's release key refuses `ota` (it could not check a
    # release's signature), the operator sees it rejected and why, and the lamp runs on.
    command("ota", {"version": "1.3.0", "manifest": "f/1.3.0/manifest"})
    deadline = time.monotonic() + 15
    while not [o for o in outcomes_of(watch.messages, "lamp-01") if o["cmd"] == "ota"
               and o["outcome"] == "rejected"]:
        assert time.monotonic() < deadline, outcomes_of(watch.messages, "lamp-01")
        time.sleep(0.1)
    fleet.wait_line("lamp-01", "ota 1.3.0: refused, this node has no release key", 5)


def test_a_lamp_that_fails_raises_an_alarm_and_clears_it_when_repaired(street):
    bed, fleet, watch = street
    wait_record(watch, "lamp-01", lambda r: r["n"] == "dim" and r["v"] == NIGHT, 30)
    fleet.world.inject("lamp-01", "lamp_failure")
    alarm = wait_record(watch, "lamp-01", lambda r: r["n"] == "alarm" and r["v"] is True, 20)
    assert frame(watch, "lamp-01", alarm)["power"] < 1.0          # W: no current drawn
    # the status frame carries the lamp fault bit (wait_record fails if none comes)
    wait_record(watch, "lamp-01", lambda r: r["n"] == "faults" and r["v"] & 0x08, 20,
                leaf="status")
    fleet.world.clear("lamp-01", "lamp_failure")
    wait_record(watch, "lamp-01", lambda r: r["n"] == "alarm" and r["v"] is False, 20)
