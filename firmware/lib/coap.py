# CoAP over UDP (RFC 7252): message encoding and a confirmable-request client.
#
# Options are lists of (number, value) pairs, value bytes (a str is UTF-8 encoded). encode()
# sorts them stably, so repeated options such as Uri-Path segments keep their order.
# Codes are the raw byte: class << 5 | detail (2.04 -> 0x44).

from micropython import const
import errno
import os
import select
import socket
import struct
import time

CON = const(0)
NON = const(1)
ACK = const(2)
RST = const(3)

EMPTY = const(0x00)
GET = const(0x01)
POST = const(0x02)
FETCH = const(0x05)
CHANGED = const(0x44)  # 2.04
CONTENT = const(0x45)  # 2.05
BAD_REQUEST = const(0x80)  # 4.00
UNAUTHORIZED = const(0x81)  # 4.01
BAD_OPTION = const(0x82)  # 4.02
NOT_FOUND = const(0x84)  # 4.04
METHOD_NOT_ALLOWED = const(0x85)  # 4.05
SERVICE_UNAVAILABLE = const(0xA3)  # 5.03

URI_HOST = const(3)
OBSERVE = const(6)
OSCORE = const(9)
URI_PATH = const(11)
CONTENT_FORMAT = const(12)
MAX_AGE = const(14)
BLOCK2 = const(23)
SIZE2 = const(28)
ECHO = const(252)

_VERSION = const(1)
_PAYLOAD_MARKER = const(0xFF)
_MAX_DATAGRAM = const(1280)
_RESPONSE_CLASS_MIN = const(0x40)  # 2.00: codes from here on are responses


class Timeout(OSError):
    """No answer to a confirmable request after all retransmissions."""


class Reset(OSError):
    """The server rejected the request with a Reset message."""


class Message:
    def __init__(self, mtype, code, mid, token=b"", options=(), payload=b""):
        self.mtype = mtype
        self.code = code
        self.mid = mid
        self.token = token
        self.options = options
        self.payload = payload

    def option(self, number, default=None):
        """Value of the first option `number`, or `default`."""
        return option(self.options, number, default)


def option(options, number, default=None):
    for num, value in options:
        if num == number:
            return value
    return default


def uint(n):
    """Minimal big-endian bytes of an unsigned option value (0 is empty)."""
    size = 0
    rest = n
    while rest:
        size += 1
        rest >>= 8
    return n.to_bytes(size, "big") if size else b""


def decode_uint(value):
    n = 0
    for byte in value:
        n = (n << 8) | byte
    return n


def _sorted(options):
    # Insertion sort: stable (MicroPython's list.sort is not) and option lists are short.
    opts = list(options)
    for i in range(1, len(opts)):
        item = opts[i]
        j = i - 1
        while j >= 0 and opts[j][0] > item[0]:
            opts[j + 1] = opts[j]
            j -= 1
        opts[j + 1] = item
    return opts


def _nibble(buf, n):
    # Append the extended form of an option delta or length; return its 4-bit nibble.
    if n < 13:
        return n
    if n < 269:
        buf.append(n - 13)
        return 13
    if n < 65805:
        buf.extend(struct.pack(">H", n - 269))
        return 14
    raise ValueError("option delta or length too large")


def encode_options(buf, options):
    """Append `options` (any order) in CoAP option format to bytearray `buf`."""
    prev = 0
    for number, value in _sorted(options):
        if isinstance(value, str):
            value = value.encode()
        at = len(buf)
        buf.append(0)
        delta_nibble = _nibble(buf, number - prev)
        buf[at] = (delta_nibble << 4) | _nibble(buf, len(value))
        buf.extend(value)
        prev = number
    return buf


def _extended(mv, pos, nibble):
    if nibble < 13:
        return nibble, pos
    if nibble == 15:
        raise ValueError("reserved option nibble")
    if nibble == 13:
        if pos + 1 > len(mv):
            raise ValueError("truncated option")
        return mv[pos] + 13, pos + 1
    if pos + 2 > len(mv):
        raise ValueError("truncated option")
    return ((mv[pos] << 8) | mv[pos + 1]) + 269, pos + 2


