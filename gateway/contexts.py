"""The gateway's OSCORE context store: one context per device, indexed by key id.

aiocoap's stock credentials scan every context for each request and keep a locked directory per
device; with 10,000 devices that is slow and runs out of file handles. Here the look-up is a dict
access, keys come from the fleet registry, and everything the gateway must remember about a
device across restarts (replay window, recently answered requests, its own sequence-number
marks) lives in the one state database (gateway/store.py), not in a file per device.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass

from gateway.metrics import Metrics
from gateway.oscore import ReplayWindow, SecurityContext
from gateway.store import pack_recent, unpack_recent
from registry.db import KID_BYTES, Device, Registry

log = logging.getLogger("gateway.contexts")

SEQ_CHUNK = 64              # gateway sender marks are written this far ahead (RFC 8613 B.1.1)
RECENT = 8                  # requests per device remembered for retransmissions
EXCHANGE_LIFETIME_S = 247   # RFC 7252 §4.8.2: how long a retransmission can still arrive
LOOKUPS_PER_S = 20          # registry look-ups for unknown key ids, all together

# States of a remembered request.
PENDING, SPOOLED, ANSWERED = 0, 1, 2


@dataclass(frozen=True)
class DeviceInfo:
    id: str
    site: str
    role: str
    kid: bytes
    street: str | None = None
    position_m: float | None = None


def key_fingerprint(device: Device) -> bytes:
    """Names the key material without revealing it; stored with the replay window, which
    belongs to one key (a board re-provisioned with a new key counts from 0 again)."""
    return hashlib.sha256(device.master_secret + device.master_salt).digest()[:8]


class DeviceContext(SecurityContext):
    """A device's security context plus what the gateway remembers about its requests."""

    __slots__ = ("info", "kid_int", "recent", "secret_fingerprint")

    def __init__(self, device: Device) -> None:
        super().__init__(device.master_secret, device.master_salt, device.kid_bytes)
        self.info = DeviceInfo(device.id, device.site, device.role, device.kid_bytes,
                               device.street, device.position_m)
        self.kid_int = device.kid
        # [seq, mid, unix time, state], newest last
        self.recent: list[list[int]] = []
        self.secret_fingerprint = key_fingerprint(device)

    def remember(self, seq: int, mid: int, now: float) -> list[int]:
        entry = [seq, mid, int(now), PENDING]
        recent = self.recent
        recent.append(entry)
        if len(recent) > RECENT:
            del recent[0]
        return entry

    def repeat_of(self, seq: int, mid: int, now: float) -> list[int] | None:
        """The remembered request this one retransmits (same sequence number and message id,
        within the exchange lifetime), or None."""
        for entry in self.recent:
            if entry[0] == seq:
                if entry[1] == mid and now - entry[2] <= EXCHANGE_LIFETIME_S:
                    return entry
                return None
        return None

    def snapshot(self) -> tuple[int, int, bytes, bytes]:
        """Replay state as stored: the window, the spooled requests still answerable, and
        which key they belong to."""
        return (self.window.index, self.window.bits,
                pack_recent([(e[0], e[1], e[2]) for e in self.recent if e[3] != ANSWERED]),
                self.secret_fingerprint)

    def restore(self, idx: int, bits: int, recent: bytes, now: float) -> None:
        self.window = ReplayWindow(idx, bits)
        self.recent = [[seq, mid, t, SPOOLED] for seq, mid, t in unpack_recent(recent)
                       if now - t <= EXCHANGE_LIFETIME_S]

    def __repr__(self) -> str:  # never print key material by accident
        return "<DeviceContext %s kid=%s>" % (self.info.id, self.recipient_id.hex())


