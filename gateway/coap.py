"""CoAP over UDP (RFC 7252) message codec, lean enough for the gateway's hot path.

The gateway parses every datagram with ``parse`` and builds every reply with ``encode``. This is
a deliberate replacement of aiocoap's message layer on the gateway's receive path: aiocoap's
``Message`` objects, option registry and pipe machinery cost more per frame than the whole
budget allows at 5,000 frames/s (docs/gateway.md, "Performance"). aiocoap remains the
reference: the tests check this codec and the OSCORE layer against it byte for byte.

Options are kept as a list of ``(number, value)`` pairs in wire order; values are bytes.

Message types, methods and option numbers are RFC 7252's and the codec's own. The response codes
and content formats are the protocol's (docs/protocol.md §2, §6): they are defined in
protocol/wire.py, which the firmware is held to, and only re-exported here.
"""

from __future__ import annotations

from typing import NamedTuple

from gateway.errors import GatewayError

# The response codes and content formats docs/protocol.md gives a meaning to are the protocol's
# (protocol/wire.py): the codec re-exports them, so that its users find every CoAP name here.
from protocol.wire import (  # noqa: F401 (re-exported)
    BAD_OPTION,
    BAD_REQUEST,
    CF_CBOR,
    CF_LINK_FORMAT,
    CF_OCTET_STREAM,
    CF_SENML_CBOR,
    CHANGED,
    CONTENT,
    INTERNAL_SERVER_ERROR,
    METHOD_NOT_ALLOWED,
    NOT_FOUND,
    SERVICE_UNAVAILABLE,
    UNAUTHORIZED,
    UNSUPPORTED_CONTENT_FORMAT,
)

VERSION = 1
CON, NON, ACK, RST = 0, 1, 2, 3

EMPTY = 0x00         # 0.00: pings, ACKs and Resets
GET, POST, PUT, DELETE, FETCH = 0x01, 0x02, 0x03, 0x04, 0x05

IF_MATCH = 1
URI_HOST = 3
ETAG = 4
IF_NONE_MATCH = 5
OBSERVE = 6
URI_PORT = 7
OSCORE = 9
URI_PATH = 11
CONTENT_FORMAT = 12
MAX_AGE = 14
URI_QUERY = 15
ACCEPT = 17
BLOCK2 = 23
BLOCK1 = 27
SIZE2 = 28
SIZE1 = 60
ECHO = 252

PAYLOAD_MARKER = 0xFF
MAX_TOKEN = 8


class CoapFormatError(GatewayError):
    """A datagram that is not a well-formed CoAP message (RFC 7252 §3)."""


class Message(NamedTuple):
    mtype: int
    code: int
    mid: int
    token: bytes
    options: list[tuple[int, bytes]]
    payload: bytes


def code_text(code: int) -> str:
    return "%d.%02d" % (code >> 5, code & 31)


def is_request(code: int) -> bool:
    return 1 <= code < 32


def is_critical(number: int) -> bool:
    return bool(number & 1)


def _extended(data: bytes, pos: int, nibble: int) -> tuple[int, int]:
    if nibble < 13:
        return nibble, pos
    if nibble == 13:
        if pos >= len(data):
            raise CoapFormatError("option header truncated")
        return data[pos] + 13, pos + 1
    if nibble == 14:
        if pos + 2 > len(data):
            raise CoapFormatError("option header truncated")
        return ((data[pos] << 8) | data[pos + 1]) + 269, pos + 2
    raise CoapFormatError("reserved option nibble 15")


def parse_options(data: bytes, pos: int = 0) -> tuple[list[tuple[int, bytes]], bytes]:
    """Options from ``pos`` on, then the payload after the marker (b"" without one)."""
    options: list[tuple[int, bytes]] = []
    number = 0
    end = len(data)
    while pos < end:
        byte = data[pos]
        if byte == PAYLOAD_MARKER:
            if pos + 1 == end:
                raise CoapFormatError("payload marker without payload")
            return options, data[pos + 1:]
        pos += 1
        delta, pos = _extended(data, pos, byte >> 4)
        length, pos = _extended(data, pos, byte & 15)
        number += delta
        if pos + length > end:
            raise CoapFormatError("option %d runs past the end" % number)
        options.append((number, data[pos:pos + length]))
        pos += length
    return options, b""


