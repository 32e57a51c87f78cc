# CBOR (RFC 8949), the subset the node needs: definite lengths only.
#
# Encoding matches cbor2.dumps() byte for byte for the supported types: integers in their
# shortest head, finite floats as doubles (0xfb), NaN and the infinities as half floats (as
# cbor2 does), lists and tuples as arrays, dicts as maps in the dict's iteration order.
# MicroPython's dict does not keep insertion order: when key order matters on the wire, pass
# a collections.OrderedDict or write the map yourself with head() and encode_into().
# Integers outside [-2**64, 2**64 - 1] raise ValueError (no bignums); other types TypeError.
#
# Decoding returns bytes, str, int, float, bool, None, list and dict. A tag is dropped and
# its content returned (so a bignum, tag 2/3, comes back as its bytes). Every malformed or
# unsupported input raises ValueError, never another exception: truncation, trailing bytes,
# indefinite lengths, reserved additional information (28-30), simple values other than
# false/true/null, invalid UTF-8, unhashable map keys and nesting deeper than MAX_DEPTH.
# Half, single and double floats decode; on a single-precision port (the ESP32) doubles lose
# precision.

from micropython import const
import math
import struct

MAX_DEPTH = const(16)  # containers (arrays, maps, tags) nested in one another

_UINT = const(0)
_NINT = const(1)
_BYTES = const(2)
_TEXT = const(3)
_ARRAY = const(4)
_MAP = const(5)
_TAG = const(6)
_SIMPLE = const(7)

_FALSE = const(0xF4)
_TRUE = const(0xF5)
_NULL = const(0xF6)
_INF = float("inf")


def head(buf, major, n):
    """Append the head of an item of type `major` with argument `n` to bytearray `buf`."""
    mt = major << 5
    if n < 24:
        buf.append(mt | n)
    elif n < 0x100:
        buf.append(mt | 24)
        buf.append(n)
    elif n < 0x10000:
        buf.append(mt | 25)
        buf.extend(struct.pack(">H", n))
    elif n < 0x100000000:
        buf.append(mt | 26)
        buf.extend(struct.pack(">I", n))
    elif n < 0x10000000000000000:
        buf.append(mt | 27)
        buf.extend(struct.pack(">Q", n))
    else:
        raise ValueError("int too large")


def encode_into(buf, obj, depth=0):
    """Append the encoding of `obj` to bytearray `buf`."""
    if obj is None:
        buf.append(_NULL)
    elif obj is False:
        buf.append(_FALSE)
    elif obj is True:
        buf.append(_TRUE)
    elif isinstance(obj, int):
        if obj >= 0:
            head(buf, _UINT, obj)
        else:
            head(buf, _NINT, -1 - obj)
    elif isinstance(obj, str):
        raw = obj.encode()
        head(buf, _TEXT, len(raw))
        buf.extend(raw)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        head(buf, _BYTES, len(obj))
        buf.extend(obj)
    elif isinstance(obj, float):
        if obj != obj:
            buf.extend(b"\xf9\x7e\x00")
        elif obj == _INF:
            buf.extend(b"\xf9\x7c\x00")
        elif obj == -_INF:
            buf.extend(b"\xf9\xfc\x00")
        else:
            buf.append(0xFB)
            buf.extend(struct.pack(">d", obj))
    elif isinstance(obj, (list, tuple)):
        if depth >= MAX_DEPTH:
            raise ValueError("nesting too deep")
        head(buf, _ARRAY, len(obj))
        for item in obj:
            encode_into(buf, item, depth + 1)
    elif isinstance(obj, dict):
        if depth >= MAX_DEPTH:
            raise ValueError("nesting too deep")
        head(buf, _MAP, len(obj))
        for key in obj:
            encode_into(buf, key, depth + 1)
            encode_into(buf, obj[key], depth + 1)
    else:
        raise TypeError("cannot encode %s" % type(obj).__name__)


def dumps(obj):
    buf = bytearray()
    encode_into(buf, obj)
    return bytes(buf)


def loads(data):
    """Decode one CBOR item that fills `data` (bytes, bytearray or memoryview) exactly."""
    mv = memoryview(data)
    obj, pos = _decode(mv, 0, 0)
    if pos != len(mv):
        raise ValueError("trailing bytes")
    return obj


def _half(h):
    exp = (h >> 10) & 0x1F
    frac = h & 0x3FF
    if exp == 0:
        val = math.ldexp(frac, -24)
    elif exp == 31:
        val = _INF if frac == 0 else float("nan")
    else:
        val = math.ldexp(frac | 0x400, exp - 25)
    return -val if h & 0x8000 else val


def _decode(mv, pos, depth):
    end = len(mv)
    if pos >= end:
        raise ValueError("truncated")
    ib = mv[pos]
    pos += 1
    major = ib >> 5
    ai = ib & 0x1F
    if ai < 24:
        n = ai
    elif ai < 28:
        size = 1 << (ai - 24)
        if pos + size > end:
            raise ValueError("truncated")
        n = int.from_bytes(mv[pos:pos + size], "big")
        pos += size
    elif ai == 31:
        raise ValueError("indefinite length not supported")
    else:
        raise ValueError("reserved additional information")

    if major == _UINT:
        return n, pos
    if major == _NINT:
        return -1 - n, pos
    if major == _SIMPLE:
        return _simple(ai, n), pos
    if major <= _TEXT:
        if n > end - pos:
            raise ValueError("truncated")
        raw = bytes(mv[pos:pos + n])
        if major == _TEXT:
            raw = _text(raw)
        return raw, pos + n

    if depth >= MAX_DEPTH:
        raise ValueError("nesting too deep")
    depth += 1
    if major == _TAG:
        return _decode(mv, pos, depth)
    # Each item takes at least one byte: a count beyond the rest of the input is truncated.
    if n > end - pos:
        raise ValueError("truncated")
    if major == _ARRAY:
        items = []
        for _ in range(n):
            item, pos = _decode(mv, pos, depth)
            items.append(item)
        return items, pos
    items = {}
    for _ in range(n):
        key, pos = _decode(mv, pos, depth)
        val, pos = _decode(mv, pos, depth)
        try:
            items[key] = val
        except TypeError:
            raise ValueError("unhashable map key") from None
    return items, pos


def _text(raw):
    try:
        text = str(raw, "utf-8")
    except UnicodeError:
        raise ValueError("invalid UTF-8") from None
    if len(text) != len(raw):
        # MicroPython checks the byte structure only: refuse overlong forms, surrogates and
        # code points beyond U+10FFFF as well (RFC 3629).
        last = len(raw) - 1
        for i in range(len(raw)):
            lead = raw[i]
            if lead < 0xC0:
                continue
            follow = raw[i + 1] if i < last else 0
            if (lead < 0xC2 or lead > 0xF4 or (lead == 0xE0 and follow < 0xA0)
                    or (lead == 0xED and follow > 0x9F) or (lead == 0xF0 and follow < 0x90)
                    or (lead == 0xF4 and follow > 0x8F)):
                raise ValueError("invalid UTF-8")
    return text


def _simple(ai, n):
    if ai == 25:
        return _half(n)
    if ai == 26:
        return struct.unpack(">f", n.to_bytes(4, "big"))[0]
    if ai == 27:
        return struct.unpack(">d", n.to_bytes(8, "big"))[0]
    if ai == 20:
        return False
    if ai == 21:
        return True
    if ai == 22:
        return None
    raise ValueError("unsupported simple value")
