# OSCORE (RFC 8613) client side, with the parameters of docs/protocol.md §5:
# AES-CCM-16-64-128 (COSE alg 10), HKDF-SHA-256, no ID Context.
#
# AES-CCM (RFC 3610, L=2, M=8) is built here on cryptolib's ECB mode: CBC-MAC and CTR by hand,
# because not every port has cryptolib's CTR mode (the unix port lacks it).

from micropython import const
import cryptolib
import hashlib
import os
import struct
import cbor
import coap

_ALG = const(10)  # AES-CCM-16-64-128
_KEY_LEN = const(16)
_NONCE_LEN = const(13)
_TAG_LEN = const(8)
_MAX_ID_LEN = const(7)  # nonce length - 6
_CCM_B0_FLAGS = const(0x19)  # M=8 -> (8-2)/2 << 3, L=2 -> 1
_CCM_ADATA = const(0x40)
_CCM_CTR_FLAGS = const(0x01)  # L=2 -> 1
_FLAG_K = const(0x08)
_FLAG_H = const(0x10)
_FLAGS_UNSUPPORTED = const(0xE0)  # group flag and reserved bits
_PIV_LEN_MASK = const(0x07)
_MAX_PIV_LEN = const(5)
_MAX_SEQ = 0xFFFFFFFFFF  # 2**40 - 1: five-byte Partial IV

REPLAY_JUMP = const(65536)  # protocol.md §6: first jump after "Replay detected"
REPLAY_RESENDS = const(8)  # jumps double each time: 2**16 ... 2**23, 2**24 - 2**16 in all
SEQ_STEP = const(64)  # K of protocol.md §5
CONTENT_FORMAT_SENML_CBOR = const(112)

# Class U options: outside the encryption. Everything else the node sends is class E, and
# Observe is both (RFC 8613 §4.1.3.5.2: the Outer value equals the Inner one).
_OUTER_OPTIONS = (coap.URI_HOST, 7, 39)  # Uri-Host, Uri-Port, Proxy-Scheme


class OscoreError(Exception):
    pass


class ProtectionInvalid(OscoreError):
    """A response that claims protection but does not verify (tag, option, kid)."""


class UnprotectedResponse(OscoreError):
    """An error the OSCORE layer sent in the clear (protocol.md §6); not authenticated."""

    def __init__(self, code, diagnostic):
        super().__init__(code, diagnostic)
        self.code = code
        self.diagnostic = diagnostic


# --- HKDF-SHA-256 (RFC 5869) ---------------------------------------------------------------

def hmac_sha256(key, msg):
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    pad = bytearray(64)
    pad[0:len(key)] = key
    for i in range(64):
        pad[i] ^= 0x36
    inner = hashlib.sha256(pad)
    inner.update(msg)
    digest = inner.digest()
    for i in range(64):
        pad[i] ^= 0x36 ^ 0x5C
    outer = hashlib.sha256(pad)
    outer.update(digest)
    return outer.digest()


def hkdf(salt, ikm, info, length):
    prk = hmac_sha256(salt, ikm)
    out = bytearray()
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac_sha256(prk, block + info + bytes((counter,)))
        out.extend(block)
        counter += 1
    return bytes(out[:length])


def derive(secret, salt, sender_id, recipient_id):
    """RFC 8613 §3.2: return (sender_key, recipient_key, common_iv)."""
    def kdf(ident, kind, length):
        return hkdf(salt, secret, cbor.dumps([ident, None, _ALG, kind, length]), length)

    return (kdf(sender_id, "Key", _KEY_LEN), kdf(recipient_id, "Key", _KEY_LEN),
            kdf(b"", "IV", _NONCE_LEN))


# --- AES-CCM-16-64-128 (RFC 3610) ----------------------------------------------------------

