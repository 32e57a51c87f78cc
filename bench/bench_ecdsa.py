"""Release signatures: one ECDSA P-256 verify of firmware/lib/ecdsa.py in the MicroPython VM.

Each figure is printed against a baseline measured in the same run:
- time: the median of 9 verifies in the VM (heap as on a board, 2 x 110 KB) against one SHA-256
  of a 4 KB manifest in the same VM (C code; what verify_message hashes first), and against
  `cryptography`'s verify of the same signature on this host (OpenSSL);
- heap: the free heap a verify needs (the rest of the VM heap filled with ballast, bisected to
  64 bytes) and the bytes it allocates in all (garbage the collector has to take back), against
  the heap the VM leaves the firmware after the shims;
- work: big-integer multiplications and squarings of one verify, counted on CPython with an
  instrumented int, against the textbook count for Shamir's trick with the table G, Q, G+Q:
  256 doublings at 8 and 3/4 x 256 mixed additions at 11.
docs/firmware.md ("Release signatures") turns the count into an ESP32 estimate.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections import Counter

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from bench.bench_firmware import available_heap
from bench.common import Result, rate
from boards.nodeapp import FIRMWARE
from vboard.vm import run_source

LIB = FIRMWARE / "lib"
MANIFEST = b"".join(b'{"file": "app/part%03d.mpy", "sha256": "%s"}\n'
                    % (i, hashlib.sha256(b"%d" % i).hexdigest().encode()) for i in range(48))[:4096]
TEXTBOOK_MULS = 256 * 8 + 256 * 3 // 4 * 11

VM_TIMING = """
import gc, hashlib, time, ecdsa
pub, manifest, sig = %r, %r, %r
digest = hashlib.sha256(manifest).digest()

def per_call_us(fn, reps):
    t0 = time.ticks_us()
    for _ in range(reps):
        fn()
    return time.ticks_diff(time.ticks_us(), t0) / reps

