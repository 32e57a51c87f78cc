"""firmware/lib/coap.py in the MicroPython VM: wire format against aiocoap, client behaviour
against a scripted UDP server in this process."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from aiocoap import ACK, CON, NON, RST, Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.optionnumbers import OptionNumber
from aiocoap.optiontypes import OpaqueOption
from hypothesis import given
from hypothesis import strategies as st
from mpy_helpers import free_udp_port, run_mpy, run_mpy_cases, vm_settings

KNOWN_OPTIONS = {int(n) for n in OptionNumber}


def aio_message(mtype, code, mid, token, options, payload) -> Message:
    msg = Message(code=Code(code), payload=payload)
    msg.mtype, msg.mid, msg.token = mtype, mid, token
    for number, value in options:
        msg.opt.add_option(OpaqueOption(number, value))
    return msg


def aio_fields(msg: Message):
    return (int(msg.mtype), int(msg.code), msg.mid, msg.token,
            [(int(o.number), o.encode()) for o in msg.opt.option_list()], msg.payload)


def stable_sorted(options):
    return sorted(options, key=lambda o: o[0])  # CPython's sort is stable


# --- wire format ------------------------------------------------------------------------------

# Option numbers aiocoap does not know stay opaque bytes on its side, so any value
# round-trips; known ones are used with values aiocoap keeps as they are.
OPAQUE_NUMBERS = st.integers(1, 65535).filter(lambda n: n not in KNOWN_OPTIONS)
OPTION = st.one_of(
    st.tuples(OPAQUE_NUMBERS, st.binary(max_size=300)),
    st.tuples(st.integers(1, 40).filter(lambda n: n not in KNOWN_OPTIONS),
              st.binary(max_size=20)),  # small deltas, repeated numbers
    st.tuples(st.just(11), st.text("abcxyz", max_size=14).map(str.encode)),  # Uri-Path
    st.tuples(st.just(252), st.binary(min_size=1, max_size=40)),  # Echo
)
MESSAGE = st.tuples(
    st.sampled_from([0, 1, 2, 3]), st.integers(1, 255), st.integers(0, 65535),
    st.binary(max_size=8), st.lists(OPTION, max_size=8), st.binary(max_size=200))


def vm_encode(messages) -> list[bytes]:
    cases = [[m[0], m[1], m[2], m[3].hex(), [[n, v.hex()] for n, v in m[4]], m[5].hex()]
             for m in messages]
    out = run_mpy_cases("""
import coap
for mtype, code, mid, token, options, payload in CASES:
    options = [(n, bytes.fromhex(v)) for n, v in options]
    emit(coap.encode(mtype, code, mid, bytes.fromhex(token), options,
                     bytes.fromhex(payload)).hex())
""", cases)
    return [bytes.fromhex(h) for h in out]


def vm_decode(datagrams) -> list:
    return run_mpy_cases("""
import coap
for h in CASES:
    try:
        m = coap.decode(bytes.fromhex(h))
    except ValueError as e:
        emit(['ValueError', str(e)])
    except Exception as e:
        emit([type(e).__name__, str(e)])
    else:
        emit([m.mtype, m.code, m.mid, m.token.hex(), [[n, v.hex()] for n, v in m.options],
              m.payload.hex()])
""", [d.hex() for d in datagrams])


def from_vm(r):
    return (r[0], r[1], r[2], bytes.fromhex(r[3]), [(n, bytes.fromhex(v)) for n, v in r[4]],
            bytes.fromhex(r[5]))


@vm_settings(10)
@given(st.lists(MESSAGE, min_size=1, max_size=40))
def test_encode_matches_aiocoap(messages):
    encoded = vm_encode(messages)
    for m, data in zip(messages, encoded):
        assert data == aio_message(*m).encode()
        mtype, code, mid, token, options, payload = m
        assert aio_fields(Message.decode(data)) == (mtype, code, mid, token,
                                                    stable_sorted(options), payload)


@vm_settings(10)
@given(st.lists(MESSAGE, min_size=1, max_size=40))
def test_decode_matches_aiocoap(messages):
    datagrams = [aio_message(*m).encode() for m in messages]
    for data, r in zip(datagrams, vm_decode(datagrams)):
        assert from_vm(r) == aio_fields(Message.decode(data))


def test_extended_option_forms():
    # Deltas and lengths at each boundary of the 4-bit, 1-byte (13) and 2-byte (14) forms.
    options = [(12, b"x" * 12), (25, b"x" * 13), (25 + 268, b"x" * 268),
               (25 + 268 + 269, b"x" * 269), (2000, b"x" * 1000), (65535, b"")]
    data = vm_encode([(CON, 2, 7, b"t", options, b"p")])[0]
    assert data == aio_message(CON, 2, 7, b"t", options, b"p").encode()
    # Option headers (4-byte header, 1-byte token): plain nibbles, then the 1-byte forms
    # (delta 13, length 13; delta 268, length 268), then the 2-byte forms (269, 269).
    assert [data[5], data[18], data[34], data[305]] == [0xCC, 0xDD, 0xDD, 0xEE]
    assert data[306:310] == b"\x00\x00\x00\x00"
    assert from_vm(vm_decode([data])[0]) == (CON, 2, 7, b"t", options, b"p")


def test_uint_option_values():
    out = run_mpy("""
