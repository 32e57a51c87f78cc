"""The gateway's OSCORE layer against aiocoap's: the same keys, both directions, and the same
replay-window verdicts. aiocoap here plays the node (a standard OSCORE client)."""

import secrets

import aiocoap
import pytest
from aiocoap import oscore as aio
from aiocoap.message import Direction
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import coap, oscore
from testbed.nodesim import SimNode


class AiocoapClient(aio.CanProtect, aio.CanUnprotect, aio.SecurityContextUtils):
    """A device's context as aiocoap keeps it (sender = the device's key id)."""

    def __init__(self, kid: bytes, secret: bytes, salt: bytes, seq: int = 0) -> None:
        self.alg_aead = aio.algorithms["AES-CCM-16-64-128"]
        self.hashfun = aio.hashfunctions["sha256"]
        self.sender_id, self.recipient_id, self.id_context = kid, b"", None
        self.derive_keys(salt, secret)
        self.recipient_replay_window = aio.ReplayWindow(32, lambda: None)
        self.recipient_replay_window.initialize_empty()
        self.echo_recovery = None
        self.sender_sequence_number = seq

    def post_seqnoincrease(self) -> None:
        pass


def _material():
    return secrets.token_bytes(16), secrets.token_bytes(8), secrets.token_bytes(2)


def _protect(client, **message):
    msg = aiocoap.Message(**message)
    msg.direction = Direction.OUTGOING
    protected, request_id = client.protect(msg)
    protected.mid, protected.token, protected.mtype = 1, b"\x01", aiocoap.CON
    return protected.encode(), request_id


def _unprotect(client, datagram, request_id):
    msg = aiocoap.Message.decode(datagram)
    msg.direction = Direction.INCOMING
    return client.unprotect(msg, request_id)[0]


def test_keys_are_derived_as_aiocoap_derives_them():
    secret, salt, kid = _material()
    ours = oscore.derive(secret, salt, b"", kid)
    theirs = AiocoapClient(kid, secret, salt)
    assert ours == (theirs.recipient_key, theirs.sender_key, theirs.common_iv)


@settings(max_examples=100, deadline=None)
@given(seq=st.integers(0, 2 ** 40 - 2), payload=st.binary(max_size=300),
       path=st.sampled_from([["u"], ["s"], ["c"], ["f", "1.2.0", "manifest"]]))
def test_aiocoap_requests_verify_and_our_answers_verify_at_aiocoap(seq, payload, path):
    secret, salt, kid = _material()
    client = AiocoapClient(kid, secret, salt, seq)
    ours = oscore.SecurityContext(secret, salt, kid)
    datagram, request_id = _protect(client, code=aiocoap.POST, uri_path=path, payload=payload,
                                    content_format=112)
    msg = coap.parse(datagram)
    opt = oscore.parse_option(coap.option(msg.options, coap.OSCORE))
    assert (opt.kid, int.from_bytes(opt.piv, "big")) == (kid, seq)
    plaintext = ours.decrypt(opt.piv, msg.payload)
    options, inner_payload = coap.parse_options(plaintext, 1)
    assert plaintext[0] == coap.POST and inner_payload == payload
    assert coap.uri_path(options) == tuple(path)
    # the answer, under the request's nonce and under one of our own
    for own_piv in (None, oscore.piv_bytes(seq % 1000)):
        plain = oscore.inner_plaintext(coap.CHANGED, coap.encode_options(
            [(coap.CONTENT_FORMAT, b"\x3c")]), b"\xa1\x01\x1a\x6a\x00\x00\x00")
        answer = coap.encode(coap.ACK, coap.CHANGED, 1, b"\x01",
                             [(coap.OSCORE, oscore.response_option(own_piv))],
                             ours.encrypt_response(opt.piv, plain, own_piv))
        inner = _unprotect(client, answer, request_id)
        assert inner.code == aiocoap.CHANGED and inner.opt.content_format == 60


def test_a_forged_or_damaged_request_fails_the_tag():
    secret, salt, kid = _material()
    client = AiocoapClient(kid, secret, salt)
    datagram, _ = _protect(client, code=aiocoap.POST, uri_path=["u"], payload=b"\x80")
    msg = coap.parse(datagram)
    opt = oscore.parse_option(coap.option(msg.options, coap.OSCORE))
    wrong = oscore.SecurityContext(secrets.token_bytes(16), salt, kid)
    with pytest.raises(oscore.ProtectionInvalid):
        wrong.decrypt(opt.piv, msg.payload)
    ours = oscore.SecurityContext(secret, salt, kid)
    damaged = bytearray(msg.payload)
    damaged[0] ^= 1
    with pytest.raises(oscore.ProtectionInvalid):
        ours.decrypt(opt.piv, bytes(damaged))
    with pytest.raises(oscore.ProtectionInvalid):      # the same ciphertext, another number
        ours.decrypt(b"\x07", msg.payload)


def test_simulated_node_frames_are_what_aiocoap_would_send():
    secret, salt, kid = _material()
    sim = SimNode(kid, secret, salt, seq=9)
    client = AiocoapClient(kid, secret, salt, seq=9)
    ours, _ = sim.request("u", b"\x80", mid=1, token=b"\x01")
    theirs, _ = _protect(client, code=aiocoap.POST, uri_path=["u"], payload=b"\x80")
    assert ours == theirs


@settings(max_examples=500, deadline=None)
@given(st.lists(st.integers(0, 200), max_size=60), st.integers(0, 200))
def test_replay_window_agrees_with_aiocoap(seen, start):
    ours = oscore.ReplayWindow()
    ours.start_at(start)
    theirs = aio.ReplayWindow(32, lambda: None)
    theirs.initialize_from_freshlyseen(start)
    for seq in seen:
        verdict = ours.is_valid(seq)
        assert verdict == theirs.is_valid(seq)
        if verdict:
            ours.strike_out(seq)
            theirs.strike_out(seq)
        assert theirs.persist() == {"index": ours.index, "bitfield": ours.bits}


@pytest.mark.parametrize("value,piv,kid", [
    (b"", b"", None),
    (b"\x09\x05\x00\x07", b"\x05", b"\x00\x07"),
    (b"\x0a\x01\x00", b"\x01\x00", b""),
    (b"\x03\x01\x02\x03", b"\x01\x02\x03", None),
])
def test_option_values_split(value, piv, kid):
    opt = oscore.parse_option(value)
    assert (opt.piv, opt.kid) == (piv, kid)


@pytest.mark.parametrize("value", [b"\x20", b"\x06" + bytes(6), b"\x03\x01", b"\x10",
                                   b"\x11\x01\x05ab", b"\x01\x05extra"])
def test_malformed_options_are_refused(value):
    with pytest.raises(oscore.OptionInvalid):
        oscore.parse_option(value)


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=20))
def test_any_option_value_parses_or_raises_option_invalid(value):
    try:
        oscore.parse_option(value)
    except oscore.OptionInvalid:
        pass


def test_sender_sequence_marks_are_written_ahead():
    ctx = oscore.SecurityContext(*_material())
    ctx.sender_seq = ctx.seq_mark = 100
    seq, mark = ctx.take_sender_seq(64)
    assert (seq, mark) == (100, 164)
    assert [ctx.take_sender_seq(64)[1] for _ in range(63)] == [None] * 63
    assert ctx.take_sender_seq(64) == (164, 228)
