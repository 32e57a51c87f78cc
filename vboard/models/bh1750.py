"""ROHM BH1750FVI ambient light sensor at the I2C bus (datasheet: BH1750FVI Technical Note,
2009.04 Rev.B: instruction set p.5, electrical characteristics p.2, I2C access p.10, MTreg
p.11).

- Address 0x23 (ADDR low) or 0x5C (ADDR high). One opcode per write transaction (the chip
  takes no second command before a stop); reads return the 16-bit result high byte first,
  with no register pointer.
- Opcodes: 0x00 power down, 0x01 power on, 0x07 reset (clears the data register; ignored in
  power down), 0x10/0x11/0x13 continuous H-res / H-res2 / L-res, 0x20/0x21/0x23 one-time
  H / H2 / L (back to power down after the measurement), 0x40|MT[7:5] and 0x60|MT[4:0] set the
  measurement-time register (MTreg, default 69, valid 31..254).
- Measurement time: H modes 120 ms typ (180 max), L mode 16 ms typ (24 max), times MTreg/69;
  a new MTreg takes effect with the next measurement. Until a measurement completes the data
  register holds the previous result (0 after power-up or reset).
- Counts = lux * 1.2 * MTreg/69 (H), twice that in H-res2 (0.5 lx steps), and 4-count steps
  in L-res; 0..3 counts in the dark; saturates at 65535.

Not modelled: the measurement's integration over its window (the lux at the end of it is
used), spectral response, and I2C timing.
"""

from __future__ import annotations

from typing import Callable, Iterable

from vboard.models.base import Nack
from vboard.models.common import Model, clamp
from vboard.world import World

_POWER_DOWN = 0x00
_POWER_ON = 0x01
_RESET = 0x07
_MT_HIGH = 0x40      # 01000_MT[7,6,5]
_MT_LOW = 0x60       # 011_MT[4,3,2,1,0]

# opcode -> (resolution, one-time)
_MODES = {0x10: ("H", False), 0x11: ("H2", False), 0x13: ("L", False),
          0x20: ("H", True), 0x21: ("H2", True), 0x23: ("L", True)}

_TIME_S = {"typ": {"H": 0.120, "H2": 0.120, "L": 0.016},
           "max": {"H": 0.180, "H2": 0.180, "L": 0.024}}

MTREG_DEFAULT = 69


class BH1750(Model):
    name = "bh1750"

    def __init__(self, world: World, board_id: str, address: int = 0x23, *,
                 extra_lux: Iterable[Callable[[float], float]] = (),
                 timing: str = "typ", accuracy: float = 1.2) -> None:
        super().__init__(world, board_id)
        if address not in (0x23, 0x5C):
            raise ValueError("a BH1750 answers at 0x23 or 0x5C, not 0x%02X" % address)
        self.address = address
        self.extra_lux = list(extra_lux)    # e.g. the board's own lamp shining on the sensor
        self.timing = _TIME_S[timing]
        self.accuracy = accuracy            # sensor out / actual lx (datasheet: 0.96..1.44)
        self.powered = False                # power down after VCC comes up
        self.mode: str | None = None
        self.one_time = False
        self.mtreg = MTREG_DEFAULT
        self.data = 0
        self._cycle_start = 0.0
        self._cycle_mt = MTREG_DEFAULT

    # -- bus ------------------------------------------------------------------------------

    def i2c_write(self, data: bytes, now_s: float) -> None:
        if self.silent(now_s):
            raise Nack()
        if not data:
            return                          # an address probe (i2c.scan)
        self._advance(now_s)
        op = data[0]
        if op == _POWER_DOWN:
            self.powered, self.mode = False, None
        elif op == _POWER_ON:
            self.powered = True
        elif op == _RESET:
            if self.powered:
                self.data = 0
        elif op in _MODES:
            self.powered = True
            self.mode, self.one_time = _MODES[op]
            self._cycle_start, self._cycle_mt = now_s, self.mtreg
        elif op & 0xF8 == _MT_HIGH:
            self.mtreg = (self.mtreg & 0x1F) | ((op & 0x07) << 5)
        elif op & 0xE0 == _MT_LOW:
            self.mtreg = (self.mtreg & 0xE0) | (op & 0x1F)

    def i2c_read(self, n: int, now_s: float) -> bytes:
        if self.silent(now_s):
            raise Nack()
        self._advance(now_s)
        out = bytes((self.data >> 8, self.data & 0xFF))
        return (out + b"\xff" * n)[:n]

    # -- measurement ----------------------------------------------------------------------

    def measurement_s(self, mode: str | None = None, mtreg: int | None = None) -> float:
        mt = clamp(self.mtreg if mtreg is None else mtreg, 31, 254)
        return self.timing[mode or self.mode or "H"] * mt / MTREG_DEFAULT

    def _advance(self, now_s: float) -> None:
        if self.mode is None:
            return
        end = self._cycle_start + self.measurement_s(self.mode, self._cycle_mt)
        if now_s < end:
            return
        if self.one_time:
            self.data = self._counts(end, self._cycle_mt)
            self.mode, self.powered = None, False
            return
        # Continuous: the running cycle ends, later cycles use the MTreg set meanwhile.
        last_end, last_mt = end, self._cycle_mt
        period = self.measurement_s(self.mode, self.mtreg)
        cycles = int((now_s - end) / period)
        if cycles:
            last_end, last_mt = end + cycles * period, self.mtreg
        self._cycle_start, self._cycle_mt = last_end, self.mtreg
        self.data = self._counts(last_end, last_mt)

    def lux(self, now_s: float) -> float:
        """What falls on the sensor: the world's light plus contributions such as a lamp."""
        return self.sense("lux", now_s) + sum(src(now_s) for src in self.extra_lux)

    def _counts(self, t: float, mtreg: int) -> int:
        mt = clamp(mtreg, 31, 254)
        counts = self.lux(t) * self.accuracy * mt / MTREG_DEFAULT
        counts *= 1.0 + self.noise("gain", t, 0.005)
        if self.mode == "H2":
            counts *= 2.0
        counts += clamp(abs(self.noise("dark", t, 0.7)), 0, 3)   # dark output 0..3 counts
        value = int(clamp(counts, 0, 65535))
        if self.mode == "L":
            value &= ~0x3
        return value