import coap
for n in (0, 1, 255, 256, 65535, 65536, 2**32 - 1):
    v = coap.uint(n)
    print(v.hex() or '-', coap.decode_uint(v) == n)
""").split()
    assert out == ["-", "True", "01", "True", "ff", "True", "0100", "True", "ffff", "True",
                   "010000", "True", "ffffffff", "True"]


MALFORMED = [
    "", "40", "400000",  # shorter than the header
    "00000001", "80000001", "c0000001",  # version 0, 2, 3
    "49000001", "4f000001",  # token length 9, 15
    "42450001aa",  # token cut short
    "40000001ff", "4000000101",  # empty message with bytes after the MID
    "40450001ff",  # payload marker without payload
    "40450001f0", "404500010f", "40450001d0", "40450001e000",  # 15 nibbles, cut extensions
    "4045000113", "40450001d1" + "00",  # option value cut short
]


def test_malformed_datagrams_raise_value_error():
    results = vm_decode([bytes.fromhex(h) for h in MALFORMED])
    assert [r[0] for r in results] == ["ValueError"] * len(MALFORMED)


# --- client ------------------------------------------------------------------------------------

class FakeServer:
    """A UDP server in a thread; ``handler(server, msg, addr)`` scripts its answers.

    Every datagram is logged with its arrival time and decoded by aiocoap.
    """

    def __init__(self, handler):
        self.handler = handler
        self.log: list[tuple[float, bytes, Message]] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.02)
        self.port = self.sock.getsockname()[1]
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(2048)
            except (TimeoutError, socket.timeout):
                continue
            msg = Message.decode(data)
            self.log.append((time.monotonic(), data, msg))
            try:
                self.handler(self, msg, addr)
            except Exception as exc:  # surfaced by close()
                self.errors.append(exc)

    def send(self, addr, mtype, code, mid, token=b"", payload=b""):
        self.sock.sendto(aio_message(mtype, code, mid, token, [], payload).encode(), addr)

    def requests(self):
        return [(t, m) for t, _, m in self.log if m.code.is_request()]

    def close(self):
        self._stop.set()
        self._thread.join()
        self.sock.close()
        assert self.errors == []


@pytest.fixture
def server_factory():
    servers = []

    def make(handler):
        servers.append(FakeServer(handler))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def drop_first(n, payload=b"ok"):
    """Handler: ignore the first n requests, then answer piggybacked 2.05."""
    seen = []

    def handler(server, msg, addr):
        if msg.mtype != CON or not msg.code.is_request():
            return
        seen.append(msg)
        if len(seen) > n:
            server.send(addr, ACK, 0x45, msg.mid, msg.token, payload)
    return handler


CLIENT = """
import coap, time
c = coap.Client('127.0.0.1', %d, %s)
"""


def test_retransmission_doubles_the_timeout(server_factory):
    server = server_factory(drop_first(3))
    out = run_mpy(CLIENT % (server.port, "ack_timeout_ms=100, ack_random_factor=1.0") + """
t0 = time.ticks_ms()
m = c.request(coap.GET, [(coap.URI_PATH, 'x')])
print(m.code, m.payload, time.ticks_diff(time.ticks_ms(), t0))
""").split()
    assert out[:2] == ["69", "b'ok'"]
    requests = server.requests()
    assert len(requests) == 4
    assert len({data for _, data, m in server.log}) == 1  # same bytes: same MID and token
    gaps = [b[0] - a[0] for a, b in zip(requests, requests[1:])]
    # arrival times stamped by a Python thread: a loaded host adds tens of ms either way
    for gap, expected in zip(gaps, (0.1, 0.2, 0.4)):
        assert expected - 0.02 <= gap <= expected + 0.25, gaps
    assert all(b > 1.5 * a for a, b in zip(gaps, gaps[1:])), gaps     # doubling
    assert 700 <= int(out[2]) <= 1100


def test_initial_timeout_is_randomised_within_the_factor(server_factory):
    seen = []

    def second_attempts_only(srv, msg, addr):
        if msg.mtype == CON and msg.code.is_request():
            seen.append(msg)
            if len(seen) % 2 == 0:
                srv.send(addr, ACK, 0x45, msg.mid, msg.token, b"ok")

    server = server_factory(second_attempts_only)
    run_mpy(CLIENT % (server.port, "ack_timeout_ms=100, ack_random_factor=1.5") + """
for _ in range(6):
    c.request(coap.GET)
""")
    requests = server.requests()
    assert len(requests) == 12
    gaps = [requests[i + 1][0] - requests[i][0] for i in range(0, 12, 2)]
    assert all(0.08 <= g <= 0.15 + 0.15 for g in gaps), gaps      # 100..150 ms, + host delays
    mids = [m.mid for _, m in requests[::2]]
    assert all((b - a) % 65536 == 1 for a, b in zip(mids, mids[1:]))
    tokens = [m.token for _, m in requests[::2]]
    assert all(len(t) == 2 for t in tokens) and len(set(tokens)) > 1


def test_timeout_after_max_retransmit(server_factory):
    server = server_factory(drop_first(99))
    out = run_mpy(CLIENT % (server.port,
                            "ack_timeout_ms=50, ack_random_factor=1.0, max_retransmit=2") + """
