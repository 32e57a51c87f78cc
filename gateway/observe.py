"""Observation of the command resource ``/c`` (RFC 7641) by mains-powered nodes.

A node registers with ``GET /c`` and Observe 0; the gateway then pushes a notification (the
downlink envelope, docs/protocol.md §8.5) whenever a command is queued for it, and at least
every ``[downlink] observe_refresh_s`` otherwise. Notifications are confirmable; one that is not
acknowledged after the retransmissions of RFC 7252, or that the node resets, ends the
observation. Observations live in memory only: after a gateway restart nodes find out (no
notification within Max-Age, or envelope key 3 missing in a reply) and register again.

The registration and its notifications are kept together here: the endpoint (gateway/endpoint.py)
protects and sends the datagrams and, through its ``on_empty`` hook, hands back the ACKs and
Resets that answer them. A notification leaves, like every protected answer, only after the
commit that makes its sequence-number mark durable.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Callable

from gateway import coap
from gateway.contexts import DeviceInfo
from gateway.endpoint import Endpoint, Exchange, Reply
from gateway.metrics import Metrics
from protocol.wire import ACK_RANDOM_FACTOR, ACK_TIMEOUT_S, MAX_RETRANSMIT

log = logging.getLogger("gateway.observe")


class Observation:
    __slots__ = ("ex", "last_sent")

    def __init__(self, ex: Exchange) -> None:
        self.ex = ex
        self.last_sent = time.monotonic()


class _Notification:
    """A confirmable notification awaiting its ACK, retransmitted as RFC 7252 §4.2 says."""

    __slots__ = ("addr", "mid", "datagram", "tries", "timer", "on_lost")

    def __init__(self, addr, mid: int, datagram: bytes, on_lost: Callable[[], None]) -> None:
        self.addr = addr
        self.mid = mid
        self.datagram = datagram
        self.tries = 0
        self.timer: asyncio.TimerHandle | None = None
        self.on_lost = on_lost


class Observations:
    def __init__(self, endpoint: Endpoint, metrics: Metrics, refresh_s: float,
                 envelope: Callable[[DeviceInfo, bool], bytes]) -> None:
        self.endpoint = endpoint
        self.metrics = metrics
        self.refresh_s = refresh_s
        self.max_age_s = int(2 * refresh_s + 30)
        self.envelope = envelope
        self.by_device: dict[str, Observation] = {}
        # Notifications in flight, by the observation's (address, token).
        self._notifications: dict[tuple, _Notification] = {}
        endpoint.on_empty = self._peer_answered

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
                self._forget_notifications(old.ex.addr, old.ex.token)
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
        self._notify(obs.ex, lambda: self._reply(info, True),
                     on_lost=lambda: self._drop(info.id, obs))
        return True

    def _drop(self, device: str, obs: Observation | None) -> None:
        current = self.by_device.get(device)
        if current is None or (obs is not None and current is not obs):
            return
        del self.by_device[device]
        self._forget_notifications(current.ex.addr, current.ex.token)
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

    # --- notifications (RFC 7641), sent confirmable --------------------------------------

    def _notify(self, ex: Exchange, reply: Callable[[], Reply], *,
                on_lost: Callable[[], None]) -> None:
        """Send ``reply()`` as a notification of the observation made by ``ex``, with a fresh
        Partial IV, after the commit that makes its sequence-number mark durable."""
        endpoint = self.endpoint
        note_ex = ex.copy()
        endpoint.use_own_piv(note_ex)
        seq = int.from_bytes(note_ex.own_piv, "big")

        def send(ok: bool) -> None:
            if not ok:
                return
            mid = endpoint.next_mid()
            datagram = endpoint.build(note_ex, reply(), observe=seq, mtype=coap.CON, mid=mid)
            key = (ex.addr, ex.token)
            old = self._notifications.pop(key, None)
            note = _Notification(ex.addr, mid, datagram, on_lost)
            if old is not None:
                # RFC 7641 §4.5.2: a newer notification replaces one still being retransmitted,
                # keeping its retransmission count.
                if old.timer is not None:
                    old.timer.cancel()
                note.tries = old.tries
            self._notifications[key] = note
            self._transmit(key, note)

        endpoint.after_commit(send)

    def _transmit(self, key, note: _Notification) -> None:
        self.endpoint.send(note.datagram, note.addr)
        timeout = ACK_TIMEOUT_S * random.uniform(1, ACK_RANDOM_FACTOR) * (2 ** note.tries)
        note.timer = asyncio.get_running_loop().call_later(timeout, self._retransmit, key, note)

    def _retransmit(self, key, note: _Notification) -> None:
        if self._notifications.get(key) is not note:
            return
        note.tries += 1
        if note.tries > MAX_RETRANSMIT:
            del self._notifications[key]
            note.on_lost()
            return
        self._transmit(key, note)

    def _peer_answered(self, addr, mid: int, reset: bool) -> None:
        """The endpoint's ``on_empty``: an ACK ends a notification's retransmissions, a Reset
        also the observation."""
        for key, note in list(self._notifications.items()):
            if note.addr == addr and note.mid == mid:
                del self._notifications[key]
                if note.timer is not None:
                    note.timer.cancel()
                if reset:
                    note.on_lost()
                return

    def _forget_notifications(self, addr, token: bytes) -> None:
        note = self._notifications.pop((addr, token), None)
        if note is not None and note.timer is not None:
            note.timer.cancel()
