"""QST QMC5883L 3-axis magnetometer at the I2C bus and its DRDY (interrupt) pin (datasheet
QMC5883L Rev. 1.0: register map Table 13, status 9.2.2, control registers 9.2.4, as quoted
with the datasheet text in Tasmota's xsns_33_qmc5883l).

- Address 0x0D. Registers: 00-05 X/Y/Z LSB, MSB (signed 16-bit), 06 status (bit0 DRDY,
  bit1 OVL, bit2 DOR), 07-08 temperature (signed, ~100 LSB/°C, offset not calibrated), 09
  control 1 (MODE[1:0] 00 standby / 01 continuous, ODR[3:2] 10/50/100/200 Hz, RNG[5:4] 2 G /
  8 G, OSR[7:6] 512/256/128/64), 0A control 2 (bit0 INT_ENB: 0 enables the DRDY pin, bit6
  ROL_PNT, bit7 SOFT_RST: all registers to defaults, standby), 0B SET/RESET period (0x01
  recommended), 0D chip id 0xFF.
- A write sets the register pointer and writes the following bytes with auto-increment; a read
  continues from the pointer. With ROL_PNT the pointer rolls from 06 back to 00 when a read
  starts in 00..06; otherwise it runs on to 0D and wraps to 00 (not in the datasheet).
- Continuous mode: a new sample every 1/ODR; DRDY is set when it is loaded; reading any of
  00..05 clears DRDY and DOR; DOR is set when a sample replaced one that was never read.
  Sensitivity 12000 LSB/G (2 G) or 3000 LSB/G (8 G); outputs saturate at -32768/32767 and
  OVL is set while any axis is out of range (cleared by the next in-range sample).
  Standby: no measurements, registers keep their values. The first sample comes one period
  after continuous mode is entered.

Not modelled: the DRDY pin's electrical details (it is high while DRDY is set), the effect of
SET/RESET period settings, self-test, and the 0C register (reads 0).
"""

from __future__ import annotations

import math

from vboard.models.base import Nack
from vboard.models.common import Model, pulse_sampled
from vboard.world import World

REG_X_LSB = 0x00
REG_STATUS = 0x06
REG_TEMP_LSB = 0x07
REG_CTRL1 = 0x09
REG_CTRL2 = 0x0A
REG_SET_RESET = 0x0B
REG_CHIP_ID = 0x0D
CHIP_ID = 0xFF

STATUS_DRDY = 0x01
STATUS_OVL = 0x02
STATUS_DOR = 0x04

ODR_HZ = (10.0, 50.0, 100.0, 200.0)
OSR = (512, 256, 128, 64)
LSB_PER_GAUSS = {0: 12000.0, 1: 3000.0}
UT_PER_GAUSS = 100.0


def _s16(value: float) -> tuple[int, bool]:
    """Saturate to the signed 16-bit range; True when it had to."""
    v = int(round(value))
    if v > 32767:
        return 32767, True
    if v < -32768:
        return -32768, True
    return v, False


