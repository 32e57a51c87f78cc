# Shaft water level (battery, deep sleep): a JSN-SR04T in the shaft's lid measures the distance
# down to the water; level = depth - distance.
#
# Each wake: power the sonar, take `samples` echoes (the driver compensates the speed of sound
# for the air temperature), keep the plausible ones (outside the blind zone, within range and
# the shaft), and take the median of the farthest group of echoes that agree: condensation on
# the transducer answers early (a short, spurious distance), never late. A jump larger than
# spike_mm that would need a physically impossible rise is held until the next (fast) wake
# confirms it. Reporting: every interval_s normally; every fast_s at or near the alarm level or
# while the level rises faster than fast_rise_mm per minute; at once when the alarm changes.
# Wakes without a report (every sample_s) measure only and keep the radio off.

from micropython import const
import struct
import machine

from app import faults as F
from app.node import BatteryRole

_ROLE = "<iIiIBBBBI"     # level_mm, level_at_s, candidate_mm, candidate_at_s, flags,
#                          spikes, fast_calm, _, reported_at_s
_HAVE_LEVEL = const(1)
_ALARM = const(2)
_FAST = const(4)
_CANDIDATE = const(8)
_FAULT_SONAR = const(16)
_FAULT_BATT = const(32)
_REPORTED = const(64)    # reported since the last reset (reported_at is valid)


def median(values):
    values = sorted(values)
    n = len(values)
    mid = n // 2
    return values[mid] if n % 2 else (values[mid - 1] + values[mid]) // 2


def pick_distance(readings, agree_mm):
    """The distance the echoes support: the farthest group of at least two readings that
    agree (within agree_mm of the group's nearest), its median; a single reading only when it
    is all there is. None without readings."""
    if not readings:
        return None
    readings = sorted(readings, reverse=True)
    best = None
    i = 0
    while i < len(readings):
        group = [r for r in readings[i:] if readings[i] - r <= agree_mm]
        if len(group) >= 2:
            return median(group)
        if best is None:
            best = group
        i += len(group)
    return median(best) if len(readings) == 1 else None


