"""The signed release manifest (docs/protocol.md §9): what a node checks before it installs an
update, and how a release lies in the release store that gateways serve from.

A release is a folder ``<store>/<version>/`` holding ``manifest`` and every file the manifest
names, flat: a file's name in the store is its path on the board with ``/`` written ``+``
(``app/node.mpy`` is ``app+node.mpy``), and a MicroPython image for the OTA slots is
``micropython.bin``. The gateway serves them as ``GET /f/<version>/<name>``.

``manifest`` is the CBOR array ``[1, body, signature]``: ``body`` a byte string holding the
CBOR map below, ``signature`` ECDSA P-256 over SHA-256(body), the raw 64 bytes ``r || s``. The
node holds only the public key (65 bytes, uncompressed SEC1 ``04 || X || Y``), written at
provisioning and never settable over the air; it verifies the signature over the bytes it
received before it decodes the body, so what it decodes is what the fleet signed.

The body's keys (short: the node parses them): ``v`` release version, ``n`` release number
(strictly increasing; a node refuses a number not above the one it runs: a rollback is a new
release with old content, marked ``rb``), ``prev`` the release it was built on, ``roles``,
``mp`` the lowest MicroPython version it runs on, ``mpy`` the .mpy format of its compiled
files, ``files`` ``[[path, size, sha256], ...]``, ``fw`` ``[version, size, sha256]`` or absent,
``rb``, ``notes``, ``t`` build time (unix s). The firmware's parser
(firmware/app/update.py) is held to this module by tests/test_firmware_pins.py.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from protocol.errors import ProtocolError
from protocol.vocabulary import ROLES

FORMAT = 1
MANIFEST = "manifest"               # the manifest's name in a release
FIRMWARE_FILE = "micropython.bin"   # the MicroPython image's name in a release
SIGNATURE_BYTES = 64
PUBLIC_KEY_BYTES = 65
MAX_MANIFEST_BYTES = 8192           # what a node accepts (it holds the manifest in RAM)
# A version names a folder in the store and travels in `f/<version>/manifest`: the file
# service's and the `ota` command's name rules.
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,31}$")
_PATH_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}(/[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}){0,3}$")


class ManifestError(ProtocolError):
    """A manifest that does not follow the format; the message says what is wrong."""


def store_name(path: str) -> str:
    """A file's name in a release folder: its path on the board with ``/`` written ``+``."""
    return path.replace("/", "+")


@dataclass(frozen=True)
class FileEntry:
    path: str          # on the board's filesystem, e.g. "app/node.mpy"
    size: int
    sha256: bytes

    @property
    def name(self) -> str:
        return store_name(self.path)


@dataclass(frozen=True)
class FirmwareEntry:
    version: str       # the MicroPython version the image's app descriptor names
    size: int
    sha256: bytes
    name: str = FIRMWARE_FILE


