"""Scenarios: what happens in the virtual world over time, as data (TOML) or from Python.

A scenario names boards (with their role, street and position) and the events the world plays
back: people walking along a street, daylight, weather, cars arriving in bays, rain filling
shafts, scripted values and faults. Times are seconds after the scenario starts (the moment the
``World`` is made), except daylight, which follows the time of day. The same structure is
built by ``Scenario.load(path)`` from a TOML file and by the methods below from Python::

    sc = Scenario("demo")
    sc.board("lamp-01", role="lighting", street="main", position_m=0)
    sc.pedestrian(street="main", start_s=10, speed_mps=1.4, from_m=-20, to_m=200)
    sc.fault("lamp-01", "bh1750_silent", start_s=60, duration_s=30)
    world = World(speed=10, scenario=sc)

The file format is documented in vboard/scenarios/README.md; the files in this folder are
examples, loadable by name with ``Scenario.named("golden-mile")``.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

# The board parameters the world (vboard/world.py) and the model wiring (vboard/models/
# wiring.py) read, as README.md's table lists them; any other key in a [[boards]] entry is a
# mistake, and a misspelt parameter would otherwise be silently its default.
BOARD_PARAMS = frozenset((
    "radar_height_m", "radar_range_m",
    "depth_mm", "base_level_mm", "max_level_mm", "drain_mm_per_min",
    "earth_ut", "neighbour_m", "neighbour_factor", "mag_tempco_ut_per_c",
    "draw_ma", "battery_used_mah", "supply_v", "chip_rise_c",
    "sonar_mode", "battery",
    "bh1750_address", "ina219_address", "shunt_ohm", "lamp_w",
))


@dataclass
class BoardSpec:
    id: str
    role: str | None = None
    street: str | None = None
    position_m: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Pedestrian:
    """Someone walking along ``street`` from ``from_m`` to ``to_m``, pausing where told."""
    street: str
    start_s: float
    speed_mps: float = 1.4
    from_m: float = -20.0
    to_m: float = 200.0
    lateral_m: float = 1.5          # distance from the line of poles
    pauses: list[tuple[float, float]] = field(default_factory=list)   # (at_m, for_s)

    def __post_init__(self) -> None:
        if self.speed_mps <= 0:
            raise ValueError("pedestrian speed_mps must be positive")
        step = 1.0 if self.to_m >= self.from_m else -1.0
        # (leg start time, leg start position, leg end time, leg end position, moving)
        legs: list[tuple[float, float, float, float, bool]] = []
        t, x = float(self.start_s), float(self.from_m)
        for at_m, for_s in sorted(self.pauses, key=lambda p: step * p[0]):
            if step * (at_m - x) < 0 or step * (self.to_m - at_m) < 0:
                continue
            dt = abs(at_m - x) / self.speed_mps
            legs.append((t, x, t + dt, at_m, True))
            legs.append((t + dt, at_m, t + dt + for_s, at_m, False))
            t, x = t + dt + for_s, at_m
        legs.append((t, x, t + abs(self.to_m - x) / self.speed_mps, float(self.to_m), True))
        self._legs = legs

    @property
    def end_s(self) -> float:
        return self._legs[-1][2]

    def where(self, t: float) -> tuple[float, bool] | None:
        """(position along the street, moving) at scenario time ``t``; None when not there."""
        if t < self.start_s or t > self.end_s:
            return None
        for t0, x0, t1, x1, moving in self._legs:
            if t <= t1:
                frac = 0.0 if t1 <= t0 else (t - t0) / (t1 - t0)
                return x0 + (x1 - x0) * frac, moving
        return None


@dataclass
class Car:
    """A car parked over the sensor of ``bay`` (a board id) between arrive_s and leave_s."""
    bay: str
    arrive_s: float
    leave_s: float = math.inf
    strength: float = 1.0           # scales this car's magnetic signature


@dataclass
class Rain:
    """Inflow into the shafts of ``board`` ("*": every board) while it rains."""
    board: str
    start_s: float
    duration_s: float
    rise_mm_per_min: float = 20.0


@dataclass
class FaultSpec:
    board: str                      # a board id, or "*" for every board
    name: str
    start_s: float = 0.0
    duration_s: float | None = None  # None: until the end
    params: dict[str, Any] = field(default_factory=dict)

    def active(self, t: float) -> bool:
        return self.start_s <= t and (self.duration_s is None or t < self.start_s + self.duration_s)


@dataclass
class Keyframes:
    """A scripted quantity: ``points`` are (t_s, value); linear or step between them, held
    constant before the first and after the last point."""
    board: str
    name: str
    points: list[tuple[float, float]]
    interp: str = "linear"

    def at(self, t: float) -> float:
        pts = self.points
        if t <= pts[0][0]:
            return float(pts[0][1])
        for (t0, v0), (t1, v1) in zip(pts, pts[1:]):
            if t < t1:
                if self.interp == "step" or t1 <= t0:
                    return float(v0)
                return v0 + (v1 - v0) * (t - t0) / (t1 - t0)
        return float(pts[-1][1])


@dataclass
class Daylight:
    sunrise: str = "07:00"          # local time of day, HH:MM
    sunset: str = "19:00"
    day_lux: float = 20000.0
    night_lux: float = 1.0
    twilight_min: float = 40.0      # roughly 10 % to 90 % of the log-lux swing
    utc_offset_h: float = 1.0
    clouds: float = 0.3             # 0: clear, 1: heavy cloud (daytime lux varies by that much)


@dataclass
class Weather:
    temp_c: float = 10.0            # daily mean air temperature
    swing_c: float = 4.0            # half the day/night difference (warmest at 15:00)


_SCALARS = {"name", "description", "start"}


@dataclass
class Scenario:
    name: str = "default"
    description: str = ""
    start: str | None = None        # ISO 8601 wall time the world starts at (default: now)
    boards: dict[str, BoardSpec] = field(default_factory=dict)
    pedestrians: list[Pedestrian] = field(default_factory=list)
    cars: list[Car] = field(default_factory=list)
    rain: list[Rain] = field(default_factory=list)
    faults: list[FaultSpec] = field(default_factory=list)
    values: list[Keyframes] = field(default_factory=list)
    daylight: Daylight = field(default_factory=Daylight)
    weather: Weather = field(default_factory=Weather)

    # -- Python API -------------------------------------------------------------------------

    def board(self, id: str, role: str | None = None, street: str | None = None,
              position_m: float = 0.0, **params: Any) -> BoardSpec:
        unknown = sorted(set(params) - BOARD_PARAMS)
        if unknown:
            raise ValueError("board %s: unknown parameter(s) %s (known: %s)"
                             % (id, ", ".join(unknown), ", ".join(sorted(BOARD_PARAMS))))
        spec = BoardSpec(id, role, street, float(position_m), dict(params))
        self.boards[id] = spec
        return spec

    def pedestrian(self, street: str, start_s: float, speed_mps: float = 1.4,
                   from_m: float = -20.0, to_m: float = 200.0, lateral_m: float = 1.5,
                   pauses: list[tuple[float, float]] | None = None,
                   count: int = 1, every_s: float = 30.0) -> None:
        """``count`` people, one every ``every_s`` seconds, along the same path."""
        for i in range(count):
            self.pedestrians.append(Pedestrian(street, start_s + i * every_s, speed_mps, from_m,
                                               to_m, lateral_m, list(pauses or [])))

    def car(self, bay: str, arrive_s: float, leave_s: float = math.inf,
            strength: float = 1.0) -> None:
        self.cars.append(Car(bay, arrive_s, leave_s, strength))

    def add_rain(self, board: str, start_s: float, duration_s: float,
                 rise_mm_per_min: float = 20.0) -> None:
        self.rain.append(Rain(board, start_s, duration_s, rise_mm_per_min))

    def fault(self, board: str, name: str, start_s: float = 0.0,
              duration_s: float | None = None, **params: Any) -> None:
        self.faults.append(FaultSpec(board, name, start_s, duration_s, dict(params)))

    def value(self, board: str, name: str, points: list[tuple[float, float]] | float,
              interp: str = "linear") -> None:
        """Script a quantity (a constant, or keyframes) for a board ("*": every board)."""
        if isinstance(points, (int, float)):
            points = [(0.0, float(points))]
        self.values.append(Keyframes(board, name, sorted((float(t), float(v))
                                                         for t, v in points), interp))

    # -- TOML -------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path) -> "Scenario":
        path = Path(path)
        with path.open("rb") as f:
            data = tomllib.load(f)
        try:
            return cls.from_dict(data, default_name=path.stem)
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError("%s: %s" % (path, exc)) from None

    @classmethod
    def named(cls, name: str) -> "Scenario":
        """One of the example scenarios shipped in vboard/scenarios/ (e.g. "golden-mile")."""
        path = HERE / (name if name.endswith(".toml") else name + ".toml")
        if not path.exists():
            known = ", ".join(sorted(p.stem for p in HERE.glob("*.toml")))
            raise KeyError("no scenario %r; known: %s" % (name, known))
        return cls.load(path)

    @classmethod
    def from_dict(cls, data: dict[str, Any], default_name: str = "scenario") -> "Scenario":
        known = _SCALARS | {"boards", "pedestrians", "cars", "rain", "faults", "values",
                            "daylight", "weather"}
        unknown = set(data) - known
        if unknown:
            raise ValueError("unknown keys %s (known: %s)" % (sorted(unknown), sorted(known)))
        sc = cls(name=data.get("name", default_name), description=data.get("description", ""),
                 start=data.get("start"))
        for b in data.get("boards", []):
            b = dict(b)
            sc.board(b.pop("id"), b.pop("role", None), b.pop("street", None),
                     b.pop("position_m", 0.0), **b)
        for p in data.get("pedestrians", []):
            p = dict(p)
            pauses = [(float(a), float(d)) for a, d in p.pop("pauses", [])]
            sc.pedestrian(pauses=pauses, **p)
        for c in data.get("cars", []):
            sc.car(**c)
        for r in data.get("rain", []):
            sc.add_rain(**r)
        for f in data.get("faults", []):
            f = dict(f)
            sc.fault(f.pop("board"), f.pop("name"), f.pop("start_s", 0.0),
                     f.pop("duration_s", None), **f)
        for v in data.get("values", []):
            pts = v["points"] if "points" in v else v["value"]
            sc.value(v["board"], v["name"], pts, v.get("interp", "linear"))
        if "daylight" in data:
            sc.daylight = Daylight(**data["daylight"])
        if "weather" in data:
            sc.weather = Weather(**data["weather"])
        return sc
