"""The uplink rules: what a node's ``POST /u`` (readings) or ``POST /s`` (status) does.

A verified request reaches ``Uplink.handle`` from the dispatch (gateway/resources.py), with the
MQTT leaf its frames go to. In this order (docs/protocol.md §2 - §4, §6 - §8):

1. A retransmission of a frame already spooled (gateway/endpoint.py found it in the device's
   recently answered list) is answered again; nothing is stored twice.
2. Content-Format: none, or SenML-CBOR; anything else gets 4.15.
3. The payload is decoded and checked against the vocabulary (gateway/senml.py); a bad one gets
   4.00 with the reason, and the node drops it.
4. A full spool with ``[spool] when_full = "reject"`` gets 5.03 and Max-Age: the node keeps the
   reading and tries again.
5. Readings become the SenML JSON message on ``<prefix>/<site>/<device>/up`` (``/status``) and
   the derived outputs (device state, Home Assistant discovery, SensorThings): spool rows in the
   open batch. ``ack``/``rej`` records settle commands (gateway/downlink.py) instead.
6. Fresh presence at a lamp boosts its neighbours (gateway/rules.py).

What the request stored becomes durable with the device's replay window in one commit; the
answer, 2.04 with the downlink envelope, is made after that commit (so it carries the commands
queued until then): ``handle`` returns the function that makes it, and the endpoint calls it.
"""

from __future__ import annotations

from typing import Callable

from gateway import coap, outputs, senml
from gateway.config import GatewayConfig
from gateway.contexts import SPOOLED, ContextStore, DeviceInfo
from gateway.downlink import Downlink
from gateway.endpoint import RETRY_AFTER_S, Exchange, Reply
from gateway.errors import FrameError
from gateway.metrics import Metrics
from gateway.observe import Observations
from gateway.rules import RULE_REF, NeighbourRule
from gateway.store import GroupCommitter
from protocol import topics
from protocol.vocabulary import CONTROL_NAMES

# A presence record older than this (drained from the node's queue) boosts no neighbours.
PRESENCE_FRESH_S = 30.0

_CF_CBOR = [(coap.CONTENT_FORMAT, coap.uint(coap.CF_CBOR))]
_CF_CBOR_ENCODED = coap.encode_options(_CF_CBOR)


