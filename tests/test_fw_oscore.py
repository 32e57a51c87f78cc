"""firmware/lib/oscore.py in the MicroPython VM: primitives against `cryptography`, the
RFC 8613 Appendix C test vectors, and end to end against a stock aiocoap OSCORE server."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from pathlib import Path

import aiocoap
import aiocoap.resource as resource
import cbor2
import pytest
from aiocoap.credentials import CredentialsMap
from aiocoap.oscore import FilesystemSecurityContext
from aiocoap.oscore_sitewrapper import OscoreSiteWrapper
from aiocoap.transports.oscore import OSCOREAddress
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given
from hypothesis import strategies as st
from mpy_helpers import free_udp_port, run_mpy, run_mpy_cases, vm_settings

# --- AES-CCM and HKDF against cryptography --------------------------------------------------

CCM_CASE = st.tuples(st.binary(min_size=16, max_size=16), st.binary(min_size=13, max_size=13),
                     st.binary(max_size=80), st.binary(max_size=300))


@vm_settings(8)
@given(st.lists(CCM_CASE, min_size=1, max_size=40))
def test_aes_ccm_matches_cryptography(cases):
    expected = [AESCCM(key, tag_length=8).encrypt(nonce, pt, aad)
                for key, nonce, aad, pt in cases]
    results = run_mpy_cases("""
import oscore
for (key, nonce, aad, pt, theirs) in CASES:
    key, nonce, aad, pt, theirs = [bytes.fromhex(x) for x in (key, nonce, aad, pt, theirs)]
    ccm = oscore.AesCcm(key)
    ours = ccm.encrypt(nonce, pt, aad)
    opened = ccm.decrypt(nonce, theirs, aad)
    rejected = []
    for pos in (0, len(theirs) - 1):  # first byte (ciphertext or tag), last byte (tag)
        bad = bytearray(theirs)
        bad[pos] ^= 0x01
        try:
            ccm.decrypt(nonce, bytes(bad), aad)
            rejected.append(False)
        except oscore.ProtectionInvalid:
            rejected.append(True)
    try:
        ccm.decrypt(nonce, theirs, aad + b'x')
        rejected.append(False)
    except oscore.ProtectionInvalid:
        rejected.append(True)
    emit([ours.hex(), opened == pt, rejected])
""", [[k.hex(), n.hex(), a.hex(), p.hex(), e.hex()]
      for (k, n, a, p), e in zip(cases, expected)])
    assert [bytes.fromhex(r[0]) for r in results] == expected
    assert all(r[1] for r in results)
    assert all(r[2] == [True, True, True] for r in results)


HKDF_CASE = st.tuples(st.binary(max_size=100), st.binary(max_size=40), st.binary(max_size=40),
                      st.integers(1, 100))


@vm_settings(5)
@given(st.lists(HKDF_CASE, min_size=1, max_size=30))
def test_hkdf_and_hmac_match_cryptography(cases):
    results = run_mpy_cases("""
import oscore
for salt, ikm, info, length in CASES:
    salt, ikm, info = bytes.fromhex(salt), bytes.fromhex(ikm), bytes.fromhex(info)
    emit([oscore.hkdf(salt, ikm, info, length).hex(), oscore.hmac_sha256(salt, ikm).hex()])
""", [[s.hex(), i.hex(), n.hex(), length] for s, i, n, length in cases])
    for (salt, ikm, info, length), (okm, mac) in zip(cases, results):
        expected = HKDF(algorithm=hashes.SHA256(), length=length, salt=salt,
                        info=info).derive(ikm)
        assert bytes.fromhex(okm) == expected
        assert bytes.fromhex(mac) == hmac.new(salt, ikm, hashlib.sha256).digest()


# --- RFC 8613 Appendix C ------------------------------------------------------------------

C1_SECRET = bytes.fromhex("0102030405060708090a0b0c0d0e0f10")
C1_SALT = bytes.fromhex("9e7ca92223786340")

FIXED_SEQ = """
class FixedSeq:
    def __init__(self, n):
        self.next = n
    def take(self):
        self.next += 1
        return self.next - 1
    def jump(self, by=65536):
        self.next += by
"""


def test_rfc8613_c1_1_key_derivation():
    out = run_mpy("""
import oscore
for keys in (oscore.derive(%r, %r, b'', b'\\x01'), oscore.derive(%r, %r, b'\\x01', b'')):
    print(' '.join(k.hex() for k in keys))