class AesCcm:
    """AES-CCM with a 13-byte nonce and an 8-byte tag, from one ECB cipher object."""

    def __init__(self, key):
        self._aes = cryptolib.aes(key, 1)
        self._block = bytearray(16)

    def _cbc_mac(self, state, data):
        # Absorb `data`, zero-padded to whole blocks, into the CBC-MAC `state`.
        aes = self._aes
        size = len(data)
        for off in range(0, size, 16):
            for i in range(min(16, size - off)):
                state[i] ^= data[off + i]
            aes.encrypt(state, state)

    def _tag(self, nonce, aad, plaintext):
        state = bytearray(16)
        state[0] = _CCM_B0_FLAGS | (_CCM_ADATA if aad else 0)
        state[1:14] = nonce
        state[14] = len(plaintext) >> 8
        state[15] = len(plaintext) & 0xFF
        self._aes.encrypt(state, state)
        if aad:
            self._cbc_mac(state, struct.pack(">H", len(aad)) + aad)
        self._cbc_mac(state, plaintext)
        return state

    def _ctr(self, nonce, data, first_tag):
        # XOR `data` with the key stream S_1, S_2, ... in place; XOR `first_tag` with S_0.
        ctr = self._block
        stream = bytearray(16)
        ctr[0] = _CCM_CTR_FLAGS
        ctr[1:14] = nonce
        ctr[14] = 0
        ctr[15] = 0
        self._aes.encrypt(ctr, stream)
        for i in range(_TAG_LEN):
            first_tag[i] ^= stream[i]
        size = len(data)
        counter = 1
        for off in range(0, size, 16):
            ctr[14] = counter >> 8
            ctr[15] = counter & 0xFF
            self._aes.encrypt(ctr, stream)
            for i in range(min(16, size - off)):
                data[off + i] ^= stream[i]
            counter += 1

    def encrypt(self, nonce, plaintext, aad):
        """Return ciphertext followed by the 8-byte tag."""
        if len(plaintext) > 0xFFFF or len(aad) >= 0xFF00:
            raise ValueError("too long for this CCM")
        tag = self._tag(nonce, aad, plaintext)
        out = bytearray(plaintext)
        self._ctr(nonce, out, tag)
        out.extend(memoryview(tag)[:_TAG_LEN])
        return bytes(out)

    def decrypt(self, nonce, ciphertext, aad):
        """Return the plaintext; raise ProtectionInvalid when the tag does not verify."""
        size = len(ciphertext) - _TAG_LEN
        if size < 0:
            raise ProtectionInvalid("ciphertext shorter than the tag")
        out = bytearray(memoryview(ciphertext)[:size])
        received = bytearray(memoryview(ciphertext)[size:])
        self._ctr(nonce, out, received)
        expected = self._tag(nonce, aad, out)
        diff = 0
        for i in range(_TAG_LEN):
            diff |= expected[i] ^ received[i]
        if diff:
            raise ProtectionInvalid("tag mismatch")
        return bytes(out)


# --- Sender sequence number (protocol.md §5, RFC 8613 Appendix B.1.1) ------------------------

def _read_mark(path):
    # None when missing; -1 when present but unreadable (a half-written file).
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    if len(text) > 1 and text[-1] == "\n" and text[:-1].isdigit():
        return int(text[:-1])
    return -1


class SeqStore:
    """Sender sequence numbers persisted in steps of `step` (K).

    The file holds a mark M: no number at or beyond M has been used. take() writes n + K
    before it hands out any n >= M; on boot numbering starts at M. The mark goes to
    `path + ".tmp"` first and is renamed over `path`; on boot the larger of the two valid
    files wins, so a crash at any point loses no mark.
    """

    def __init__(self, path, step=SEQ_STEP):
        self._path = path
        self._step = step
        marks = (_read_mark(path), _read_mark(path + ".tmp"))
        best = max(m if m is not None else -1 for m in marks)
        if best < 0 and marks != (None, None):
            # A mark file exists but nothing is readable: starting at 0 could reuse nonces.
            raise OscoreError("sequence number file unreadable")
        self.next = max(best, 0)
        self._mark = self.next

    def take(self):
        n = self.next
        if n > _MAX_SEQ:
            raise OscoreError("sequence numbers exhausted")
        if n >= self._mark:
            self._persist(n + self._step)
        self.next = n + 1
        return n

    def jump(self, by=REPLAY_JUMP):
        self.next += by
        self._persist(self.next + self._step)

    def _persist(self, mark):
        tmp = self._path + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % mark)
        try:
            os.rename(tmp, self._path)
        except OSError:
            # FAT cannot rename over a file; the .tmp copy covers the gap.
            os.remove(self._path)
            os.rename(tmp, self._path)
        self._mark = mark


# --- Security context ------------------------------------------------------------------------

def _aad(request_kid, request_piv):
    external_aad = cbor.dumps([1, [_ALG], request_kid, request_piv, b""])
    return cbor.dumps(["Encrypt0", b"", external_aad])


