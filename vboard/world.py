"""The world the virtual boards live in: its clock, the physical quantities and the faults.

Device models (vboard/models/) ask ``world.value(board_id, name, now_s)`` for what their
sensing element sees and ``world.fault(board_id, name)`` whether a fault is on; the board core
asks ``world.fault(board_id, "wifi_lost")``, ``"brownout"`` and
``world.powercut_after_writes(board_id)``. What happens over time comes from a scenario
(vboard/scenarios/: TOML files and a Python API). Everything is a pure function of the seed,
the scenario and the simulated time, so two runs with one seed see the same world, whatever
order the boards ask in.

Quantities (``value`` names; scenario ``[[values]]`` or ``set_value`` override any of them):

===========================  ==================================================================
``lux``                       ambient illuminance at the board (daylight curve, clouds)
``air_temp_c``                air temperature (daily mean and swing, slow wander)
``presence``                  1 when someone is within the board's radar range, else 0
``target_distance_cm``        distance to the nearest person in range (NaN: nobody)
``moving_target_cm``          ... nearest walking person; ``stationary_target_cm``: standing
``level_mm``                  water level above a shaft's floor (rain in, drain out)
``distance_mm``               sensor (in the lid) to water surface: depth_mm - level_mm
``mag_x_ut`` / ``_y_`` / ``_z_``  magnetic field at a parking sensor in µT (earth + cars + drift)
``occupied``                  1 while a car stands in the board's own bay
``battery_v``                 scripted battery voltage; NaN unless scripted (then the battery
                              model follows its discharge curve from ``battery_used_mah``)
``battery_used_mah``          charge drawn so far (board param ``draw_ma``, or ``set_draw``)
``supply_v``                  the lamp driver's DC supply (board param ``supply_v``, 24 V)
``chip_temperature_c``        the ESP32's die: air temperature + ``chip_rise_c`` (20 K)
===========================  ==================================================================

Vectors travel as one scalar per axis (``mag_x_ut`` ...), so ``value`` always returns a float.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from vboard.scenarios import BoardSpec, FaultSpec, Keyframes, Scenario

NAN = float("nan")
_DAY_S = 86400.0


def _hms(text: str) -> float:
    hours, minutes = text.split(":")
    return int(hours) * 3600.0 + int(minutes) * 60.0


def _sigmoid(x: float) -> float:
    if x < -60:
        return 0.0
    if x > 60:
        return 1.0
    return 1.0 / (1.0 + math.exp(-x))


class World:
    """The shared world of one or many virtual boards.

    ``speed`` is simulated seconds per wall-clock second (it may be changed while running);
    ``now()`` starts at the wall time (or the scenario's ``start``) and never goes back.
    ``clock`` (a monotonic seconds source) is injectable so tests can drive time by hand.
    """

    def __init__(self, speed: float = 1.0, seed: int = 0,
                 scenario: Scenario | str | Path | None = None, *,
                 start_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.seed = int(seed)
        self._clock = clock
        self._lock = threading.Lock()
        self._speed = float(speed)
        self._overrides: dict[tuple[str, str], float] = {}
        self._draws: dict[str, list[tuple[float, float]]] = {}
        self._start(time.time() if start_s is None else float(start_s))
        self.load_scenario(scenario, keep_start=start_s is not None)
        self._quantities: dict[str, Callable[[str, float], float]] = {
            "lux": self._lux, "air_temp_c": self._air_temp,
            "presence": self._presence, "target_distance_cm": self._nearest_any,
            "moving_target_cm": self._nearest_moving,
            "stationary_target_cm": self._nearest_standing,
            "level_mm": self._level, "distance_mm": self._distance,
            "mag_x_ut": lambda b, t: self._mag(b, t)[0],
            "mag_y_ut": lambda b, t: self._mag(b, t)[1],
            "mag_z_ut": lambda b, t: self._mag(b, t)[2],
            "occupied": self._occupied,
            "battery_v": lambda b, t: NAN, "battery_used_mah": self._used_mah,
            "supply_v": lambda b, t: float(self.param(b, "supply_v", 24.0)),
            "chip_temperature_c": lambda b, t: (self._air_temp(b, t)
                                                + float(self.param(b, "chip_rise_c", 20.0))),
        }

    def load_scenario(self, scenario: Scenario | str | Path | None,
                      keep_start: bool = False) -> None:
        """Play ``scenario`` (a Scenario, a .toml path, or the name of an example) from now
        on. A scenario with a ``start`` time also restarts the clock there (unless
        ``keep_start``): load it before the boards run."""
        if isinstance(scenario, (str, Path)):
            scenario = (Scenario.load(scenario) if Path(scenario).suffix == ".toml"
                        else Scenario.named(str(scenario)))
        scenario = scenario or Scenario()
        with self._lock:
            self.scenario = scenario
            self._faults: list[FaultSpec] = list(scenario.faults)
            self._levels: dict[str, list[tuple[float, float]]] = {}
        if scenario.start and not keep_start:
            self._start(datetime.fromisoformat(scenario.start).timestamp())

    def _start(self, start_s: float) -> None:
        with self._lock:
            self.t0 = start_s
            self._anchor_wall = self._clock()
            self._anchor_sim = self._last_now = start_s

    # -- clock ------------------------------------------------------------------------------

    @property
    def speed(self) -> float:
        return self._speed

    @speed.setter
    def speed(self, value: float) -> None:
        if value <= 0:
            raise ValueError("speed must be positive")
        with self._lock:
            self._anchor_sim = self._now_locked()
            self._anchor_wall = self._clock()
            self._speed = float(value)

    def now(self) -> float:
        """Simulated seconds since 1970."""
        with self._lock:
            return self._now_locked()

    def _now_locked(self) -> float:
        t = self._anchor_sim + (self._clock() - self._anchor_wall) * self._speed
        if t > self._last_now:
            self._last_now = t
        return self._last_now

    def elapsed(self, now_s: float | None = None) -> float:
        """Scenario time: seconds since the world started."""
        return (self.now() if now_s is None else now_s) - self.t0

    # -- boards -----------------------------------------------------------------------------

    def board(self, board_id: str) -> BoardSpec:
        """The scenario's description of a board (a bare default for boards it doesn't name)."""
        return self.scenario.boards.get(board_id) or BoardSpec(board_id)

    def param(self, board_id: str, key: str, default: Any = None) -> Any:
        return self.board(board_id).params.get(key, default)

    # -- quantities ---------------------------------------------------------------------------

    def value(self, board_id: str, name: str, now_s: float) -> float:
        """The physical quantity ``name`` at ``board_id`` at simulated time ``now_s``."""
        override = self._overrides.get((board_id, name))
        if override is not None:
            return override
        keyframes = self._keyframes(board_id, name)
        if keyframes is not None:
            return keyframes.at(now_s - self.t0)
        try:
            compute = self._quantities[name]
        except KeyError:
            raise KeyError("the world has no quantity %r; known: %s"
                           % (name, ", ".join(sorted(self._quantities)))) from None
        return compute(board_id, now_s)

    def set_value(self, board_id: str, name: str, value: float | None) -> None:
        """Pin a quantity to a constant (None: back to the scenario)."""
        with self._lock:
            if value is None:
                self._overrides.pop((board_id, name), None)
            else:
                self._overrides[(board_id, name)] = float(value)

    def _keyframes(self, board_id: str, name: str) -> Keyframes | None:
        found = None
        for kf in self.scenario.values:
            if kf.name == name:
                if kf.board == board_id:
                    return kf
                if kf.board == "*":
                    found = kf
        return found

    # -- noise (pure functions of seed, board, key and time) ---------------------------------

    def _hash64(self, board_id: str, key: str, t: float) -> int:
        text = "%d|%s|%s|%r" % (self.seed, board_id, key, t)
        return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")

    def uniform(self, board_id: str, key: str, t: float) -> float:
        """A number in [0, 1), the same for the same (seed, board, key, t)."""
        return self._hash64(board_id, key, t) / 2.0 ** 64

    def gauss(self, board_id: str, key: str, t: float, sigma: float = 1.0) -> float:
        """Normal noise with standard deviation ``sigma``, reproducible like ``uniform``."""
        h = self._hash64(board_id, key, t)
        u1 = ((h >> 32) + 1.0) / (2.0 ** 32 + 1.0)
        u2 = (h & 0xFFFFFFFF) / 2.0 ** 32
        return sigma * math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)

    def smooth(self, board_id: str, key: str, t: float, period_s: float) -> float:
        """Slowly wandering noise in [-1, 1] (cosine-interpolated knots every ``period_s``)."""
        k = math.floor(t / period_s)
        frac = t / period_s - k
        a = 2.0 * self.uniform(board_id, key, float(k)) - 1.0
        b = 2.0 * self.uniform(board_id, key, float(k + 1)) - 1.0
        w = (1.0 - math.cos(math.pi * frac)) / 2.0
        return a + (b - a) * w

    # -- light and weather ------------------------------------------------------------------

    def _lux(self, board_id: str, now_s: float) -> float:
        d = self.scenario.daylight
        tod = (now_s + d.utc_offset_h * 3600.0) % _DAY_S
        tau = d.twilight_min * 60.0 / (2.0 * math.log(9.0))
        sunrise, sunset = _hms(d.sunrise), _hms(d.sunset)
        day = _sigmoid((tod - sunrise) / tau) * _sigmoid((sunset - tod) / tau)
        lo, hi = math.log(max(d.night_lux, 1e-3)), math.log(max(d.day_lux, 1e-3))
        lux = math.exp(lo + (hi - lo) * day)
        cloud = 0.5 * (1.0 + self.smooth("*", "clouds", now_s, 600.0))
        return lux * (1.0 - d.clouds * cloud * day)

    def _air_temp(self, board_id: str, now_s: float) -> float:
        w = self.scenario.weather
        tod = (now_s + self.scenario.daylight.utc_offset_h * 3600.0) % _DAY_S
        daily = w.swing_c * math.cos(2.0 * math.pi * (tod - 15 * 3600.0) / _DAY_S)
        return w.temp_c + daily + 0.5 * self.smooth("*", "air_temp", now_s, 1800.0)

    # -- people on the street (lighting radars) -----------------------------------------------

    def _people(self, board_id: str, now_s: float) -> list[tuple[float, bool]]:
        """(distance from the board's radar in m, moving) of everyone within radar range."""
        spec = self.board(board_id)
        if spec.street is None:
            return []
        height = float(spec.params.get("radar_height_m", 3.0))
        reach = float(spec.params.get("radar_range_m", 6.0))
        t = now_s - self.t0
        seen = []
        for p in self.scenario.pedestrians:
            if p.street != spec.street:
                continue
            where = p.where(t)
            if where is None:
                continue
            x, moving = where
            dist = math.sqrt((x - spec.position_m) ** 2 + p.lateral_m ** 2 + height ** 2)
            if dist <= reach:
                seen.append((dist, moving))
        return seen

    def _presence(self, board_id: str, now_s: float) -> float:
        return 1.0 if self._people(board_id, now_s) else 0.0

    def _nearest(self, board_id: str, now_s: float, which: bool | None) -> float:
        dists = [d for d, moving in self._people(board_id, now_s)
                 if which is None or moving == which]
        return min(dists) * 100.0 if dists else NAN

    def _nearest_any(self, board_id: str, now_s: float) -> float:
        return self._nearest(board_id, now_s, None)

    def _nearest_moving(self, board_id: str, now_s: float) -> float:
        return self._nearest(board_id, now_s, True)

    def _nearest_standing(self, board_id: str, now_s: float) -> float:
        return self._nearest(board_id, now_s, False)

    # -- water in shafts ----------------------------------------------------------------------

    def _level(self, board_id: str, now_s: float) -> float:
        knots = self._levels.get(board_id)
        if knots is None:
            knots = self._level_knots(board_id)
            self._levels[board_id] = knots
        t = now_s - self.t0
        if t <= knots[0][0]:
            return knots[0][1]
        for (t0, l0), (t1, l1) in zip(knots, knots[1:]):
            if t < t1:
                return l0 + (l1 - l0) * (t - t0) / (t1 - t0)
        return knots[-1][1]

    def _level_knots(self, board_id: str) -> list[tuple[float, float]]:
        """The level as a piecewise-linear curve: rain adds a constant inflow while it falls,
        the drain takes a constant outflow while the water stands above the base level."""
        p = self.board(board_id).params
        depth = float(p.get("depth_mm", 3000.0))
        base = float(p.get("base_level_mm", 300.0))
        top = float(p.get("max_level_mm", depth - 150.0))
        drain = float(p.get("drain_mm_per_min", 10.0)) / 60.0
        rains = [r for r in self.scenario.rain if r.board in (board_id, "*")]
        edges = sorted({0.0} | {r.start_s for r in rains} | {r.start_s + r.duration_s
                                                               for r in rains})
        knots = [(0.0, base)]
        level = base
        for i, a in enumerate(edges):
            b = edges[i + 1] if i + 1 < len(edges) else None
            inflow = sum(r.rise_mm_per_min / 60.0 for r in rains
                         if r.start_s <= a < r.start_s + r.duration_s)
            t = a
            while b is None or t < b:
                net = inflow - (drain if level > base or inflow > drain else inflow)
                if net > 0 and level < top:
                    t_hit = t + (top - level) / net
                    end = t_hit if b is None or t_hit < b else b
                    level = min(top, level + net * (end - t))
                elif net < 0 and level > base:
                    t_hit = t + (level - base) / -net
                    end = t_hit if b is None or t_hit < b else b
                    level = max(base, level + net * (end - t))
                else:
                    break
                t = end
                knots.append((t, level))
            if b is not None and knots[-1][0] < b:
                knots.append((b, level))
        return knots

    def _distance(self, board_id: str, now_s: float) -> float:
        depth = float(self.param(board_id, "depth_mm", 3000.0))
        return depth - self.value(board_id, "level_mm", now_s)

    # -- magnetic field in parking bays -------------------------------------------------------

    def _car_vector(self, car_index: int) -> tuple[float, float, float]:
        u = [self.uniform("car", "%d.%s" % (car_index, axis), 0.0) for axis in "xyz"]
        return (24.0 * u[0] - 12.0, 24.0 * u[1] - 12.0, 15.0 + 30.0 * u[2])

    def _car_factor(self, car, t: float, maneuver_s: float = 4.0) -> float:
        if t <= car.arrive_s or t >= car.leave_s:
            return 0.0
        return min(1.0, (t - car.arrive_s) / maneuver_s, (car.leave_s - t) / maneuver_s)

    def _mag(self, board_id: str, now_s: float) -> tuple[float, float, float]:
        spec = self.board(board_id)
        earth = spec.params.get("earth_ut", (18.0, 1.0, -44.0))
        field = [float(earth[i]) + 2.0 * self.smooth(board_id, "mount" + "xyz"[i], 0.0, 1.0)
                 for i in range(3)]
        t = now_s - self.t0
        reach = float(spec.params.get("neighbour_m", 3.0))
        for i, car in enumerate(self.scenario.cars):
            if car.bay == board_id:
                weight = 1.0
            else:
                bay = self.scenario.boards.get(car.bay)
                if (bay is None or bay.street is None or bay.street != spec.street
                        or abs(bay.position_m - spec.position_m) > reach):
                    continue
                weight = float(spec.params.get("neighbour_factor", 0.12))
            f = self._car_factor(car, t) * weight * car.strength
            if f:
                vec = self._car_vector(i)
                for axis in range(3):
                    field[axis] += f * vec[axis]
        tempco = float(spec.params.get("mag_tempco_ut_per_c", 0.03))
        dt = self.value(board_id, "air_temp_c", now_s) - 20.0
        for axis, sign in enumerate((1.0, -1.0, 0.5)):
            field[axis] += sign * tempco * dt
        return field[0], field[1], field[2]

    def _occupied(self, board_id: str, now_s: float) -> float:
        t = now_s - self.t0
        return 1.0 if any(c.bay == board_id and self._car_factor(c, t) > 0.5
                          for c in self.scenario.cars) else 0.0

    # -- energy ---------------------------------------------------------------------------------

    def set_draw(self, board_id: str, current_ma: float, now_s: float | None = None) -> None:
        """The board draws ``current_ma`` from its battery from now on (energy accounting)."""
        t = self.now() if now_s is None else now_s
        with self._lock:
            draws = list(self._draws.get(board_id, []))
            draws.append((t, float(current_ma)))
            self._draws[board_id] = draws

    def _used_mah(self, board_id: str, now_s: float) -> float:
        used = float(self.param(board_id, "battery_used_mah", 0.0))
        segments = [(self.t0, float(self.param(board_id, "draw_ma", 0.0)))]
        segments += self._draws.get(board_id, [])
        for (t_a, ma), nxt in zip(segments, segments[1:] + [(math.inf, 0.0)]):
            t_b = min(nxt[0], now_s)
            if t_b > t_a:
                used += ma * (t_b - t_a) / 3600.0
        return used

    # -- faults ---------------------------------------------------------------------------------

    def fault_params(self, board_id: str, name: str,
                     now_s: float | None = None) -> dict[str, Any] | None:
        """The parameters of fault ``name`` if it is on at ``board_id`` now, else None."""
        t = self.elapsed(now_s)
        for f in self._faults:
            if f.name == name and f.board in (board_id, "*") and f.active(t):
                return f.params
        return None

    def fault(self, board_id: str, name: str, now_s: float | None = None) -> bool:
        """Is fault ``name`` on at ``board_id``? (e.g. "wifi_lost", "brownout",
        "bh1750_silent", "jsnsr04t_condensation", "lamp_failure")."""
        return self.fault_params(board_id, name, now_s) is not None

    def inject(self, board_id: str, name: str, start_s: float | None = None,
               duration_s: float | None = None, **params: Any) -> None:
        """Turn a fault on (``start_s`` is scenario time; None: now) for ``duration_s``
        seconds (None: until cleared)."""
        start = self.elapsed() if start_s is None else float(start_s)
        with self._lock:
            self._faults = self._faults + [FaultSpec(board_id, name, start, duration_s, params)]

    def clear(self, board_id: str, name: str | None = None) -> None:
        """Remove faults from a board (every fault, or those called ``name``)."""
        with self._lock:
            self._faults = [f for f in self._faults
                            if not (f.board == board_id and name in (None, f.name))]

    def powercut_after_writes(self, board_id: str, now_s: float | None = None) -> int | None:
        """When a "powercut" fault is on: the board loses power at this flash block write."""
        params = self.fault_params(board_id, "powercut", now_s)
        if params is None:
            return None
        return int(params.get("after_writes", 1))

