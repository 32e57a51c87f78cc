"""SenML-CBOR frames from nodes in, resolved SenML JSON out (docs/protocol.md §3, §7)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import cbor2

from gateway.errors import FrameError
from gateway.vocabulary import BY_NAME

MAX_PAYLOAD = 1024
MAX_RECORDS = 64
RELATIVE_TIME_LIMIT = 2 ** 28  # RFC 8428 §4.5.3

_BN, _BT, _N, _U, _V, _VS, _VB, _T = -2, -3, 0, 1, 2, 3, 4, 6
_VALUE_LABEL = {"v": _V, "vs": _VS, "vb": _VB}
_ALLOWED_LABELS = {_BT, _N, _V, _VS, _VB, _T}


@dataclass(frozen=True)
class Record:
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


def decode(payload: bytes, received_at: float) -> list[Record]:
    """Validate a node's SenML-CBOR payload and resolve it into records with absolute times."""
    if len(payload) > MAX_PAYLOAD:
        raise FrameError("too_large", "%d bytes (at most %d)" % (len(payload), MAX_PAYLOAD))
    try:
        data = cbor2.loads(payload)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise FrameError("bad_cbor", str(exc) or exc.__class__.__name__) from None
    if not isinstance(data, list) or not data:
        raise FrameError("bad_senml", "payload must be a non-empty array of records")
    if len(data) > MAX_RECORDS:
        raise FrameError("bad_senml", "%d records (at most %d)" % (len(data), MAX_RECORDS))

    records = []
    base_time: int | float = 0
    for index, rec in enumerate(data):
        where = "record %d" % index
        if not isinstance(rec, dict):
            raise FrameError("bad_senml", "%s is not a map" % where)
        labels = set(rec)
        if _BN in labels:
            raise FrameError("bad_senml", "%s has a base name; the key id names the device"
                             % where)
        extra = labels - _ALLOWED_LABELS
        if extra:
            raise FrameError("bad_senml", "%s has labels not allowed here: %s"
                             % (where, sorted(extra, key=repr)))
        if _BT in rec:
            if index != 0:
                raise FrameError("bad_senml", "base time only in the first record")
            base_time = _number(rec[_BT], "bt")
        name = rec.get(_N)
        if not isinstance(name, str):
            raise FrameError("bad_senml", "%s has no name" % where)
        quantity = BY_NAME.get(name)
        if quantity is None:
            raise FrameError("unknown_name", "%s: %r is not in the vocabulary" % (where, name))
        value_labels = labels & {_V, _VS, _VB}
        want = _VALUE_LABEL[quantity.kind]
        if value_labels != {want}:
            raise FrameError("bad_value", "%s (%s) needs exactly one %s value"
                             % (where, name, quantity.kind))
        value = rec[want]
        ok = {"v": _is_int, "vb": lambda x: isinstance(x, bool),
              "vs": lambda x: isinstance(x, str)}[quantity.kind](value)
        if not ok:
            raise FrameError("bad_value", "%s (%s): %r is not a %s value"
                             % (where, name, value, quantity.kind))
        t = base_time + _number(rec.get(_T, 0), "t")
        if abs(t) < RELATIVE_TIME_LIMIT:
            t = received_at + t
        records.append(Record(name, value, float(t)))
    return records


def to_json(device_id: str, records: list[Record]) -> bytes:
    """Resolved SenML JSON (RFC 8428 §5) with the device's base name on the first record."""
    out = []
    for i, r in enumerate(records):
        q = BY_NAME[r.name]
        item: dict = {"bn": "urn:dev:id:%s:" % device_id} if i == 0 else {}
        item["n"] = r.name
        if q.unit:
            item["u"] = q.unit
        item[q.kind] = r.published_value()
        item["t"] = int(r.time) if r.time == int(r.time) else round(r.time, 3)
        out.append(item)
    return json.dumps(out, separators=(",", ":")).encode()