""" % (C1_SECRET, C1_SALT, C1_SECRET, C1_SALT)).splitlines()
    # Client (sender id empty), then server (sender id 0x01): keys swap, the IV stays.
    assert out == [
        "f0910ed7295e6ad4b54fc793154302ff ffb14e093c94c9cac9471648b4f98710"
        " 4622d4dd6d944168eefb54987c",
        "ffb14e093c94c9cac9471648b4f98710 f0910ed7295e6ad4b54fc793154302ff"
        " 4622d4dd6d944168eefb54987c",
    ]


def test_rfc8613_c4_request_and_c7_c8_responses():
    out = run_mpy(FIXED_SEQ + """
import coap, oscore
ctx = oscore.Context(%r, %r, b'', b'\\x01', FixedSeq(20))
options, payload, request = ctx.protect(coap.GET, [(coap.URI_HOST, b'localhost'),
                                                   (coap.URI_PATH, b'tv1')], b'')
print(coap.encode(coap.CON, coap.POST, 0x5d1f, b'\\x00\\x00\\x39\\x74', options, payload).hex())
print(request.hex())
for h in ('64445d1f0000397490ffdbaad1e9a7e7b2a813d3c31524378303cdafae119106',
          '64445d1f00003974920100ff4d4c13669384b67354b2b6175ff4b8658c666a6cf88e'):
    code, opts, body = ctx.unprotect_response(coap.decode(bytes.fromhex(h)), request)
    print(code, len(opts), body)
bad = bytearray(bytes.fromhex(
    '64445d1f0000397490ffdbaad1e9a7e7b2a813d3c31524378303cdafae119106'))
bad[12] ^= 0x80
try:
    ctx.unprotect_response(coap.decode(bad), request)
except oscore.ProtectionInvalid:
    print('ProtectionInvalid')
try:  # the right response bound to another request (Partial IV 0x15) must not verify
    ctx.unprotect_response(coap.decode(bytes.fromhex(
        '64445d1f0000397490ffdbaad1e9a7e7b2a813d3c31524378303cdafae119106')), b'\\x15')
except oscore.ProtectionInvalid:
    print('ProtectionInvalid')
""" % (C1_SECRET, C1_SALT)).splitlines()
    assert out == [
        # C.4: Uri-Host stays outside, GET /tv1 is encrypted, OSCORE option 09 14.
        "44025d1f00003974396c6f63616c686f7374620914ff612f1092f1776f1c1668b3825e",
        "14",
        "69 0 b'Hello World!'",  # C.7: response without Partial IV
        "69 0 b'Hello World!'",  # C.8: response with its own Partial IV
        "ProtectionInvalid",
        "ProtectionInvalid",
    ]


def test_oscore_option_checks_in_responses():
    out = run_mpy(FIXED_SEQ + """
import coap, oscore
ctx = oscore.Context(%r, %r, b'', b'\\x01', FixedSeq(20))
body = bytes.fromhex('dbaad1e9a7e7b2a813d3c31524378303cdafae119106')  # C.7
for value in (b'\\x08\\x01', b'\\x00', b'',  # kid of the sender; flags only; empty
              b'\\x20', b'\\x80', b'\\x06' + bytes(6), b'\\x03\\x00', b'\\x10\\x00',
              b'\\x08\\x02', b'\\x09\\x00\\x02', b'\\x01\\x00\\x07', b'\\x00\\x00'):
    m = coap.Message(coap.ACK, coap.CHANGED, 1, b'', [(coap.OSCORE, value)], body)
    try:
        print(ctx.unprotect_response(m, b'\\x14')[2])
    except oscore.ProtectionInvalid as e:
        print(e)
m = coap.Message(coap.ACK, coap.UNAUTHORIZED, 1, b'', [], b'Replay detected')
try:
    ctx.unprotect_response(m, b'\\x14')
except oscore.UnprotectedResponse as e:
    print(e.code, e.diagnostic, isinstance(e, oscore.OscoreError))
""" % (C1_SECRET, C1_SALT)).splitlines()
    assert out[:3] == ["b'Hello World!'"] * 3
    # Group flag, reserved bit, Partial IV length 6, Partial IV cut short, kid context: the
    # option is refused before any decryption is tried.
    assert out[3:8] == ["unsupported OSCORE option"] * 5
    # A kid that is not the gateway's, a kid after the PIV, bytes after the flags without
    # the k bit.
    assert out[8:12] == ["unexpected kid"] * 4
    assert out[12] == "129 b'Replay detected' True"


# --- sequence numbers ------------------------------------------------------------------------

def test_seq_store_marks_and_reboots(tmp_path):
    out = run_mpy("""
import oscore
def mark():
    with open('seq') as f:
        return f.read()
