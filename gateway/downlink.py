"""The downlink queue: commands from MQTT, queued per device, delivered in replies or pushed.

A command arrives as JSON on ``<prefix>/<site>/<device>/down`` (docs/protocol.md §8.1), is
checked (protocol/commands.py), given the next id of its device and stored in the state database
before the gateway acknowledges the MQTT message. It then travels in the downlink envelope of
every reply to that device (and in every notification, for a device observing ``/c``) until the
node acknowledges or refuses it in an uplink, or it expires. Each step is an *outcome* published
on ``<prefix>/<site>/<device>/outcome``; outcomes are spooled like readings, so they survive a
broker outage or a crash.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Callable

import cbor2

from gateway.config import DownlinkConfig
from gateway.contexts import DeviceInfo
from gateway.metrics import Metrics
from gateway.store import Batch
from protocol import commands

log = logging.getLogger("gateway.downlink")

ENVELOPE_BUDGET = 512   # bytes of commands in one envelope (the node's datagram is 1280 at most)
MAX_REF = 64

QUEUED, DELIVERED, ACKNOWLEDGED, REJECTED, EXPIRED, REFUSED, SUPERSEDED = (
    "queued", "delivered", "acknowledged", "rejected", "expired", "refused", "superseded")


@dataclass
class Pending:
    device: str
    id: int
    name: str
    args: dict
    ref: str | None
    created: float
    expires: float
    delivered: float | None = None
    wire: bytes = b""     # the CBOR command [id, name, args]

    def row(self) -> tuple:
        return (self.device, self.id, self.name, json.dumps(self.args, sort_keys=True), self.ref,
                self.created, self.expires, self.delivered)


def outcome_payload(device: str, cmd: Pending | None, outcome: str, now: float, *,
                    reason: str | None = None, ref: str | None = None,
                    name: str | None = None) -> bytes:
    msg: dict = {"device": device, "outcome": outcome, "t": round(now, 3)}
    if cmd is not None:
        msg.update(id=cmd.id, cmd=cmd.name)
        if cmd.ref is not None:
            msg["ref"] = cmd.ref
    else:
        if name is not None:
            msg["cmd"] = name
        if ref is not None:
            msg["ref"] = ref
    if reason:
        msg["reason"] = reason
    return json.dumps(msg, separators=(",", ":")).encode()


# Spools an outcome message: (device info or (site, device id), payload) into the open batch.
SpoolOutcome = Callable[[str, str, bytes], None]


class Downlink:
    def __init__(self, cfg: DownlinkConfig, spool_outcome: SpoolOutcome,
                 batch: Callable[[], Batch], metrics: Metrics | None = None) -> None:
        self.cfg = cfg
        self._metrics = metrics
        self._spool_outcome = spool_outcome
        self._batch = batch
        self.pending: dict[str, list[Pending]] = {}
        self.last_id: dict[str, int] = {}
        self.counts: dict[str, int] = {}

    def load(self, rows: list[tuple], last_ids: dict[str, int]) -> None:
        self.last_id = dict(last_ids)
        for device, cid, name, args, ref, created, expires, delivered in rows:
            cmd = Pending(device, cid, name, json.loads(args), ref, created, expires, delivered)
            cmd.wire = cbor2.dumps([cid, name, cmd.args])
            self.pending.setdefault(device, []).append(cmd)

    def _outcome(self, info: DeviceInfo, cmd: Pending | None, outcome: str, now: float,
                 **extra) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + 1
        if self._metrics is not None:
            self._metrics.inc("commands_total", outcome=outcome)
        self._spool_outcome(info.site, info.id, outcome_payload(info.id, cmd, outcome, now,
                                                                **extra))

    # --- in -------------------------------------------------------------------------------

    def submit(self, info: DeviceInfo, raw: bytes, now: float, *,
               supersede_ref: str | None = None) -> Pending | None:
        """Check and queue a command (JSON bytes from MQTT); the outcome goes into the batch.
        Returns the queued command, or None when it was refused."""
        try:
            msg = json.loads(raw)
        except (ValueError, RecursionError) as exc:     # RecursionError: [[[[... nested deep
            self._outcome(info, None, REFUSED, now, reason="not JSON: %s" % exc)
            return None
        if not isinstance(msg, dict):
            self._outcome(info, None, REFUSED, now, reason="a command is a JSON object")
            return None
        ref = msg.get("ref")
        if ref is not None and (not isinstance(ref, str) or len(ref) > MAX_REF):
            self._outcome(info, None, REFUSED, now, reason="ref must be a text of at most %d "
                          "characters" % MAX_REF)
            return None
        name = msg.get("cmd")
        unknown = set(msg) - {"cmd", "args", "ttl_s", "ref"}
        if unknown:
            self._outcome(info, None, REFUSED, now, ref=ref,
                          name=name if isinstance(name, str) else None,
                          reason="unknown field(s) %s" % ", ".join(sorted(unknown)))
            return None
        ttl = msg.get("ttl_s", self.cfg.default_ttl_s)
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not \
                0 < ttl <= self.cfg.max_ttl_s:
            self._outcome(info, None, REFUSED, now, ref=ref,
                          name=name if isinstance(name, str) else None,
                          reason="ttl_s must be a number of seconds from 1 to %d"
                          % self.cfg.max_ttl_s)
            return None
        try:
            args = commands.validate(name, msg.get("args"), info.role)
        except commands.CommandError as exc:
            self._outcome(info, None, REFUSED, now, ref=ref,
                          name=name if isinstance(name, str) else None, reason=str(exc))
            return None
        return self.queue(info, name, args, now, ttl, ref, supersede_ref=supersede_ref)

    def queue(self, info: DeviceInfo, name: str, args: dict, now: float, ttl: float,
              ref: str | None, *, supersede_ref: str | None = None) -> Pending | None:
        queue = self.pending.setdefault(info.id, [])
        batch = self._batch()
        if supersede_ref is not None:
            # A rule's command replaces its own earlier one that the node has not seen yet.
            for old in [c for c in queue if c.ref == supersede_ref and c.delivered is None]:
                queue.remove(old)
                batch.command_deletes.append((info.id, old.id))
                self._outcome(info, old, SUPERSEDED, now)
        if len(queue) >= self.cfg.max_pending:
            self._outcome(info, None, REFUSED, now, ref=ref, name=name,
                          reason="%d commands already pending for this device"
                          % self.cfg.max_pending)
            return None
        cid = self.last_id.get(info.id, 0) + 1
        self.last_id[info.id] = cid
        cmd = Pending(info.id, cid, name, args, ref, now, now + ttl)
        cmd.wire = cbor2.dumps([cid, name, args])
        queue.append(cmd)
        batch.commands.append(cmd.row())
        batch.command_ids[info.id] = cid
        self._outcome(info, cmd, QUEUED, now)
        return cmd

    # --- out ------------------------------------------------------------------------------

    def for_envelope(self, device: str, now: float) -> list[Pending]:
        """Pending commands for one reply, oldest first, within the envelope budget."""
        queue = self.pending.get(device)
        if not queue:
            return []
        out = []
        size = 0
        for cmd in queue:
            if cmd.expires <= now:
                continue
            size += len(cmd.wire)
            if out and size > ENVELOPE_BUDGET:
                break
            out.append(cmd)
        return out

    def delivered(self, info: DeviceInfo, sent: list[Pending], now: float) -> None:
        """``sent`` left in a reply or notification: the first time is an outcome."""
        batch = self._batch()
        for cmd in sent:
            if cmd.delivered is None:
                cmd.delivered = now
                batch.commands.append(cmd.row())
                self._outcome(info, cmd, DELIVERED, now)

    def answered(self, info: DeviceInfo, cid: int, accepted: bool, now: float) -> bool:
        """The node acknowledged (``ack``) or refused (``rej``) command ``cid``."""
        queue = self.pending.get(info.id)
        if not queue:
            return False
        for cmd in queue:
            if cmd.id == cid:
                queue.remove(cmd)
                if not queue:
                    del self.pending[info.id]
                self._batch().command_deletes.append((info.id, cid))
                self._outcome(info, cmd, ACKNOWLEDGED if accepted else REJECTED, now)
                return True
        return False

    def expire(self, now: float, infos: Callable[[str], DeviceInfo | None]) -> int:
        expired = 0
        batch = self._batch()
        for device, queue in list(self.pending.items()):
            for cmd in [c for c in queue if c.expires <= now]:
                queue.remove(cmd)
                batch.command_deletes.append((device, cmd.id))
                info = infos(device)
                if info is not None:
                    self._outcome(info, cmd, EXPIRED, now)
                expired += 1
            if not queue:
                del self.pending[device]
        return expired

    def size(self) -> int:
        return sum(len(q) for q in self.pending.values())
