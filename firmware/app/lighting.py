# Street lighting (mains powered, always on): the lamp follows dusk and dawn, stays at a night
# floor level, and goes to full when the radar sees someone, holding it for hold_s after the
# last presence. A `boost` (the gateway sends it when a neighbouring lamp saw someone) raises
# it as well. Level changes ramp. The INA219 in the driver's supply measures power and energy,
# and a lamp that is commanded on yet draws no current (or, without the INA219, gives no
# light) raises an alarm.
#
# Level, highest rule first: force on/off (command) > a schedule override in force >
# day: off > night: max(night floor, full while someone is there or within hold_s, boost).

from micropython import const
import gc
import struct
import time
import asyncio
import machine

from app import faults as F
from app.link import EPOCH_2000, local_now
from app.node import Role

_ROLE = "<BBBBII"          # force, schedule level, _, _, schedule start, schedule end (Unix s)
_AUTO = const(0)
_ON = const(1)
_OFF = const(2)
_FORCE = {"auto": _AUTO, "on": _ON, "off": _OFF}
_TICK_MS = const(100)
_RADAR_SILENT_MS = const(3000)
_PRES_REPORT_MS = const(5000)
_SETTLE_MS = const(2000)
_REINIT_MS = const(30000)
_NO_LEVEL = const(255)


