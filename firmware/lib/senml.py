# SenML in CBOR with integer labels (RFC 8428 §6), as docs/protocol.md §3 restricts it:
# no base name, no units, one value per record, `bt` in the first record only.
#
# encode() writes each map directly (no dicts built), keys in the order -3 (bt), 0 (n), value
# label, 6 (t), so the bytes do not depend on MicroPython's dict ordering.

from micropython import const
import cbor

_BT = const(-3)
_N = const(0)
_V = const(2)
_VS = const(3)
_VB = const(4)
_T = const(6)

_ARRAY = const(4)
_MAP = const(5)

# label -> name used by decode()
_NAMES = {_BT: "bt", _N: "n", _V: "v", _VS: "vs", _VB: "vb", _T: "t"}


def encode_into(buf, records, bt=None):
    """Append the SenML-CBOR array for `records` to bytearray `buf`.

    Each record is (name, value) or (name, value, t); t may be None. The value label follows
    the type: bool -> vb, int -> v, str -> vs. Floats are refused (the wire carries integers
    in the quantity's unit).
    """
    cbor.head(buf, _ARRAY, len(records))
    for rec in records:
        value = rec[1]
        t = rec[2] if len(rec) > 2 else None
        if value is True or value is False:
            label = _VB
        elif isinstance(value, int):
            label = _V
        elif isinstance(value, str):
            label = _VS
        else:
            raise TypeError("SenML value must be bool, int or str")
        cbor.head(buf, _MAP, 2 + (t is not None) + (bt is not None))
        if bt is not None:
            cbor.encode_into(buf, _BT)
            cbor.encode_into(buf, bt)
            bt = None
        cbor.encode_into(buf, _N)
        cbor.encode_into(buf, rec[0])
        cbor.encode_into(buf, label)
        cbor.encode_into(buf, value)
        if t is not None:
            cbor.encode_into(buf, _T)
            cbor.encode_into(buf, t)
    return buf


def encode(records, bt=None):
    return bytes(encode_into(bytearray(), records, bt))


def decode(data):
    """Decode a SenML-CBOR payload into a list of dicts keyed by label name ("n", "v", ...).

    Raises ValueError for anything that is not an array of maps with the labels above.
    """
    pack = cbor.loads(data)
    if not isinstance(pack, list):
        raise ValueError("SenML pack must be an array")
    out = []
    for rec in pack:
        if not isinstance(rec, dict):
            raise ValueError("SenML record must be a map")
        named = {}
        for label in rec:
            name = _NAMES.get(label) if type(label) is int else None
            if name is None:
                raise ValueError("unsupported SenML label")
            named[name] = rec[label]
        out.append(named)
    return out
