"""Observation of the command resource ``/c`` (RFC 7641) by mains-powered nodes.

A node registers with ``GET /c`` and Observe 0; the gateway then pushes a notification (the
downlink envelope, docs/protocol.md §8.5) whenever a command is queued for it, and at least
every ``[downlink] observe_refresh_s`` otherwise. Notifications are confirmable; one that is not
acknowledged after the retransmissions of RFC 7252, or that the node resets, ends the
observation. Observations live in memory only: after a gateway restart nodes find out (no
notification within Max-Age, or envelope key 3 missing in a reply) and register again.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from gateway import coap
from gateway.contexts import DeviceInfo
from gateway.endpoint import Endpoint, Exchange, Reply
from gateway.metrics import Metrics

log = logging.getLogger("gateway.observe")


class Observation:
    __slots__ = ("ex", "last_sent")

    def __init__(self, ex: Exchange) -> None:
        self.ex = ex
        self.last_sent = time.monotonic()


class Observations:
    def __init__(self, endpoint: Endpoint, metrics: Metrics, refresh_s: float,
                 envelope: Callable[[DeviceInfo, bool], bytes]) -> None:
        self.endpoint = endpoint
        self.metrics = metrics
        self.refresh_s = refresh_s
        self.max_age_s = int(2 * refresh_s + 30)
        self.envelope = envelope
        self.by_device: dict[str, Observation] = {}

    def __len__(self) -> int:
        return len(self.by_device)

    def observing(self, device: str) -> bool:
        return device in self.by_device

    def _reply(self, info: DeviceInfo, observing: bool, observe: int | None = None) -> Reply:
        options = [(coap.CONTENT_FORMAT, coap.uint(coap.CF_CBOR))]
        if observing:
            options.append((coap.MAX_AGE, coap.uint(self.max_age_s)))
        return Reply(coap.CONTENT, options, self.envelope(info, observing), observe)

    def handle(self, ex: Exchange) -> Reply | Callable[[], Reply]:
        """``GET /c``: register (Observe 0), deregister (Observe 1) or just poll."""
        if ex.code != coap.GET:
            return Reply(coap.METHOD_NOT_ALLOWED)
        info = ex.ctx.info
        observe = ex.option(coap.OBSERVE)
        if observe is not None and coap.decode_uint(observe) == 0:
            old = self.by_device.get(info.id)
            if old is not None and (old.ex.addr, old.ex.token) != (ex.addr, ex.token):
                self.endpoint.forget_notifications(old.ex.addr, old.ex.token)
            self.by_device[info.id] = Observation(ex)
            log.debug("device=%s observes /c from %s", info.id, ex.addr[0])
            # The confirmation gets our own Partial IV too: its Observe value (our sequence
            # number) must be below every later notification's (RFC 7641 §3.4 ordering).
            self.endpoint.use_own_piv(ex)
            first = int.from_bytes(ex.own_piv, "big")
            return lambda: self._reply(info, True, observe=first)
        if observe is not None:
            self._drop(info.id, None)
        return lambda: self._reply(info, self.observing(info.id))

    def push(self, info: DeviceInfo, kind: str = "push") -> bool:
        """Notify the device now (its commands changed); False when it does not observe."""
        obs = self.by_device.get(info.id)
        if obs is None:
            return False
        obs.last_sent = time.monotonic()
        self.metrics.inc("notifications_total", kind=kind)
        self.endpoint.notify(obs.ex, lambda: self._reply(info, True),
                             on_lost=lambda: self._drop(info.id, obs))
        return True

    def _drop(self, device: str, obs: Observation | None) -> None:
        current = self.by_device.get(device)
        if current is None or (obs is not None and current is not obs):
            return
        del self.by_device[device]
        self.endpoint.forget_notifications(current.ex.addr, current.ex.token)
        if obs is not None:
            self.metrics.inc("observations_lost_total")
            log.info("device=%s stopped answering notifications; observation ended", device)

    def refresh(self) -> int:
        """Send the periodic notification to observers that got none for refresh_s."""
        now = time.monotonic()
        due = [obs for obs in self.by_device.values() if now - obs.last_sent >= self.refresh_s]
        for obs in due:
            self.push(obs.ex.ctx.info, kind="refresh")
        return len(due)
