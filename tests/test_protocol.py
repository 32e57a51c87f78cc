"""The shared protocol definitions (protocol/) against the contract they encode: the envelope
encoder against cbor2, the CoAP numbers against aiocoap, the topics and outcome messages against
docs/protocol.md's literal forms."""

from __future__ import annotations

import json

import cbor2
import pytest
from aiocoap.numbers.codes import Code

from protocol import envelope, outcomes, topics, wire

# The edges of every CBOR integer size: 1 byte, +1, +2, +4, +8.
EDGES = [0, 1, 23, 24, 255, 256, 65535, 65536, 2 ** 32 - 1, 2 ** 32, 1_795_000_000,
         2 ** 64 - 1]


def _commands(n: int) -> list[list]:
    return [[i + 1, "boost", {"level": 100, "hold_s": 30}] for i in range(n)]


@pytest.mark.parametrize("t", EDGES)
@pytest.mark.parametrize("count", [0, 1, 3, 23, 24, 300])
@pytest.mark.parametrize("observing", [False, True])
def test_the_fast_envelope_encoder_is_cbor2_byte_for_byte(t, count, observing):
    cmds = _commands(count)
    expected: dict = {envelope.TIME: t}
    if cmds:
        expected[envelope.COMMANDS] = cmds
    if observing:
        expected[envelope.OBSERVING] = True
    encoded = envelope.encode(t, [envelope.command(*c) for c in cmds], observing)
    assert encoded == cbor2.dumps(expected)
    assert cbor2.loads(encoded) == expected


@pytest.mark.parametrize("cid", EDGES)
def test_a_command_is_the_array_id_name_args(cid):
    args = {"start": 2 ** 32 - 1, "end": 0, "mode": "auto", "on": True}
    assert cbor2.loads(envelope.command(cid, "schedule", args)) == [cid, "schedule", args]


def test_the_envelope_keys_are_those_of_the_protocol_doc():
    assert (envelope.TIME, envelope.COMMANDS, envelope.OBSERVING) == (1, 2, 3)


@pytest.mark.parametrize("name", ["CHANGED", "CONTENT", "BAD_REQUEST", "UNAUTHORIZED",
                                  "BAD_OPTION", "NOT_FOUND", "METHOD_NOT_ALLOWED",
                                  "UNSUPPORTED_CONTENT_FORMAT", "INTERNAL_SERVER_ERROR",
                                  "SERVICE_UNAVAILABLE"])
def test_the_response_codes_are_rfc_7252_s(name):
    assert getattr(wire, name) == int(getattr(Code, name))


def test_content_formats_and_resources():
    assert (wire.CF_LINK_FORMAT, wire.CF_OCTET_STREAM, wire.CF_CBOR, wire.CF_SENML_CBOR) == (
        40, 42, 60, 112)
    assert [r.path for r in wire.RESOURCES] == ["u", "s", "c", "f"]
    assert wire.UPLINKS == ("u", "s")


def test_the_well_known_core_text():
    assert wire.well_known_core() == (
        b'</u>;ct=112;title="readings",</s>;ct=112;title="status",'
        b'</c>;obs;ct=60;title="commands",</f>;title="OTA files"')


def test_the_gateway_codec_speaks_the_protocol_s_codes():
    from gateway import coap

    for name in ("CHANGED", "NOT_FOUND", "SERVICE_UNAVAILABLE", "CF_SENML_CBOR", "CF_CBOR"):
        assert getattr(coap, name) is getattr(wire, name)


def test_topic_names():
    assert topics.device("city", "north", "lamp-01", topics.UP) == "city/north/lamp-01/up"
    assert topics.device_filter("city", topics.UP) == "city/+/+/up"
    assert topics.down_filter("a/b") == "a/b/+/+/down"
    assert topics.gateway_state("city", "gw-1") == "city/gateway/gw-1/state"
    assert topics.gateway_stats("city", "gw-1") == "city/gateway/gw-1/stats"
    assert topics.RESOURCE_LEAF == {"u": "up", "s": "status"}
    assert set(topics.DEVICE_LEAVES) == {"up", "status", "state", "outcome", "down"}


def test_topics_read_back():
    assert topics.parse_down("city", "city/north/lamp-01/down") == ("north", "lamp-01")
    assert topics.parse_down("a/b", "a/b/north/lamp-01/down") == ("north", "lamp-01")
    for other in ("city/north/lamp-01/up", "city/north/down", "cityx/north/lamp-01/down",
                  "city/north/lamp-01/down/x", "town/north/lamp-01/down"):
        assert topics.parse_down("city", other) is None, other
    assert topics.split("a/b/north/lamp-01/outcome") == ("north", "lamp-01", "outcome")
    assert topics.split("north/lamp-01/up") is None
    assert topics.leaf("city/north/lamp-01/status") == "status"


def test_outcome_messages():
    assert outcomes.payload("lamp-03", outcomes.DELIVERED, 1795000000.1234, cid=12,
                            name="boost", ref="op-4711") == (
        b'{"device":"lamp-03","outcome":"delivered","t":1795000000.123,"id":12,"cmd":"boost",'
        b'"ref":"op-4711"}')
    refused = outcomes.payload("lamp-03", outcomes.REFUSED, 5.0, name="boost",
                               reason="too many")
    assert json.loads(refused) == {"device": "lamp-03", "outcome": "refused", "t": 5.0,
                                   "cmd": "boost", "reason": "too many"}
    assert outcomes.OUTCOMES == ("queued", "delivered", "acknowledged", "rejected", "expired",
                                 "refused", "superseded")