t0 = time.ticks_ms()
try:
    c.request(coap.POST, [], b'data')
except coap.Timeout as e:
    print('Timeout', isinstance(e, OSError), time.ticks_diff(time.ticks_ms(), t0))
""").split()
    assert out[:2] == ["Timeout", "True"]
    assert 350 <= int(out[2]) <= 650  # 50 + 100 + 200 ms
    assert len(server.requests()) == 3


def test_no_listener_is_a_timeout_not_an_icmp_error():
    out = run_mpy(CLIENT % (free_udp_port(),
                            "ack_timeout_ms=30, ack_random_factor=1.0, max_retransmit=1") + """
try:
    c.request(coap.GET)
except coap.Timeout:
    print('Timeout')
""").split()
    assert out == ["Timeout"]


def test_separate_response_and_unrelated_datagrams(server_factory):
    separate_mid = 0x7000
    state = {}

    def handler(srv, msg, addr):
        if msg.mtype != CON or not msg.code.is_request():
            return
        if msg.payload == b"first":
            state["token"] = msg.token
            srv.sock.sendto(b"\x00\x01", addr)  # not CoAP
            srv.send(addr, ACK, 0x45, (msg.mid + 1) % 65536, msg.token, b"wrong mid")
            srv.send(addr, NON, 0x45, 0x6001, b"zz", b"other token")
            srv.send(addr, CON, 0x45, 0x6002, b"zz", b"other token")  # must be reset
            srv.send(addr, ACK, 0, msg.mid)  # empty ACK: response comes separately
            time.sleep(0.25)  # longer than the ACK timeout: no retransmission may follow
            srv.send(addr, CON, 0x45, separate_mid, msg.token, b"separate")
        elif msg.payload == b"second":
            # The separate response again, as if our ACK had been lost.
            srv.send(addr, CON, 0x45, separate_mid, state["token"], b"separate")
            time.sleep(0.05)
            srv.send(addr, ACK, 0x44, msg.mid, msg.token, b"piggybacked")

    server = server_factory(handler)
    out = run_mpy(CLIENT % (server.port, "ack_timeout_ms=100") + """
m = c.request(coap.POST, [], b'first')
print(m.mtype, m.code, m.payload)
m = c.request(coap.POST, [], b'second')
print(m.mtype, m.code, m.payload)
""").split()
    time.sleep(0.05)
    assert out == ["0", "69", "b'separate'", "2", "68", "b'piggybacked'"]
    from_client = [m for _, _, m in server.log]
    assert [m.payload for m in from_client if m.code.is_request()] == [b"first", b"second"]
    replies = [(m.mtype, m.mid, int(m.code)) for m in from_client if not m.code.is_request()]
    assert replies == [(RST, 0x6002, 0), (ACK, separate_mid, 0), (ACK, separate_mid, 0)]


def test_piggybacked_response_must_carry_the_token(server_factory):
    def handler(srv, msg, addr):
        if msg.mtype == CON and msg.code.is_request():
            srv.send(addr, ACK, 0x45, msg.mid, msg.token + b"x", b"wrong token")
            time.sleep(0.02)
            srv.send(addr, ACK, 0x45, msg.mid, msg.token, b"right token")

    server = server_factory(handler)
    out = run_mpy(CLIENT % (server.port, "ack_timeout_ms=500") + """
print(c.request(coap.GET).payload)
""").split()
    assert out == ["b'right", "token'"]


def test_reset_raises(server_factory):
    server = server_factory(lambda srv, msg, addr: srv.send(addr, RST, 0, msg.mid))
    out = run_mpy(CLIENT % (server.port, "ack_timeout_ms=100") + """
try:
    c.request(coap.GET)
except coap.Reset as e:
    print('Reset', isinstance(e, OSError))
""").split()
    assert out == ["Reset", "True"]


def test_async_request_lets_other_tasks_run(server_factory):
    server = server_factory(drop_first(1, b"async"))
    out = run_mpy(CLIENT % (server.port, "ack_timeout_ms=100, ack_random_factor=1.0,"
                                         " token_len=0, poll_ms=5") + """
import asyncio
ticks = [0]
async def ticker():
    while True:
        ticks[0] += 1
        await asyncio.sleep_ms(10)
async def main():
    task = asyncio.create_task(ticker())
    m = await c.arequest(coap.GET, [(coap.URI_PATH, 'a')])
    task.cancel()
    print(m.code, m.payload, ticks[0])
asyncio.run(main())
""").split()
    assert out[:2] == ["69", "b'async'"]
    assert int(out[2]) >= 3  # ~100 ms of waiting, ticking every 10 ms (blocking: 1)
    requests = server.requests()
    assert len(requests) == 2 and requests[0][1].token == b""
    assert requests[1][0] - requests[0][0] >= 0.08