class Context:
    """An OSCORE client security context (protocol.md §5)."""

    def __init__(self, secret, salt, sender_id, recipient_id, seq_store):
        if len(sender_id) > _MAX_ID_LEN or len(recipient_id) > _MAX_ID_LEN:
            raise ValueError("sender or recipient id too long")
        self.sender_id = bytes(sender_id)
        self.recipient_id = bytes(recipient_id)
        self.seq = seq_store
        sender_key, recipient_key, self._common_iv = derive(secret, salt, sender_id,
                                                            recipient_id)
        self._sender = AesCcm(sender_key)
        self._recipient = AesCcm(recipient_key)

    def _nonce(self, ident, piv):
        nonce = bytearray(_NONCE_LEN)
        nonce[0] = len(ident)
        nonce[8 - len(ident):8] = ident
        nonce[_NONCE_LEN - len(piv):] = piv
        for i in range(_NONCE_LEN):
            nonce[i] ^= self._common_iv[i]
        return nonce

    def protect(self, code, options, payload):
        """Protect a request; return (outer_options, outer_payload, request_ctx).

        Send the result as a POST (the outer code of every OSCORE request here); pass
        request_ctx to unprotect_response().
        """
        piv = coap.uint(self.seq.take()) or b"\x00"
        outer = []
        plaintext = bytearray((code,))
        inner = []
        for opt in options:
            if opt[0] in _OUTER_OPTIONS:
                outer.append(opt)
            else:
                inner.append(opt)
                if opt[0] == coap.OBSERVE:
                    outer.append(opt)
        coap.encode_options(plaintext, inner)
        if payload:
            plaintext.append(0xFF)
            plaintext.extend(payload)
        ciphertext = self._sender.encrypt(self._nonce(self.sender_id, piv), plaintext,
                                          _aad(self.sender_id, piv))
        outer.append((coap.OSCORE, bytes((len(piv) | _FLAG_K,)) + piv + self.sender_id))
        return outer, ciphertext, piv

    def unprotect_response(self, message, request_ctx):
        """Verify and decrypt a response; return its inner (code, options, payload).

        Raises UnprotectedResponse for a response without an OSCORE option and
        ProtectionInvalid for one that does not verify.
        """
        value = message.option(coap.OSCORE)
        if value is None:
            raise UnprotectedResponse(message.code, message.payload)
        flags = value[0] if value else 0  # an empty option: no Partial IV, no kid
        piv_len = flags & _PIV_LEN_MASK
        piv = value[1:1 + piv_len]
        kid = value[1 + piv_len:]
        if flags & (_FLAGS_UNSUPPORTED | _FLAG_H) or piv_len > _MAX_PIV_LEN \
                or len(piv) < piv_len:
            raise ProtectionInvalid("unsupported OSCORE option")
        if kid != (self.recipient_id if flags & _FLAG_K else b""):
            raise ProtectionInvalid("unexpected kid")
        if piv_len:
            nonce = self._nonce(self.recipient_id, piv)
        else:
            nonce = self._nonce(self.sender_id, request_ctx)
        plaintext = self._recipient.decrypt(nonce, message.payload,
                                            _aad(self.sender_id, request_ctx))
        if not plaintext:
            raise ProtectionInvalid("no inner code")
        try:
            options, payload = coap.decode_options(plaintext, 1)
        except ValueError:
            raise ProtectionInvalid("malformed inner options") from None
        return plaintext[0], options, payload


# --- Client: protocol.md §6 ------------------------------------------------------------------

def _path_options(path):
    return [(coap.URI_PATH, seg) for seg in path.split("/") if seg]


