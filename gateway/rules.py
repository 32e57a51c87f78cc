"""The neighbour rule of the "golden mile": presence at one lamp boosts the lamps next to it.

When a lighting node reports presence (``pres`` true), every other lighting node on the same
street of the same site within ``distance_m`` of it (positions from the registry: ``street``,
``position_m``) gets a ``boost`` command, pushed at once to lamps that observe ``/c``. A lamp is
boosted at most once per ``min_interval_s``; a boost the lamp has not yet received is replaced
by the newer one rather than queued behind it.
"""

from __future__ import annotations

import bisect
from collections import defaultdict

from gateway.config import NeighboursConfig
from gateway.contexts import DeviceInfo

RULE_REF = "neighbour"


class NeighbourRule:
    def __init__(self, cfg: NeighboursConfig) -> None:
        self.cfg = cfg
        self._streets: dict[tuple[str, str], tuple[list[float], list[DeviceInfo]]] = {}
        self._last_boost: dict[str, float] = {}

    def index(self, devices: list[DeviceInfo]) -> None:
        streets: dict[tuple[str, str], list[tuple[float, str, DeviceInfo]]] = defaultdict(list)
        for info in devices:
            if info.role == "lighting" and info.street and info.position_m is not None:
                streets[(info.site, info.street)].append((info.position_m, info.id, info))
        self._streets = {}
        for key, lamps in streets.items():
            lamps.sort()
            self._streets[key] = ([p for p, _, _ in lamps], [i for _, _, i in lamps])

    def neighbours(self, info: DeviceInfo) -> list[DeviceInfo]:
        if info.street is None or info.position_m is None:
            return []
        street = self._streets.get((info.site, info.street))
        if street is None:
            return []
        positions, lamps = street
        lo = bisect.bisect_left(positions, info.position_m - self.cfg.distance_m)
        hi = bisect.bisect_right(positions, info.position_m + self.cfg.distance_m)
        return [lamp for lamp in lamps[lo:hi] if lamp.id != info.id]

    def on_presence(self, info: DeviceInfo, now: float) -> list[DeviceInfo]:
        """The lamps to boost now because ``info`` saw someone."""
        if not self.cfg.enabled or info.role != "lighting":
            return []
        out = []
        for lamp in self.neighbours(info):
            if now - self._last_boost.get(lamp.id, -1e18) >= self.cfg.min_interval_s:
                self._last_boost[lamp.id] = now
                out.append(lamp)
        return out
