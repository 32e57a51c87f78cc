"""TI INA219 current/power monitor at the I2C bus (datasheet SBOS448F/G: register map Table 2,
configuration register 8.6.2.1 with Tables 5-7, data registers 8.6.3, calibration 8.5.1).

- Address 0x40..0x4F (A0/A1). A write ``[pointer, MSB, LSB]`` writes a register, a write of
  ``[pointer]`` only moves the pointer; reads return the pointed register, MSB first, and the
  pointer stays (repeated reads need no new pointer).
- 00 configuration (POR 0x399F): RST (bit 15, self-clearing full reset), BRNG (bit 13: 16/32 V),
  PG (bits 12-11: ±40/80/160/320 mV), BADC (10-7), SADC (6-3), MODE (2-0: 0 power-down, 1..3
  shunt/bus/both triggered, 4 ADC off, 5..7 shunt/bus/both continuous).
- 01 shunt voltage: signed, 10 µV LSB, limited to the PGA range (±4000 << PG).
- 02 bus voltage: bits 15-3 in 4 mV steps (full scale 4000 or 8000 counts), bit 1 CNVR (set
  when a conversion with its multiplications is done; cleared by reading the power register or
  writing a new operating mode), bit 0 OVF (current or power calculation out of range).
- 04 current = shunt register * calibration / 4096; 03 power = current * bus register / 5000
  (power LSB is 20 current LSBs); both computed when a conversion completes, so they read 0
  until the calibration register (05, bit 0 always 0) is programmed.
- Conversion time per ADC setting: 84/148/276/532 µs for 9..12 bit, 1.06..68.10 ms for 2..128
  samples; a shunt+bus cycle takes both. Triggered modes convert once per configuration write.

The measured circuit is the ``load``: an object with ``electrical(now_s) -> (bus_v, amps)``
(the lamp model); without one the bus reads the world's ``supply_v`` and no current flows.
Not modelled: ADC resolution below the register LSB (9..11-bit settings only change timing
and noise), the 4 µs register update delay, and SMBus alert.
"""

from __future__ import annotations

import math

from vboard.models.base import Nack
from vboard.models.common import Model, clamp
from vboard.world import World

REG_CONFIG = 0x00
REG_SHUNT = 0x01
REG_BUS = 0x02
REG_POWER = 0x03
REG_CURRENT = 0x04
REG_CALIBRATION = 0x05
CONFIG_POR = 0x399F

SHUNT_LSB_V = 10e-6
BUS_LSB_V = 0.004

_RESOLUTION_S = (84e-6, 148e-6, 276e-6, 532e-6)
_AVERAGE_S = (532e-6, 1.06e-3, 2.13e-3, 4.26e-3, 8.51e-3, 17.02e-3, 34.05e-3, 68.10e-3)


def adc_setting(code: int) -> tuple[float, int]:
    """(conversion time in s, samples averaged) for a 4-bit BADC/SADC value (Table 6)."""
    if code & 0x8:
        return _AVERAGE_S[code & 0x7], 1 << (code & 0x7)
    return _RESOLUTION_S[code & 0x3], 1


class INA219(Model):
    name = "ina219"

    def __init__(self, world: World, board_id: str, address: int = 0x40, *,
                 shunt_ohm: float = 0.1, load=None) -> None:
        super().__init__(world, board_id)
        if not 0x40 <= address <= 0x4F:
            raise ValueError("an INA219 answers at 0x40..0x4F, not 0x%02X" % address)
        self.address = address
        self.shunt_ohm = shunt_ohm
        self.load = load
        self.pointer = 0
        self._power_on_reset(world.now())     # powered (and converting) from now on

    def _power_on_reset(self, now_s: float | None) -> None:
        self.config = CONFIG_POR
        self.calibration = 0
        self.shunt = self.bus = self.current = self.power = 0
        self.cnvr = self.ovf = False
        self._start = now_s                 # conversions (re)started here
        self._done = 0

    @property
    def mode(self) -> int:
        return self.config & 0x7

    def cycle_s(self) -> float:
        t = 0.0
        if self.mode & 1:
            t += adc_setting((self.config >> 3) & 0xF)[0]
        if self.mode & 2:
            t += adc_setting((self.config >> 7) & 0xF)[0]
        return t

    # -- bus --------------------------------------------------------------------------------

    def i2c_write(self, data: bytes, now_s: float) -> None:
        if self.silent(now_s):
            raise Nack()
        if not data:
            return
        self._advance(now_s)
        self.pointer = data[0]
        if len(data) < 3:
            return
        value = (data[1] << 8) | data[2]
        if self.pointer == REG_CONFIG:
            if value & 0x8000:
                self._power_on_reset(now_s)
                return
            self.config = value & 0x7FFF
            if self.mode not in (0, 4):
                self.cnvr = False
                self._start, self._done = now_s, 0
        elif self.pointer == REG_CALIBRATION:
            self.calibration = value & 0xFFFE
        # 01..04 are read-only

    def i2c_read(self, n: int, now_s: float) -> bytes:
        if self.silent(now_s):
            raise Nack()
        self._advance(now_s)
        value = self.register(self.pointer)
        if self.pointer == REG_POWER:
            self.cnvr = False
        return (value.to_bytes(2, "big") * (n // 2 + 1))[:n]

    def register(self, reg: int) -> int:
        if reg == REG_CONFIG:
            return self.config
        if reg == REG_SHUNT:
            return self.shunt & 0xFFFF
        if reg == REG_BUS:
            return (self.bus << 3) | (2 if self.cnvr else 0) | (1 if self.ovf else 0)
        if reg == REG_POWER:
            return self.power
        if reg == REG_CURRENT:
            return self.current & 0xFFFF
        if reg == REG_CALIBRATION:
            return self.calibration
        return 0

    # -- conversions ------------------------------------------------------------------------

    def _advance(self, now_s: float) -> None:
        if self._start is None:
            self._start = now_s             # converting since power-up (continuous, POR mode)
        if self.mode in (0, 4):
            return
        cycle = self.cycle_s()
        due = math.floor((now_s - self._start) / cycle + 1e-9)
        if self.mode < 4:
            due = min(due, 1)               # triggered: one conversion
        if due > self._done:
            self._done = due
            self._convert(self._start + due * cycle)

    def electrical(self, t: float) -> tuple[float, float]:
        if self.load is not None:
            return self.load.electrical(t)
        return self.sense("supply_v", t), 0.0

    def _convert(self, t: float) -> None:
        bus_v, amps = self.electrical(t)
        if self.mode & 1:
            _, samples = adc_setting((self.config >> 3) & 0xF)
            volts = amps * self.shunt_ohm + self.noise("shunt", t, 20e-6 / math.sqrt(samples))
            limit = 4000 << ((self.config >> 11) & 0x3)
            self.shunt = int(clamp(round(volts / SHUNT_LSB_V), -limit, limit))
        if self.mode & 2:
            _, samples = adc_setting((self.config >> 7) & 0xF)
            volts = bus_v + self.noise("bus", t, 0.008 / math.sqrt(samples))
            full = 8000 if self.config & 0x2000 else 4000
            self.bus = int(clamp(round(volts / BUS_LSB_V), 0, full))
        current = (self.shunt * self.calibration) >> 12
        power = abs(current) * self.bus // 5000
        self.ovf = not -0x8000 <= current <= 0x7FFF or power > 0xFFFF
        self.current = current & 0xFFFF
        self.power = power & 0xFFFF
        self.cnvr = True