class QMC5883L(Model):
    name = "qmc5883l"

    def __init__(self, world: World, board_id: str, address: int = 0x0D, *,
                 drdy_gpio: int | None = None, noise_ut: float = 0.2,
                 temp_offset_lsb: int = 0) -> None:
        super().__init__(world, board_id)
        self.address = address
        self.drdy_gpio = drdy_gpio
        self.noise_ut = noise_ut            # RMS at OSR 512 (datasheet: 2 mG resolution)
        self.temp_offset_lsb = temp_offset_lsb
        self._reset()

    def _reset(self) -> None:
        self.regs = bytearray(14)
        self.regs[REG_CHIP_ID] = CHIP_ID
        self.pointer = 0
        self._cont_start = 0.0
        self._samples = 0                   # samples taken since continuous mode began

    # -- configuration as decoded from the control registers --------------------------------

    @property
    def continuous(self) -> bool:
        return self.regs[REG_CTRL1] & 0x03 == 0x01

    @property
    def odr_hz(self) -> float:
        return ODR_HZ[(self.regs[REG_CTRL1] >> 2) & 0x03]

    @property
    def osr(self) -> int:
        return OSR[(self.regs[REG_CTRL1] >> 6) & 0x03]

    @property
    def lsb_per_ut(self) -> float:
        rng = (self.regs[REG_CTRL1] >> 4) & 0x03
        return LSB_PER_GAUSS.get(rng, 3000.0) / UT_PER_GAUSS

    # -- bus --------------------------------------------------------------------------------

    def i2c_write(self, data: bytes, now_s: float) -> None:
        if self.silent(now_s):
            raise Nack()
        if not data:
            return
        self._advance(now_s)
        self.pointer = data[0]
        for byte in data[1:]:
            self._write_reg(self.pointer, byte, now_s)
            self.pointer = self._next(self.pointer, self.pointer)

    def i2c_read(self, n: int, now_s: float) -> bytes:
        if self.silent(now_s):
            raise Nack()
        self._advance(now_s)
        start = self.pointer
        out = bytearray()
        clear = False
        for _ in range(n):
            reg = self.pointer
            out.append(self.regs[reg] if reg <= REG_CHIP_ID else 0)
            if reg <= 0x05:
                clear = True
            self.pointer = self._next(reg, start)
        if clear:
            self.regs[REG_STATUS] &= ~(STATUS_DRDY | STATUS_DOR) & 0xFF
        return bytes(out)

    def _next(self, reg: int, start: int) -> int:
        rollover = self.regs[REG_CTRL2] & 0x40
        if rollover and start <= REG_STATUS and reg == REG_STATUS:
            return 0x00
        return 0x00 if reg >= REG_CHIP_ID else reg + 1

    def _write_reg(self, reg: int, value: int, now_s: float) -> None:
        if reg == REG_CTRL1:
            was_cont, old_odr = self.continuous, self.odr_hz
            self.regs[REG_CTRL1] = value
            if self.continuous and (not was_cont or self.odr_hz != old_odr):
                self._cont_start, self._samples = now_s, 0
        elif reg == REG_CTRL2:
            if value & 0x80:
                self._reset()
                return
            self.regs[REG_CTRL2] = value & 0x41
        elif reg == REG_SET_RESET:
            self.regs[REG_SET_RESET] = value
        # 00..08, 0C, 0D are read-only

    # -- measurement ------------------------------------------------------------------------

    def _advance(self, now_s: float) -> None:
        if not self.continuous:
            return
        period = 1.0 / self.odr_hz
        due = math.floor((now_s - self._cont_start) / period + 1e-9)
        if due <= self._samples:
            return
        status = self.regs[REG_STATUS]
        if status & STATUS_DRDY or due - self._samples > 1:
            status |= STATUS_DOR
        self._samples = due
        self._sample(self._cont_start + due * period, status)

    def field_ut(self, t: float) -> tuple[float, float, float]:
        return (self.sense("mag_x_ut", t), self.sense("mag_y_ut", t), self.sense("mag_z_ut", t))

    def _sample(self, t: float, status: int) -> None:
        sigma = self.noise_ut * math.sqrt(512.0 / self.osr)
        overflow = False
        for axis, value in enumerate(self.field_ut(t)):
            counts, ovl = _s16((value + self.noise("xyz"[axis], t, sigma)) * self.lsb_per_ut)
            overflow |= ovl
            self.regs[2 * axis:2 * axis + 2] = (counts & 0xFFFF).to_bytes(2, "little")
        temp, _ = _s16(100.0 * self.sense("air_temp_c", t) + self.temp_offset_lsb
                       + self.noise("temp", t, 5.0))
        self.regs[REG_TEMP_LSB:REG_TEMP_LSB + 2] = (temp & 0xFFFF).to_bytes(2, "little")
        status = (status | STATUS_DRDY) & ~STATUS_OVL
        self.regs[REG_STATUS] = (status | (STATUS_OVL if overflow else 0)) & 0x07

    # -- DRDY pin ---------------------------------------------------------------------------

    def pin_input(self, gpio: int, now_s: float) -> int:
        if self.silent(now_s):
            return 0
        self._advance(now_s)
        enabled = not self.regs[REG_CTRL2] & 0x01
        return 1 if enabled and self.regs[REG_STATUS] & STATUS_DRDY else 0

    def pin_output(self, gpio: int, value: int, now_s: float) -> None:
        pass

    def pulse_us(self, gpio: int, level: int, timeout_us: int, now_s: float) -> int:
        return pulse_sampled(lambda t: self.pin_input(gpio, t), level, timeout_us, now_s,
                             0.0005)
