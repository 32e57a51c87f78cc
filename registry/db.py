"""The device registry: which devices exist, where they are, and their OSCORE material.

SQLAlchemy over any database URL: an SQLite file by default, PostgreSQL for a city-sized fleet.
The master secret of a device is made here, once, and lives only here and on the device.

It also holds the public half of the fleet's release key (table ``release_key``): provisioning
writes it into every node's config.json and ``fleet release`` refuses to sign with any other
key, so the registry is where "the key the nodes trust" is decided. The private key is a file
on the release engineer's machine (fleet/releasekey.py) and never comes here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import (
    DateTime,
    Float,
    Integer,
    LargeBinary,
    String,
    create_engine,
    event,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from protocol.vocabulary import ROLES

DEFAULT_URL = "sqlite:///fleet.db"
KID_BYTES = 2
MAX_KID = 2 ** (8 * KID_BYTES) - 1
SECRET_BYTES = 16
SALT_BYTES = 8
GATEWAY_SENDER_ID = b""
RELEASE_KEY_BYTES = 65         # an uncompressed P-256 point: 04 || X || Y
FINGERPRINT_BYTES = 8
_CURRENT = 1                   # the release_key table's one row
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,47}$")
_SITE_RE = _ID_RE


class RegistryError(Exception):
    """The registry's one error type: an operation a user asked for cannot be done, and the
    message says why. Its callers translate it into their own (fleet: FleetError)."""


class Base(DeclarativeBase):
    pass


class Device(Base):
    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(48), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    site: Mapped[str] = mapped_column(String(48), index=True)
    kid: Mapped[int] = mapped_column(Integer, unique=True)
    master_secret: Mapped[bytes] = mapped_column(LargeBinary(SECRET_BYTES))
    master_salt: Mapped[bytes] = mapped_column(LargeBinary(SALT_BYTES))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    provisioned_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    street: Mapped[str | None] = mapped_column(String(64), nullable=True)
    position_m: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Provisioning (fleet/provision.py). provisioned_at is set only once the node's first
    # authenticated uplink reached the gateway (or, with no broker to watch, once what was
    # written verified and the board was reset); any run that writes to the board clears it
    # first, and provision_status / provision_message say how the last run ended.
    mac: Mapped[str | None] = mapped_column(String(17), nullable=True)
    board: Mapped[str | None] = mapped_column(String(48), nullable=True)
    firmware_version: Mapped[str | None] = mapped_column(String(32), nullable=True)
    app_version: Mapped[str | None] = mapped_column(String(48), nullable=True)
    provision_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    provision_message: Mapped[str | None] = mapped_column(String(400), nullable=True)
    # Node settings beyond the site's (interval_s and role sections such as "shaft"), as JSON,
    # so that re-provisioning a device writes the same configuration without retyping it.
    node_settings: Mapped[str | None] = mapped_column(String(4000), nullable=True)
    # When the current master secret was made by a rotation (NULL: made at registration), and
    # when it was first written to a board: from then on a board may have used nonces under it.
    key_rotated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                            nullable=True)
    key_written_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                            nullable=True)

    @property
    def kid_bytes(self) -> bytes:
        return self.kid.to_bytes(KID_BYTES, "big")

    def summary(self) -> dict:
        """What may be shown anywhere: everything but the key material."""
        return {
            "id": self.id,
            "role": self.role,
            "site": self.site,
            "kid": self.kid_bytes.hex(),
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "provisioned_at": self.provisioned_at.isoformat() if self.provisioned_at else None,
            "street": self.street,
            "position_m": self.position_m,
            "mac": self.mac,
            "board": self.board,
            "firmware_version": self.firmware_version,
            "app_version": self.app_version,
            "provision_status": self.provision_status,
            "provision_message": self.provision_message,
            "key_rotated_at": self.key_rotated_at.isoformat() if self.key_rotated_at else None,
        }

    def settings(self) -> dict:
        """The stored node settings ({} when none were given)."""
        return json.loads(self.node_settings) if self.node_settings else {}


class Site(Base):
    """A site profile: what every node of a site shares, typed once by whoever sets up the
    site. The WiFi key and the gateway address end up in each node's config.json."""

    __tablename__ = "sites"

    name: Mapped[str] = mapped_column(String(48), primary_key=True)
    gateway_host: Mapped[str] = mapped_column(String(255))
    gateway_port: Mapped[int] = mapped_column(Integer, default=5683)
    wifi_ssid: Mapped[str] = mapped_column(String(32), default="")
    wifi_psk: Mapped[str] = mapped_column(String(64), default="")
    mqtt_url: Mapped[str | None] = mapped_column(String(255), nullable=True)
    mqtt_prefix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    board: Mapped[str | None] = mapped_column(String(48), nullable=True)
    firmware: Mapped[str | None] = mapped_column(String(255), nullable=True)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    def summary(self) -> dict:
        """What may be shown anywhere: the WiFi key only as whether one is set."""
        return {"name": self.name, "gateway": "%s:%d" % (self.gateway_host, self.gateway_port),
                "wifi_ssid": self.wifi_ssid, "wifi_psk": "set" if self.wifi_psk else "none",
                "mqtt_url": self.mqtt_url, "mqtt_prefix": self.mqtt_prefix,
                "board": self.board, "firmware": self.firmware}

    def __repr__(self) -> str:
        return "Site(%r, gateway %s:%d)" % (self.name, self.gateway_host, self.gateway_port)