class ContextStore:
    """Contexts by key id; devices registered after start are looked up on first contact."""

    def __init__(self, registry: Registry, metrics: Metrics, *,
                 miss_interval_s: float = 2.0) -> None:
        self._registry = registry
        self._metrics = metrics
        self._miss_interval_s = miss_interval_s
        self.by_kid: dict[bytes, DeviceContext] = {}
        self.by_id: dict[str, DeviceContext] = {}
        self._recent_misses: dict[bytes, float] = {}
        self._replay: dict[int, tuple[int, int, bytes, bytes | None]] = {}
        # All look-ups together, at most LOOKUPS_PER_S: datagrams with random key ids must not
        # turn into a query each (a cheap way to keep the database, and the loop, busy).
        self._lookup_budget = float(LOOKUPS_PER_S)
        self._lookup_refilled = time.monotonic()
        self._marks: dict[int, int] = {}
        self.max_kid = 0

    def load_all(self, replay: dict[int, tuple[int, int, bytes, bytes | None]],
                 marks: dict[int, int]) -> int:
        """Every registered device, with the replay state and sender marks from the store."""
        self._replay = replay
        self._marks = marks
        for device in self._registry.devices():
            self.add(device)
        return len(self.by_kid)

    def add(self, device: Device) -> DeviceContext:
        ctx = DeviceContext(device)
        state = self._replay.pop(device.kid, None)
        # State kept under another key (rotated while the gateway was down) is not this key's:
        # the device starts with an Echo exchange. (None: stored before keys were named.)
        if state is not None and state[3] in (None, ctx.secret_fingerprint):
            ctx.restore(*state[:3], time.time())
        mark = self._marks.pop(device.kid, 0)
        # Numbers below the mark may have been used before a crash: start at the mark.
        ctx.sender_seq = ctx.seq_mark = mark
        old = self.by_id.get(device.id)
        if old is not None and old.recipient_id != ctx.recipient_id:
            self.by_kid.pop(old.recipient_id, None)
        self.by_kid[ctx.recipient_id] = ctx
        self.by_id[device.id] = ctx
        self.max_kid = max(self.max_kid, device.kid)
        return ctx

    def __len__(self) -> int:
        return len(self.by_kid)

    def roles(self) -> dict[tuple, int]:
        counts: dict[tuple, int] = {}
        for ctx in self.by_kid.values():
            key = (("role", ctx.info.role),)
            counts[key] = counts.get(key, 0) + 1
        return counts

    def get(self, kid: bytes) -> DeviceContext | None:
        ctx = self.by_kid.get(kid)
        if ctx is not None:
            return ctx
        return self._look_up(kid)

    def _may_look_up(self, now: float) -> bool:
        self._lookup_budget = min(float(LOOKUPS_PER_S), self._lookup_budget
                                  + (now - self._lookup_refilled) * LOOKUPS_PER_S)
        self._lookup_refilled = now
        if self._lookup_budget < 1:
            return False
        self._lookup_budget -= 1
        return True

    def _look_up(self, kid: bytes) -> DeviceContext | None:
        """A device registered after start: one indexed query, at most once per interval per kid."""
        if len(kid) != KID_BYTES:
            return None
        now = time.monotonic()
        if now - self._recent_misses.get(kid, -1e9) < self._miss_interval_s:
            return None
        if not self._may_look_up(now):
            return None
        if len(self._recent_misses) > 10_000:
            self._recent_misses.clear()
        self._metrics.inc("registry_lookups_total")
        device = self._registry.by_kid(int.from_bytes(kid, "big"))
        if device is None:
            self._recent_misses[kid] = now
            return None
        log.info("loaded context device=%s kid=%s (registered after start)", device.id, kid.hex())
        return self.add(device)

    def recheck(self, ctx: DeviceContext) -> DeviceContext | None:
        """After a tag failure: has the device been given new key material (re-provisioned)?
        Returns the new context, or None when nothing changed (at most once per interval)."""
        now = time.monotonic()
        kid = ctx.recipient_id
        if now - self._recent_misses.get(kid, -1e9) < self._miss_interval_s:
            return None
        if not self._may_look_up(now):
            return None
        self._recent_misses[kid] = now
        self._metrics.inc("registry_lookups_total")
        device = self._registry.by_kid(ctx.kid_int)
        if device is None or key_fingerprint(device) == ctx.secret_fingerprint:
            return None
        log.info("device=%s has new key material in the registry; context replaced", device.id)
        fresh = DeviceContext(device)
        # The gateway's own numbering continues: the new key makes old nonces harmless, but
        # keeping the counter costs nothing.
        fresh.sender_seq = ctx.sender_seq
        fresh.seq_mark = ctx.seq_mark
        self.by_kid[kid] = fresh
        self.by_id[device.id] = fresh
        return fresh

    def refresh_from(self, devices: list[Device]) -> None:
        """Take where every device is (street, position, site) from a fresh registry read."""
        for device in devices:
            ctx = self.by_id.get(device.id)
            if ctx is not None and ctx.kid_int == device.kid:
                ctx.info = DeviceInfo(device.id, device.site, device.role, device.kid_bytes,
                                      device.street, device.position_m)
