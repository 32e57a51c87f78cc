"""Store-and-forward on a virtual board: the gateway is down for ten (simulated) minutes, the
node is reset in the middle of it, and every reading still arrives, in order, with the time it
was taken (docs/protocol.md §3: queued readings carry bt)."""

from __future__ import annotations

import re
import time
from pathlib import Path

from testbed import bed as tb
from testbed.bed import BoardNode
from testbed.gatewayproc import PREFIX
from testbed.mqttwatch import MqttWatch, records_of

SCENARIO = Path(__file__).parent / "scenarios" / "outage.toml"
SPEED = 60
PERIOD_S = 60
NODE = BoardNode("shaft-01", "shaft", interval_s=PERIOD_S, extra={
    "max_retransmit": 1,          # a battery node gives up early and keeps the reading
    "queue_stage": 100,           # two readings in RTC memory, then to flash
    "shaft": {"mode": "uart", "sample_s": PERIOD_S, "fast_s": PERIOD_S, "alarm_mm": 2900,
              "fast_rise_mm": 1000}})
_LEVEL = re.compile(r"shaft: level (\d+) mm")


def logged_levels(lines):
    return [int(m.group(1)) for m in map(_LEVEL.search, list(lines)) if m]


def test_gateway_down_ten_minutes_every_reading_arrives_in_order_with_its_time(tmp_path, broker):
    bed = tb.Testbed(tmp_path, broker=broker).start()
    watch = MqttWatch(broker.url, PREFIX + "/#")
    try:
        fleet = bed.add_boards([NODE], scenario=SCENARIO, speed=SPEED)
        lines = fleet.lines["shaft-01"]
        deadline = time.monotonic() + 30
        while len([r for r in records_of(watch.messages, "shaft-01") if r["n"] == "level"]) < 2:
            assert time.monotonic() < deadline, lines[-20:]
            time.sleep(0.1)
        bed.gateway.stop()
        down_at = fleet.world.elapsed()
        time.sleep(5)
        fleet.call(fleet.board("shaft-01").reset("reset"))      # a reboot in the middle
        while fleet.world.elapsed() - down_at < 600:
            time.sleep(0.1)
        taken_while_down = len(logged_levels(lines))
        bed.gateway.start()
        deadline = time.monotonic() + 40
        while True:
            published = [r for r in records_of(watch.messages, "shaft-01") if r["n"] == "level"]
            if len(published) >= taken_while_down + 2:
                break
            assert time.monotonic() < deadline, (len(published), taken_while_down, lines[-30:])
            time.sleep(0.2)
    finally:
        watch.close()
        bed.stop(broker=False)

    taken = logged_levels(lines)
    levels = [r["v"] for r in published]
    # Every reading the node took arrived, once, in the order it was taken.
    assert levels == taken[:len(levels)], (levels, taken)
    steps = [b - a for a, b in zip(levels, levels[1:])]
    # about 30 mm a minute (less across the reset, which makes the node measure at once)
    assert all(0 < s <= 60 for s in steps), steps
    # The ones taken while the gateway was down came late, several to a frame, each with the
    # time it was taken: about a minute apart, though they arrived together, and those times
    # agree with the water: the level rose 0.5 mm a second between any two of them.
    by_frame: dict[int, list[dict]] = {}
    for r in published:
        by_frame.setdefault(r["frame"], []).append(r)
    queued = [r for recs in by_frame.values() if len(recs) > 1 for r in recs]
    assert len(queued) >= 8, by_frame
    gaps = [b["t"] - a["t"] for a, b in zip(queued, queued[1:])]
    # (a wake's own length varies by a few simulated seconds at this speed: host time x 60;
    # the reset reports at once, out of step)
    assert all(15 <= g <= PERIOD_S + 60 for g in gaps), gaps
    t0 = queued[0]["t"]
    xs = [r["t"] - t0 for r in queued]
    ys = [r["v"] for r in queued]
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    assert 0.45 <= slope <= 0.55, slope                   # mm per (simulated) second
    residuals = [y - (my + slope * (x - mx)) for x, y in zip(xs, ys)]
    assert max(abs(e) for e in residuals) <= 15, residuals
    # They went through flash (RTC memory holds two), and survived the reset.
    assert any("B staged to flash" in line for line in lines)
    assert any("boot 2" in line for line in lines)
    assert any(re.search(r"queue: \d+ readings sent", line) for line in lines)


LIGHT_SCENARIO = Path(__file__).parent / "scenarios" / "street-night.toml"


def test_lamp_keeps_its_events_through_a_gateway_outage_without_a_watchdog_reset(tmp_path,
                                                                                 broker):
    """Always on: a walker passes while the gateway is down for three minutes. The lamp keeps
    working (its CoAP exchanges time out, each after 62-93 s: longer than its watchdog's
    30 s, and still no reset), and its presence events arrive afterwards with the times they
    happened."""
    bed = tb.Testbed(tmp_path, broker=broker).start()
    watch = MqttWatch(broker.url, PREFIX + "/#")
    try:
        fleet = bed.add_boards([BoardNode("lamp-01", "lighting", interval_s=60, extra={
            "wdt_s": 30, "lighting": {"hold_s": 20}})], scenario=LIGHT_SCENARIO, speed=10)
        lines = fleet.lines["lamp-01"]
        deadline = time.monotonic() + 30
        while not [r for r in records_of(watch.messages, "lamp-01") if r["n"] == "dim"]:
            assert time.monotonic() < deadline, lines[-20:]
            time.sleep(0.1)
        bed.gateway.stop()
        down_at = fleet.world.elapsed()
        while fleet.world.elapsed() - down_at < 180:     # the walker passes at 60-100 s
            time.sleep(0.2)
        bed.gateway.start()
        deadline = time.monotonic() + 40
        while True:
            pres = [r for r in records_of(watch.messages, "lamp-01") if r["n"] == "pres"
                    and r["frame"] > 0]
            if [r["v"] for r in pres if r["v"] is True] and any(
                    r["v"] is False and r["t"] > min(p["t"] for p in pres if p["v"] is True)
                    for r in pres):
                break
            assert time.monotonic() < deadline, (records_of(watch.messages, "lamp-01"),
                                                 lines[-30:])
            time.sleep(0.2)
    finally:
        watch.close()
        bed.stop(broker=False)
    came = next(r for r in pres if r["v"] is True)
    went = next(r for r in pres if r["v"] is False and r["t"] > came["t"])
    # queued with their own times: in range for some seconds, then the 20 s hold
    assert 20 <= went["t"] - came["t"] <= 45, (came, went)
    # it never restarted: one boot, no watchdog reset
    assert len([line for line in lines if "node lamp-01 (lighting" in line]) == 1
    assert not any("TG0WDT" in line or "boot after a crash" in line for line in lines)
