"""firmware/lib/ecdsa.py (release signatures, ECDSA P-256 / SHA-256) in the MicroPython VM and
under CPython, checked against `cryptography` as the reference verifier."""

from __future__ import annotations

import hashlib
import importlib.util
import random

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    decode_dss_signature,
    encode_dss_signature,
)
from hypothesis import given
from hypothesis import strategies as st
from mpy_helpers import LIB, run_mpy, run_mpy_cases, vm_settings

P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
PREHASHED = ec.ECDSA(Prehashed(hashes.SHA256()))


def load_cpython_module():
    """The firmware module itself, imported by CPython (no copy, no MicroPython shims)."""
    spec = importlib.util.spec_from_file_location("fw_ecdsa", LIB / "ecdsa.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FW = load_cpython_module()


# --- keys, signatures and the reference verdict ----------------------------------------------

def key(d: int | None = None) -> ec.EllipticCurvePrivateKey:
    if d is None:
        return ec.generate_private_key(ec.SECP256R1())
    return ec.derive_private_key(d, ec.SECP256R1())


def pub_bytes(k: ec.EllipticCurvePrivateKey) -> bytes:
    return k.public_key().public_bytes(serialization.Encoding.X962,
                                       serialization.PublicFormat.UncompressedPoint)


def raw(r: int, s: int) -> bytes:
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def sign_digest(k: ec.EllipticCurvePrivateKey, digest: bytes) -> bytes:
    """What the host does: sign with cryptography, send DER's (r, s) as raw r || s."""
    return raw(*decode_dss_signature(k.sign(digest, PREHASHED)))


def reference(pub: bytes, digest: bytes, sig: bytes) -> bool:
    """cryptography's verdict on the wire forms: the key must be the 65-byte uncompressed
    point (the wire format; cryptography itself would also take a compressed one)."""
    if len(pub) != 65 or pub[0] != 4 or len(sig) != 64 or len(digest) != 32:
        return False
    try:
        public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), pub)
    except ValueError:  # not a point of the curve
        return False
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    try:
        public.verify(der, digest, PREHASHED)
    except InvalidSignature:
        return False
    return True


VERIFY_CASES = """
import ecdsa
for pub, digest, sig in CASES:
    emit(ecdsa.verify(bytes.fromhex(pub), bytes.fromhex(digest), bytes.fromhex(sig)))
"""


def check(cases: list[tuple[bytes, bytes, bytes]]) -> list[bool]:
    """Verify each case in the VM and under CPython; both must agree with cryptography.
    Returns the verdicts."""
    expected = [reference(*c) for c in cases]
    in_vm = run_mpy_cases(VERIFY_CASES, [[x.hex() for x in c] for c in cases])
    in_cpython = [FW.verify(*c) for c in cases]
    for case, want, vm, cp in zip(cases, expected, in_vm, in_cpython):
        assert (vm, cp) == (want, want), [x.hex() for x in case]
    return expected


# --- valid signatures ------------------------------------------------------------------------

def test_signatures_by_cryptography_verify():
    rng = random.Random(8613)
    cases = []
    for _ in range(40):
        k = key()
        for length in (0, rng.randrange(1, 300), 4096):
            digest = hashlib.sha256(rng.randbytes(length)).digest()
            cases.append((pub_bytes(k), digest, sign_digest(k, digest)))
    assert check(cases) == [True] * len(cases)


def test_verify_message_hashes_with_sha256():
    k = key()
    manifest = b'{"release": "1.4.0", "sha256": "' + b"ab" * 32 + b'"}' * 60
    der = k.sign(manifest, ec.ECDSA(hashes.SHA256()))
    sig = raw(*decode_dss_signature(der))
    out = run_mpy("""
import ecdsa
pub, msg, sig = %r, %r, %r
print(ecdsa.verify_message(pub, msg, sig), ecdsa.verify_message(pub, msg + b' ', sig),
      ecdsa.verify_message(bytearray(pub), memoryview(msg), bytearray(sig)),
      ecdsa.verify_message(pub, None, sig))
""" % (pub_bytes(k), manifest, sig))
    assert out.split() == ["True", "False", "True", "False"]
    assert FW.verify_message(pub_bytes(k), manifest, sig)
    assert not FW.verify_message(pub_bytes(k), manifest[:-1], sig)


