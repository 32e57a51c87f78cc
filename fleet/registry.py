"""The device registry: which devices exist, where they are, and their OSCORE material.

SQLAlchemy over any database URL: an SQLite file by default, PostgreSQL for a city-sized fleet.
The master secret of a device is made here, once, and lives only here and on the device.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import (DateTime, Float, Integer, LargeBinary, String, create_engine, event,
                        func, inspect, select, text)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from gateway.vocabulary import ROLES

DEFAULT_URL = "sqlite:///fleet.db"
KID_BYTES = 2
MAX_KID = 2 ** (8 * KID_BYTES) - 1
SECRET_BYTES = 16
SALT_BYTES = 8
GATEWAY_SENDER_ID = b""
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,47}$")
_SITE_RE = _ID_RE


class RegistryError(Exception):
    """A registry operation a user asked for cannot be done; the message says why."""


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
        }


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


class Registry:
    def __init__(self, url: str | None = None) -> None:
        self.url = registry_url(url)
        self.engine = create_engine(self.url)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
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
            raise RegistryError("no device %s in the registry %s" % (device_id, self.url))
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

    def mark_provisioned(self, device_id: str) -> None:
        with self.session() as s:
            device = s.get(Device, device_id)
            if device is None:
                raise RegistryError("no device %s in the registry" % device_id)
            device.provisioned_at = datetime.now(timezone.utc)
            s.commit()


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