SITE_FIELDS = ("gateway_host", "gateway_port", "wifi_ssid", "wifi_psk", "mqtt_url",
               "mqtt_prefix", "board", "firmware")
class ReleaseKey(Base):
    """The fleet's current release key, public half only (docs/updates.md): one row, id 1.
    ``public_key`` is the 65-byte uncompressed P-256 point nodes verify manifests with."""

    __tablename__ = "release_key"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary(RELEASE_KEY_BYTES))
    fingerprint: Mapped[str] = mapped_column(String(2 * FINGERPRINT_BYTES))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    def __repr__(self) -> str:
        return "ReleaseKey(%s)" % self.fingerprint


def key_fingerprint(public_key: bytes) -> str:
    """A short name for a public key, for people: the first 8 bytes of its SHA-256, hex."""
    return hashlib.sha256(public_key).digest()[:FINGERPRINT_BYTES].hex()


# Columns `record_provisioning` may set.
PROVISION_FIELDS = ("mac", "board", "firmware_version", "app_version", "provision_status",
                    "provision_message", "node_settings", "provisioned_at", "key_written_at")


@dataclass(frozen=True)
class OscoreMaterial:
    """One device's OSCORE context parameters, seen from the device (the client)."""

    sender_id: bytes
    recipient_id: bytes
    master_secret: bytes
    master_salt: bytes

    def __repr__(self) -> str:  # never print key material by accident
        return "OscoreMaterial(sender_id=%s, recipient_id=%s, <secret hidden>)" % (
            self.sender_id.hex(), self.recipient_id.hex())


def material_of(device: Device) -> OscoreMaterial:
    return OscoreMaterial(device.kid_bytes, GATEWAY_SENDER_ID, device.master_secret,
                          device.master_salt)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    # WAL: the gateway reads while the fleet tool writes; busy_timeout instead of "locked" errors.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


def registry_url(explicit: str | None = None) -> str:
    """--registry URL, else $FLEET_REGISTRY, else sqlite:///fleet.db in the current folder."""
    return explicit or os.environ.get("FLEET_REGISTRY") or DEFAULT_URL