@dataclass(frozen=True)
class Manifest:
    version: str
    number: int
    roles: tuple[str, ...]
    micropython: str               # lowest MicroPython version, "1.24.0"
    mpy: int                       # .mpy format (sys.implementation._mpy & 0xFF)
    files: tuple[FileEntry, ...]
    previous: str | None = None
    firmware: FirmwareEntry | None = None
    rollback: bool = False
    notes: str = ""
    built: int = 0
    extra: dict = field(default_factory=dict, compare=False)

    def body(self) -> bytes:
        """The bytes that are signed: canonical CBOR, so one manifest has one body."""
        data = {"v": self.version, "n": self.number, "prev": self.previous,
                "roles": list(self.roles), "mp": self.micropython, "mpy": self.mpy,
                "files": [[f.path, f.size, f.sha256] for f in self.files],
                "rb": self.rollback, "notes": self.notes, "t": self.built}
        if self.firmware is not None:
            fw = self.firmware
            data["fw"] = [fw.version, fw.size, fw.sha256]
        return cbor2.dumps(data, canonical=True)

    @classmethod
    def from_body(cls, body: bytes) -> "Manifest":
        try:
            data = cbor2.loads(body)
        except Exception as exc:     # cbor2 raises several types for bad input
            raise ManifestError("the manifest body is not CBOR: %s" % exc) from None
        if not isinstance(data, dict):
            raise ManifestError("the manifest body is not a map")
        version = _text(data, "v")
        if not VERSION_RE.match(version):
            raise ManifestError("release version %r is not allowed" % version)
        number = data.get("n")
        if not isinstance(number, int) or isinstance(number, bool) or number < 1:
            raise ManifestError("release number must be a positive integer")
        roles = data.get("roles")
        if not isinstance(roles, list) or not roles or not set(roles) <= set(ROLES):
            raise ManifestError("roles must be a non-empty list of %s" % ", ".join(ROLES))
        files = []
        for entry in _list(data, "files"):
            if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)
                    and _PATH_RE.match(entry[0]) and isinstance(entry[1], int)
                    and entry[1] >= 0 and isinstance(entry[2], bytes) and len(entry[2]) == 32):
                raise ManifestError("a files entry is not [path, size, sha256]: %r" % (entry,))
            files.append(FileEntry(*entry))
        if len({f.path for f in files}) != len(files):
            raise ManifestError("a path is listed twice")
        fw = data.get("fw")
        firmware = None
        if fw is not None:
            if not (isinstance(fw, list) and len(fw) == 3 and isinstance(fw[0], str)
                    and isinstance(fw[1], int) and fw[1] > 0 and isinstance(fw[2], bytes)
                    and len(fw[2]) == 32):
                raise ManifestError("fw is not [version, size, sha256]")
            firmware = FirmwareEntry(*fw)
        previous = data.get("prev")
        if previous is not None and not isinstance(previous, str):
            raise ManifestError("prev must be a version or null")
        mpy = data.get("mpy")
        if not isinstance(mpy, int) or isinstance(mpy, bool):
            raise ManifestError("mpy must be an integer")
        known = {"v", "n", "prev", "roles", "mp", "mpy", "files", "fw", "rb", "notes", "t"}
        return cls(version, number, tuple(roles), _text(data, "mp"), mpy, tuple(files),
                   previous, firmware, data.get("rb") is True, data.get("notes") or "",
                   int(data.get("t") or 0), {k: v for k, v in data.items() if k not in known})

    def app_bytes(self) -> int:
        return sum(f.size for f in self.files)


def _text(data: dict, key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise ManifestError("%s must be a text" % key)
    return value


def _list(data: dict, key: str) -> list:
    value = data.get(key)
    if not isinstance(value, list):
        raise ManifestError("%s must be a list" % key)
    return value


# --- the signed file ----------------------------------------------------------------------

def pack(body: bytes, signature: bytes) -> bytes:
    """The ``manifest`` file: ``[1, body, signature]``."""
    return cbor2.dumps([FORMAT, body, signature])


def unpack(data: bytes) -> tuple[bytes, bytes]:
    """(body, signature) of a ``manifest`` file; ManifestError when it is not one."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError("the manifest is %d bytes, more than a node takes (%d)"
                            % (len(data), MAX_MANIFEST_BYTES))
    try:
        outer = cbor2.loads(data)
    except Exception as exc:
        raise ManifestError("not a manifest (not CBOR: %s)" % exc) from None
    if not (isinstance(outer, list) and len(outer) == 3 and outer[0] == FORMAT
            and isinstance(outer[1], bytes) and isinstance(outer[2], bytes)
            and len(outer[2]) == SIGNATURE_BYTES):
        raise ManifestError("not a manifest of format %d ([1, body, 64-byte signature])"
                            % FORMAT)
    return outer[1], outer[2]


def public_key_bytes(key: ec.EllipticCurvePublicKey) -> bytes:
    """The 65-byte uncompressed point the node holds."""
    return key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def sign(private_key: ec.EllipticCurvePrivateKey, body: bytes) -> bytes:
    """ECDSA P-256 / SHA-256 over ``body``, as the raw ``r || s`` a node verifies."""
    r, s = decode_dss_signature(private_key.sign(body, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def verify(public_key: bytes, body: bytes, signature: bytes) -> bool:
    """What the node checks, on the host (``fleet release verify``, the tests)."""
    if len(signature) != SIGNATURE_BYTES or len(public_key) != PUBLIC_KEY_BYTES:
        return False
    try:
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), public_key)
        der = encode_dss_signature(int.from_bytes(signature[:32], "big"),
                                   int.from_bytes(signature[32:], "big"))
        key.verify(der, body, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


def file_digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()
