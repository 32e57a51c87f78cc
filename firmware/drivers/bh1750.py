# BH1750FVI ambient light sensor (ROHM), I2C. Datasheet: opcodes, MTreg, measurement time
# (H-resolution: 120 ms typ., 180 ms max. at MTreg 69; scales with MTreg), count = lux * 1.2.
# "Reset" only clears the data register and is refused in power-down: power on first.
import time
from micropython import const
from drivers.errors import SensorError

ADDR_LOW = const(0x23)      # ADDR pin low (the usual breakout)
ADDR_HIGH = const(0x5C)
_POWER_ON = const(0x01)
_RESET = const(0x07)
_ONE_TIME_H = const(0x20)   # one measurement at 1 lx resolution, then power down
_MT_DEFAULT = const(69)
_T_MAX_MS = const(180)      # worst-case H-resolution measurement time at MTreg 69


class BH1750:
    def __init__(self, i2c, addr=ADDR_LOW, mtreg=_MT_DEFAULT):
        if not 31 <= mtreg <= 254:
            raise ValueError("MTreg 31..254")
        self._i2c = i2c
        self._addr = addr
        self._mt = mtreg
        self._wait_ms = _T_MAX_MS * mtreg // _MT_DEFAULT
        self._cmd = bytearray(1)
        self._buf = bytearray(2)
        self._send(_POWER_ON)
        self._send(_RESET)

    def _start(self):
        # MTreg again each time: a sensor that lost power since came back with 69
        self._send(0x40 | (self._mt >> 5))   # MTreg bits 7..5
        self._send(0x60 | (self._mt & 0x1F)) # MTreg bits 4..0
        self._send(_ONE_TIME_H)

    def _send(self, opcode):
        self._cmd[0] = opcode
        try:
            self._i2c.writeto(self._addr, self._cmd)
        except OSError:
            raise SensorError("absent", "bh1750: no answer at 0x%02x" % self._addr)

    def _result(self):
        try:
            self._i2c.readfrom_into(self._addr, self._buf)
        except OSError:
            raise SensorError("absent", "bh1750: no answer at 0x%02x" % self._addr)
        count = (self._buf[0] << 8) | self._buf[1]
        # lux = count / 1.2 * 69 / MTreg, in integers
        return (count * 10 * _MT_DEFAULT + 6 * self._mt) // (12 * self._mt)

    def read_lux(self):
        """One H-resolution measurement; ambient light in lux (integer). Blocks for the
        worst-case measurement time (180 ms at MTreg 69)."""
        self._start()
        time.sleep_ms(self._wait_ms)
        return self._result()

    async def read_lux_async(self):
        """read_lux() for asyncio apps: other tasks run during the measurement."""
        import asyncio
        self._start()
        await asyncio.sleep_ms(self._wait_ms)
        return self._result()
