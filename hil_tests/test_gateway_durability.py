"""The real firmware against a gateway that is killed (SIGKILL) and restarted while the node
reports: every reading the gateway acknowledged reaches MQTT, and the node carries on without
an Echo challenge (the gateway's replay state was durable).

What was acknowledged is read off the wire, not the node's console: a relay records every
datagram, and the device's keys (from the registry) open requests and answers.
"""

import json
import signal
import time
from collections import Counter

from gateway import coap, oscore, senml
from testbed.gatewayproc import GatewayProcess
from testbed.netem import UdpRelay
from testbed.nodesim import SimNode

# The shaft role measures every sample_s (10 s at the least) and reports every interval_s.
SHAFT = {"shaft": {"depth_mm": 3000, "sample_s": 10}, "standin": {"dist_mm": 1766,
                                                                   "swing_mm": 100,
                                                                   "period_s": 60}}


def _acknowledged_readings(device, relay) -> list[tuple]:
    """The readings (POST /u) that the gateway answered 2.04, as published-form records."""
    gw_side = oscore.SecurityContext(device.master_secret, device.master_salt, device.kid_bytes)
    node_side = SimNode.of(device)
    requests = {}
    for datagram in list(relay.uplink):
        try:
            msg = coap.parse(datagram)
            opt = oscore.parse_option(coap.option(msg.options, coap.OSCORE) or b"")
            plaintext = gw_side.decrypt(opt.piv, msg.payload)
        except (coap.CoapFormatError, oscore.OscoreError, TypeError):
            continue
        options, payload = coap.parse_options(plaintext, 1)
        if coap.uri_path(options) == ("u",) and msg.token:
            requests[msg.token] = (opt.piv, payload)
    acked = []
    for datagram in list(relay.downlink):
        try:
            msg = coap.parse(datagram)
        except coap.CoapFormatError:
            continue
        if msg.token not in requests or msg.code == coap.EMPTY:
            continue
        piv, payload = requests[msg.token]
        try:
            answer = node_side.answer(datagram, piv)
        except Exception:
            continue
        if answer.code == coap.CHANGED:
            acked.append(payload)
    out = []
    for payload in set(acked):                     # a retransmission answered twice: once
        records = [r for r in senml.decode(payload, 0.0) if r.name not in ("ack", "rej")]
        if records:
            out.append(_key(json.loads(senml.to_json("x", records))))
    return out


def _key(records: list[dict]) -> tuple:
    return tuple(sorted((r["n"], r.get("v", r.get("vb", r.get("vs")))) for r in records))


def test_gateway_killed_under_a_reporting_node_loses_no_acknowledged_reading(testbed, mqtt):
    relay = UdpRelay(testbed.gateway.coap_port)
    try:
        testbed.add_node("shaft-01", "shaft", "north", interval_s=10, extra=SHAFT,
                         gateway_port=relay.port)
        up = lambda t, p: t == "city/north/shaft-01/up"  # noqa: E731
        mqtt.wait_for(up, timeout=40, count=2)
        old = testbed.gateway
        old.stop(signal.SIGKILL)
        time.sleep(2.0)
        testbed.gateway = GatewayProcess(old.workdir, testbed.broker.url, testbed.registry_url,
                                         coap_port=old.coap_port, http_port=old.http_port).start()
        before = len([m for m in mqtt.messages if up(*m)])
        # (the node may back off after the lost exchange: allow it a while)
        mqtt.wait_for(up, timeout=90, count=before + 2)
        testbed.nodes["shaft-01"].stop()
        time.sleep(2.0)
        metrics = testbed.gateway.metrics()
        assert metrics["gateway_spool_rows"] == 0
        # the restarted gateway knew the node's replay window: no Echo round trip
        assert metrics["gateway_echo_challenges_total"] == 0
        device = testbed.registry.get("shaft-01")
        acked = _acknowledged_readings(device, relay)
        published = [_key(json.loads(p)) for t, p in mqtt.messages if up(t, p)]
        assert len(acked) >= 3
        missing = Counter(acked) - Counter(published)
        assert not missing, "acknowledged but never published: %s" % missing
    finally:
        relay.close()
