"""OSCORE (RFC 8613), the server's side, with the parameters of docs/protocol.md §5.

AES-CCM-16-64-128 and HKDF-SHA-256 come from ``cryptography``; what is here is the framing
around them: the OSCORE option, the nonce, the external AAD, the replay window and the Echo
recovery of Appendix B.1.2. It is a lean replacement for aiocoap's ``oscore`` module on the
gateway's hot path (aiocoap builds a Message, a COSE structure and several dicts per frame);
tests/test_gateway_oscore.py checks it against aiocoap's client in both directions.

Terminology as in the RFC: the *recipient* is the device (its Sender ID is the key id, ``kid``),
the *sender* is the gateway (Sender ID the empty string).
"""

from __future__ import annotations

import secrets
from typing import NamedTuple

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.errors import GatewayError

ALG_AES_CCM_16_64_128 = 10
KEY_LEN = 16
NONCE_LEN = 13
TAG_LEN = 8
MAX_PIV_LEN = 5
MAX_SEQ = 2 ** 40 - 1
REPLAY_WINDOW = 32
ECHO_LEN = 8

_FLAG_K = 0x08
_FLAG_H = 0x10
_FLAGS_RESERVED = 0xE0


class OscoreError(GatewayError):
    """A protected message that cannot be processed; ``reason`` is a metric label."""

    reason = "bad_oscore"


class OptionInvalid(OscoreError):
    """The OSCORE option is malformed (answered 4.02 Bad Option)."""


class ProtectionInvalid(OscoreError):
    """The tag does not verify (answered 4.00 "Decryption failed")."""

    reason = "bad_tag"


class OscoreOption(NamedTuple):
    piv: bytes
    kid: bytes | None
    kid_context: bytes | None


def parse_option(value: bytes) -> OscoreOption:
    """Split an OSCORE option value (RFC 8613 §6.1)."""
    if not value:
        return OscoreOption(b"", None, None)
    flags = value[0]
    if flags & _FLAGS_RESERVED:
        raise OptionInvalid("reserved flag bits set")
    n = flags & 7
    if n > MAX_PIV_LEN:
        raise OptionInvalid("Partial IV length %d is reserved" % n)
    pos = 1 + n
    if pos > len(value):
        raise OptionInvalid("Partial IV truncated")
    piv = value[1:pos]
    kid_context = None
    if flags & _FLAG_H:
        if pos >= len(value):
            raise OptionInvalid("kid context length missing")
        s = value[pos]
        kid_context = value[pos + 1:pos + 1 + s]
        if len(kid_context) != s:
            raise OptionInvalid("kid context truncated")
        pos += 1 + s
    if flags & _FLAG_K:
        kid = value[pos:]
    else:
        if pos != len(value):
            raise OptionInvalid("bytes after the option's fields")
        kid = None
    return OscoreOption(piv, kid, kid_context)


def response_option(piv: bytes | None) -> bytes:
    """The OSCORE option of a response: empty, or just a Partial IV (the gateway's own)."""
    return bytes((len(piv),)) + piv if piv else b""


def _bstr(data: bytes) -> bytes:
    n = len(data)
    if n < 24:
        return bytes((0x40 | n,)) + data
    if n < 256:
        return bytes((0x58, n)) + data
    return bytes((0x59, n >> 8, n & 0xFF)) + data


def aad(request_kid: bytes, request_piv: bytes) -> bytes:
    """The COSE Enc_structure of RFC 8613 §5.4 with no Class I options, CBOR-encoded.

    ["Encrypt0", h'', bstr .cbor [1, [10], request_kid, request_piv, h'']]
    """
    external = b"\x85\x01\x81\x0a" + _bstr(request_kid) + _bstr(request_piv) + b"\x40"
    return b"\x83\x68Encrypt0\x40" + _bstr(external)


