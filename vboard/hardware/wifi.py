"""network.WLAN as a state, not a radio: off, connecting, or connected with an address.

An association takes ``connect_s`` of simulated time. The world can take the access point away
(its "wifi_lost" fault, or ``lost(duration_s)``); the ESP32 then reconnects by itself, which
again takes ``connect_s`` after the access point is back. Light sleep drops the association
too. Packets themselves travel over the host's loopback; ``listeners`` are told when the link
goes down or up, e.g. to drive a relay that drops them.

Ops: wlan_active, wlan_connect, wlan_disconnect, wlan_status, wlan_rssi (``Wifi``).
"""

from __future__ import annotations

import asyncio
import math
from typing import Any, Callable

from vboard.bus import BusError

# network.WLAN status codes (ports/esp32/network_wlan.c)
STAT_IDLE, STAT_CONNECTING, STAT_GOT_IP = 1000, 1001, 1010


class Wifi:
    """One board's WLAN station. ``world``: the clock, and the faults it may inject
    (``world.fault(board_id, "wifi_lost", now)``, when it has ``fault``); ``loop()``: the
    board's loop once started (None before: ``lost()`` then schedules no return)."""

    def __init__(self, world: Any, board_id: str, *, connect_s: float, rssi_dbm: int,
                 loop: Callable[[], asyncio.AbstractEventLoop | None]) -> None:
        self._world = world
        self._board_id = board_id
        self.connect_s = connect_s
        self.rssi_dbm = rssi_dbm
        self._loop = loop
        self.listeners: list[Callable[[bool], None]] = []   # told when the link changes
        self._lost_until = -math.inf
        self.reset()

    def ops(self) -> dict[str, Callable[..., Any]]:
        return {"wlan_active": self.wlan_active, "wlan_connect": self.wlan_connect,
                "wlan_disconnect": self.wlan_disconnect, "wlan_status": self.status,
                "wlan_rssi": self.wlan_rssi}

    def reset(self) -> None:
        """A chip reset (not a soft one): the radio is off and forgets the network."""
        self.active = False
        self._requested = False
        self._since = 0.0

    def lost(self, duration_s: float) -> None:
        """The access point is gone for ``duration_s`` simulated seconds (math.inf: for good);
        the ESP32 then reconnects by itself, which takes connect_s."""
        now = self._world.now()
        self._lost_until = now + duration_s
        self._notify(False)
        loop = self._loop()
        if loop is not None and math.isfinite(duration_s):
            loop.call_later(max(0.0, duration_s / self._world.speed), self._notify, True)

    def _notify(self, up: bool) -> None:
        for listener in self.listeners:
            listener(up)

    def light_sleep(self, ms: int | None) -> None:
        """WiFi does not stay associated through light sleep; the port reconnects
        afterwards."""
        if self._requested and ms:
            self._since = max(self._since, self._world.now() + ms / 1000)

    def wlan_active(self, flag: bool | None) -> bool:
        if flag is not None:
            self.active = bool(flag)
            if not flag:
                self._requested = False
        return self.active

    def wlan_connect(self, ssid: str | None) -> None:
        if not self.active:
            raise BusError(None, "Wifi Not Started")
        self._requested = True
        self._since = self._world.now()

    def wlan_disconnect(self) -> None:
        self._requested = False

    def _world_lost(self, now: float) -> bool:
        fault = getattr(self._world, "fault", None)
        return bool(fault is not None and fault(self._board_id, "wifi_lost", now))

    def status(self) -> int:
        if not self.active or not self._requested:
            return STAT_IDLE
        now = self._world.now()
        if self._world_lost(now):
            # while the world's fault lasts; reconnecting takes connect_s after it ends
            self._lost_until = max(self._lost_until, now)
            return STAT_CONNECTING
        up_at = max(self._since, self._lost_until) + self.connect_s
        return STAT_GOT_IP if now >= up_at else STAT_CONNECTING

    def wlan_rssi(self) -> int:
        if self.status() != STAT_GOT_IP:
            raise BusError(None, "Wifi Not Connected")
        return self.rssi_dbm