def decode_options(data, pos=0):
    """Parse options and payload from `data[pos:]`; return (options, payload)."""
    mv = memoryview(data)
    end = len(mv)
    number = 0
    options = []
    while pos < end:
        first = mv[pos]
        pos += 1
        if first == _PAYLOAD_MARKER:
            if pos == end:
                raise ValueError("payload marker without payload")
            return options, bytes(mv[pos:])
        delta, pos = _extended(mv, pos, first >> 4)
        length, pos = _extended(mv, pos, first & 0x0F)
        if pos + length > end:
            raise ValueError("truncated option")
        number += delta
        options.append((number, bytes(mv[pos:pos + length])))
        pos += length
    return options, b""


def encode(mtype, code, mid, token=b"", options=(), payload=b""):
    if len(token) > 8:
        raise ValueError("token longer than 8 bytes")
    buf = bytearray(4)
    buf[0] = (_VERSION << 6) | (mtype << 4) | len(token)
    buf[1] = code
    buf[2] = (mid >> 8) & 0xFF
    buf[3] = mid & 0xFF
    buf.extend(token)
    encode_options(buf, options)
    if payload:
        buf.append(_PAYLOAD_MARKER)
        buf.extend(payload)
    return bytes(buf)


def decode(data):
    """Parse one CoAP datagram into a Message; ValueError when it is malformed."""
    mv = memoryview(data)
    if len(mv) < 4:
        raise ValueError("shorter than a CoAP header")
    first = mv[0]
    if first >> 6 != _VERSION:
        raise ValueError("unknown CoAP version")
    tkl = first & 0x0F
    if tkl > 8:
        raise ValueError("reserved token length")
    if len(mv) < 4 + tkl:
        raise ValueError("truncated token")
    code = mv[1]
    if code == EMPTY and len(mv) != 4:
        raise ValueError("empty message with content")
    options, payload = decode_options(mv, 4 + tkl)
    return Message((first >> 4) & 3, code, (mv[2] << 8) | mv[3], bytes(mv[4:4 + tkl]),
                   options, payload)


class _Exchange:
    # State of one confirmable request until its response arrives or it times out.
    def __init__(self, mid, token, datagram, timeout_ms, retransmits):
        self.mid = mid
        self.token = token
        self.datagram = datagram
        self.timeout_ms = timeout_ms
        self.retransmits_left = retransmits
        self.deadline = time.ticks_add(time.ticks_ms(), timeout_ms)
        self.acked = False