class SecureClient:
    """OSCORE requests over a coap.Client, with the recoveries of protocol.md §6.

    A protected 4.01 with Echo is resent once with the Echo inside; an unprotected
    4.01 "Replay detected" makes the sequence number jump by REPLAY_JUMP (persisted) and the
    request is resent; a further "Replay detected" doubles the jump, up to REPLAY_RESENDS
    times, so a node gets past a gateway window that moved far ahead (e.g. while an exported
    copy of its context was used) within one exchange. Other unprotected responses raise
    UnprotectedResponse, responses that fail verification ProtectionInvalid, no answer
    coap.Timeout.
    """

    def __init__(self, client, context):
        self.client = client
        self.context = context

    def _steps(self, code, path, payload, content_format, extra=()):
        # Generator shared by the blocking and the asyncio driver: yields the outer
        # (options, payload) to send, receives the response Message, returns the result.
        echo = None
        echoed = False
        jump = REPLAY_JUMP
        resends = 0
        while True:
            options = _path_options(path)
            options.extend(extra)
            if content_format is not None:
                options.append((coap.CONTENT_FORMAT, coap.uint(content_format)))
            if echo is not None:
                options.append((coap.ECHO, echo))
            outer_options, outer_payload, request_ctx = self.context.protect(code, options,
                                                                             payload)
            response = yield outer_options, outer_payload
            try:
                result = self.context.unprotect_response(response, request_ctx)
            except UnprotectedResponse as err:
                if (err.code == coap.UNAUTHORIZED and err.diagnostic == b"Replay detected"
                        and resends < REPLAY_RESENDS):
                    resends += 1
                    self.context.seq.jump(jump)
                    jump *= 2
                    continue
                raise
            echo = coap.option(result[1], coap.ECHO)
            if result[0] == coap.UNAUTHORIZED and echo is not None and not echoed:
                echoed = True
                continue
            self.request_ctx = request_ctx
            return result

    def request(self, code, path, payload=b"", content_format=None):
        """Send a protected request; return the inner (code, options, payload)."""
        steps = self._steps(code, path, payload, content_format)
        outer = next(steps)
        while True:
            response = self.client.request(coap.POST, outer[0], outer[1])
            try:
                outer = steps.send(response)
            except StopIteration as done:
                return done.value

    async def arequest(self, code, path, payload=b"", content_format=None, options=()):
        steps = self._steps(code, path, payload, content_format, options)
        outer = next(steps)
        # RFC 8613 §4.2: the outer code is FETCH for an Observe registration, POST otherwise
        outer_code = coap.FETCH if coap.option(options, coap.OBSERVE) is not None else coap.POST
        while True:
            response = await self.client.arequest(outer_code, outer[0], outer[1])
            try:
                outer = steps.send(response)
            except StopIteration as done:
                return done.value

    def post(self, path, payload, content_format=None):
        """POST `payload` to `path` ("u"); return the inner (code, payload).

        Content-Format is omitted by default: the gateway's /u and /s imply SenML-CBOR (112)
        and the two bytes matter in a 64-byte budget.
        """
        result = self.request(coap.POST, path, payload, content_format)
        return result[0], result[2]

    async def apost(self, path, payload, content_format=None):
        result = await self.arequest(coap.POST, path, payload, content_format)
        return result[0], result[2]

    # --- Observe (RFC 7641 with RFC 8613 §4.1.3.5.2, §8.4) ---------------------------------

    async def aobserve(self, path):
        """Register an observation of `path`: the first response's inner (code, options,
        payload). Notifications then come from anotification()."""
        result = await self.arequest(coap.GET, path, options=((coap.OBSERVE, b""),))
        self._observe_ctx = self.request_ctx
        self._observe_token = self.client.token
        self._notification_piv = -1
        return result

    async def anotification(self, timeout_ms):
        """The next verified notification's inner (code, options, payload); None when none
        came in time. Notifications that fail verification or are older than one already
        seen are dropped (RFC 8613 §7.4.1)."""
        import time
        deadline = time.ticks_add(time.ticks_ms(), timeout_ms)
        while True:
            left = time.ticks_diff(deadline, time.ticks_ms())
            if left <= 0:
                return None
            msg = await self.client.anotification(self._observe_token, left)
            if msg is None:
                return None
            value = msg.option(coap.OSCORE)
            if not value:
                continue              # unprotected: not from our gateway's context
            piv = coap.decode_uint(value[1:1 + (value[0] & _PIV_LEN_MASK)])
            try:
                result = self.context.unprotect_response(msg, self._observe_ctx)
            except OscoreError:
                continue
            if piv <= self._notification_piv:
                continue
            self._notification_piv = piv
            return result

    # --- block-wise GET (RFC 7959 Block2) --------------------------------------------------

    async def aget_blocks(self, path, sink, szx=5, start=0):
        """GET `path` block by block (2**(szx+4) bytes each) from block `start` on, handing
        each block's payload to sink(offset, data); returns (code, offset after the last
        block). Stops at the first non-2.05."""
        num = start
        total = start << (szx + 4)
        while True:
            code, options, payload = await self.arequest(
                coap.GET, path, options=((coap.BLOCK2, coap.block_option(num, False, szx)),))
            if code != coap.CONTENT:
                return code, total
            block = coap.option(options, coap.BLOCK2)
            if block is None:
                sink(0, payload)
                return code, len(payload)
            got_num, more, got_szx = coap.decode_block(block)
            offset = got_num << (got_szx + 4)
            if offset != total:
                raise OscoreError("block out of order")
            sink(offset, payload)
            total += len(payload)
            if not more:
                return code, total
            num = (total >> (got_szx + 4))
            szx = got_szx
