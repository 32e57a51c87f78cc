"""The gateway's lean CoAP codec agrees with aiocoap's, and refuses what is not CoAP."""

import aiocoap
import pytest
from aiocoap.message import Direction
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import coap

_opaque = st.tuples(st.sampled_from([1, 4, 9, 252, 2000]), st.binary(max_size=300))
_text = st.tuples(st.sampled_from([3, 11, 15]),
                  st.text(max_size=40).map(lambda t: t.encode()))
_uint = st.tuples(st.sampled_from([6, 12, 14, 17, 28, 60]),
                  st.integers(0, 2 ** 32 - 1).map(coap.uint))
options_strategy = st.lists(st.one_of(_opaque, _text, _uint), max_size=6)


@settings(max_examples=300, deadline=None)
@given(mtype=st.integers(0, 3), code=st.integers(1, 255), mid=st.integers(0, 65535),
       token=st.binary(max_size=8), options=options_strategy, payload=st.binary(max_size=100))
def test_encoding_matches_aiocoap_and_parses_back(mtype, code, mid, token, options, payload):
    datagram = coap.encode(mtype, code, mid, token, options, payload)
    msg = coap.parse(datagram)
    assert (msg.mtype, msg.code, msg.mid, msg.token, msg.payload) == (
        mtype, code, mid, token, payload)
    assert msg.options == sorted(options, key=lambda o: o[0])
    # aiocoap reads the same message and writes the same bytes back
    theirs = aiocoap.Message.decode(datagram)
    theirs.direction = Direction.OUTGOING
    assert theirs.encode() == datagram


def test_an_aiocoap_request_parses_to_the_same_fields():
    req = aiocoap.Message(code=aiocoap.POST, uri_path=["f", "1.2"], content_format=112,
                          payload=b"\x80")
    req.mid, req.token, req.mtype = 4711, b"\x01\x02", aiocoap.CON
    msg = coap.parse(req.encode())
    assert coap.uri_path(msg.options) == ("f", "1.2")
    assert coap.decode_uint(coap.option(msg.options, coap.CONTENT_FORMAT)) == 112
    assert (msg.mid, msg.token, msg.payload) == (4711, b"\x01\x02", b"\x80")


@pytest.mark.parametrize("datagram,why", [
    (b"\x40\x01", "shorter"),
    (b"\x80\x01\x00\x01", "version"),
    (b"\x49\x01\x00\x01" + bytes(9), "token length"),
    (b"\x42\x01\x00\x01\x00", "token"),
    (b"\x40\x01\x00\x01\xff", "payload marker"),
    (b"\x40\x01\x00\x01\xd0", "truncated"),
    (b"\x40\x01\x00\x01\xf0", "reserved"),
    (b"\x40\x01\x00\x01\x15", "past the end"),
    (b"\x40\x00\x00\x01\x01", "empty message"),
])
def test_malformed_datagrams_are_named(datagram, why):
    with pytest.raises(coap.CoapFormatError) as info:
        coap.parse(datagram)
    assert why in str(info.value)


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_parse_or_raise_coap_format_error(data):
    try:
        coap.parse(data)
    except coap.CoapFormatError:
        pass


def test_block_option_round_trip():
    for num, more, szx in ((0, True, 6), (5, False, 2), (4095, True, 0), (70000, False, 5)):
        block = coap.Block(num, more, szx)
        assert coap.decode_block(coap.encode_block(block)) == block
    assert coap.Block(3, False, 5).offset == 3 * 512
    with pytest.raises(coap.CoapFormatError):
        coap.decode_block(b"\x07")