class Shaft(BatteryRole):
    BATT_FAULT = _FAULT_BATT

    def __init__(self, node):
        super().__init__(node)
        self._load()
        self.temp_cc = None
        self.batt_mv = None
        self.rise = 0
        self.echo_count = 0
        self.sonar = None
        self.standin = None
        standin = node.cfg.raw.get("standin")
        if isinstance(standin, dict):      # a host runner without a sonar (docs/firmware.md)
            from app.standin import StandInDistance
            self.standin = StandInDistance(standin)

    def configure(self, settings):
        self.s = settings

    # --- RTC memory ------------------------------------------------------------------------

    def _load(self):
        raw = self.rtc_memory()
        (self.level, self.level_at, self.candidate, self.candidate_at, self.flags, self.spikes,
         self.fast_calm, _, self.reported_at) = struct.unpack_from(_ROLE, raw)
        if not self.node.woke:
            self.flags &= ~_REPORTED      # schedules count from the last reset

    def _save(self):
        struct.pack_into(_ROLE, self.node.state.role, 0, self.level, self.level_at,
                         self.candidate, self.candidate_at, self.flags, min(self.spikes, 255),
                         self.fast_calm, 0, self.reported_at)

    # --- sensors ---------------------------------------------------------------------------

    def _sonar(self):
        from drivers.jsnsr04t import JSNSR04T
        pins = self.cfg.pins
        power = machine.Pin(pins["sensor_power"], machine.Pin.OUT, value=0)
        if self.s["mode"] == "uart":
            uart = machine.UART(2, baudrate=9600, tx=pins["sonar_tx"], rx=pins["sonar_rx"])
            return JSNSR04T(uart=uart, power=power)
        return JSNSR04T(trig=machine.Pin(pins["sonar_trig"], machine.Pin.OUT, value=0),
                        echo=machine.Pin(pins["sonar_echo"], machine.Pin.IN), power=power)

    def read_temp_cc(self):
        """Air temperature from the die sensor after wake, less its rise above the air."""
        try:
            import esp32
            f = esp32.raw_temperature()
        except (ImportError, AttributeError, OSError):
            return None
        return (f - 32) * 500 // 9 - self.s["temp_offset_cc"]

    def echoes(self):
        """Plausible distances (mm) from one burst of `samples` echoes."""
        from drivers.errors import SensorError
        if self.standin is not None:
            return [self.standin.read()]
        out = []
        sonar = None
        try:
            if self.sonar is None:
                self.sonar = self._sonar()
            sonar = self.sonar
            air = self.temp_cc if self.temp_cc is not None else 1500
            floor = self.s["depth_mm"] + 2 * self.s["agree_mm"]
            for _ in range(self.s["samples"]):
                try:
                    mm = sonar.read_mm(air)
                except SensorError:
                    mm = None
                if mm is not None and sonar.BLIND_MM <= mm <= min(sonar.MAX_MM, floor):
                    out.append(mm)
        except (SensorError, OSError, ImportError) as e:
            self.node.log_once("sonar: %r" % (e,))
        finally:
            if sonar is not None:
                sonar.power(False)       # the sonar draws mA: off between measurements
        return out

    # --- one wake --------------------------------------------------------------------------

    def measure(self, now):
        """Update level, alarm and fast mode from a new measurement; True if a level was
        accepted now."""
        s = self.s
        self.temp_cc = self.read_temp_cc()
        readings = self.echoes()
        dist = pick_distance(readings, s["agree_mm"])
        if dist is not None and self.standin is None and (
                not self.flags & _HAVE_LEVEL or
                abs(s["depth_mm"] - dist - self.level) > s["spike_mm"]):
            # Nothing to compare with, or a jump: a second burst before believing it (with 14
            # echoes, condensation outvotes the surface once in a few thousand wakes).
            readings += self.echoes()
            dist = pick_distance(readings, s["agree_mm"])
        self.echo_count = len(readings)
        if dist is None:
            self.flags |= _FAULT_SONAR
            return False
        self.flags &= ~_FAULT_SONAR
        level = max(0, s["depth_mm"] - dist)
        if self.flags & _HAVE_LEVEL and abs(level - self.level) > s["spike_mm"]:
            minutes = max(1, now - self.level_at) / 60
            if abs(level - self.level) / minutes > s["max_rise_mm"]:
                if self.flags & _CANDIDATE and abs(level - self.candidate) <= 2 * s["agree_mm"]:
                    self.flags &= ~_CANDIDATE          # seen twice: it is real
                else:
                    self.flags |= _CANDIDATE
                    self.candidate, self.candidate_at = level, now
                    self.spikes += 1
                    self.node.log_once("shaft: level %d mm held for confirmation" % level)
                    return False
        self.flags &= ~_CANDIDATE
        rise = 0
        if self.flags & _HAVE_LEVEL and now > self.level_at:
            # per minute, but never over less than a minute: echo noise between two close
            # wakes is not a rise
            rise = (level - self.level) * 60 // max(60, now - self.level_at)
        self.level, self.level_at = level, now
        self.flags |= _HAVE_LEVEL
        self.rise = rise
        return True

    def _alarm_and_fast(self):
        """(alarm changed, fast now)"""
        s = self.s
        was = bool(self.flags & _ALARM)
        if self.level >= s["alarm_mm"]:
            alarm = True
        elif self.level < s["alarm_mm"] - s["alarm_hyst_mm"]:
            alarm = False
        else:
            alarm = was
        self.flags = (self.flags | _ALARM) if alarm else (self.flags & ~_ALARM)
        hot = alarm or self.level >= s["alarm_mm"] - s["fast_margin_mm"] or \
            self.rise >= s["fast_rise_mm"]
        if hot:
            self.fast_calm = 0
        elif self.flags & _FAST:
            self.fast_calm += 1          # leave fast reporting after three calm wakes
        fast = hot or (self.flags & _FAST and self.fast_calm < 3)
        self.flags = (self.flags | _FAST) if fast else (self.flags & ~_FAST)
        return alarm != was, fast

    async def wake(self):
        """Measure; submit a reading when one is due; return the deep-sleep time in ms."""
        node = self.node
        s = self.s
        now = node.now_s()
        accepted = self.measure(now)
        fast = bool(self.flags & _FAST)
        fast_s = min(s["fast_s"], self.cfg.interval_s)    # fast is never slower than normal
        if accepted:
            changed, fast = self._alarm_and_fast()
            if changed or self._due(now, fast_s if fast else self.cfg.interval_s):
                if fast or self.flags & _ALARM or changed:
                    records = [("level", self.level), ("temp", self.temp_cc or 0),
                               ("alarm", bool(self.flags & _ALARM))]
                else:
                    self.batt_mv = self.read_batt_mv()
                    records = [("level", self.level), ("temp", self.temp_cc or 0),
                               ("batt", self.batt_mv or 0)]
                    if self.batt_mv is None:
                        records.pop()
                if self.temp_cc is None:
                    records.pop(1)
                node.submit(records)
                self.reported_at = now
                self.flags |= _REPORTED
                node.log_once("shaft: level %d mm rise %d mm/min%s%s (%d echoes)" % (
                    self.level, self.rise, " ALARM" if self.flags & _ALARM else "",
                    " fast" if fast else "", self.echo_count))
        self._save()
        if fast or self.flags & _CANDIDATE:
            return fast_s * 1000
        to_report = self.reported_at + self.cfg.interval_s - now if \
            self.flags & _REPORTED else s["sample_s"]
        if to_report <= 0:      # a report is due but no level was accepted: next sample
            to_report = s["sample_s"]
        return max(1, min(s["sample_s"], to_report)) * 1000

    def _due(self, now, period_s):
        # a second of slack: a wake that comes a little early still reports
        return not self.flags & _REPORTED or now - self.reported_at >= period_s - 1

    def retry_due(self):
        return self._due(self.node.now_s(), self.cfg.interval_s)

    # --- status ----------------------------------------------------------------------------

    def faults(self):
        bits = 0
        if self.flags & _FAULT_SONAR:
            bits |= F.SONAR
        if self.flags & _FAULT_BATT:
            bits |= F.BATTERY
        return bits

    def command(self, name, args):
        return None