s = oscore.SeqStore('seq')
print(s.next, [s.take() for _ in range(3)], repr(mark()))
for _ in range(61):
    s.take()
print(s.next, repr(mark()))
print(s.take(), repr(mark()))
s = oscore.SeqStore('seq')   # reboot
print(s.next, s.take(), repr(mark()))
s.jump()
print(s.next, repr(mark()))
""", cwd=tmp_path).splitlines()
    assert out == [
        "0 [0, 1, 2] '64\\n'",  # the mark goes to flash before number 0 is used
        "64 '64\\n'",  # 0..63 used: one write so far
        "64 '128\\n'",  # using 64 moves the mark first
        "128 128 '192\\n'",  # after a reboot: start at the mark, never reuse
        "65665 '65729\\n'",  # a replay jump is persisted at once
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seq"]  # the .tmp was renamed


def test_seq_store_across_two_vm_runs_never_reuses(tmp_path):
    first = run_mpy("""
import oscore
s = oscore.SeqStore('seq')
print(max(s.take() for _ in range(100)))
""", cwd=tmp_path)
    second = run_mpy("""
import oscore
s = oscore.SeqStore('seq')
print(s.take())
""", cwd=tmp_path)
    assert int(first) == 99
    assert int(second) == 128 > 99


@pytest.mark.parametrize("files, expected", [
    ({"seq": "64\n", "seq.tmp": "128\n"}, "128"),  # crash after writing .tmp, before rename
    ({"seq": "64\n", "seq.tmp": "12"}, "64"),  # crash while writing .tmp
    ({"seq.tmp": "128\n"}, "128"),  # FAT fallback: crash between remove and rename
    ({"seq": "6"}, "OscoreError"),  # a mark exists but cannot be read: refuse to guess
    ({"seq": "x\n"}, "OscoreError"),
    ({"seq": str(2**40) + "\n"}, "exhausted"),
])
def test_seq_store_recovery(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    out = run_mpy("""
import oscore
try:
    s = oscore.SeqStore('seq')
    print(s.take())
except oscore.OscoreError as e:
    print('exhausted' if 'exhausted' in str(e) else 'OscoreError')
""", cwd=tmp_path)
    assert out.strip() == expected


# --- end to end against aiocoap ---------------------------------------------------------------

SECRET = bytes.fromhex("00112233445566778899aabbccddeeff")
SALT = bytes.fromhex("0102030405060708")
KID = b"\x00\x2a"
ENVELOPE = cbor2.dumps({1: 1795000300, 2: [[7, "reboot", {}]]})
WATER_LEVEL = cbor2.dumps([{-3: 1795000000, 0: "level", 2: 1234}, {0: "temp", 2: 1150},
                           {0: "batt", 2: 3012}])


class Reading(resource.Resource):
    def __init__(self, path, seen):
        super().__init__()
        self.path = path
        self.seen = seen

    async def render_post(self, request):
        remote = request.remote
        kid = remote.security_context.recipient_id if isinstance(remote, OSCOREAddress) else None
        cf = request.opt.content_format
        self.seen.append((self.path, request.payload, None if cf is None else int(cf), kid))
        return aiocoap.Message(code=aiocoap.CHANGED, content_format=60, payload=ENVELOPE)


class Gateway:
    """A stock aiocoap OSCORE server with one device context, as in protocol.md §5."""

    def __init__(self, directory: Path, *, replay_state_lost: bool = False):
        self.dir = directory
        self.dir.mkdir()
        (directory / "settings.json").write_text(json.dumps({
            "sender-id_hex": "", "recipient-id_hex": KID.hex(), "secret_hex": SECRET.hex(),
            "salt_hex": SALT.hex(), "algorithm": "AES-CCM-16-64-128"}))
        if replay_state_lost:
            (directory / "sequence.json").write_text(json.dumps(
                {"next-to-send": 0, "received": "unknown"}))
        self.seen: list = []
        self.port = free_udp_port()

    async def __aenter__(self):
        self.security = FilesystemSecurityContext(str(self.dir))
        credentials = CredentialsMap()
        credentials[":node"] = self.security
        site = resource.Site()
        for path in ("u", "s"):
            site.add_resource([path], Reading(path, self.seen))
        self.context = await aiocoap.Context.create_server_context(
            OscoreSiteWrapper(site, credentials), bind=("127.0.0.1", self.port),
            transports=["udp6"])  # only the UDP port free_udp_port() found: no TCP/WS listeners
        return self

    async def __aexit__(self, *exc):
        await self.context.shutdown()
        self.security._destroy()  # release the lock file now, not at garbage collection


NODE = FIXED_SEQ + """
import coap, oscore, senml, json
class Recorder(coap.Client):
    # Records the datagrams the node sends and the OSCORE option of each response.
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sent = []
        self.response_oscore = []
    def _send(self, datagram):
        self.sent.append(datagram)
        super()._send(datagram)
    def _match(self, ex, msg):
        got = super()._match(ex, msg)
        if got is not None:
            self.response_oscore.append(got.option(coap.OSCORE))
        return got