def piv_bytes(seq: int) -> bytes:
    """Shortest Partial IV for ``seq`` (at least one byte, RFC 8613 §6.1)."""
    return seq.to_bytes(max(1, (seq.bit_length() + 7) // 8), "big")


def hkdf(salt: bytes, secret: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(secret)


def derive(master_secret: bytes, master_salt: bytes, sender_id: bytes,
           recipient_id: bytes) -> tuple[bytes, bytes, bytes]:
    """RFC 8613 §3.2.1: (sender key, recipient key, common IV), no ID Context."""
    def kdf(ident: bytes | None, kind: str, length: int) -> bytes:
        info = cbor2.dumps([ident, None, ALG_AES_CCM_16_64_128, kind, length])
        return hkdf(master_salt, master_secret, info, length)

    return (kdf(sender_id, "Key", KEY_LEN), kdf(recipient_id, "Key", KEY_LEN),
            kdf(b"", "IV", NONCE_LEN))


def _nonce_base(ident: bytes, common_iv: bytes) -> int:
    # nonce = (len(id) | id left-padded to 7 | PIV left-padded to 5) XOR common IV; everything
    # but the PIV part is fixed per endpoint, so it is precomputed as an integer.
    fixed = (len(ident) << 96) | (int.from_bytes(ident, "big") << 40)
    return fixed ^ int.from_bytes(common_iv, "big")


class ReplayWindow:
    """A sliding window of ``REPLAY_WINDOW`` sequence numbers (RFC 8613 §7.4).

    ``index`` is the lowest number the window still represents (bit 0 of ``bits``); numbers below
    it are too old. ``index is None`` means the state is unknown (after a restart without
    persisted state): the Echo recovery of Appendix B.1.2 must initialise it.
    """

    __slots__ = ("index", "bits")

    def __init__(self, index: int | None = None, bits: int = 0) -> None:
        self.index = index
        self.bits = bits

    @property
    def known(self) -> bool:
        return self.index is not None

    def is_valid(self, seq: int) -> bool:
        index = self.index
        if seq < index:
            return False
        if seq >= index + REPLAY_WINDOW:
            return True
        return not (self.bits >> (seq - index)) & 1

    def strike_out(self, seq: int) -> None:
        over = seq - (self.index + REPLAY_WINDOW - 1)
        if over > 0:
            self.index += over
            self.bits >>= over
        self.bits |= 1 << (seq - self.index)

    def start_at(self, seq: int) -> None:
        """``seq`` is fresh (it carried our Echo value): it and everything before it are used."""
        self.index = seq
        self.bits = 1


class SecurityContext:
    """The gateway's side of one device's OSCORE context."""

    __slots__ = ("recipient_id", "_recipient", "_sender", "_recipient_base", "_sender_base",
                 "window", "sender_seq", "seq_mark", "echo")

    def __init__(self, master_secret: bytes, master_salt: bytes, recipient_id: bytes,
                 sender_id: bytes = b"") -> None:
        sender_key, recipient_key, common_iv = derive(master_secret, master_salt, sender_id,
                                                      recipient_id)
        self.recipient_id = recipient_id
        self._recipient = AESCCM(recipient_key, tag_length=TAG_LEN)
        self._sender = AESCCM(sender_key, tag_length=TAG_LEN)
        self._recipient_base = _nonce_base(recipient_id, common_iv)
        self._sender_base = _nonce_base(sender_id, common_iv)
        self.window = ReplayWindow()
        self.sender_seq = 0   # next sequence number the gateway uses in this context
        self.seq_mark = 0     # no number at or above this has been persisted as used
        self.echo: bytes | None = None

    def echo_value(self) -> bytes:
        """The Echo value this context challenges with (one per context and process)."""
        if self.echo is None:
            self.echo = secrets.token_bytes(ECHO_LEN)
        return self.echo

    def decrypt(self, piv: bytes, ciphertext: bytes, request_aad: bytes | None = None) -> bytes:
        """Verify and decrypt a request with Partial IV ``piv``; return the plaintext."""
        nonce = (self._recipient_base ^ int.from_bytes(piv, "big")).to_bytes(NONCE_LEN, "big")
        try:
            return self._recipient.decrypt(nonce, ciphertext,
                                           request_aad or aad(self.recipient_id, piv))
        except (InvalidTag, ValueError):
            raise ProtectionInvalid("Decryption failed") from None

    def encrypt_response(self, request_piv: bytes, plaintext: bytes,
                         own_piv: bytes | None = None, request_aad: bytes | None = None) -> bytes:
        """Protect a response to the request with ``request_piv``.

        Without ``own_piv`` the request's nonce is reused (allowed once per request);
        with it, the nonce is built from the gateway's own Partial IV.
        """
        if own_piv is None:
            nonce_int = self._recipient_base ^ int.from_bytes(request_piv, "big")
        else:
            nonce_int = self._sender_base ^ int.from_bytes(own_piv, "big")
        return self._sender.encrypt(nonce_int.to_bytes(NONCE_LEN, "big"), plaintext,
                                    request_aad or aad(self.recipient_id, request_piv))

    def take_sender_seq(self, chunk: int) -> tuple[int, int | None]:
        """A fresh sender sequence number, and the new mark to persist *before* using it
        (None when the persisted mark already covers it: RFC 8613 Appendix B.1.1)."""
        seq = self.sender_seq
        if seq > MAX_SEQ:
            raise OscoreError("the gateway's sequence numbers for this device are exhausted")
        self.sender_seq = seq + 1
        if seq >= self.seq_mark:
            self.seq_mark = seq + chunk
            return seq, self.seq_mark
        return seq, None


def inner_plaintext(code: int, options: bytes, payload: bytes) -> bytes:
    """The plaintext of an OSCORE message: code, encoded Class E options, payload."""
    if payload:
        return bytes((code,)) + options + b"\xff" + payload
    return bytes((code,)) + options
