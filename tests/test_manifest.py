"""The release manifest's format (protocol/manifest.py): one body per manifest, signed and
verified as a node verifies it, and every malformed manifest refused with a reason."""

import hashlib

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from protocol import manifest as mf


def _manifest(**changes) -> mf.Manifest:
    fields = dict(version="0.2.0", number=2, roles=("shaft",), micropython="1.24.0", mpy=6,
                  files=(mf.FileEntry("app/node.mpy", 3, hashlib.sha256(b"abc").digest()),
                         mf.FileEntry("lib/cbor.mpy", 0, hashlib.sha256(b"").digest())),
                  previous="0.1.0", notes="fix the sonar retry", built=1_790_000_000)
    fields.update(changes)
    return mf.Manifest(**fields)


def test_a_manifest_survives_its_round_trip_and_signs_as_the_node_checks_it():
    key = ec.generate_private_key(ec.SECP256R1())
    public = mf.public_key_bytes(key.public_key())
    m = _manifest(firmware=mf.FirmwareEntry("v1.25.0", 1_500_000, bytes(32)))
    body = m.body()
    assert body == _manifest(firmware=m.firmware).body()      # canonical: one body
    data = mf.pack(body, mf.sign(key, body))
    got_body, signature = mf.unpack(data)
    assert mf.verify(public, got_body, signature)
    assert mf.Manifest.from_body(got_body) == m
    assert len(public) == mf.PUBLIC_KEY_BYTES and public[0] == 4
    assert [f.name for f in m.files] == ["app+node.mpy", "lib+cbor.mpy"]


def test_a_changed_body_a_changed_signature_or_another_key_does_not_verify():
    key = ec.generate_private_key(ec.SECP256R1())
    other = mf.public_key_bytes(ec.generate_private_key(ec.SECP256R1()).public_key())
    public = mf.public_key_bytes(key.public_key())
    body = _manifest().body()
    signature = mf.sign(key, body)
    assert not mf.verify(public, _manifest(number=3).body(), signature)
    assert not mf.verify(public, body, signature[:-1] + bytes([signature[-1] ^ 1]))
    assert not mf.verify(other, body, signature)
    assert not mf.verify(public, body, signature[:63])
    assert not mf.verify(public[:64], body, signature)


@pytest.mark.parametrize("change,message", [
    ({"v": "../etc"}, "release version '../etc' is not allowed"),
    ({"n": 0}, "release number must be a positive integer"),
    ({"n": True}, "release number must be a positive integer"),
    ({"roles": ["street"]}, "roles must be a non-empty list"),
    ({"files": [["/abs/path", 1, bytes(32)]]}, "a files entry is not"),
    ({"files": [["app/x.mpy", 1, bytes(31)]]}, "a files entry is not"),
    ({"files": [["a.mpy", 1, bytes(32)], ["a.mpy", 1, bytes(32)]]}, "a path is listed twice"),
    ({"fw": ["v1", 0, bytes(32)]}, "fw is not"),
    ({"mpy": "6"}, "mpy must be an integer"),
    ({"mp": ""}, "mp must be a text"),
])
def test_a_malformed_body_is_refused_with_its_reason(change, message):
    data = cbor2.loads(_manifest().body())
    data.update(change)
    with pytest.raises(mf.ManifestError, match=message):
        mf.Manifest.from_body(cbor2.dumps(data))


@pytest.mark.parametrize("data,message", [
    (b"\xff\xff", "not CBOR"),
    (cbor2.dumps([2, b"body", bytes(64)]), "not a manifest of format 1"),
    (cbor2.dumps([1, b"body", bytes(63)]), "not a manifest of format 1"),
    (bytes(9000), "more than a node takes"),
])
def test_a_file_that_is_no_signed_manifest_is_refused(data, message):
    with pytest.raises(mf.ManifestError, match=message):
        mf.unpack(data)
