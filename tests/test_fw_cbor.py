"""firmware/lib/cbor.py and senml.py, run in the MicroPython VM, checked against cbor2."""

from __future__ import annotations

import math
import re
import struct
from pathlib import Path

import cbor2
from hypothesis import given
from hypothesis import strategies as st
from mpy_helpers import run_mpy, run_mpy_cases, vm_settings

# --- moving values between CPython and the VM ----------------------------------------------

# VM-side builders: MicroPython's float parser is not exact and its dict does not keep
# insertion order, so floats travel as bit patterns and maps as OrderedDicts.
VM_BUILDERS = """
import struct, cbor
from collections import OrderedDict as D
B = bytes.fromhex
def F(h):
    return struct.unpack('>d', bytes.fromhex(h))[0]
def S(h):
    return str(bytes.fromhex(h), 'utf-8')
"""

# VM-side dumper: a decoded value as JSON that CPython can rebuild exactly.
VM_DUMPER = """
def dj(v):
    if v is None or v is True or v is False:
        return v
    if isinstance(v, int):
        return {'i': str(v)}
    if isinstance(v, float):
        return {'f': struct.pack('>d', v).hex()}
    if isinstance(v, str):
        return {'s': v.encode().hex()}
    if isinstance(v, bytes):
        return {'b': v.hex()}
    if isinstance(v, list):
        return [dj(x) for x in v]
    if isinstance(v, dict):
        return {'d': [[dj(k), dj(v[k])] for k in v]}
    return {'?': repr(type(v))}
"""


def mpy_expr(v) -> str:
    """MicroPython source that rebuilds ``v`` (given VM_BUILDERS)."""
    if v is None or isinstance(v, bool) or isinstance(v, int):
        return repr(v)
    if isinstance(v, float):
        return "F('%s')" % struct.pack(">d", v).hex()
    if isinstance(v, str):
        return "S('%s')" % v.encode().hex()
    if isinstance(v, bytes):
        return "B('%s')" % v.hex()
    if isinstance(v, list):
        return "[%s]" % ", ".join(mpy_expr(x) for x in v)
    if isinstance(v, tuple):
        return "(%s)" % "".join(mpy_expr(x) + ", " for x in v)
    if isinstance(v, dict):
        return "D([%s])" % ", ".join("(%s, %s)" % (mpy_expr(k), mpy_expr(x))
                                      for k, x in v.items())
    raise TypeError(type(v))


def from_dj(j):
    if j is None or isinstance(j, bool):
        return j
    if isinstance(j, list):
        return [from_dj(x) for x in j]
    (tag, val), = j.items()
    if tag == "i":
        return int(val)
    if tag == "f":
        return struct.unpack(">d", bytes.fromhex(val))[0]
    if tag == "s":
        return bytes.fromhex(val).decode()
    if tag == "b":
        return bytes.fromhex(val)
    if tag == "d":
        return {_hashable(from_dj(k)): from_dj(x) for k, x in val}
    raise AssertionError("VM returned an unexpected type: %r" % (j,))


def _hashable(v):
    return tuple(v) if isinstance(v, list) else v


def norm(v):
    """Comparable form: type-exact (True != 1, 1.0 != 1), NaN equal to NaN, tuple == list."""
    if v is None or isinstance(v, bool):
        return ("const", v)
    if isinstance(v, int):
        return ("int", v)
    if isinstance(v, float):
        return ("float", "nan" if math.isnan(v) else struct.pack(">d", v))
    if isinstance(v, (str, bytes)):
        return (type(v).__name__, v)
    if isinstance(v, (list, tuple)):
        return ("array", tuple(norm(x) for x in v))
    if isinstance(v, dict):
        return ("map", frozenset((norm(k), norm(x)) for k, x in v.items()))
    raise TypeError(type(v))


def vm_dumps(values: list) -> list[bytes]:
    source = VM_BUILDERS + "VALUES = [\n%s]\nfor v in VALUES:\n    print(cbor.dumps(v).hex())\n" % (
        "".join("    %s,\n" % mpy_expr(v) for v in values))
    out = run_mpy(source).split()
    assert len(out) == len(values)
    return [bytes.fromhex(h) for h in out]


