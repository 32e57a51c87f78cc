"""The gateway's OSCORE context store: one in-memory context per device, indexed by key id.

aiocoap's stock credentials scan every context for each request and keep a locked directory per
device; with 10,000 devices that is slow and runs out of file handles. Here the look-up is a dict
access, keys come from the fleet registry, and the only state the gateway writes, its own sender
sequence numbers, lives in one SQLite file (RFC 8613 Appendix B.1.1: a mark is written ahead of
use, so a crash skips numbers but never reuses one). Replay windows are not persisted: after a
restart each device's first request gets a 4.01 Echo challenge (Appendix B.1.2).
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from aiocoap import oscore

from fleet.registry import KID_BYTES, Device, Registry
from gateway.metrics import Metrics

log = logging.getLogger("gateway.contexts")

REPLAY_WINDOW = 32
SEQ_CHUNK = 64
_ALG = oscore.algorithms["AES-CCM-16-64-128"]
_HASH = oscore.hashfunctions["sha256"]


@dataclass(frozen=True)
class DeviceInfo:
    id: str
    site: str
    role: str
    kid: bytes


class SequenceStore:
    """Persisted sender-sequence marks, one row per key id, in one SQLite file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE IF NOT EXISTS sender_seq "
                        "(kid BLOB PRIMARY KEY, next_to_send INTEGER NOT NULL)")

    def mark(self, kid: bytes) -> int:
        row = self.db.execute("SELECT next_to_send FROM sender_seq WHERE kid=?", (kid,)).fetchone()
        return row[0] if row else 0

    def set_mark(self, kid: bytes, value: int) -> None:
        self.db.execute("INSERT INTO sender_seq(kid, next_to_send) VALUES(?, ?) "
                        "ON CONFLICT(kid) DO UPDATE SET next_to_send=excluded.next_to_send",
                        (kid, value))

    def close(self) -> None:
        self.db.close()


class DeviceContext(oscore.CanProtect, oscore.CanUnprotect, oscore.SecurityContextUtils):
    """The gateway's side of one device's OSCORE context (docs/protocol.md §5)."""

    def __init__(self, device: Device, seq_store: SequenceStore, metrics: Metrics) -> None:
        self.info = DeviceInfo(device.id, device.site, device.role, device.kid_bytes)
        self.alg_aead = _ALG
        self.hashfun = _HASH
        self.sender_id = b""
        self.recipient_id = device.kid_bytes
        self.id_context = None
        self.derive_keys(device.master_salt, device.master_secret)
        self.recipient_replay_window = oscore.ReplayWindow(REPLAY_WINDOW, lambda: None)
        self.echo_recovery = secrets.token_bytes(8)
        self._seq_store = seq_store
        self._metrics = metrics
        self.sender_sequence_number = seq_store.mark(self.recipient_id)
        self._seq_mark = self.sender_sequence_number

    def post_seqnoincrease(self) -> None:
        if self.sender_sequence_number >= self._seq_mark:
            self._seq_mark = self.sender_sequence_number + SEQ_CHUNK
            self._seq_store.set_mark(self.recipient_id, self._seq_mark)

    def unprotect(self, protected_message, request_id=None):
        try:
            return super().unprotect(protected_message, request_id)
        except oscore.ReplayErrorWithEcho:
            self._metrics.inc("echo_challenges_total")
            log.info("echo challenge device=%s (replay state unknown since start)", self.info.id)
            raise
        except oscore.ReplayError as exc:
            self._metrics.reject("replay", str(exc), self.info.id)
            raise
        except oscore.DecodeError as exc:
            self._metrics.reject("bad_oscore", str(exc), self.info.id)
            raise
        except oscore.ProtectionInvalid as exc:
            self._metrics.reject("bad_tag", str(exc), self.info.id)
            raise

    def __repr__(self) -> str:
        return "<DeviceContext %s kid=%s>" % (self.info.id, self.recipient_id.hex())


class ContextStore:
    """Server credentials for aiocoap's OscoreSiteWrapper: ``find_oscore`` by key id."""

    def __init__(self, registry: Registry, seq_store: SequenceStore, metrics: Metrics,
                 *, miss_interval_s: float = 2.0) -> None:
        self._registry = registry
        self._seq_store = seq_store
        self._metrics = metrics
        self._miss_interval_s = miss_interval_s
        self._by_kid: dict[bytes, DeviceContext] = {}
        self._recent_misses: dict[bytes, float] = {}

    def load_all(self) -> int:
        for device in self._registry.devices():
            self._add(device)
        return len(self._by_kid)

    def _add(self, device: Device) -> DeviceContext:
        ctx = DeviceContext(device, self._seq_store, self._metrics)
        self._by_kid[ctx.recipient_id] = ctx
        return ctx

    def __len__(self) -> int:
        return len(self._by_kid)

    def find_oscore(self, unprotected: dict) -> DeviceContext:
        if oscore.COSE_KID_CONTEXT in unprotected:
            self._metrics.reject("unknown_kid", "request carries an ID context")
            raise KeyError("no ID contexts here")
        kid = unprotected.get(oscore.COSE_KID)
        ctx = self._by_kid.get(kid)
        if ctx is not None:
            return ctx
        ctx = self._look_up(kid)
        if ctx is None:
            self._metrics.reject("unknown_kid", "key id %s" % (kid.hex() if kid else "absent"))
            raise KeyError(kid)
        return ctx

    def _look_up(self, kid: bytes | None) -> DeviceContext | None:
        """A device registered after start: one indexed query, at most once per interval per kid."""
        if not kid or len(kid) != KID_BYTES:
            return None
        now = time.monotonic()
        if now - self._recent_misses.get(kid, -1e9) < self._miss_interval_s:
            return None
        if len(self._recent_misses) > 10_000:
            self._recent_misses.clear()
        self._metrics.inc("registry_lookups_total")
        device = self._registry.by_kid(int.from_bytes(kid, "big"))
        if device is None:
            self._recent_misses[kid] = now
            return None
        log.info("loaded context device=%s kid=%s (registered after start)", device.id, kid.hex())
        return self._add(device)

    # aiocoap asks credential sources for this when it builds client contexts; a gateway
    # has none to offer.
    def find_all_used_contextless_oscore_kid(self) -> set[bytes]:
        return set(self._by_kid)