class Client:
    """Confirmable requests to one server, one at a time (not shared between tasks).

    Timing per RFC 7252 §4.8; a battery node lowers max_retransmit, tests shorten
    ack_timeout_ms. After an empty ACK the client waits separate_timeout_ms for the separate
    response (default MAX_TRANSMIT_WAIT). The socket is connected, so the kernel drops
    datagrams from other hosts; create a new Client after the network changes.
    """

    def __init__(self, host, port=5683, ack_timeout_ms=2000, ack_random_factor=1.5,
                 max_retransmit=4, token_len=2, separate_timeout_ms=None, poll_ms=10):
        self.ack_timeout_ms = ack_timeout_ms
        self._ack_spread_ms = int(ack_timeout_ms * (ack_random_factor - 1))
        self.max_retransmit = max_retransmit
        self.token_len = token_len
        if separate_timeout_ms is None:
            separate_timeout_ms = int(ack_timeout_ms * ack_random_factor) * (
                (2 << max_retransmit) - 1)
        self.separate_timeout_ms = separate_timeout_ms
        self.poll_ms = poll_ms
        self._mid = int.from_bytes(os.urandom(2), "big")
        self._last_acked_mid = None
        self.token = b""      # token of the last request (an observation's notifications)
        addr = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)[0][-1]
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.connect(addr)
        self._poll = select.poll()
        self._poll.register(self._sock, select.POLLIN)

    def close(self):
        self._poll.unregister(self._sock)
        self._sock.close()

    def request(self, code, options=(), payload=b""):
        """Send a confirmable request and return the response Message (blocking)."""
        ex = self._start(code, options, payload)
        while True:
            wait_ms = time.ticks_diff(ex.deadline, time.ticks_ms())
            if wait_ms <= 0:
                self._expired(ex)
            elif self._poll.poll(wait_ms):
                response = self._receive(ex)
                if response is not None:
                    return response

    async def arequest(self, code, options=(), payload=b""):
        """As request(), yielding to other asyncio tasks while waiting."""
        import asyncio  # here, so a node that never awaits does not load it

        ex = self._start(code, options, payload)
        while True:
            wait_ms = time.ticks_diff(ex.deadline, time.ticks_ms())
            if wait_ms <= 0:
                self._expired(ex)
            elif self._poll.poll(0):
                response = self._receive(ex)
                if response is not None:
                    return response
            else:
                await asyncio.sleep_ms(min(wait_ms, self.poll_ms))

    async def anotification(self, token, timeout_ms):
        """The next notification (RFC 7641) carrying `token`, acknowledged when confirmable;
        None when none arrives within timeout_ms. Other messages are answered as in request().
        """
        import asyncio

        deadline = time.ticks_add(time.ticks_ms(), timeout_ms)
        while True:
            wait_ms = time.ticks_diff(deadline, time.ticks_ms())
            if wait_ms <= 0:
                return None
            if not self._poll.poll(0):
                await asyncio.sleep_ms(min(wait_ms, self.poll_ms))
                continue
            try:
                msg = decode(self._sock.recv(_MAX_DATAGRAM))
            except (OSError, ValueError):
                continue
            if msg.code >= _RESPONSE_CLASS_MIN and msg.token == token and \
                    (msg.mtype == CON or msg.mtype == NON):
                if msg.mtype == CON:
                    self._ack(msg.mid)
                return msg
            if msg.mtype == CON:
                if msg.mid == self._last_acked_mid:
                    self._ack(msg.mid)
                else:
                    self._send(encode(RST, EMPTY, msg.mid))

    def _start(self, code, options, payload):
        self._mid = (self._mid + 1) & 0xFFFF
        token = os.urandom(self.token_len)
        self.token = token
        datagram = encode(CON, code, self._mid, token, options, payload)
        spread = int.from_bytes(os.urandom(2), "big") * (self._ack_spread_ms + 1) >> 16
        ex = _Exchange(self._mid, token, datagram, self.ack_timeout_ms + spread,
                       self.max_retransmit)
        self._send(datagram)
        return ex

    def _expired(self, ex):
        if ex.acked or ex.retransmits_left == 0:
            raise Timeout(errno.ETIMEDOUT, "no CoAP response")
        ex.retransmits_left -= 1
        ex.timeout_ms *= 2
        ex.deadline = time.ticks_add(ex.deadline, ex.timeout_ms)
        self._send(ex.datagram)

    def _send(self, datagram):
        try:
            self._sock.send(datagram)
        except OSError:
            pass  # e.g. ECONNREFUSED left by an earlier ICMP error: retransmission covers it

    def _receive(self, ex):
        try:
            data = self._sock.recv(_MAX_DATAGRAM)
        except OSError:
            return None  # ICMP port unreachable and the like: keep waiting
        try:
            msg = decode(data)
        except ValueError:
            return None
        return self._match(ex, msg)

    def _match(self, ex, msg):
        mtype = msg.mtype
        if mtype == ACK or mtype == RST:
            if msg.mid != ex.mid:
                return None
            if mtype == RST:
                raise Reset(errno.ECONNRESET, "CoAP reset")
            if msg.code == EMPTY:
                # Separate response follows: stop retransmitting, wait for it by token.
                ex.acked = True
                ex.deadline = time.ticks_add(time.ticks_ms(), self.separate_timeout_ms)
                return None
            return msg if msg.token == ex.token else None
        if msg.code >= _RESPONSE_CLASS_MIN and msg.token == ex.token:
            if mtype == CON:
                self._ack(msg.mid)
            return msg
        if mtype == CON:
            if msg.mid == self._last_acked_mid:
                self._ack(msg.mid)  # our ACK of a separate response was lost
            else:
                self._send(encode(RST, EMPTY, msg.mid))
        return None

    def _ack(self, mid):
        self._last_acked_mid = mid
        self._send(encode(ACK, EMPTY, mid))


def block_option(num, more, szx):
    """Block1/Block2 option value (RFC 7959 §2.2): NUM, M, SZX (size 2**(SZX+4))."""
    return uint((num << 4) | (0x08 if more else 0) | szx)


def decode_block(value):
    """(num, more, szx) of a Block1/Block2 option value."""
    n = decode_uint(value)
    return n >> 4, bool(n & 0x08), n & 0x07