def vm_loads(encodings: list[bytes]) -> list:
    """Decode each encoding in the VM: ('ok', value) or ('error', exception type name)."""
    source = VM_BUILDERS + VM_DUMPER + """
for h in CASES:
    try:
        v = cbor.loads(bytes.fromhex(h))
    except Exception as e:
        emit(['error', type(e).__name__, str(e)])
    else:
        emit(['ok', dj(v)])
"""
    results = run_mpy_cases(source, [e.hex() for e in encodings])
    assert len(results) == len(encodings)
    return [("ok", from_dj(r[1])) if r[0] == "ok" else ("error", r[1]) for r in results]


# --- value generators -------------------------------------------------------------------------

INT64 = st.integers(min_value=-2**64, max_value=2**64 - 1)
TEXT = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=30)
SCALARS = (st.none() | st.booleans() | INT64 | st.floats() | TEXT | st.binary(max_size=40))
KEYS = INT64 | TEXT | st.binary(max_size=8)


def depth(v) -> int:
    if isinstance(v, (list, tuple)):
        return 1 + max((depth(x) for x in v), default=0)
    if isinstance(v, dict):
        return 1 + max((depth(x) for x in v.values()), default=0)
    return 0


VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=6) | st.tuples(inner, inner)
    | st.dictionaries(KEYS, inner, max_size=6),
    max_leaves=25,
).filter(lambda v: depth(v) <= 16)

EDGE_INTS = [0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1, 2**63,
             2**64 - 1, -1, -24, -25, -256, -257, -65536, -65537, -2**32, -2**32 - 1,
             -2**63, -2**64]

FIXED_VALUES = EDGE_INTS + [
    True, False, None, b"", b"\x00" * 23, b"\x01" * 24, b"\xff" * 300, "", "a" * 23,
    "ä€𝄞", "x" * 256, [], [[]], [1, [2, [3, [4]]]], (1, "two", b"3"), {}, {1: 2},
    {"b": 1, "a": 2, 10: [None]}, {-3: 1795000000, 0: "level", 2: 1234},
    0.0, -0.0, 1.5, -2.25, 1.1, 1e300, 5e-324, 65504.0, float("inf"), float("-inf"),
    float("nan"), [1.0, {"k": -0.5}],
    list(range(30)),  # array head with a one-byte length
]


# --- CBOR: encoding ---------------------------------------------------------------------------

def test_encoding_matches_cbor2_for_fixed_values():
    assert vm_dumps(FIXED_VALUES) == [cbor2.dumps(v) for v in FIXED_VALUES]


@vm_settings(12)
@given(st.lists(VALUES, min_size=1, max_size=60))
def test_encoding_matches_cbor2_for_generated_values(values):
    assert vm_dumps(values) == [cbor2.dumps(v) for v in values]


def test_encoding_refuses_what_it_cannot_write_exactly():
    out = run_mpy(VM_BUILDERS + """
def nested(levels):
    v = 1
    for _ in range(levels):
        v = [v]
    return v
for v in (2**64, -2**64 - 1, 1j, {1, 2}, nested(17)):
    try:
        cbor.dumps(v)
        print('encoded')
    except (ValueError, TypeError) as e:
        print(type(e).__name__)
print(cbor.dumps(nested(16)).hex())
""").split()
    assert out[:5] == ["ValueError", "ValueError", "TypeError", "TypeError", "ValueError"]
    sixteen = 1
    for _ in range(16):
        sixteen = [sixteen]
    assert bytes.fromhex(out[5]) == cbor2.dumps(sixteen)


def test_plain_dict_is_encoded_in_its_iteration_order():
    # MicroPython's dict order is not insertion order: the map holds the same pairs,
    # in the order the VM iterates them (documented in cbor.py).
    out = run_mpy(VM_BUILDERS + """
d = {}
for k in ('zeta', 'a', 'm', 5, -7, 'b', 100, 3):
    d[k] = k
print(cbor.dumps(d).hex())
print(cbor.dumps(list(d)).hex())
""").split()
    decoded = cbor2.loads(bytes.fromhex(out[0]))
    assert decoded == {k: k for k in ("zeta", "a", "m", 5, -7, "b", 100, 3)}
    assert list(decoded) == cbor2.loads(bytes.fromhex(out[1]))


# --- CBOR: decoding ---------------------------------------------------------------------------

def test_decoding_fixed_values_from_cbor2():
    encodings = [cbor2.dumps(v) for v in FIXED_VALUES]
    for value, (status, got) in zip(FIXED_VALUES, vm_loads(encodings)):
        assert status == "ok", (value, got)
        assert norm(got) == norm(value)


