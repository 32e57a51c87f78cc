# QMC5883L 3-axis magnetometer (QST), I2C at 0x0D. Datasheet (QMC5883L rev. C): data X/Y/Z
# LSB first, signed 16 bit at 00H..05H; status 06H (DRDY bit 0, OVL bit 1, DOR bit 2; reading
# any data register clears DRDY); temperature 07H/08H, about 100 LSB/degC, offset not
# calibrated; control 1 at 09H = OSR[7:6] (512, 256, 128, 64) RNG[5:4] (2 G, 8 G)
# ODR[3:2] (10, 50, 100, 200 Hz) MODE[1:0] (standby, continuous); control 2 at 0AH
# (SOFT_RST bit 7, ROL_PNT bit 6, INT_ENB bit 0: 0 = DRDY pin enabled); SET/RESET period 0BH,
# to be written 0x01; chip id 0DH = 0xFF. Sensitivity 12000 LSB/G at 2 G, 3000 LSB/G at 8 G
# (1 G = 100 uT = 100000 nT).
import time
from micropython import const
from drivers.errors import SensorError

_REG_DATA = const(0x00)
_REG_STATUS = const(0x06)
_REG_TEMP = const(0x07)
_REG_CTRL1 = const(0x09)
_REG_CTRL2 = const(0x0A)
_REG_PERIOD = const(0x0B)
_REG_ID = const(0x0D)
_CHIP_ID = const(0xFF)
_DRDY = const(0x01)
_OVL = const(0x02)
_DOR = const(0x04)
_SOFT_RST = const(0x80)
_PERIOD = const(0x01)
_MODE_CONTINUOUS = const(0x01)
_POR_MS = const(1)            # power-on/reset time 350 us

_ODRS_HZ = (10, 50, 100, 200)
_OSRS = (512, 256, 128, 64)


class QMC5883L:
    def __init__(self, i2c, addr=0x0D, range_g=8, odr_hz=10, osr=512, drdy=None):
        if range_g not in (2, 8) or odr_hz not in _ODRS_HZ or osr not in _OSRS:
            raise ValueError("range_g 2/8, odr_hz 10/50/100/200, osr 512/256/128/64")
        self._i2c = i2c
        self._addr = addr
        self._drdy = drdy                      # optional Pin on the DRDY output
        self._buf = bytearray(6)
        self._one = bytearray(1)
        self._w = bytearray(2)
        # nT per LSB = 100000 / 12000 = 25/3 at 2 G, 100000 / 3000 = 100/3 at 8 G
        self._num = 25 if range_g == 2 else 100
        self._ctrl1 = (_OSRS.index(osr) << 6) | ((0 if range_g == 2 else 1) << 4) \
            | (_ODRS_HZ.index(odr_hz) << 2) | _MODE_CONTINUOUS
        period_ms = 1000 // odr_hz
        self._timeout_ms = 2 * period_ms + 20  # one period after a mode change, with slack
        self._poll_ms = max(1, period_ms // 10)
        self.overflow = False                  # OVL of the last read: an axis saturated
        self.skipped = False                   # DOR of the last read: samples were missed
        if self._reg(_REG_ID) != _CHIP_ID:
            raise SensorError("id", "qmc5883l: chip id 0x%02x at 0x%02x" % (
                self._one[0], addr))
        self._write(_REG_CTRL2, _SOFT_RST)
        time.sleep_ms(_POR_MS)
        self._write(_REG_PERIOD, _PERIOD)
        self._write(_REG_CTRL1, self._ctrl1)
        self._running = True

    def _reg(self, reg):
        try:
            self._i2c.readfrom_mem_into(self._addr, reg, self._one)
        except OSError:
            raise SensorError("absent", "qmc5883l: no answer at 0x%02x" % self._addr)
        return self._one[0]

    def _write(self, reg, value):
        self._w[0] = reg
        self._w[1] = value
        try:
            self._i2c.writeto(self._addr, self._w)
        except OSError:
            raise SensorError("absent", "qmc5883l: no answer at 0x%02x" % self._addr)

    def standby(self):
        """Stop measuring (for deep sleep); the next read() starts again."""
        self._write(_REG_CTRL1, self._ctrl1 & 0xFC)
        self._running = False

    def read(self):
        """The next sample: (x_nT, y_nT, z_nT). Waits for data-ready (SensorError "timeout"
        after two output periods); sets .overflow from the status register."""
        if not self._running:
            self._write(_REG_CTRL1, self._ctrl1)
            self._running = True
        deadline = time.ticks_add(time.ticks_ms(), self._timeout_ms)
        while True:
            # the clock is read before the look: a pause after it must not time out a ready device
            late = time.ticks_diff(deadline, time.ticks_ms()) <= 0
            if self._drdy is None or self._drdy.value():
                status = self._reg(_REG_STATUS)
                if status & _DRDY:
                    break
            if late:
                raise SensorError("timeout", "qmc5883l: no data ready")
            time.sleep_ms(self._poll_ms)
        self.overflow = bool(status & _OVL)
        self.skipped = bool(status & _DOR)
        b = self._buf
        try:
            self._i2c.readfrom_mem_into(self._addr, _REG_DATA, b)
        except OSError:
            raise SensorError("absent", "qmc5883l: no answer at 0x%02x" % self._addr)
        return self._nt(b[0] | (b[1] << 8)), self._nt(b[2] | (b[3] << 8)), \
            self._nt(b[4] | (b[5] << 8))

    def _nt(self, raw):
        if raw & 0x8000:
            raw -= 0x10000
        # raw * num / 3, rounded to nearest (|raw| * 100 stays well inside a small int)
        return (2 * raw * self._num + 3) // 6

    def temperature_cc(self):
        """Die temperature in centi-degrees, relative only (the offset is not calibrated:
        compare readings of one chip, e.g. for drift compensation)."""
        b = self._buf
        try:
            self._i2c.readfrom_mem_into(self._addr, _REG_TEMP, memoryview(b)[:2])
        except OSError:
            raise SensorError("absent", "qmc5883l: no answer at 0x%02x" % self._addr)
        raw = b[0] | (b[1] << 8)
        return raw - 0x10000 if raw & 0x8000 else raw
