"""The downlink queue: commands from MQTT, queued per device, delivered in replies or pushed.

A command arrives as JSON on ``<prefix>/<site>/<device>/down`` (docs/protocol.md §8.1; the
publisher hands it to ``command_in``), is checked (protocol/commands.py), given the next id of its
device and stored in the state database before the gateway acknowledges the MQTT message. It
then travels in the downlink envelope (``envelope``, protocol/envelope.py) of every reply to that
device (and in every notification, for a device observing ``/c``: ``on_queued`` pushes one) until
the node acknowledges or refuses it in an uplink (``answered``), or it expires. Each step is an
*outcome* (protocol/outcomes.py) published on ``<prefix>/<site>/<device>/outcome``; outcomes are
spooled like readings, so they survive a broker outage or a crash.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Callable

from gateway.config import DownlinkConfig
from gateway.contexts import ContextStore, DeviceInfo
from gateway.metrics import Metrics
from gateway.store import GroupCommitter
from protocol import commands, outcomes, topics
from protocol.envelope import command as command_wire
from protocol.envelope import encode as encode_envelope
from protocol.outcomes import (
    ACKNOWLEDGED,
    DELIVERED,
    EXPIRED,
    QUEUED,
    REFUSED,
    REJECTED,
    SUPERSEDED,
)

log = logging.getLogger("gateway.downlink")

ENVELOPE_BUDGET = 512   # bytes of commands in one envelope (the node's datagram is 1280 at most)
MAX_REF = 64


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


class Downlink:
    def __init__(self, cfg: DownlinkConfig, committer: GroupCommitter, prefix: str,
                 contexts: ContextStore, metrics: Metrics | None = None) -> None:
        self.cfg = cfg
        self._metrics = metrics
        self._committer = committer
        self._prefix = prefix
        self._contexts = contexts
        self.pending: dict[str, list[Pending]] = {}
        self.last_id: dict[str, int] = {}
        self.counts: dict[str, int] = {}
        # Called with a device a command was queued for (the observations push it at once).
        self.on_queued: Callable[[DeviceInfo], object] | None = None

    def load(self, rows: list[tuple], last_ids: dict[str, int]) -> None:
        self.last_id = dict(last_ids)
        for device, cid, name, args, ref, created, expires, delivered in rows:
            cmd = Pending(device, cid, name, json.loads(args), ref, created, expires, delivered)
            cmd.wire = command_wire(cid, name, cmd.args)
            self.pending.setdefault(device, []).append(cmd)

    def _outcome(self, info: DeviceInfo, cmd: Pending | None, outcome: str, now: float, *,
                 reason: str | None = None, ref: str | None = None,
                 name: str | None = None) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + 1
        if self._metrics is not None:
            self._metrics.inc("commands_total", outcome=outcome)
        if cmd is not None:
            payload = outcomes.payload(info.id, outcome, now, cid=cmd.id, name=cmd.name,
                                       ref=cmd.ref, reason=reason)
        else:
            payload = outcomes.payload(info.id, outcome, now, name=name, ref=ref, reason=reason)
        self._spool_outcome(info.site, info.id, payload)

    def _spool_outcome(self, site: str, device: str, payload: bytes) -> None:
        ctx = self._contexts.by_id.get(device)
        self._committer.spool(ctx.kid_int if ctx else 0, time.time(),
                              topics.device(self._prefix, site, device, topics.OUTCOME), payload)

    # --- in -------------------------------------------------------------------------------

    def command_in(self, site: str, device: str, payload: bytes,
                   done: Callable[[], None]) -> None:
        """A command from ``<prefix>/<site>/<device>/down``: queued (and pushed to an observer)
        or refused, an outcome either way; ``done`` (the PUBACK) once that is durable."""
        now = time.time()
        ctx = self._contexts.by_id.get(device)
        if ctx is None or ctx.info.site != site:
            self._spool_outcome(site, device, outcomes.payload(
                device, REFUSED, now, reason="no device %s at site %s in the registry"
                % (device, site)))
        else:
            cmd = self.submit(ctx.info, payload, now)
            if cmd is not None and self.on_queued is not None:
                self.on_queued(ctx.info)
        committer = self._committer
        committer.batch.after.append(lambda ok: ok and done())
        committer.kick()

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
        batch = self._committer.batch
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
        cmd.wire = command_wire(cid, name, args)
        queue.append(cmd)
        batch.commands.append(cmd.row())
        batch.command_ids[info.id] = cid
        self._outcome(info, cmd, QUEUED, now)
        return cmd

    # --- out ------------------------------------------------------------------------------

    def envelope(self, info: DeviceInfo, observing: bool) -> bytes:
        """The downlink envelope for an answer to ``info`` now (protocol.md §2, §8): gateway
        time, its pending commands, the observe flag. Commands in it count as delivered."""
        now = time.time()
        cmds = self.for_envelope(info.id, now) if self.pending else None
        if not cmds:
            return encode_envelope(int(now), (), observing)
        out = encode_envelope(int(now), [c.wire for c in cmds], observing)
        self.delivered(info, cmds, now)
        self._committer.kick(urgent=False)
        return out

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
        batch = self._committer.batch
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
                self._committer.batch.command_deletes.append((info.id, cid))
                self._outcome(info, cmd, ACKNOWLEDGED if accepted else REJECTED, now)
                return True
        return False

    def expire(self, now: float) -> int:
        """Drop the commands whose time to live has passed (outcome ``expired``)."""
        expired = 0
        batch = self._committer.batch
        for device, queue in list(self.pending.items()):
            for cmd in [c for c in queue if c.expires <= now]:
                queue.remove(cmd)
                batch.command_deletes.append((device, cmd.id))
                ctx = self._contexts.by_id.get(device)
                if ctx is not None:
                    self._outcome(ctx.info, cmd, EXPIRED, now)
                expired += 1
            if not queue:
                del self.pending[device]
        return expired

    def size(self) -> int:
        return sum(len(q) for q in self.pending.values())