def test_edge_keys_and_digests():
    """Keys 1 and n-1 (Q = G and Q = -G: the G+Q table entry is a doubling, then the point
    at infinity), a small key, digests that are 0, n and 2^256-1 as numbers (u1 = 0, e >= n),
    and (r, n - s), which ECDSA accepts as well (signatures are malleable; cryptography
    agrees)."""
    cases = []
    for d in (1, 2, N - 1, N - 2, 0xC0FFEE):
        k = key(d)
        for digest in (bytes(32), N.to_bytes(32, "big"), b"\xff" * 32,
                       hashlib.sha256(b"%d" % d).digest()):
            sig = sign_digest(k, digest)
            r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
            cases.append((pub_bytes(k), digest, sig))
            cases.append((pub_bytes(k), digest, raw(r, N - s)))
    assert check(cases) == [True] * len(cases)


# --- what must not verify --------------------------------------------------------------------

def failure_cases() -> dict[str, tuple[bytes, bytes, bytes]]:
    k, other = key(), key()
    pub = pub_bytes(k)
    digest = hashlib.sha256(b"release 1.4.0").digest()
    sig = sign_digest(k, digest)
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    x, y = int.from_bytes(pub[1:33], "big"), int.from_bytes(pub[33:], "big")
    point = b"\x04" + x.to_bytes(32, "big")
    compressed = k.public_key().public_bytes(serialization.Encoding.X962,
                                             serialization.PublicFormat.CompressedPoint)
    return {
        "another message": (pub, hashlib.sha256(b"release 1.4.1").digest(), sig),
        "another key": (pub_bytes(other), digest, sig),
        "signed by another key": (pub, digest, sign_digest(other, digest)),
        "key 64 bytes": (pub[:64], digest, sig),
        "key 66 bytes": (pub + b"\x00", digest, sig),
        "key empty": (b"", digest, sig),
        "key compressed": (compressed, digest, sig),
        "key prefix 06 (hybrid)": (b"\x06" + pub[1:], digest, sig),
        "point not on the curve": (point + ((y + 1) % P).to_bytes(32, "big"), digest, sig),
        "y negated is fine, but not this key": (point + (P - y).to_bytes(32, "big"), digest, sig),
        "x = p": (b"\x04" + P.to_bytes(32, "big") + pub[33:], digest, sig),
        "y + p (not reduced)": (point + (y + P).to_bytes(32, "big"), digest, sig)
        if y + P < 2**256 else (point + b"\xff" * 32, digest, sig),
        "point at infinity (SEC1 00)": (b"\x00", digest, sig),
        "point at infinity as 04 || 0": (b"\x04" + bytes(64), digest, sig),
        "signature 63 bytes": (pub, digest, sig[:63]),
        "signature 65 bytes": (pub, digest, sig + b"\x00"),
        "signature DER": (pub, digest, encode_dss_signature(r, s)),
        "r = 0": (pub, digest, raw(0, s)),
        "s = 0": (pub, digest, raw(r, 0)),
        "r = n": (pub, digest, raw(N, s)),
        "s = n": (pub, digest, raw(r, N)),
        "r + n": (pub, digest, raw(r + N, s)) if r + N < 2**256 else (pub, digest, raw(N + 1, s)),
        "s + n": (pub, digest, raw(r, s + N)) if s + N < 2**256 else (pub, digest, raw(r, N + 1)),
        "r = 2^256 - 1": (pub, digest, raw(2**256 - 1, s)),
        "r and s swapped": (pub, digest, raw(s, r)),
        "digest 31 bytes": (pub, digest[:31], sig),
        "digest 33 bytes": (pub, digest + b"\x00", sig),
        "digest of the digest": (pub, hashlib.sha256(digest).digest(), sig),
    }


def test_failure_cases_do_not_verify():
    cases = failure_cases()
    verdicts = check(list(cases.values()))
    assert dict(zip(cases, verdicts)) == dict.fromkeys(cases, False)


# Points of P-256 with a small coordinate, found offline by solving the curve equation for
# x = 5 and for y = 1 (checked below): their coordinates plus p still fit in 32 bytes.
SMALL_X = (5, 0x459243B9AA581806FE913BCE99817ADE11CA503C64D9A3C533415C083248FBCC)
SMALL_Y = (0x8D0177EBAB9C6E9E10DB6DD095DBAC0D6375E8A97B70F611875D877F0069D2C7, 1)


