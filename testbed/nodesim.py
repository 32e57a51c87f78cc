"""A node's CoAP + OSCORE client side in a few lines, for load generation and gateway tests.

Client-side aiocoap manages a few hundred requests per second, far too few to load a gateway,
so the benchmarks (and the tests that need many frames) build datagrams here: the OSCORE
framing of gateway/oscore.py seen from the device, AES-CCM from ``cryptography``. The tests
check this against aiocoap's server-side view too (tests/test_gateway_oscore.py), so the load is
what a real node sends.
"""

from __future__ import annotations

from dataclasses import dataclass

import cbor2
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

from gateway import coap, oscore

FLAG_K = 0x08


@dataclass
class Answer:
    outer: coap.Message
    code: int
    options: list[tuple[int, bytes]]
    payload: bytes
    protected: bool

    def option(self, number: int) -> bytes | None:
        return coap.option(self.options, number)

    @property
    def envelope(self) -> dict:
        return cbor2.loads(self.payload) if self.payload else {}


class SimNode:
    """One device: its key id, keys and sender sequence number."""

    def __init__(self, kid: bytes, master_secret: bytes, master_salt: bytes, seq: int = 0,
                 device_id: str = "") -> None:
        sender_key, recipient_key, common_iv = oscore.derive(master_secret, master_salt, kid,
                                                             b"")
        self.kid = kid
        self.device_id = device_id
        self.seq = seq
        self._sender = AESCCM(sender_key, tag_length=oscore.TAG_LEN)
        self._recipient = AESCCM(recipient_key, tag_length=oscore.TAG_LEN)
        self._sender_base = oscore._nonce_base(kid, common_iv)
        self._recipient_base = oscore._nonce_base(b"", common_iv)

    @classmethod
    def of(cls, device, seq: int = 0) -> "SimNode":
        """From a registry.db.Device."""
        return cls(device.kid_bytes, device.master_secret, device.master_salt, seq, device.id)

    def request(self, path: str, payload: bytes = b"", *, mid: int, token: bytes = b"\x01\x02",
                code: int = coap.POST, echo: bytes | None = None, observe: int | None = None,
                inner: list[tuple[int, bytes]] = (), mtype: int = coap.CON,
                seq: int | None = None) -> tuple[bytes, bytes]:
        """A protected request datagram and its Partial IV (to verify the answer with)."""
        if seq is None:
            seq = self.seq
            self.seq += 1
        piv = oscore.piv_bytes(seq)
        options = [(coap.URI_PATH, seg.encode()) for seg in path.split("/") if seg]
        options += list(inner)
        if echo is not None:
            options.append((coap.ECHO, echo))
        if observe is not None:
            options.append((coap.OBSERVE, coap.uint(observe)))
        plaintext = oscore.inner_plaintext(code, coap.encode_options(options), payload)
        nonce = (self._sender_base ^ int.from_bytes(piv, "big")).to_bytes(oscore.NONCE_LEN, "big")
        ciphertext = self._sender.encrypt(nonce, plaintext, oscore.aad(self.kid, piv))
        outer = [(coap.OSCORE, bytes((len(piv) | FLAG_K,)) + piv + self.kid)]
        outer_code = coap.POST
        if observe is not None:
            outer.append((coap.OBSERVE, coap.uint(observe)))
            outer_code = coap.FETCH
        return coap.encode(mtype, outer_code, mid, token, outer, ciphertext), piv

    def answer(self, datagram: bytes, request_piv: bytes) -> Answer:
        """Decode (and, when protected, verify) the gateway's answer to ``request_piv``."""
        outer = coap.parse(datagram)
        value = coap.option(outer.options, coap.OSCORE)
        if value is None:
            return Answer(outer, outer.code, outer.options, outer.payload, False)
        opt = oscore.parse_option(value)
        if opt.piv:
            nonce_int = self._recipient_base ^ int.from_bytes(opt.piv, "big")
        else:
            nonce_int = self._sender_base ^ int.from_bytes(request_piv, "big")
        plaintext = self._recipient.decrypt(nonce_int.to_bytes(oscore.NONCE_LEN, "big"),
                                            outer.payload, oscore.aad(self.kid, request_piv))
        options, payload = coap.parse_options(plaintext, 1)
        return Answer(outer, plaintext[0], options, payload, True)


def reading(level_mm: int, *extra: tuple[str, int]) -> bytes:
    """A water-level frame like the shaft node sends."""
    records = [{0: "level", 2: level_mm}]
    records += [{0: name, 2: value} for name, value in extra]
    return cbor2.dumps(records)