def test_decoding_half_and_single_precision_floats():
    floats = [0.0, -0.0, 1.0, 1.5, -2.0, 65504.0, 5.960464477539063e-08, 6.103515625e-05,
              0.333251953125, 1e-7, 3.4028234663852886e38, 1.0e10, 1.1,
              float("inf"), float("-inf"), float("nan")]
    encodings = [cbor2.dumps(f, canonical=True) for f in floats]
    heads = {e[0] for e in encodings}
    assert heads == {0xF9, 0xFA, 0xFB}  # all three widths are exercised
    for value, (status, got) in zip(floats, vm_loads(encodings)):
        assert status == "ok"
        assert norm(got) == norm(value)


@vm_settings(12)
@given(st.lists(VALUES, min_size=1, max_size=60), st.booleans())
def test_decoding_generated_values_from_cbor2(values, canonical):
    encodings = [cbor2.dumps(v, canonical=canonical) for v in values]
    for value, (status, got) in zip(values, vm_loads(encodings)):
        assert status == "ok", (value, got)
        assert norm(got) == norm(value)


def test_tags_are_dropped():
    tagged = [cbor2.CBORTag(1, 1363896240), cbor2.CBORTag(32, "http://x/y"),
              cbor2.CBORTag(2, b"\x01\x00"),  # no bignums: the bytes stay
              cbor2.CBORTag(55799, [cbor2.CBORTag(1000, {1: 2})])]
    results = vm_loads([cbor2.dumps(t) for t in tagged])
    assert [(s, norm(v)) for s, v in results] == [
        ("ok", norm(1363896240)), ("ok", norm("http://x/y")), ("ok", norm(b"\x01\x00")),
        ("ok", norm([{1: 2}]))]


MALFORMED = [
    "",  # nothing
    "18", "19 01", "1a 0000 00", "1b 00000000 000000",  # truncated integer arguments
    "38",  # truncated negative
    "42 01", "5a ffffffff 00", "63 6162",  # truncated strings
    "82 01", "a1 01", "9b 00000001 00000000 00",  # truncated containers
    "c1",  # tag without content
    "f9 00", "fa 0000 00", "fb 00000000 000000",  # truncated floats
    "1c", "1d", "1e", "3c", "5d", "7e", "9c", "bd", "de", "fc", "fd", "fe",  # ai 28-30
    "1c" + "00" * 16, "3d" + "00" * 32, "fe" + "00" * 64,  # ... even with bytes after them
    "5f 41 00 ff", "7f 61 61 ff", "9f 01 ff", "bf 01 02 ff", "ff", "1f", "3f", "df 00",
    "f8 14", "f8 ff", "e0", "f3", "f7",  # simple values other than false/true/null
    "01 00", "80 80", "a0 a0", "f6 f6",  # trailing bytes
    "62 c3 28", "61 ff", "62 c0 80", "63 e0 80 80", "64 f0 80 80 80",  # invalid, overlong
    "63 ed a0 80", "64 f4 90 80 80", "64 f5 80 80 80",  # surrogate, beyond U+10FFFF
    "a1 80 01", "a1 a0 01",  # unhashable keys
    "81" * 17 + "01", "a1 01" * 17 + "01", "c1" * 17 + "01",  # nested deeper than 16
    "81" * 5000,  # would overflow the C stack without the depth limit
]


def test_malformed_input_raises_value_error_only():
    results = vm_loads([bytes.fromhex(h.replace(" ", "")) for h in MALFORMED])
    bad = [(h, r) for h, r in zip(MALFORMED, results) if r != ("error", "ValueError")]
    assert bad == []


def test_nesting_limit_is_sixteen_containers():
    ok = [bytes.fromhex("81" * 16 + "01"), bytes.fromhex("c1" * 16 + "01"),
          bytes.fromhex("81" * 15 + "a1" + "01" + "02")]
    results = vm_loads(ok)
    assert [r[0] for r in results] == ["ok", "ok", "ok"]


def test_accepts_bytearray_and_memoryview():
    out = run_mpy(VM_BUILDERS + """
data = bytes.fromhex('83016162a10203')
print(cbor.loads(bytearray(data)) == cbor.loads(data))
print(cbor.loads(memoryview(data)[0:7]) == [1, 'b', {2: 3}])
print(cbor.loads(memoryview(b'\\x00' + data)[1:]) == [1, 'b', {2: 3}])
""").split()
    assert out == ["True", "True", "True"]


@vm_settings(10)
@given(st.lists(st.binary(min_size=1, max_size=24), min_size=20, max_size=80),
       st.lists(VALUES, min_size=1, max_size=10))
