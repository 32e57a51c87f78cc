"""Shaft water level on virtual boards: deep-sleep cycles, the JSN-SR04T driver against the
sonar model, rising water, condensation on the transducer, and the uplink budget.

The sonars run in their UART mode here: at SPEED the VM's bus round trip between the trigger
and time_pulse_us counts 60-fold in simulated time and cuts echoes short on the virtual board
(exact at speed 1), a timing artefact the transaction-level UART frames do not have."""

from __future__ import annotations

import re
import time
from pathlib import Path

import cbor2
import pytest

from gateway import coap, oscore
from gateway.oscore import SecurityContext
from registry.db import Registry
from testbed import bed as tb
from testbed.bed import BoardNode, heap_reports
from testbed.gatewayproc import PREFIX
from testbed.mqttwatch import MqttWatch, records_of
from testbed.netem import UdpRelay

SCENARIO = Path(__file__).parent / "scenarios" / "shafts.toml"
SPEED = 60
ALARM_MM = 1200
HEAP_BUDGET = 110 * 1024
SHAFT = {"shaft": {"alarm_mm": ALARM_MM, "mode": "uart", "depth_mm": 3000}}


@pytest.fixture
def shafts(tmp_path, broker):
    bed = tb.Testbed(tmp_path, broker=broker).start()
    watch = MqttWatch(broker.url, PREFIX + "/#")
    relay = UdpRelay(bed.gateway.coap_port)
    try:
        fleet = bed.add_boards([BoardNode("shaft-01", "shaft", extra=SHAFT),
                                BoardNode("shaft-02", "shaft", extra=SHAFT)],
                               scenario=SCENARIO, speed=SPEED, gateway_port=relay.port)
        yield bed, fleet, watch, relay
    finally:
        relay.close()
        watch.close()
        bed.stop(broker=False)


_BT, _T = -3, 6       # SenML-CBOR labels of base time and time


def readings_on_the_wire(datagrams, registry_url):
    """(datagram size, SenML records) of each reading (POST /u) among ``datagrams``, decrypted
    with each device's key from the registry, as the gateway does."""
    contexts = {d.kid_bytes: SecurityContext(d.master_secret, d.master_salt, d.kid_bytes)
                for d in Registry(registry_url).devices()}
    out = []
    for datagram in list(datagrams):
        msg = coap.parse(datagram)
        option = oscore.parse_option(coap.option(msg.options, coap.OSCORE) or b"")
        plain = contexts[option.kid].decrypt(option.piv, msg.payload)
        options, payload = coap.parse_options(plain, 1)
        if [v for n, v in options if n == coap.URI_PATH] == [b"u"] and payload:
            out.append((len(datagram), cbor2.loads(payload)))
    return out


def frames(watch, device):
    """Each uplink of ``device`` as {name: value}, in arrival order."""
    out: dict[int, dict] = {}
    for r in records_of(watch.messages, device):
        out.setdefault(r["frame"], {})[r["n"]] = r["v"]
    return [out[k] for k in sorted(out)]


def test_rising_water_reports_fast_and_raises_the_alarm_and_condensation_does_not(shafts):
    bed, fleet, watch, relay = shafts
    deadline = time.monotonic() + 60
    while not any(f.get("alarm") for f in frames(watch, "shaft-01")):
        assert time.monotonic() < deadline, frames(watch, "shaft-01")
        time.sleep(0.2)
    ups = frames(watch, "shaft-01")
    first_alarm = next(i for i, f in enumerate(ups) if f.get("alarm"))
    # Normal reports carry the battery; fast ones the alarm state. Before the rain: normal.
    assert "batt" in ups[0] and 250 <= ups[0]["level"] <= 350
    # The rain makes the level rise 50 mm a minute: reports come every minute, not every 15,
    # so a dozen or more arrive on the way up to the alarm level.
    rising = [f for f in ups[:first_alarm] if "alarm" in f]
    assert len(rising) >= 10, ups
    levels = [f["level"] for f in rising]
    assert levels == sorted(levels) and all(f["alarm"] is False for f in rising)
    steps = [b - a for a, b in zip(levels, levels[1:])]
    # about 50 mm per 1-minute report (at speed 60 a wake's host time stretches the minute)
    assert all(20 <= s <= 120 for s in steps), steps
    # The alarm comes with the first level at or above the threshold.
    assert ALARM_MM <= ups[first_alarm]["level"] < ALARM_MM + 90
    assert levels[-1] < ALARM_MM
    # Wake-ups were 5 minutes apart before the rain and a minute apart in fast mode (deep
    # sleep, the state kept in RTC memory between wakes; the radio's time comes off the sleep).
    sleeps = [int(m.group(1)) for m in map(re.compile(r"deep sleep (\d+) s").search,
                                            list(fleet.lines["shaft-01"])) if m]
    assert 60 <= sleeps[0] <= 300, sleeps
    assert len([s for s in sleeps if 10 <= s <= 60]) >= 10, sleeps
    # Meanwhile shaft-02's sonar heard condensation echoes 26-38 cm below the lid on 40 % of
    # its pings: a level of 2.6 m, far above its alarm. None of that got through.
    ups2 = frames(watch, "shaft-02")
    assert len(ups2) >= 2
    assert all(abs(f["level"] - 500) <= 40 for f in ups2), ups2
    assert not any(f.get("alarm") for f in ups2)
    # Budgets: every live level uplink is at most 64 bytes on the wire (UDP payload: the relay's
    # datagrams, opened with the registry's keys; a reading sent later carries its time and
    # may be larger, as docs/firmware.md says), and the app's heap within half the modelled
    # ESP32 heap.
    uplinks = readings_on_the_wire(relay.uplink, bed.registry_url)
    live = [size for size, records in uplinks if not any(_BT in r or _T in r for r in records)]
    assert len(live) >= 10 and max(live) <= 64, uplinks
    for device in ("shaft-01", "shaft-02"):
        used = heap_reports(fleet.lines[device])
        assert used and max(used) <= HEAP_BUDGET, (device, used)