class Lighting(Role):
    def __init__(self, node):
        super().__init__(node)
        raw = self.rtc_memory()
        if node.state.fresh:
            raw[1] = _NO_LEVEL
        self.force, self.sched_level, _, _, self.sched_start, self.sched_end = \
            struct.unpack_from(_ROLE, raw)
        pins = self.cfg.pins
        self.i2c = machine.I2C(0, scl=machine.Pin(pins["i2c_scl"]),
                               sda=machine.Pin(pins["i2c_sda"]))
        from drivers.dimmer import Dimmer
        self.dimmer = Dimmer(machine.Pin(pins["pwm_led"]), freq_hz=self.s["pwm_hz"])
        self.light = self.meter = self.radar = None
        self.bits = 0
        self._init_at = -_REINIT_MS
        self._init_sensors()
        self.dark = None            # unknown until the first lux reading
        self.lux = None
        self.dark_votes = 0
        self.presence = False
        self.active = False         # someone there, or within hold_s of the last presence
        self.last_presence = None   # ticks
        self.pres_reported = None   # ticks of the last `pres: true` report
        self.boost_pct = 0
        self.boost_until = None     # ticks
        self.target = None
        self.ramp = None
        self.ramp_done = time.ticks_ms()
        self.power_mw = None
        self.energy_mwh = 0         # since boot (small ints: a 40 W lamp for 3 years)
        self._uwh = 0               # the part below 1 mWh
        self.power_at = None
        self.fail_votes = 0
        self.alarm = False
        self.radar_seen = time.ticks_ms()

    def configure(self, settings):
        self.s = settings

    def _save(self):
        struct.pack_into(_ROLE, self.node.state.role, 0, self.force, self.sched_level, 0, 0,
                         self.sched_start, self.sched_end)
        self.node.state.save()

    # --- devices ---------------------------------------------------------------------------

    def _init_sensors(self):
        """Start the devices that are not running; a missing one is a fault bit, retried."""
        from drivers.errors import SensorError
        self._init_at = time.ticks_ms()
        pins = self.cfg.pins
        if self.light is None:
            try:
                from drivers.bh1750 import BH1750
                self.light = BH1750(self.i2c)
                self.bits &= ~F.LIGHT
            except (SensorError, OSError) as e:
                self._fault(F.LIGHT, "light sensor", e)
        if self.meter is None:
            try:
                from drivers.ina219 import INA219
                self.meter = INA219(self.i2c)
                self.bits &= ~F.POWER
            except (SensorError, OSError) as e:
                self._fault(F.POWER, "power monitor", e)
        if self.radar is None:
            try:
                from drivers.ld2410 import LD2410
                uart = machine.UART(2, baudrate=256000, tx=pins["radar_tx"],
                                    rx=pins["radar_rx"])
                self.radar = LD2410(uart, out_pin=machine.Pin(pins["radar_out"],
                                                              machine.Pin.IN))
                self.radar_seen = time.ticks_ms()
            except (SensorError, OSError) as e:
                self._fault(F.RADAR, "radar", e)

    def _fault(self, bit, what, err):
        if not self.bits & bit:
            self.node.log_once("%s: %r" % (what, err))
        self.bits |= bit

    # --- the level -------------------------------------------------------------------------

    def _schedule_level(self):
        if self.sched_level == _NO_LEVEL or not self.node.link.synced():
            return None
        now = local_now() + EPOCH_2000
        if self.sched_start <= now < self.sched_end:
            return self.sched_level
        return None

    def level(self, now):
        s = self.s
        if self.force == _ON:
            return s["full_pct"]
        if self.force == _OFF:
            return 0
        scheduled = self._schedule_level()
        if scheduled is not None:
            return scheduled
        if self.dark is False:
            return 0
        level = s["full_pct"] if self.active else s["night_pct"]
        if self.boost_until is not None:
            if time.ticks_diff(self.boost_until, now) > 0:
                level = max(level, self.boost_pct)
            else:
                self.boost_until = None
        return level

    def _apply(self, target, records=None):
        """Go to `target` (ramping) and report it, with `records` in the same frame."""
        out = records or []
        if target != self.target:
            self.target = target
            if self.ramp is not None:
                self.ramp.cancel()
            self.ramp = asyncio.create_task(self._ramp(target))
            out.insert(0, ("dim", target))
        if out:
            self.node.submit(out)

    async def _ramp(self, target):
        await self.dimmer.ramp_to(target, self.s["ramp_ms"])
        self.ramp_done = time.ticks_ms()
        self.ramp = None

    # --- sensing loops ---------------------------------------------------------------------

    def _radar_tick(self, now):
        from drivers.errors import SensorError
        if self.radar is None:
            return
        try:
            while self.radar.poll():
                self.radar_seen = now
            presence = bool(self.radar.presence)
        except (SensorError, OSError) as e:
            self._fault(F.RADAR, "radar", e)
            return
        if time.ticks_diff(now, self.radar_seen) > _RADAR_SILENT_MS:
            self._fault(F.RADAR, "radar", "no frames")
            presence = False
        else:
            self.bits &= ~F.RADAR
        if presence:
            self.last_presence = now
            if not self.presence and (self.pres_reported is None or time.ticks_diff(
                    now, self.pres_reported) > _PRES_REPORT_MS):
                self.pres_reported = now
                self.active = True
                self._apply(self.level(now), [("pres", True)])
        self.presence = presence
        held = self.last_presence is not None and \
            time.ticks_diff(now, self.last_presence) < self.s["hold_s"] * 1000
        active = presence or held
        if active != self.active:
            self.active = active
            if not active:
                self._apply(self.level(now), [("pres", False)])

    async def _lux_tick(self):
        from drivers.errors import SensorError
        if self.light is None:
            return
        try:
            lux = await self.light.read_lux_async()    # ramps and the link run meanwhile
        except (SensorError, OSError) as e:
            self._fault(F.LIGHT, "light sensor", e)
            self.lux = None
            return
        self.bits &= ~F.LIGHT
        self.lux = lux
        s = self.s
        if self.dark is None:
            self.dark = lux < (s["dusk_lux"] + s["dawn_lux"]) // 2
            return
        says = lux < s["dusk_lux"] if not self.dark else lux <= s["dawn_lux"]
        if says != self.dark:
            self.dark_votes += 1
            if self.dark_votes >= 2:          # two samples in a row: not a passing shadow
                self.dark = says
                self.dark_votes = 0
                self.node.log_once("lighting: %s (%d lx)" % ("dusk" if says else "dawn", lux))
        else:
            self.dark_votes = 0

    def _power_tick(self, now):
        from drivers.errors import SensorError
        power = None
        if self.meter is not None:
            try:
                power = self.meter.power_mw()
                self.bits &= ~F.POWER
            except (SensorError, OSError) as e:
                self._fault(F.POWER, "power monitor", e)
        if power is not None and self.power_at is not None:
            self._uwh += power * time.ticks_diff(now, self.power_at) // 3600   # mW*ms -> uWh
            self.energy_mwh += self._uwh // 1000
            self._uwh %= 1000
        self.power_at = now if power is not None else None
        self.power_mw = power
        self._check_lamp(now)

    def _check_lamp(self, now):
        """Commanded on, yet no current (or, without the power monitor, no light)."""
        s = self.s
        level = self.dimmer.level_pct
        if level < 10 or self.ramp is not None or \
                time.ticks_diff(now, self.ramp_done) < _SETTLE_MS:
            return
        if self.power_mw is not None:
            failed = self.power_mw < s["fail_mw"]
        elif self.lux is not None and self.dark and level >= 50:
            failed = self.lux < s["fail_lux"]
        else:
            return
        self.fail_votes = self.fail_votes + 1 if failed else 0
        alarm = self.fail_votes >= s["fail_checks"] if failed else False
        if failed and not alarm:
            return
        if alarm != self.alarm:
            self.alarm = alarm
            self.bits = (self.bits | F.LAMP) if alarm else (self.bits & ~F.LAMP)
            self.node.log_once("lighting: lamp %s at %d %%" % ("FAILED" if alarm else "ok", level))
            records = [("alarm", alarm), ("dim", level)]
            if self.power_mw is not None:
                records.append(("power", self.power_mw))
            self.node.submit(records)

    def report(self):
        records = [("dim", self.dimmer.level_pct), ("pres", self.active)]
        if self.lux is not None:
            records.append(("lux", self.lux))
        if self.power_mw is not None:
            records.append(("power", self.power_mw))
            records.append(("energy", self.energy_mwh // 1000))
        self.node.submit(records)

    async def run(self):
        node = self.node
        s = self.s
        lux_at = power_at = report_at = time.ticks_ms()
        await self._lux_tick()
        self._apply(self.level(time.ticks_ms()))
        tick = 0
        while True:
            node.alive("lighting")
            tick += 1
            if tick % 20 == 0:
                gc.collect()         # little and often: keeps the heap from fragmenting
            now = time.ticks_ms()
            self._radar_tick(now)
            if time.ticks_diff(now, lux_at) >= s["lux_s"] * 1000:
                lux_at = now
                await self._lux_tick()
            if time.ticks_diff(now, power_at) >= s["power_s"] * 1000:
                power_at = now
                self._power_tick(now)
            if time.ticks_diff(now, report_at) >= self.cfg.interval_s * 1000:
                report_at = now
                self.report()
            if (self.light is None or self.meter is None or self.radar is None) and \
                    time.ticks_diff(now, self._init_at) > _REINIT_MS:
                self._init_sensors()
            self._apply(self.level(now))
            await asyncio.sleep_ms(_TICK_MS)

    # --- status and commands ---------------------------------------------------------------

    def faults(self):
        return self.bits

    def status_records(self):
        return []

    def retry_due(self):
        return True

    def command(self, name, args):
        s = self.s
        now = time.ticks_ms()
        if name == "boost":
            level, hold = args.get("level", s["full_pct"]), args.get("hold_s", s["hold_s"])
            if not _pct(level) or not isinstance(hold, int) or not 0 < hold <= 86400:
                return False
            until = time.ticks_add(now, hold * 1000)
            if self.boost_until is None:
                self.boost_pct = level
            else:                               # one still running: extend, never cut short
                self.boost_pct = max(level, self.boost_pct)
                if time.ticks_diff(self.boost_until, until) > 0:
                    until = self.boost_until
            self.boost_until = until
        elif name == "levels":
            changes = [("lighting", k + "_pct", args[k]) for k in ("night", "full") if k in args]
            if not changes or not all(_pct(c[2]) for c in changes) or len(changes) != len(args):
                return False
            return self._persist(changes)
        elif name == "hold":
            if len(args) != 1 or not isinstance(args.get("hold_s"), int) or \
                    not 0 <= args["hold_s"] <= 3600:
                return False
            return self._persist([("lighting", "hold_s", args["hold_s"])])
        elif name == "force":
            mode = _FORCE.get(args.get("mode"))
            if mode is None:
                return False
            self.force = mode
            self._save()
        elif name == "schedule":
            if not args:
                self.sched_level = _NO_LEVEL
            else:
                start, end, level = args.get("start"), args.get("end"), args.get("level")
                if not (isinstance(start, int) and isinstance(end, int) and end > start
                        and _pct(level)):
                    return False
                self.sched_start, self.sched_end, self.sched_level = start, end, level
            self._save()
        else:
            return None
        self._apply(self.level(now))
        return True

    def _persist(self, changes):
        from app import config
        try:
            config.update(changes)
        except (config.ConfigError, OSError, ValueError):
            return False
        for _, key, value in changes:
            self.s[key] = value
        return True


def _pct(value):
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 100