def test_fuzz_never_raises_anything_but_value_error(garbage, values):
    cases = list(garbage)
    for v in values:  # every proper prefix of a valid encoding is truncated
        enc = cbor2.dumps(v)
        step = max(1, len(enc) // 24)  # a sample of cuts keeps long values in the VM heap
        cases.extend(enc[:i] for i in range(0, len(enc), step))
    results = vm_loads(cases)
    for data, (status, got) in zip(cases, results):
        if status == "error":
            assert got == "ValueError", data.hex()
        elif not any(0xC0 <= b <= 0xDB for b in data):  # no tag (cbor2 interprets tags)
            # What the VM accepts, cbor2 must decode to the same value.
            assert norm(got) == norm(cbor2.loads(data)), data.hex()


# --- SenML ---------------------------------------------------------------------------------

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
WATER_LEVEL = [{0: "level", 2: 1234}, {0: "temp", 2: 1150}, {0: "batt", 2: 3012}]


def test_senml_water_level_example_of_protocol_doc():
    out = run_mpy("""
import senml
print(senml.encode([('level', 1234), ('temp', 1150), ('batt', 3012)]).hex())
print(senml.encode([('level', 1234)], bt=1795000000).hex())
""")
    payload, with_bt = [bytes.fromhex(line) for line in out.split()]
    decoded = cbor2.loads(payload)
    assert decoded == WATER_LEVEL
    assert [list(rec) for rec in decoded] == [[0, 2], [0, 2], [0, 2]]
    assert payload == cbor2.dumps(WATER_LEVEL)
    assert len(payload) == 35
    assert [list(rec) for rec in cbor2.loads(with_bt)] == [[-3, 0, 2]]
    # The document states the same size.
    assert re.search(r"\b%d bytes of CBOR" % len(payload), DOC.read_text())


def test_senml_value_kinds_time_and_key_order():
    out = run_mpy("""
import senml
print(senml.encode([('alarm', True, -300), ('fw', '1.29.0'), ('occ', False, None),
                    ('temp', -1250, 60), ('mag', 2**40)]).hex())
print(senml.encode([('level', 1)], bt=-300).hex())
print(senml.encode([]).hex())
""").split()
    decoded = cbor2.loads(bytes.fromhex(out[0]))
    assert decoded == [{0: "alarm", 4: True, 6: -300}, {0: "fw", 3: "1.29.0"},
                       {0: "occ", 4: False}, {0: "temp", 2: -1250, 6: 60},
                       {0: "mag", 2: 2**40}]
    assert [list(r) for r in decoded] == [[0, 4, 6], [0, 3], [0, 4], [0, 2, 6], [0, 2]]
    assert cbor2.loads(bytes.fromhex(out[1])) == [{-3: -300, 0: "level", 2: 1}]
    assert out[2] == "80"


def test_senml_refuses_floats_and_other_values():
    out = run_mpy("""
import senml
for value in (11.5, None, b'raw', [1]):
    try:
        senml.encode([('temp', value)])
        print('encoded')
    except TypeError:
        print('TypeError')
""").split()
    assert out == ["TypeError"] * 4


def test_senml_decode_round_trip_and_rejections():
    results = run_mpy_cases("""
import senml
for h in CASES:
    try:
        emit(['ok', senml.decode(bytes.fromhex(h))])
    except ValueError as e:
        emit(['ValueError', str(e)])
""", [cbor2.dumps(WATER_LEVEL).hex(),
      cbor2.dumps([{0: "alarm", 4: True, 6: -5}, {0: "fw", 3: "x"}]).hex(),
      cbor2.dumps({0: "level"}).hex(),  # not an array
      cbor2.dumps([[0, "level"]]).hex(),  # record not a map
      cbor2.dumps([{-2: "urn:dev:", 0: "level", 2: 1}]).hex(),  # base name refused
      cbor2.dumps([{0: "level", 1: "mm", 2: 1}]).hex(),  # unit refused
      cbor2.dumps([{False: "level", 2: 1}]).hex(),  # false is not label 0
      "83"])  # malformed CBOR
    assert results[0] == ["ok", [{"n": "level", "v": 1234},
                                 {"n": "temp", "v": 1150}, {"n": "batt", "v": 3012}]]
    assert results[1] == ["ok", [{"n": "alarm", "vb": True, "t": -5}, {"n": "fw", "vs": "x"}]]
    assert [r[0] for r in results[2:]] == ["ValueError"] * 6
