# ECDSA signature verification on NIST P-256 with SHA-256 (FIPS 186-5, SEC 1 §4.1.4): the node
# checks the operator's signature on a release manifest before it installs an update. Only
# verification lives here; the private key never leaves the operator, the host signs with
# `cryptography`. P-256 rather than Ed25519 because the ESP32 port's hashlib has SHA-256 (in
# hardware) but no SHA-512.
#
# Wire forms: public key = uncompressed SEC1 point 04 || X || Y (65 bytes), signature = r || s
# (64 bytes), all big-endian. verify() returns True or False and raises nothing but
# MemoryError: a key or a signature of the wrong length, a point off the curve or with a
# coordinate >= p, r or s outside [1, n-1], a digest that is not 32 bytes all give False.
#
# The arithmetic is MicroPython's big integers (mpz), so the cost is the count of
# interpreted big-integer operations: Jacobian coordinates (no inversion per point
# operation), a = -3 doubling (4M + 4S), mixed additions with affine table points (8M + 3S),
# and Shamir's trick (u1*G + u2*Q in one pass of 256 doublings and ~192 additions, with G, Q
# and G+Q as the only table). Two inversions by Fermat (3-argument pow, a loop in C):
# s^-1 mod n, and one to make G+Q affine; the last check compares r*Z^2 with X instead of
# inverting Z. About 4,100 multiplications and 3,700 reductions mod p in all; nothing is
# precomputed at import, and a verify needs ~4 KB of free heap at a time (docs/firmware.md,
# "Release signatures"). Not constant time: it handles only public data.

import hashlib

# Curve parameters (FIPS 186-5 / SP 800-186, P-256).
_P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
_GX = 0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296
_GY = 0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5

KEY_LEN = 65
SIG_LEN = 64
DIGEST_LEN = 32


def _double(x, y, z):
    # 2(X, Y, Z) with a = -3: M = 3(X - Z^2)(X + Z^2), S = 4XY^2, X3 = M^2 - 2S,
    # Y3 = M(S - X3) - 8Y^4, Z3 = 2YZ. The input is never the point at infinity here, and no
    # point of P-256 has order 2, so the result is finite.
    p = _P
    zz = z * z % p
    yy = y * y % p
    t = x * yy % p
    m = 3 * ((x - zz) * (x + zz)) % p
    x3 = (m * m - 8 * t) % p
    return x3, (m * (4 * t - x3) - 8 * (yy * yy)) % p, 2 * y * z % p


def _add(x1, y1, z1, x2, y2):
    # (X1, Y1, Z1) + affine (x2, y2), both finite: H = x2 Z1^2 - X1, R = y2 Z1^3 - Y1,
    # X3 = R^2 - H^3 - 2 X1 H^2, Y3 = R(X1 H^2 - X3) - Y1 H^3, Z3 = Z1 H. Z = 0 in the result
    # is the point at infinity (the two were opposite).
    p = _P
    zz = z1 * z1 % p
    h = x2 * zz % p - x1  # |h| < p: h == 0 exactly when the x coordinates agree
    r = y2 * (z1 * zz % p) % p - y1
    if h == 0:
        if r == 0:
            return _double(x1, y1, z1)
        return 1, 1, 0
    hh = h * h % p
    hhh = h * hh % p
    v = x1 * hh % p
    x3 = (r * r - hhh - 2 * v) % p
    return x3, (r * (v - x3) - y1 * hhh) % p, z1 * h % p


def _affine_sum(x1, y1, x2, y2):
    # P1 + P2 in affine coordinates (one inversion), or None for the point at infinity.
    p = _P
    if x1 == x2:
        if y1 != y2:
            return None
        num, den = 3 * (x1 * x1 - 1), 2 * y1
    else:
        num, den = y2 - y1, x2 - x1
    lam = num * pow(den % p, p - 2, p) % p
    x3 = (lam * lam - x1 - x2) % p
    return x3, (lam * (x1 - x3) - y1) % p


def _on_curve(x, y):
    p = _P
    return x < p and y < p and (y * y - (x * x - 3) * x - _B) % p == 0


def _verify(qx, qy, r, s, e):
    # Integers in: Q on the curve, r and s in [1, n-1], e the digest as a number.
    n = _N
    w = pow(s, n - 2, n)
    u1 = (e * w % n).to_bytes(32, "big")
    u2 = (r * w % n).to_bytes(32, "big")
    table = (None, (_GX, _GY), (qx, qy), _affine_sum(_GX, _GY, qx, qy))
    x, y, z = 1, 1, 0  # the point at infinity
    for i in range(32):
        a = u1[i]
        b = u2[i]
        for bit in range(7, -1, -1):
            if z:
                x, y, z = _double(x, y, z)
            t = table[((a >> bit) & 1) | (((b >> bit) & 1) << 1)]
            if t is not None:
                if z:
                    x, y, z = _add(x, y, z, t[0], t[1])
                else:
                    x, y, z = t[0], t[1], 1
    return z != 0 and _x_matches(r, x, z)


def _x_matches(r, x, z):
    # x(R) mod n == r for R = (X, Y, Z), without inverting Z: x(R) = X / Z^2 lies in [0, p),
    # so it is r or r + n (the latter only when r + n < p).
    p = _P
    zz = z * z % p
    if (r * zz - x) % p == 0:
        return True
    return r + _N < p and ((r + _N) * zz - x) % p == 0


def verify(public_key, message_hash, signature):
    """True if `signature` (r || s, 64 bytes) is a valid ECDSA P-256 signature of the SHA-256
    digest `message_hash` (32 bytes) under `public_key` (04 || X || Y, 65 bytes); False for
    anything else, malformed input included."""
    try:
        if (len(public_key) != KEY_LEN or public_key[0] != 4 or len(signature) != SIG_LEN
                or len(message_hash) != DIGEST_LEN):
            return False
        qx = int.from_bytes(public_key[1:33], "big")
        qy = int.from_bytes(public_key[33:], "big")
        r = int.from_bytes(signature[:32], "big")
        s = int.from_bytes(signature[32:], "big")
        if not (0 < r < _N and 0 < s < _N) or not _on_curve(qx, qy):
            return False
        return _verify(qx, qy, r, s, int.from_bytes(message_hash, "big"))
    except (TypeError, ValueError, IndexError):  # not bytes-like
        return False


def verify_message(public_key, message, signature):
    """verify() of SHA-256(message)."""
    try:
        digest = hashlib.sha256(message).digest()
    except (TypeError, ValueError):
        return False
    return verify(public_key, digest, signature)