def median(xs):
    return sorted(xs)[len(xs) // 2]

def needs_free(target):
    gc.collect()
    ballast = [None] * 8000
    i = 0
    while gc.mem_free() > target + 4096:
        ballast[i] = bytearray(1024)
        i += 1
    while gc.mem_free() > target:
        ballast[i] = bytearray(8)
        i += 1
    try:
        ok = ecdsa.verify(pub, digest, sig)
    except MemoryError:
        ok = False
    ballast = None
    gc.collect()
    return ok

assert ecdsa.verify(pub, digest, sig)
verify_us = median([per_call_us(lambda: ecdsa.verify(pub, digest, sig), 1) for _ in range(9)])
sha_us = median([per_call_us(lambda: hashlib.sha256(manifest).digest(), 50) for _ in range(9)])
lo, hi = 0, 65536
while hi - lo > 64:
    mid = (lo + hi) // 2
    if needs_free(mid):
        hi = mid
    else:
        lo = mid
print(verify_us, sha_us, hi)
"""

VM_GARBAGE = """
import gc, hashlib, ecdsa
pub, manifest, sig = %r, %r, %r
digest = hashlib.sha256(manifest).digest()
ecdsa.verify(pub, digest, sig)
gc.collect()
before = gc.mem_alloc()
gc.disable()
ecdsa.verify(pub, digest, sig)
print(gc.mem_alloc() - before)
"""


def signed_manifest() -> tuple[ec.EllipticCurvePrivateKey, bytes, bytes]:
    """A fresh key, its uncompressed public point and the raw r || s of MANIFEST."""
    key = ec.generate_private_key(ec.SECP256R1())
    r, s = decode_dss_signature(key.sign(MANIFEST, ec.ECDSA(hashes.SHA256())))
    pub = key.public_key().public_bytes(serialization.Encoding.X962,
                                        serialization.PublicFormat.UncompressedPoint)
    return key, pub, r.to_bytes(32, "big") + s.to_bytes(32, "big")


def vm(source: str, heap_flag: str | None = None) -> list[float]:
    kwargs = {"heap_flag": heap_flag} if heap_flag else {}
    proc = run_source(source, [LIB], timeout=120, **kwargs)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.decode("utf-8", "replace"))
    return [float(x) for x in proc.stdout.split()]


def count_field_ops(pub: bytes, sig: bytes) -> Counter:
    """Big-integer operations of one verify of MANIFEST's signature, on CPython: the module's
    curve constants become counting ints, so every operation on field elements is seen."""
    spec = importlib.util.spec_from_file_location("ecdsa_counted", LIB / "ecdsa.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    counts: Counter = Counter()
    big = 1 << 64

    class Counted(int):
        def _op(self, other, kind, result):
            a, b = int(self), int(other)
            if kind == "mul" and abs(a) >= big and abs(b) >= big:
                kind = "sqr" if a == b else "mul"
            elif kind in ("mul", "add") and (abs(a) < big or abs(b) < big):
                kind += " by a small int"
            counts[kind] += 1
            return Counted(result)

        def __mul__(self, o):
            return self._op(o, "mul", int(self) * int(o))

        def __rmul__(self, o):
            return self._op(o, "mul", int(o) * int(self))

        def __add__(self, o):
            return self._op(o, "add", int(self) + int(o))

        def __radd__(self, o):
            return self._op(o, "add", int(o) + int(self))

        def __sub__(self, o):
            return self._op(o, "add", int(self) - int(o))

        def __rsub__(self, o):
            return self._op(o, "add", int(o) - int(self))

        def __mod__(self, o):
            return self._op(o, "mod", int(self) % int(o))

        def __neg__(self):
            return Counted(-int(self))

        def __pow__(self, e, m=None):
            counts["inversion (pow)"] += 1
            return Counted(pow(int(self), int(e), int(m)))

    for name in ("_P", "_N", "_B", "_GX", "_GY"):
        setattr(module, name, Counted(getattr(module, name)))
    digest = hashlib.sha256(MANIFEST).digest()
    args = [Counted(int.from_bytes(b, "big"))
            for b in (pub[1:33], pub[33:], sig[:32], sig[32:], digest)]
    assert module._verify(*args)
    return counts


def run() -> list[Result]:
    key, pub, sig = signed_manifest()
    verify_us, sha_us, peak = vm(VM_TIMING % (pub, MANIFEST, sig))
    garbage = vm(VM_GARBAGE % (pub, MANIFEST, sig), heap_flag="heapsize=8M")[0]
    public, der = key.public_key(), key.sign(MANIFEST, ec.ECDSA(hashes.SHA256()))
    host_us = 1e6 / rate(lambda: public.verify(der, MANIFEST, ec.ECDSA(hashes.SHA256())))
    heap = available_heap()
    ops = count_field_ops(pub, sig)
    return [
        Result("verify in the VM (median of 9)", verify_us, "us",
               "SHA-256 of 4 KB in the VM", sha_us, higher_is_better=False),
        Result("verify in the VM (median of 9)", verify_us, "us",
               "cryptography verify, host", host_us, higher_is_better=False),
        Result("free heap a verify needs (VM)", peak, "bytes",
               "firmware heap after the shims", heap, higher_is_better=False),
        Result("bytes allocated by one verify (VM)", garbage, "bytes",
               "firmware heap after the shims", heap, higher_is_better=False),
        Result("mul + sqr per verify (%d mod, %d inv)" % (ops["mod"], ops["inversion (pow)"]),
               ops["mul"] + ops["sqr"], "ops", "256 x 8 + 192 x 11", TEXTBOOK_MULS,
               higher_is_better=False),
    ]


if __name__ == "__main__":
    _, pub, sig = signed_manifest()
    for kind, n in sorted(count_field_ops(pub, sig).items()):
        print("%-24s %6d" % (kind, n))
