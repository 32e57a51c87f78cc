"""SenML-CBOR frames from nodes in, resolved SenML JSON out (docs/protocol.md §3, §7)."""

from __future__ import annotations

import json
from typing import NamedTuple

import cbor2

from gateway.errors import FrameError
from protocol.vocabulary import BY_NAME

MAX_PAYLOAD = 1024
MAX_RECORDS = 64
RELATIVE_TIME_LIMIT = 2 ** 28  # RFC 8428 §4.5.3
LATEST_TIME = 4102444800      # 2100-01-01: later absolute times are garbage, not readings

_BN, _BT, _N, _U, _V, _VS, _VB, _T = -2, -3, 0, 1, 2, 3, 4, 6
_VALUE_LABEL = {"v": _V, "vs": _VS, "vb": _VB}
_ALLOWED_LABELS = {_BT, _N, _V, _VS, _VB, _T}


class Record(NamedTuple):
    name: str
    value: int | bool | str  # in the wire unit
    time: float              # absolute, seconds since 1970

    def published_value(self) -> int | float | bool | str:
        scale = BY_NAME[self.name].scale
        if scale == 1 or isinstance(self.value, (bool, str)):
            return self.value
        return self.value / scale


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _number(x: object, what: str) -> int | float:
    if _is_int(x) or isinstance(x, float):
        return x
    raise FrameError("bad_time", "%s must be a number, not %s" % (what, type(x).__name__))


_VALUE_LABELS = frozenset((_V, _VS, _VB))
_ALLOWED = frozenset(_ALLOWED_LABELS)
_CHECK = {"v": _is_int, "vb": lambda x: x is True or x is False, "vs": lambda x: type(x) is str}
# name -> (value label, kind, value check), resolved once
_BY_NAME = {q.name: (_VALUE_LABEL[q.kind], q.kind, _CHECK[q.kind]) for q in BY_NAME.values()}


def _label_error(rec: dict, where: str) -> FrameError:
    if _BN in rec:
        return FrameError("bad_senml", "%s has a base name; the key id names the device" % where)
    return FrameError("bad_senml", "%s has labels not allowed here: %s"
                      % (where, sorted(set(rec) - _ALLOWED_LABELS, key=repr)))


def decode(payload: bytes, received_at: float) -> list[Record]:
    """Validate a node's SenML-CBOR payload and resolve it into records with absolute times."""
    if len(payload) > MAX_PAYLOAD:
        raise FrameError("too_large", "%d bytes (at most %d)" % (len(payload), MAX_PAYLOAD))
    try:
        data = cbor2.loads(payload)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise FrameError("bad_cbor", str(exc) or exc.__class__.__name__) from None
    if type(data) is not list or not data:
        raise FrameError("bad_senml", "payload must be a non-empty array of records")
    if len(data) > MAX_RECORDS:
        raise FrameError("bad_senml", "%d records (at most %d)" % (len(data), MAX_RECORDS))

    records = []
    base_time: int | float = 0
    index = 0
    for rec in data:
        if type(rec) is not dict:
            raise FrameError("bad_senml", "record %d is not a map" % index)
        keys = rec.keys()
        if not keys <= _ALLOWED:
            raise _label_error(rec, "record %d" % index)
        if _BT in rec:
            if index != 0:
                raise FrameError("bad_senml", "base time only in the first record")
            base_time = _number(rec[_BT], "bt")
        name = rec.get(_N)
        if type(name) is not str:
            raise FrameError("bad_senml", "record %d has no name" % index)
        spec = _BY_NAME.get(name)
        if spec is None:
            raise FrameError("unknown_name", "record %d: %r is not in the vocabulary"
                             % (index, name))
        want, kind, check = spec
        if want not in rec or len(keys & _VALUE_LABELS) != 1:
            raise FrameError("bad_value", "record %d (%s) needs exactly one %s value"
                             % (index, name, kind))
        value = rec[want]
        if not check(value):
            raise FrameError("bad_value", "record %d (%s): %r is not a %s value"
                             % (index, name, value, kind))
        t = rec.get(_T)
        t = base_time if t is None else base_time + _number(t, "t")
        if -RELATIVE_TIME_LIMIT < t < RELATIVE_TIME_LIMIT:
            t = received_at + t
        if not 0 <= t < LATEST_TIME:     # also NaN; JSON and SensorThings could not show it
            raise FrameError("bad_time", "record %d: time %r is not between 1970 and 2100"
                             % (index, t))
        records.append(Record(name, value, float(t)))
        index += 1
    return records


def _json_prefixes() -> dict[str, tuple[str, str, int]]:
    out = {}
    for q in BY_NAME.values():
        head = '"n":%s,' % json.dumps(q.name)
        if q.unit:
            head += '"u":%s,' % json.dumps(q.unit)
        out[q.name] = (head + '"%s":' % q.kind, q.kind, q.scale)
    return out


_JSON = _json_prefixes()


def _json_value(value, kind: str, scale: int) -> str:
    if kind == "v":
        return str(value) if scale == 1 else repr(value / scale)
    if kind == "vb":
        return "true" if value else "false"
    return json.dumps(value)


def to_json(device_id: str, records: list[Record]) -> bytes:
    """Resolved SenML JSON (RFC 8428 §5) with the device's base name on the first record."""
    parts = []
    first = True
    for r in records:
        head, kind, scale = _JSON[r.name]
        t = r.time
        ts = str(int(t)) if t == int(t) else repr(round(t, 3))
        if first:
            parts.append('{"bn":"urn:dev:id:%s:",%s%s,"t":%s}'
                         % (device_id, head, _json_value(r.value, kind, scale), ts))
            first = False
        else:
            parts.append("{%s%s,\"t\":%s}" % (head, _json_value(r.value, kind, scale), ts))
    return ("[" + ",".join(parts) + "]").encode()