def shown_url(url: str) -> str:
    """A registry URL as messages and logs show it: without the database password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:   # SQLAlchemy's ArgumentError, and anything a strange string raises
        return "(an invalid URL)"


class Registry:
    def __init__(self, url: str | None = None) -> None:
        self.url = registry_url(url)
        self.shown = shown_url(self.url)
        self.engine = create_engine(self.url)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        # Tables added since a registry was made (sites, release_key) are created here.
        Base.metadata.create_all(self.engine)
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """Registries made by an older version get the nullable columns added since."""
        have = {c["name"] for c in inspect(self.engine).get_columns(Device.__tablename__)}
        with self.engine.begin() as conn:
            for column in Device.__table__.columns:
                if column.name not in have and column.nullable:
                    ddl = column.type.compile(self.engine.dialect)
                    conn.execute(text("ALTER TABLE %s ADD COLUMN %s %s"
                                      % (Device.__tablename__, column.name, ddl)))

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def add_device(self, device_id: str, role: str, site: str, *, street: str | None = None,
                   position_m: float | None = None) -> Device:
        if not _ID_RE.match(device_id):
            raise RegistryError("device id %r: use 1-48 characters a-z, 0-9, '-' and '_', "
                                "starting with a letter or digit" % device_id)
        if role not in ROLES:
            raise RegistryError("role %r: choose one of %s" % (role, ", ".join(ROLES)))
        if not _SITE_RE.match(site):
            raise RegistryError("site %r: use 1-48 characters a-z, 0-9, '-' and '_'" % site)
        with self.session() as s:
            if s.get(Device, device_id) is not None:
                raise RegistryError("device %s is already registered" % device_id)
            kid = (s.scalar(select(func.max(Device.kid))) or 0) + 1
            if kid > MAX_KID:
                raise RegistryError("no key ids left (%d devices registered)" % MAX_KID)
            device = Device(id=device_id, role=role, site=site, kid=kid,
                            master_secret=secrets.token_bytes(SECRET_BYTES),
                            master_salt=secrets.token_bytes(SALT_BYTES),
                            created_at=datetime.now(timezone.utc),
                            street=street, position_m=position_m)
            s.add(device)
            try:
                s.commit()
            except IntegrityError:
                # Another writer took the same key id or device id between our read and commit.
                raise RegistryError("device %s could not be added (registry changed "
                                    "concurrently); try again" % device_id) from None
            return device

    def get(self, device_id: str) -> Device:
        with self.session() as s:
            device = s.get(Device, device_id)
        if device is None:
            raise RegistryError("no device %s in the registry %s" % (device_id, self.shown))
        return device

    def devices(self, site: str | None = None) -> list[Device]:
        with self.session() as s:
            query = select(Device).order_by(Device.site, Device.id)
            if site is not None:
                query = query.where(Device.site == site)
            return list(s.scalars(query))

    def by_kid(self, kid: int) -> Device | None:
        with self.session() as s:
            return s.scalar(select(Device).where(Device.kid == kid))

    def changed_since(self, kid_floor: int) -> list[Device]:
        """Devices with a key id above ``kid_floor`` (new registrations), in key-id order."""
        with self.session() as s:
            return list(s.scalars(select(Device).where(Device.kid > kid_floor)
                                  .order_by(Device.kid)))

    def _update(self, device_id: str, **values) -> Device:
        """Set columns of one device in one transaction; the device as stored."""
        with self.session() as s:
            device = s.get(Device, device_id)
            if device is None:
                raise RegistryError("no device %s in the registry %s" % (device_id, self.shown))
            for name, value in values.items():
                setattr(device, name, value)
            s.commit()
            return device

    def mark_provisioned(self, device_id: str) -> None:
        self._update(device_id, provisioned_at=datetime.now(timezone.utc))

    def place(self, device_id: str, street: str | None, position_m: float | None) -> Device:
        """Where a lamp stands (the gateway's neighbour rule reads it); None clears it."""
        return self._update(device_id, street=street, position_m=position_m)

    # --- provisioning ----------------------------------------------------------------------

    def by_mac(self, mac: str) -> Device | None:
        with self.session() as s:
            return s.scalar(select(Device).where(Device.mac == mac.lower()))

    def record_provisioning(self, device_id: str, **fields) -> Device:
        """Set provisioning columns of one device (names from PROVISION_FIELDS)."""
        unknown = set(fields) - set(PROVISION_FIELDS)
        if unknown:
            raise TypeError("not provisioning fields: %s" % ", ".join(sorted(unknown)))
        return self._update(device_id, **fields)

    def remove_unused_device(self, device_id: str) -> None:
        """Remove a device whose key never left the registry (never written to a board)."""
        with self.session() as s:
            device = s.get(Device, device_id)
            if device is None:
                return
            if device.key_written_at is not None or device.provisioned_at is not None:
                raise RegistryError("device %s has been on a board; it is kept" % device_id)
            s.delete(device)
            s.commit()

    def rotate_key(self, device_id: str) -> Device:
        """New master secret and salt for a device, same key id. The gateway notices on the
        device's first frame under the new key (its tag check fails against the old context,
        or its sequence number is below the old window, and it re-reads the registry)."""
        return self._update(device_id, master_secret=secrets.token_bytes(SECRET_BYTES),
                            master_salt=secrets.token_bytes(SALT_BYTES),
                            key_rotated_at=datetime.now(timezone.utc), key_written_at=None,
                            provisioned_at=None)

    # --- site profiles ---------------------------------------------------------------------

    def set_site(self, name: str, **fields) -> Site:
        """Create or update a site profile; fields not given keep their value."""
        if not _SITE_RE.match(name):
            raise RegistryError("site %r: use 1-48 characters a-z, 0-9, '-' and '_'" % name)
        unknown = set(fields) - set(SITE_FIELDS)
        if unknown:
            raise TypeError("not site fields: %s" % ", ".join(sorted(unknown)))
        with self.session() as s:
            site = s.get(Site, name)
            if site is None:
                if not fields.get("gateway_host"):
                    raise RegistryError("site %s is new: give its gateway address (--gateway "
                                        "HOST[:PORT])" % name)
                site = Site(name=name, gateway_port=5683, wifi_ssid="", wifi_psk="")
                s.add(site)
            for key, value in fields.items():
                if value is not None:
                    setattr(site, key, value)
            site.updated_at = datetime.now(timezone.utc)
            s.commit()
            return site

    def site(self, name: str) -> Site | None:
        with self.session() as s:
            return s.get(Site, name)

    def sites(self) -> list[Site]:
        with self.session() as s:
            return list(s.scalars(select(Site).order_by(Site.name)))

    # --- the release key ---------------------------------------------------------------------

    def set_release_key(self, public_key: bytes) -> ReleaseKey:
        """Make ``public_key`` the fleet's release key (it replaces any earlier one: nodes
        provisioned with that one refuse releases signed with this one)."""
        if len(public_key) != RELEASE_KEY_BYTES or public_key[0] != 4:
            raise RegistryError("a release key must be a %d-byte uncompressed P-256 point "
                                "(04 || X || Y)" % RELEASE_KEY_BYTES)
        with self.session() as s:
            row = s.get(ReleaseKey, _CURRENT)
            if row is None:
                row = ReleaseKey(id=_CURRENT)
                s.add(row)
            row.public_key = bytes(public_key)
            row.fingerprint = key_fingerprint(public_key)
            row.created_at = datetime.now(timezone.utc)
            s.commit()
            return row

    def release_key(self) -> ReleaseKey | None:
        """The fleet's current release key, or None when none was made yet."""
        with self.session() as s:
            return s.get(ReleaseKey, _CURRENT)


def export_oscore(device: Device, directory: Path, *, seq_start: int) -> Path:
    """Write ``device``'s client context as an aiocoap credentials directory.

    Returns the path of a credentials file for ``aiocoap-client --credentials``. The sequence
    number starts at ``seq_start`` so that the exported context never reuses a nonce the device
    itself has used (AES-CCM must never see a (key, nonce) pair twice).
    """
    m = material_of(device)
    directory.mkdir(parents=True, exist_ok=True)
    settings = {
        "sender-id_hex": m.sender_id.hex(),
        "recipient-id_hex": m.recipient_id.hex(),
        "algorithm": "AES-CCM-16-64-128",
        "kdf-hashfun": "sha256",
    }
    secret = {"secret_hex": m.master_secret.hex(), "salt_hex": m.master_salt.hex()}
    _write_private(directory / "settings.json", json.dumps(settings, indent=2) + "\n")
    _write_private(directory / "secret.json", json.dumps(secret, indent=2) + "\n")
    _write_private(directory / "sequence.json",
                   json.dumps({"next-to-send": seq_start, "received": "unknown"}) + "\n")
    credentials = directory / "credentials.json"
    _write_private(credentials, json.dumps(
        {"coap://*": {"oscore": {"basedir": str(directory.resolve()) + "/"}}}, indent=2) + "\n")
    return credentials


def _write_private(path: Path, content: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(content)
