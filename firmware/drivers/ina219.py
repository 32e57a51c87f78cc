# INA219 current/power monitor (TI, SBOS448), I2C at 0x40..0x4F. Datasheet: registers
# (16 bit, MSB first) 00 configuration (RST bit 15, BRNG bit 13: 32 V, PG bits 12-11: shunt
# range 40/80/160/320 mV, BADC bits 10-7, SADC bits 6-3, MODE bits 2-0: 7 = shunt and bus
# continuous), 01 shunt voltage (signed, 10 uV/LSB), 02 bus voltage (bits 15-3, 4 mV/LSB;
# CNVR bit 1: conversion ready, cleared by reading the power register or writing the mode;
# OVF bit 0: current or power out of range), 03 power, 04 current (signed), 05 calibration.
# Calibration: Current_LSB = max expected current / 2^15 (rounded up to a convenient value);
# Cal = trunc(0.04096 / (Current_LSB * R_shunt)), bit 0 unused; Power_LSB = 20 * Current_LSB.
# ADC: 12 bit, 532 us per conversion; averaging 2..128 samples (codes 0b1001..0b1111).
import time
from micropython import const
from drivers.errors import SensorError

_REG_CONFIG = const(0x00)
_REG_SHUNT = const(0x01)
_REG_BUS = const(0x02)
_REG_POWER = const(0x03)
_REG_CURRENT = const(0x04)
_REG_CAL = const(0x05)
_RST = const(0x8000)
_BRNG_32V = const(0x2000)
_MODE_CONTINUOUS = const(0x0007)
_CNVR = const(0x0002)
_OVF = const(0x0001)
_CONV_US = const(532)         # one 12-bit conversion
_PGA_MV = (40, 80, 160, 320)
_AVG = (1, 2, 4, 8, 16, 32, 64, 128)
_AVG_CODE = (0x3, 0x9, 0xA, 0xB, 0xC, 0xD, 0xE, 0xF)


class INA219:
    def __init__(self, i2c, addr=0x40, shunt_mohm=100, max_current_ma=2000, samples=16):
        if samples not in _AVG:
            raise ValueError("samples 1, 2, 4 .. 128")
        shunt_mv = max_current_ma * shunt_mohm // 1000
        pg = 0
        while pg < 3 and _PGA_MV[pg] < shunt_mv:
            pg += 1
        if _PGA_MV[pg] < shunt_mv:
            raise ValueError("max_current_ma * shunt above 320 mV")
        # Current_LSB in whole uA, rounded up; Cal = 0.04096 / (I_lsb[A] * R[ohm])
        lsb_ua = (max_current_ma * 1000 + 32767) // 32768
        cal = (40960000 // (lsb_ua * shunt_mohm)) & 0xFFFE
        if not 2 <= cal <= 0xFFFE:
            raise ValueError("no calibration for this shunt and current")
        self._cal = cal
        # the LSB the chip really uses with this Cal, in 10 nA (one-time big-int on the ESP32)
        self._lsb_10na = (4096000000 + cal * shunt_mohm // 2) // (cal * shunt_mohm)
        avg = _AVG_CODE[_AVG.index(samples)]
        self._config = _BRNG_32V | (pg << 11) | (avg << 7) | (avg << 3) | _MODE_CONTINUOUS
        self._conv_ms = 2 * samples * _CONV_US // 1000 + 1   # shunt then bus
        self._i2c = i2c
        self._addr = addr
        self._buf = bytearray(2)
        self._w = bytearray(3)
        self._write(_REG_CONFIG, _RST)
        self.wait_ready()

    def _write(self, reg, value):
        w = self._w
        w[0] = reg
        w[1] = value >> 8
        w[2] = value & 0xFF
        try:
            self._i2c.writeto(self._addr, w)
        except OSError:
            raise SensorError("absent", "ina219: no answer at 0x%02x" % self._addr)

    def _read(self, reg):
        b = self._buf
        try:
            self._i2c.readfrom_mem_into(self._addr, reg, b)
        except OSError:
            raise SensorError("absent", "ina219: no answer at 0x%02x" % self._addr)
        return (b[0] << 8) | b[1]

    def _signed(self, reg):
        v = self._read(reg)
        return v - 0x10000 if v & 0x8000 else v

    def wait_ready(self):
        """Rewrite calibration and configuration (a chip reset by a brown-out loses them and
        then reads 0 A), which restarts the conversions, and wait until a complete one is
        in the registers: the values read next were all measured after this call."""
        self._write(_REG_CAL, self._cal)
        self._write(_REG_CONFIG, self._config)
        deadline = time.ticks_add(time.ticks_ms(), 2 * self._conv_ms + 10)
        while True:
            # the clock is read before the look: a pause after it must not time out a ready device
            late = time.ticks_diff(deadline, time.ticks_ms()) <= 0
            if self._read(_REG_BUS) & _CNVR:
                return
            if late:
                raise SensorError("timeout", "ina219: no conversion")
            time.sleep_ms(1)

    def bus_mv(self):
        """Voltage from IN- to ground (the load's supply), mV."""
        return (self._read(_REG_BUS) >> 3) * 4

    def shunt_uv(self):
        """Voltage across the shunt, uV (signed: negative when current flows backwards)."""
        return self._signed(_REG_SHUNT) * 10

    def _check(self):
        if self._read(_REG_BUS) & _OVF:
            raise SensorError("overflow", "ina219: current or power out of range")

    def current_ma(self):
        """Current through the shunt, mA (signed), from the chip's calibrated register."""
        self._check()
        i = self._signed(_REG_CURRENT) * self._lsb_10na       # 10 nA units
        return (i + 50000) // 100000 if i >= 0 else -((50000 - i) // 100000)

    def power_mw(self):
        """Power delivered to the load, mW (Power_LSB = 20 * Current_LSB)."""
        self._check()
        return (self._read(_REG_POWER) * self._lsb_10na + 2500) // 5000