def point(x: int, y: int) -> bytes:
    return b"\x04" + x.to_bytes(32, "big") + y.to_bytes(32, "big")


def crafted_small_s(digest: bytes, s: int = 5) -> tuple[bytes, bytes]:
    """A key and a valid signature (r, s) with a small s, so that s + n still fits in 32
    bytes: pick the nonce k, then solve s = (e + r d) / k for the private key d."""
    rng = random.Random(6090)
    e = int.from_bytes(digest, "big") % N
    k = rng.randrange(1, N)
    r = key(k).public_key().public_numbers().x % N
    d = (s * k - e) * pow(r, -1, N) % N
    return pub_bytes(key(d)), raw(r, s)


def test_checks_that_a_forger_could_use():
    """Cases that verify if a check is missing, not merely fail by chance. A digest that is
    0 as a number makes u1 = 0 and, with s = r, u2 = 1: R = Q, so (x(Q), x(Q)) "signs" it
    for any Q - valid ECDSA (cryptography agrees; SHA-256 gives no such digest), and the way
    to show that the key checks hold: a point off the curve, or coordinates not reduced
    mod p, would pass. s + n computes like s, so only the range check refuses it; a digest
    with a zero byte more (or less) is the same number. The digest -r*d makes R the point
    at infinity."""
    for x, y in (SMALL_X, SMALL_Y):
        assert (y * y - x ** 3 + 3 * x - FW._B) % P == 0
    zero = bytes(32)
    k = key()
    qx, qy = k.public_key().public_numbers().x, k.public_key().public_numbers().y
    assert qx < N
    digest = hashlib.sha256(b"release 1.4.0").digest()
    small_s_pub, small_s_sig = crafted_small_s(digest)
    r, s = int.from_bytes(small_s_sig[:32], "big"), int.from_bytes(small_s_sig[32:], "big")
    short = next(h for h in (hashlib.sha256(b"%d" % i).digest() for i in range(10000))
                 if h[0] == 0)
    short_key = key()
    short_pub, short_sig = pub_bytes(short_key), sign_digest(short_key, short)
    d = 0xC0FFEE
    cases = {
        "zero digest, (x(Q), x(Q))": (point(qx, qy), zero, raw(qx, qx), True),
        "x = 5": (point(*SMALL_X), zero, raw(5, 5), True),
        "y = 1": (point(*SMALL_Y), zero, raw(SMALL_Y[0], SMALL_Y[0]), True),
        "off the curve": (point(qx, (qy + 1) % P), zero, raw(qx, qx), False),
        "x + p": (point(5 + P, SMALL_X[1]), zero, raw(5, 5), False),
        "y + p": (point(SMALL_Y[0], 1 + P), zero, raw(SMALL_Y[0], SMALL_Y[0]), False),
        "small s": (small_s_pub, digest, small_s_sig, True),
        "small s + n": (small_s_pub, digest, raw(r, s + N), False),
        "digest with a leading zero byte": (small_s_pub, b"\x00" + digest, small_s_sig, False),
        "31-byte digest of the same number": (short_pub, short[1:], short_sig, False),
        "the same, 32 bytes": (short_pub, short, short_sig, True),
        "R at infinity": (pub_bytes(key(d)), (-r * d % N).to_bytes(32, "big"), raw(r, s), False),
    }
    verdicts = check([c[:3] for c in cases.values()])
    assert dict(zip(cases, verdicts)) == {name: c[3] for name, c in cases.items()}


def test_x_coordinate_check_without_inversion():
    """x(R) mod n == r from Jacobian (X, Y, Z): x(R) may be r or r + n, the latter only
    below p (for a real signature that happens with probability ~2^-128)."""
    rng = random.Random(186)
    z = rng.randrange(2, P)
    zz = z * z % P

    def x_of(affine):
        return affine * zz % P

    small, large = 12345, P - N + 7  # r + n < p for the first, >= p for the second
    cases = [(small, x_of(small), True), (small, x_of(small + N), True),
             (small, x_of(small + 1), False), (large, x_of(large), True),
             (large, x_of(large + N - P), False)]
    assert [FW._x_matches(r, x, z) for r, x, _ in cases] == [c[2] for c in cases]
    out = run_mpy("import ecdsa\nprint([ecdsa._x_matches(r, x, %d) for r, x in %r])"
                  % (z, [(r, x) for r, x, _ in cases]))
    assert out.strip() == repr([c[2] for c in cases])