def hexed(x):
    if isinstance(x, (bytes, bytearray)):
        return x.hex()
    return [hexed(i) for i in x] if isinstance(x, (list, tuple)) else x
def out(*items):
    print(json.dumps(hexed(items)))
client = Recorder('127.0.0.1', PORT, ack_timeout_ms=1000, token_len=TOKEN_LEN)
store = STORE
ctx = oscore.Context(SECRET, SALT, KID, b'', store)
node = oscore.SecureClient(client, ctx)
"""


async def run_node(gateway: Gateway, body: str, *, secret=SECRET, kid=KID, token_len=2,
                   store="oscore.SeqStore('seq')", cwd: Path | None = None) -> list:
    source = (NODE.replace("PORT", str(gateway.port)).replace("TOKEN_LEN", str(token_len))
              .replace("STORE", store).replace("SECRET", repr(secret))
              .replace("SALT", repr(SALT)).replace("KID", repr(kid)) + body)
    text = await asyncio.to_thread(run_mpy, source, cwd=cwd or gateway.dir.parent)
    return [json.loads(line) for line in text.splitlines()]


async def test_post_reaches_aiocoap_and_response_decrypts(tmp_path):
    async with Gateway(tmp_path / "gw") as gw:
        out = await run_node(gw, """
payload = senml.encode([('level', 1234), ('temp', 1150), ('batt', 3012)], bt=1795000000)
code, body = node.post('u', payload)
out(code, body, store.next, client.response_oscore)
code, opts, body = node.request(coap.POST, '/s', b'\\x80', content_format=None)
out(code, body, [[n, v.hex()] for n, v in opts])
""")
    assert out[0] == [0x44, ENVELOPE.hex(), 1, [""]]  # the 2.04 reuses the request's nonce
    assert out[1] == [0x44, ENVELOPE.hex(), [[12, "3c"]]]  # inner Content-Format 60
    assert gw.seen == [("u", WATER_LEVEL, None, KID), ("s", b"\x80", None, KID)]


async def test_async_post(tmp_path):
    async with Gateway(tmp_path / "gw") as gw:
        out = await run_node(gw, """
import asyncio
async def main():
    code, body = await node.apost('u', b'\\x80')
    out(code, body)
asyncio.run(main())
""")
    assert out == [[0x44, ENVELOPE.hex()]]
    assert gw.seen == [("u", b"\x80", None, KID)]


async def test_protected_error_is_returned_not_raised(tmp_path):
    async with Gateway(tmp_path / "gw") as gw:
        out = await run_node(gw, """
out(node.post('nowhere', b'\\x80')[0], store.next)
""")
    assert out == [[0x84, 1]]  # 4.04, protected: the node decides what to do


async def test_echo_after_gateway_lost_replay_state(tmp_path):
    async with Gateway(tmp_path / "gw", replay_state_lost=True) as gw:
        out = await run_node(gw, """
code, body = node.post('u', b'\\x81\\x01')
out(code, body, store.next, client.response_oscore)
""")
    code, body, next_seq, response_options = out[0]
    assert (code, body) == (0x44, ENVELOPE.hex())
    assert next_seq == 2  # resent once, with a new sequence number
    # Both answers carry the gateway's own Partial IV and no kid: the 4.01 Echo challenge
    # and (aiocoap does so while its replay window is being rebuilt) the 2.04.
    assert response_options == ["0100", "0101"]
    assert gw.seen == [("u", b"\x81\x01", None, KID)]  # the resource saw it once


async def test_replay_detected_makes_the_node_jump(tmp_path):
    async with Gateway(tmp_path / "gw") as gw:
        out = await run_node(gw, """
out(node.post('u', b'\\x81\\x01')[0], store.next)
store.next = 0  # as if the flash had lost the mark: the next request reuses number 0
out(node.post('u', b'\\x81\\x02')[0], store.next)
""")
    assert out == [[0x44, 1], [0x44, 65538]]  # 0 replayed -> jump to 65537 -> accepted
    assert (tmp_path / "seq").read_text() == "65601\n"  # the jump was persisted
    assert [s[1] for s in gw.seen] == [b"\x81\x01", b"\x81\x02"]


async def test_replay_resends_are_bounded(tmp_path):
    async with Gateway(tmp_path / "gw") as gw:
        out = await run_node(gw, """