def parse(data: bytes) -> Message:
    """Decode one datagram; raise CoapFormatError when it is not CoAP."""
    if len(data) < 4:
        raise CoapFormatError("shorter than the 4-byte header")
    first = data[0]
    if first >> 6 != VERSION:
        raise CoapFormatError("version %d" % (first >> 6))
    tkl = first & 15
    if tkl > MAX_TOKEN:
        raise CoapFormatError("token length %d" % tkl)
    if len(data) < 4 + tkl:
        raise CoapFormatError("token truncated")
    code = data[1]
    mtype = (first >> 4) & 3
    mid = (data[2] << 8) | data[3]
    if code == EMPTY:
        if len(data) != 4 or tkl:
            raise CoapFormatError("empty message with content")
        return Message(mtype, code, mid, b"", [], b"")
    options, payload = parse_options(data, 4 + tkl)
    return Message(mtype, code, mid, data[4:4 + tkl], options, payload)


def option(options: list[tuple[int, bytes]], number: int) -> bytes | None:
    """The first value of option ``number``, or None."""
    for n, v in options:
        if n == number:
            return v
    return None


def uri_path(options: list[tuple[int, bytes]]) -> tuple[str, ...]:
    return tuple(v.decode("utf-8", "replace") for n, v in options if n == URI_PATH)


def uint(value: int) -> bytes:
    """A CoAP uint option value: big-endian, without leading zero bytes (0 -> b"")."""
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def decode_uint(value: bytes) -> int:
    return int.from_bytes(value, "big")


def _nibble(value: int) -> tuple[int, bytes]:
    if value < 13:
        return value, b""
    if value < 269:
        return 13, bytes((value - 13,))
    return 14, (value - 269).to_bytes(2, "big")


def encode_options(options: list[tuple[int, bytes]]) -> bytes:
    """Options in number order (stable, so repeated options keep their order)."""
    out = bytearray()
    last = 0
    for number, value in sorted(options, key=lambda o: o[0]):
        dn, dx = _nibble(number - last)
        ln, lx = _nibble(len(value))
        out.append(dn << 4 | ln)
        out += dx
        out += lx
        out += value
        last = number
    return bytes(out)


def encode(mtype: int, code: int, mid: int, token: bytes = b"",
           options: list[tuple[int, bytes]] | tuple = (), payload: bytes = b"") -> bytes:
    head = bytes((VERSION << 6 | mtype << 4 | len(token), code, mid >> 8, mid & 0xFF))
    body = encode_options(list(options)) if options else b""
    if payload:
        return head + token + body + b"\xff" + payload
    return head + token + body


def encode_raw(mtype: int, code: int, mid: int, token: bytes, options: bytes,
               payload: bytes) -> bytes:
    """``encode`` with the options already encoded."""
    head = bytes((VERSION << 6 | mtype << 4 | len(token), code, mid >> 8, mid & 0xFF))
    if payload:
        return head + token + options + b"\xff" + payload
    return head + token + options


def empty(mtype: int, mid: int) -> bytes:
    """An empty ACK or RST for message id ``mid``."""
    return bytes((VERSION << 6 | mtype << 4, EMPTY, mid >> 8, mid & 0xFF))


# --- Block-wise transfer (RFC 7959) ---------------------------------------------------------

class Block(NamedTuple):
    num: int
    more: bool
    szx: int

    @property
    def size(self) -> int:
        return 1 << (self.szx + 4)

    @property
    def offset(self) -> int:
        return self.num * self.size


def decode_block(value: bytes) -> Block:
    if len(value) > 3:
        raise CoapFormatError("block option longer than 3 bytes")
    n = decode_uint(value)
    szx = n & 7
    if szx == 7:
        raise CoapFormatError("block size exponent 7 is reserved")
    return Block(n >> 4, bool(n & 8), szx)


def encode_block(block: Block) -> bytes:
    return uint(block.num << 4 | (8 if block.more else 0) | block.szx)