class Uplink:
    def __init__(self, config: GatewayConfig, committer: GroupCommitter, contexts: ContextStore,
                 downlink: Downlink, observations: Observations, metrics: Metrics) -> None:
        self.config = config
        self.committer = committer
        self.store = committer.store
        self.contexts = contexts
        self.downlink = downlink
        self.observations = observations
        self.metrics = metrics
        self.rule = NeighbourRule(config.neighbours)
        self._rule_indexed = 0
        self.states: dict[str, outputs.DeviceState] = {}
        self._ha_announced: dict[str, frozenset[str]] = {}
        self._k_accepted: dict[tuple[str, str], tuple] = {}

    def handle(self, ex: Exchange, leaf: str) -> Reply | Callable[[], Reply]:
        """``POST /u`` or ``/s`` from a verified device; ``leaf`` is ``up`` or ``status``."""
        ctx = ex.ctx
        info = ctx.info
        if ex.repeat and ex.entry[3] == SPOOLED:
            ex.spooled = True
            self.metrics.inc("duplicates_total")
            return lambda: self.changed(info)      # answered again, stored once
        cf = ex.option(coap.CONTENT_FORMAT)
        if cf is not None and coap.decode_uint(cf) != coap.CF_SENML_CBOR:
            self.metrics.reject("bad_content_format", str(coap.decode_uint(cf)), info.id)
            return Reply(coap.UNSUPPORTED_CONTENT_FORMAT)
        now = ex.received
        try:
            records = senml.decode(ex.payload, now)
        except FrameError as exc:
            self.metrics.reject(exc.reason, exc.detail, info.id)
            return Reply(coap.BAD_REQUEST, payload=exc.reason.encode())
        if self.store.full() and self.config.spool.when_full == "reject":
            self.metrics.reject("spool_full", "%d readings spooled" % self.store.rows, info.id)
            return Reply(coap.SERVICE_UNAVAILABLE, [(coap.MAX_AGE, coap.uint(RETRY_AFTER_S))])
        data = [r for r in records if r.name not in CONTROL_NAMES]
        if data:
            self.committer.spool(ctx.kid_int, now,
                                 topics.device(self.config.mqtt.prefix, info.site, info.id, leaf),
                                 senml.to_json(info.id, data))
            self._derived(info, data, leaf, now)
        if len(data) != len(records):
            for r in records:
                if r.name in CONTROL_NAMES:
                    self.downlink.answered(info, r.value, r.name == "ack", now)
        ex.spooled = True
        key = self._k_accepted.get((leaf, info.role))
        if key is None:
            key = self._k_accepted[(leaf, info.role)] = self.metrics.key(
                "frames_accepted_total", resource=leaf, role=info.role)
        self.metrics.counters[key] += 1
        if info.role == "lighting" and self.rule.cfg.enabled:
            for r in data:
                # Presence drained from a node's queue is history: only a fresh one boosts.
                if r.name == "pres" and r.value is True and r.time >= now - PRESENCE_FRESH_S:
                    self._boost_neighbours(info, now)
                    break
        return lambda: self.changed(info)

    def changed(self, info: DeviceInfo) -> Reply:
        """2.04 with the downlink envelope: the answer to an uplink once it is durable."""
        obs = self.observations
        observing = obs.observing(info.id) if obs.by_device else False
        return Reply(coap.CHANGED, _CF_CBOR, self.downlink.envelope(info, observing),
                     encoded_options=_CF_CBOR_ENCODED)

    def _derived(self, info: DeviceInfo, data: list[senml.Record], leaf: str,
                 now: float) -> None:
        """Device state, Home Assistant discovery, SensorThings: spooled with the frame."""
        out = self.config.outputs
        prefix = self.config.mqtt.prefix
        spool = self.committer.spool
        kid = int.from_bytes(info.kid, "big")
        if out.device_state:
            state = self.states.get(info.id)
            if state is None:
                state = self.states[info.id] = outputs.DeviceState()
            state.update(data, now)
            if leaf == topics.STATUS or \
                    now - state.last_sent >= self.config.mqtt.state_interval_s:
                state.last_sent = now
                spool(kid, now, topics.device(prefix, info.site, info.id, topics.STATE),
                      state.message(info), 1)
        if out.home_assistant:
            names = frozenset(r.name for r in data)
            seen = self._ha_announced.get(info.id, frozenset())
            if not names <= seen:
                for topic, payload in outputs.ha_discovery(prefix, out.home_assistant_prefix,
                                                           info, sorted(names - seen)):
                    spool(kid, now, topic, payload, 1)
                self._ha_announced[info.id] = seen | names
        if out.sensorthings:
            for topic, payload in outputs.sensorthings(out.sensorthings_prefix, info, data):
                spool(kid, now, topic, payload, 0)

    # --- the neighbour rule ------------------------------------------------------------------

    def index_rule(self) -> None:
        """(Re)build the rule's street index from the devices known now."""
        self.rule.index([c.info for c in self.contexts.by_kid.values()])
        self._rule_indexed = len(self.contexts.by_kid)

    def _boost_neighbours(self, info: DeviceInfo, now: float) -> None:
        nb = self.config.neighbours
        if len(self.contexts.by_kid) != self._rule_indexed:
            self.index_rule()  # a lamp made contact since: it may be a neighbour
        for lamp in self.rule.on_presence(info, now):
            cmd = self.downlink.queue(lamp, "boost", {"level": nb.level, "hold_s": nb.hold_s},
                                      now, float(nb.hold_s), RULE_REF, supersede_ref=RULE_REF)
            if cmd is not None:
                self.metrics.inc("neighbour_boosts_total")
                self.observations.push(lamp)