out(node.post('u', b'\\x80')[0])
class Stuck(FixedSeq):
    def take(self):
        return 0  # a broken store: the resend replays number 0 again
ctx.seq = Stuck(0)
try:
    node.post('u', b'\\x80')
except oscore.UnprotectedResponse as e:
    out(e.code, e.diagnostic, len(client.sent))
""")
    assert out == [[0x44], [0x81, b"Replay detected".hex(), 1 + 1 + 8]]


async def test_node_catches_up_with_a_window_far_ahead(tmp_path):
    """An exported copy of the context used numbers from 2**20 on; the node itself is at 5."""
    async with Gateway(tmp_path / "gw") as gw:
        out = await run_node(gw, """
store.next = 2**20
out(node.post('u', b'\\x80')[0])
store.next = 5
out(node.post('u', b'\\x81\\x01')[0], store.next > 2**20, len(client.sent))
""")
    # 65536 * (1 + 2 + 4 + 8 + 16) = 2031616 > 2**20: five jumps, six sends after the first
    assert out == [[0x44], [0x44, True, 1 + 6]]


@pytest.mark.parametrize("secret, kid, expected", [
    (bytes(16), KID, [0x80, b"Decryption failed".hex()]),
    (SECRET, b"\x00\x2b", [0x81, b"Security context not found".hex()]),
])
async def test_unprotected_errors_raise(tmp_path, secret, kid, expected):
    async with Gateway(tmp_path / "gw") as gw:
        out = await run_node(gw, """
try:
    node.post('u', b'\\x80')
    out('accepted')
except oscore.UnprotectedResponse as e:
    out(e.code, e.diagnostic, len(client.sent))
""", secret=secret, kid=kid)
    assert out == [expected + [1]]  # no resend
    assert gw.seen == []


async def test_sequence_survives_reboot_against_the_gateway(tmp_path):
    async with Gateway(tmp_path / "gw") as gw:
        body = """
first = store.next
for i in range(3):
    code, _ = node.post('u', bytes((0x80 + i,)))
out(first, store.next, code)
"""
        first = await run_node(gw, body)
        second = await run_node(gw, body)  # a reboot: new VM, same flash
    assert first == [[0, 3, 0x44]]
    assert second == [[64, 67, 0x44]]  # starts at the mark, no "Replay detected"
    assert len(gw.seen) == 6


@pytest.mark.parametrize("token_len, content_format, seq, bt, size", [
    (2, 112, 65536, 1795000000, 69),  # the water-level frame as protocol.md describes it
    (2, None, 65536, 1795000000, 67),  # Content-Format omitted (the gateway assumes 112)
    (0, None, 65536, 1795000000, 65),  # and a zero-length token
    (2, 112, 65535, 1795000000, 68),  # a 2-byte Partial IV
    (0, None, 65535, 1795000000, 64),  # all three
    (2, 112, 65536, None, 63),  # no base time: the readings were taken "now"
    (2, 112, 65536, -300, 67),  # relative base time, a queued reading
    (2, None, 65536, None, 61),  # what a node sends for a live reading (protocol.md §3)
    (2, None, 65536, -300, 65),  # what it sends for a queued reading
])
async def test_water_level_frame_size_on_the_wire(tmp_path, token_len, content_format, seq,
                                                   bt, size):
    async with Gateway(tmp_path / "gw") as gw:
        out = await run_node(gw, """
payload = senml.encode([('level', 1234), ('temp', 1150), ('batt', 3012)], bt=%r)
code, _, _ = node.request(coap.POST, 'u', payload, content_format=%r)
sent = client.sent[0]
option = coap.decode(sent).option(coap.OSCORE)
out(code, len(payload), len(sent), len(coap.decode(sent).token), option[0] & 7)
""" % (bt, content_format), token_len=token_len, store="FixedSeq(%d)" % seq)
    payload_len = 41 - 6 + (0 if bt is None else len(cbor2.dumps(-3) + cbor2.dumps(bt)))
    piv_len = 3 if seq >= 65536 else 2
    assert out == [[0x44, payload_len, size, token_len, piv_len]]
    # header 4 + token + OSCORE option (1 + flags 1 + PIV + kid 2) + marker 1 +
    # ciphertext (code 1 + Uri-Path 2 + Content-Format 2 + marker 1 + payload) + tag 8
    assert size == (4 + token_len + 4 + piv_len + 1 + 1 + 2
                    + (2 if content_format else 0) + 1 + payload_len + 8)
    assert len(gw.seen[0][1]) == payload_len