def test_not_bytes_is_false_not_an_exception():
    k = key()
    pub, digest = pub_bytes(k), bytes(32)
    sig = sign_digest(k, digest)
    out = run_mpy("""
import ecdsa
pub, digest, sig = %r, %r, %r
for args in ((None, digest, sig), (pub, None, sig), (pub, digest, None), (pub.hex(), digest, sig),
             (pub, digest.hex(), sig), (pub, digest, sig.hex()), (4, digest, sig)):
    print(ecdsa.verify(*args))
print(ecdsa.verify(pub, digest, sig))
""" % (pub, digest, sig)).split()
    assert out == ["False"] * 7 + ["True"]
    assert FW.verify(None, digest, sig) is False
    assert FW.verify(pub.hex(), digest, sig) is False


def test_point_arithmetic_branches():
    """The branches real signatures reach only by chance: adding a point to itself (a
    doubling) and to its negation (infinity), in Jacobian and affine form."""
    g2 = key(2).public_key().public_numbers()
    out = run_mpy("""
import ecdsa
gx, gy, p = ecdsa._GX, ecdsa._GY, ecdsa._P
print(ecdsa._add(gx, gy, 1, gx, gy) == ecdsa._double(gx, gy, 1))
x, y, z = ecdsa._double(gx, gy, 1)
zz = z * z % p
print(x * pow(zz, p - 2, p) % p, y * pow(zz * z % p, p - 2, p) % p)
print(ecdsa._add(gx, gy, 1, gx, p - gy)[2])
print(ecdsa._affine_sum(gx, gy, gx, p - gy))
print(ecdsa._affine_sum(gx, gy, gx, gy))
""").splitlines()
    assert out == ["True", "%d %d" % (g2.x, g2.y), "0", "None", "(%d, %d)" % (g2.x, g2.y)]
    gx, gy = FW._GX, FW._GY
    assert FW._add(gx, gy, 1, gx, P - gy)[2] == 0
    assert FW._affine_sum(gx, gy, gx, gy) == (g2.x, g2.y)


def test_verify_fits_in_a_small_heap():
    """A verify needs a few KB of free heap at a time (measured ~4 KB on the 64-bit VM, see
    docs/firmware.md): it must succeed with 16 KB free, the rest of the heap filled."""
    k = key()
    digest = hashlib.sha256(b"manifest").digest()
    out = run_mpy("""
import gc, ecdsa
pub, digest, sig = %r, %r, %r
gc.collect()
ballast = [None] * 8000
i = 0
while gc.mem_free() > 16384 + 4096:
    ballast[i] = bytearray(1024)
    i += 1
while gc.mem_free() > 16384:
    ballast[i] = bytearray(8)
    i += 1
print(ecdsa.verify(pub, digest, sig))
""" % (pub_bytes(k), digest, sign_digest(k, digest)))
    assert out.split() == ["True"]


# --- random tampering ------------------------------------------------------------------------

TAMPER = st.tuples(
    st.integers(1, N - 1),  # private key
    st.binary(max_size=64),  # message
    st.sampled_from(["key", "digest", "sig"]),
    st.integers(0, 65 * 8 - 1),  # bit to flip (taken modulo the field's length)
)


@vm_settings(10)
@given(st.lists(TAMPER, min_size=1, max_size=6))
def test_tampering_never_verifies(cases):
    batch = []
    for d, message, field, bit in cases:
        k = key(d)
        digest = hashlib.sha256(message).digest()
        parts = {"key": bytearray(pub_bytes(k)), "digest": bytearray(digest),
                 "sig": bytearray(sign_digest(k, digest))}
        batch.append(tuple(bytes(parts[f]) for f in ("key", "digest", "sig")))
        target = parts[field]
        bit %= len(target) * 8
        target[bit // 8] ^= 0x80 >> (bit % 8)
        batch.append(tuple(bytes(parts[f]) for f in ("key", "digest", "sig")))
    assert check(batch) == [True, False] * len(cases)
