"""Faults on virtual boards: a sensor unplugged while the node runs, a crash loop that ends in
safe mode and is repaired by a field engineer with mpremote over the console, and a bad
setting reported with its status code and repaired by a `config` command."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import paho.mqtt.publish as publish
import pytest

from fleet.appbuild import compile_module
from hil_tests.rack import mpremote
from testbed import bed as tb
from testbed.bed import BoardNode
from testbed.gatewayproc import PREFIX
from testbed.mqttwatch import MqttWatch, records_of

SCENARIO = Path(__file__).parent / "scenarios" / "one-of-each.toml"
F_LIGHT, F_SONAR, F_SAFE, F_CRASHED = 0x0001, 0x0040, 0x0400, 0x1000


@pytest.fixture
def bed(tmp_path, broker):
    bed = tb.Testbed(tmp_path, broker=broker).start()
    watch = MqttWatch(broker.url, PREFIX + "/#")
    try:
        yield bed, watch
    finally:
        watch.close()
        bed.stop(broker=False)


SLEEP = re.compile(r"deep sleep (\d+) s")


def wait_for(fn, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        assert time.monotonic() < deadline, what() if callable(what) else what
        time.sleep(0.1)


def statuses(watch, device):
    return [r["v"] for r in records_of(watch.messages, device, "status") if r["n"] == "faults"]


def test_light_sensor_unplugged_is_reported_and_the_lamp_keeps_running(bed):
    bed, watch = bed
    fleet = bed.add_boards([BoardNode("lamp-01", "lighting", interval_s=20)],
                           scenario=SCENARIO, speed=10)
    wait_for(lambda: [r for r in records_of(watch.messages, "lamp-01") if r["n"] == "lux"], 30,
             "no lux reading")
    fleet.world.inject("lamp-01", "bh1750_silent")
    wait_for(lambda: [f for f in statuses(watch, "lamp-01") if f & F_LIGHT], 20,
             lambda: statuses(watch, "lamp-01"))
    # It keeps running: periodic reports go on (power, dim), without the missing lux.
    before = len(records_of(watch.messages, "lamp-01"))
    later = wait_for(lambda: [r for r in records_of(watch.messages, "lamp-01")[before:]
                              if r["n"] == "power"], 20, "no reports after the fault")
    frame = later[0]["frame"]
    assert not [r for r in records_of(watch.messages, "lamp-01")
                if r["frame"] == frame and r["n"] == "lux"]
    # Plugged back in: the fault clears in the next status, lux comes back.
    fleet.world.clear("lamp-01", "bh1750_silent")
    wait_for(lambda: statuses(watch, "lamp-01")[-1] & F_LIGHT == 0, 30,
             lambda: statuses(watch, "lamp-01"))
    n = len(records_of(watch.messages, "lamp-01"))
    wait_for(lambda: [r for r in records_of(watch.messages, "lamp-01")[n:] if r["n"] == "lux"],
             20, "lux did not come back")


def test_sonar_unplugged_is_reported_and_the_shaft_node_keeps_cycling(bed):
    bed, watch = bed
    fleet = bed.add_boards([BoardNode("shaft-01", "shaft", interval_s=120, extra={
        "shaft": {"mode": "uart", "sample_s": 60}})], scenario=SCENARIO, speed=60)
    wait_for(lambda: [r for r in records_of(watch.messages, "shaft-01") if r["n"] == "level"],
             30, "no level reading")
    fleet.world.inject("shaft-01", "jsnsr04t_silent")
    wait_for(lambda: [f for f in statuses(watch, "shaft-01") if f & F_SONAR], 30,
             lambda: statuses(watch, "shaft-01"))
    lines = fleet.lines["shaft-01"]
    n = len(lines)
    # Still waking and sleeping, at its sample period: a silent sonar must not turn an overdue
    # report into a wake every second (each one would power the sonar and drain the battery).
    def sleeps():
        return [int(m.group(1)) for m in map(SLEEP.search, list(lines)[n:]) if m]
    wait_for(lambda: len(sleeps()) >= 3, 60, lambda: list(lines)[n:])
    slept = sleeps()
    # 60 s less the time awake, which at speed 60 counts a busy host's delays 60-fold
    assert all(10 <= s <= 60 for s in slept), slept
    fleet.world.clear("shaft-01", "jsnsr04t_silent")
    wait_for(lambda: statuses(watch, "shaft-01")[-1] & F_SONAR == 0, 30,
             lambda: statuses(watch, "shaft-01"))
    n = len(records_of(watch.messages, "shaft-01"))
    level = wait_for(lambda: [r for r in records_of(watch.messages, "shaft-01")[n:]
                              if r["n"] == "level"], 30, "no level after the repair")
    assert abs(level[0]["v"] - 400) <= 30


BROKEN = '''\\
# app/lighting.py as a bad release might ship it: it fails as soon as the role starts.
class Lighting:
    def __init__(self, node):
        self.lamps = {}
        self.lamps["main"].on()      # KeyError: 'main'
'''


def test_crash_loop_enters_safe_mode_and_an_update_over_the_console_repairs_it(bed, tmp_path):
    bed, watch = bed
    source = tmp_path / "lighting.py"
    source.write_text(BROKEN)
    broken = compile_module(source, "app/lighting.py")
    fleet = bed.add_boards([BoardNode("lamp-01", "lighting", files={"app/lighting.mpy": broken})],
                           scenario=SCENARIO, speed=5)
    lines = fleet.lines["lamp-01"]
    fleet.wait_line("lamp-01", "SAFE MODE", 60)
    assert len([line for line in lines if "KeyError" in line]) >= 3   # three crashes first
    status = wait_for(lambda: [f for f in statuses(watch, "lamp-01") if f & F_SAFE], 20,
                      lambda: statuses(watch, "lamp-01"))
    assert status[0] & F_CRASHED
    # Safe mode runs no role code, but keeps the street lit (fail-safe) ...
    assert fleet.board("lamp-01").hardware.pwm_outputs[25][1] == 65535
    # ... and stays in safe mode across a reset while the app is unchanged.
    fleet.call(fleet.board("lamp-01").reset("reset"))
    n = len(lines)
    fleet.wait_line("lamp-01", "SAFE MODE", 30, since=n)
    # The field engineer copies the fixed module over the console and resets the node.
    good = tb.application()["app/lighting.mpy"]
    fixed = tmp_path / "lighting.mpy"
    fixed.write_bytes(good)
    url = "socket://127.0.0.1:%d" % fleet.board("lamp-01").console_port
    n = len(lines)
    done = mpremote(url, "fs", "cp", str(fixed), ":app/lighting.mpy", "+", "fs", "cat",
                    ":crash.txt", "+", "reset")
    assert done.returncode == 0, (done.stdout, done.stderr, list(lines)[n - 5:])
    assert "KeyError" in done.stdout            # the crash report the node kept
    fleet.wait_line("lamp-01", "the application changed, trying it", 30, since=n)
    fleet.wait_line("lamp-01", "node lamp-01 (lighting", 10, since=n)
    # The app runs again: readings arrive, and the next status has no safe-mode bit.
    k = len(records_of(watch.messages, "lamp-01"))
    wait_for(lambda: [r for r in records_of(watch.messages, "lamp-01")[k:] if r["n"] == "dim"],
             30, "no readings after the repair")
    wait_for(lambda: statuses(watch, "lamp-01")[-1] & F_SAFE == 0, 30,
             lambda: statuses(watch, "lamp-01"))


def test_a_bad_setting_is_reported_with_its_code_and_a_config_command_repairs_it(bed, broker):
    bed, watch = bed
    fleet = bed.add_boards([BoardNode("lamp-01", "lighting", extra={
        "lighting": {"night_pct": 150}})], scenario=SCENARIO, speed=5)
    fleet.wait_line("lamp-01", "config error 15: lighting.night_pct must be 0..100", 30)
    bits = wait_for(lambda: [f for f in statuses(watch, "lamp-01") if f & 0x0800], 20,
                    lambda: statuses(watch, "lamp-01"))[0]
    assert bits >> 16 == 15 and bits & F_SAFE          # the code, in safe mode
    publish.single("%s/north/lamp-01/down" % PREFIX,
                   json.dumps({"cmd": "config", "args": {"lighting.night_pct": 25}}), qos=1,
                   hostname="127.0.0.1", port=broker.port)
    fleet.wait_line("lamp-01", "node lamp-01 (lighting", 30)
    wait_for(lambda: [r for r in records_of(watch.messages, "lamp-01")
                      if r["n"] == "dim" and r["v"] == 25], 30, "the repaired lamp does not run")
