# Parking bay occupancy (battery, deep sleep): a QMC5883L magnetometer in the bay's surface sees
# the field of a car's steel above it as a change against the empty bay's field (the baseline).
#
# Each wake (every sample_s, every fast_s while a change is being confirmed) reads the field
# without the radio. The bay flips to occupied when the change exceeds on_nt and back to empty
# when it falls below off_nt (hysteresis: a neighbouring car adds a few µT, a car in the bay
# 15 µT or more), and only after `debounce` consecutive samples that agree and have settled
# (sample-to-sample change below settle_nt: the car has stopped moving). A flip is reported at
# once; otherwise a heartbeat every interval_s. The baseline is taken on the first wake and by
# the `calibrate` command (the bay must be empty), and follows slow drift (temperature) while
# the bay is empty and the change small.

from micropython import const
import math
import struct
import machine

from app import faults as F
from app.node import BatteryRole

_ROLE = "<iiiiIBBBB"   # baseline x, y, z (nT), last magnitude (nT), report_due_s,
#                        flags, count, _, _
_CALIBRATED = const(1)
_OCCUPIED = const(2)
_FAULT_MAG = const(4)
_FAULT_RANGE = const(8)
_FAULT_BATT = const(16)
_CALIBRATE = const(32)      # calibrate at the next wake


class Parking(BatteryRole):
    BATT_FAULT = _FAULT_BATT

    def __init__(self, node):
        super().__init__(node)
        raw = self.rtc_memory()
        bx, by, bz, self.last, self.report_due, self.flags, self.count, _, _ = \
            struct.unpack_from(_ROLE, raw)
        self.baseline = [bx, by, bz]
        if not node.woke:
            self.report_due = 0      # schedules count from the last reset
        self.mag = None
        self.magnitude = self.last
        self.batt_mv = None
        self.unsure = False      # a change is being confirmed, or the field still moves

    def configure(self, settings):
        self.s = settings

    def _save(self):
        b = self.baseline
        struct.pack_into(_ROLE, self.node.state.role, 0, b[0], b[1], b[2], self.last,
                         self.report_due, self.flags, self.count, 0, 0)

    # --- the magnetometer ------------------------------------------------------------------

    def _sensor(self):
        if self.mag is None:
            from drivers.qmc5883l import QMC5883L
            pins = self.cfg.pins
            i2c = machine.I2C(0, scl=machine.Pin(pins["i2c_scl"]),
                              sda=machine.Pin(pins["i2c_sda"]))
            self.mag = QMC5883L(i2c, range_g=2, odr_hz=50, osr=512,
                                drdy=machine.Pin(pins["mag_drdy"], machine.Pin.IN))
        return self.mag

    def field(self, samples=2, tries=2):
        """The mean field (nT per axis) of `samples` readings; None when the sensor fails
        `tries` times in a row."""
        from drivers.errors import SensorError
        try:
            sensor = self._sensor()
            sx = sy = sz = 0
            for _ in range(samples):
                x, y, z = sensor.read()
                sx += x
                sy += y
                sz += z
            over = sensor.overflow
        except (SensorError, OSError) as e:
            self.node.log_once("magnetometer: %r" % (e,))
            self.mag = None
            if tries > 1:
                return self.field(samples, tries - 1)
            self.flags |= _FAULT_MAG
            return None
        self.flags &= ~_FAULT_MAG
        self.flags = (self.flags | _FAULT_RANGE) if over else (self.flags & ~_FAULT_RANGE)
        return [sx // samples, sy // samples, sz // samples]

    def calibrate(self):
        """Take the empty bay's field as the baseline. True when it worked."""
        b = self.field(self.s["cal_samples"])
        if b is None:
            return False
        self.baseline = b
        self.flags = (self.flags | _CALIBRATED) & ~(_OCCUPIED | _CALIBRATE)
        self.count = 0
        self.last = 0
        self.node.log_once("parking: baseline %d %d %d nT" % (b[0], b[1], b[2]))
        return True

    # --- one wake --------------------------------------------------------------------------

    def decide(self, b):
        """Update the occupancy from field `b`; True when it flipped."""
        s = self.s
        d = [b[i] - self.baseline[i] for i in range(3)]
        mag = int(math.sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]))
        settled = abs(mag - self.last) < s["settle_nt"]
        self.last = mag
        self.magnitude = mag
        occupied = bool(self.flags & _OCCUPIED)
        says = mag >= s["off_nt"] if occupied else mag > s["on_nt"]
        self.unsure = says != occupied or not settled
        if says != occupied:
            self.count = self.count + 1 if settled else 0
            if self.count >= s["debounce"]:
                self.count = 0
                self.flags ^= _OCCUPIED
                return True
        else:
            self.count = 0
            if not occupied and settled and s["drift_shift"] and mag < s["drift_nt"]:
                shift = s["drift_shift"]
                for i in range(3):       # follow slow drift (temperature) of the empty bay
                    self.baseline[i] += d[i] >> shift if d[i] >= 0 else -((-d[i]) >> shift)
        return False

    async def wake(self):
        node = self.node
        s = self.s
        now = node.now_s()
        if not self.flags & _CALIBRATED or self.flags & _CALIBRATE:
            self.calibrate()
        flipped = False
        b = self.field()
        if b is not None and self.flags & _CALIBRATED:
            flipped = self.decide(b)
        heartbeat = self.report_due == 0 or now >= self.report_due
        if (flipped or heartbeat) and self.flags & _CALIBRATED and b is not None:
            occupied = bool(self.flags & _OCCUPIED)
            records = [("occ", occupied), ("mag", self.magnitude)]
            if heartbeat:
                self.batt_mv = self.read_batt_mv()
                if self.batt_mv:
                    records.append(("batt", self.batt_mv))
            node.submit(records)
            self.report_due = now + self.cfg.interval_s
            node.log_once("parking: %s (%d nT)%s" % ("occupied" if occupied else "empty",
                                                     self.magnitude,
                                                     " changed" if flipped else ""))
        elif heartbeat:
            self.report_due = now + self.cfg.interval_s     # nothing to say: try later
        if self.mag is not None:
            from drivers.errors import SensorError
            try:
                self.mag.standby()       # 75 uA measuring vs. a few uA in standby
            except (SensorError, OSError):
                self.mag = None
        self._save()
        return (s["fast_s"] if self.unsure and not flipped else s["sample_s"]) * 1000

    def retry_due(self):
        return self.report_due == 0 or self.node.now_s() >= self.report_due - 1

    # --- status and commands ---------------------------------------------------------------

    def faults(self):
        bits = 0
        if self.flags & _FAULT_MAG:
            bits |= F.MAG
        if self.flags & _FAULT_RANGE:
            bits |= F.MAG_RANGE
        if self.flags & _FAULT_BATT:
            bits |= F.BATTERY
        if not self.flags & _CALIBRATED:
            bits |= F.UNCALIBRATED
        return bits

    def command(self, name, args):
        if name == "calibrate":
            if self.calibrate():
                self.node.submit([("occ", False), ("mag", 0)])
                self._save()
                return True
            return False
        return None
