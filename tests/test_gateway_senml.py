"""Gateway-side SenML-CBOR validation and the JSON it publishes (docs/protocol.md §3, §7)."""

import json

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import senml
from gateway.errors import FrameError

NOW = 1_795_000_000.0


def test_water_level_frame_resolves_to_absolute_records():
    payload = cbor2.dumps([{-3: 1_794_999_000, 0: "level", 2: 1234}, {0: "temp", 2: 1150},
                           {0: "batt", 2: 3012, 6: 5}])
    records = senml.decode(payload, NOW)
    assert [(r.name, r.value, r.time) for r in records] == [
        ("level", 1234, 1_794_999_000.0), ("temp", 1150, 1_794_999_000.0),
        ("batt", 3012, 1_794_999_005.0)]
    out = json.loads(senml.to_json("shaft-01", records))
    assert out[0] == {"bn": "urn:dev:id:shaft-01:", "n": "level", "u": "mm", "v": 1234,
                      "t": 1_794_999_000}
    assert out[1] == {"n": "temp", "u": "Cel", "v": 11.5, "t": 1_794_999_000}
    assert out[2]["v"] == 3012 and out[2]["u"] == "mV"


def test_relative_and_missing_times_count_from_reception():
    records = senml.decode(cbor2.dumps([{-3: -300, 0: "level", 2: 1}, {0: "dist", 2: 2}]), NOW)
    assert records[0].time == NOW - 300
    assert senml.decode(cbor2.dumps([{0: "level", 2: 5}]), NOW)[0].time == NOW


def test_booleans_and_strings_keep_their_kind():
    records = senml.decode(cbor2.dumps([{0: "alarm", 4: True}, {0: "fw", 3: "1.24.1"}]), NOW)
    out = json.loads(senml.to_json("x", records))
    assert out[0]["vb"] is True and "u" not in out[0]
    assert out[1]["vs"] == "1.24.1"


@pytest.mark.parametrize("payload,reason", [
    (b"\xff\x00", "bad_cbor"),
    (b"\x9f", "bad_cbor"),                                   # truncated indefinite array
    (cbor2.dumps({0: "level"}), "bad_senml"),                # not an array
    (cbor2.dumps([]), "bad_senml"),
    (cbor2.dumps([1, 2]), "bad_senml"),                      # records not maps
    (cbor2.dumps([{-2: "dev:", 0: "level", 2: 1}]), "bad_senml"),   # base name
    (cbor2.dumps([{0: "level", 2: 1, 1: "mm"}]), "bad_senml"),      # unit on the wire
    (cbor2.dumps([{2: 1}]), "bad_senml"),                    # no name
    (cbor2.dumps([{0: "depth", 2: 1}]), "unknown_name"),
    (cbor2.dumps([{0: "level", 2: 1.5}]), "bad_value"),      # float where integer is due
    (cbor2.dumps([{0: "level", 4: True}]), "bad_value"),     # wrong value kind
    (cbor2.dumps([{0: "level", 2: 1, 3: "x"}]), "bad_value"),  # two values
    (cbor2.dumps([{0: "level", 2: True}]), "bad_value"),     # bool is not an integer
    (cbor2.dumps([{0: "level", 2: 1}, {-3: 5, 0: "dist", 2: 1}]), "bad_senml"),
    (cbor2.dumps([{0: "level", 2: 1, 6: "soon"}]), "bad_time"),
    (cbor2.dumps([{-3: float("nan"), 0: "level", 2: 1}]), "bad_time"),
    (cbor2.dumps([{0: "level", 2: 1, 6: float("inf")}]), "bad_time"),
    (cbor2.dumps([{-3: 10 ** 400, 0: "level", 2: 1}]), "bad_time"),
    (cbor2.dumps([{-3: 5e12, 0: "level", 2: 1}]), "bad_time"),     # milliseconds, not s
    (cbor2.dumps([{0: "level", 2: i} for i in range(65)]), "bad_senml"),
    (b"\x80" * 2000, "too_large"),
])
def test_malformed_frames_are_rejected_with_a_reason(payload, reason):
    with pytest.raises(FrameError) as info:
        senml.decode(payload, NOW)
    assert info.value.reason == reason


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_escape_as_anything_but_frame_errors(data):
    try:
        senml.decode(data, NOW)
    except FrameError:
        pass
