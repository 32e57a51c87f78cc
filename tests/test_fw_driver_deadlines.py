"""Drivers that wait for a device (data ready, conversion done) on the real MicroPython VM:
a pause between looking at the device and reading the clock (a WiFi interrupt on the chip, a
busy host for a virtual board) must not turn a device that became ready into a timeout. The
clock is a fake here, so the pause falls exactly there."""

from __future__ import annotations

import json

from boards.nodeapp import FIRMWARE
from vboard.vm import run_source

FAKE_TIME = """
_now = [0]
def ticks_ms():
    return _now[0]
def ticks_us():
    return _now[0] * 1000
def ticks_add(t, d):
    return t + d
def ticks_diff(a, b):
    return a - b
def sleep_ms(ms):
    _now[0] += max(0, ms)
def sleep_us(us):
    pass
def pause(ms):
    _now[0] += ms
"""

SCRIPT = """
import json, time
from drivers.errors import SensorError
from drivers.qmc5883l import QMC5883L
from drivers.ina219 import INA219

class I2C:
    # Registers of one device; `ready` is (register, bit): clear at the first look, after
    # which the clock jumps PAUSE_MS (past any deadline), and set from then on.
    def __init__(self, regs, ready, width):
        self.regs, self.ready, self.width, self.looks = regs, ready, width, 0
    def writeto(self, addr, buf):
        pass
    def readfrom_mem_into(self, addr, reg, buf):
        value = self.regs.get(reg, 0)
        if reg == self.ready[0]:
            self.looks += 1
            if self.looks == 1:
                time.pause(%(pause)d)
            else:
                value |= self.ready[1]
        for i in range(len(buf)):
            buf[i] = (value >> (8 * (self.width - 1 - i))) & 0xFF if i < self.width else 0

def outcome(make):
    try:
        make()
        return "ready"
    except SensorError as e:
        return e.code

print(json.dumps({
    "qmc5883l": outcome(lambda: QMC5883L(I2C({0x0D: 0xFF}, (0x06, 0x01), 1)).read()),
    "ina219": outcome(lambda: INA219(I2C({0x02: 0x1F40}, (0x02, 0x0002), 2))),
    # a device that never gets ready still times out
    "qmc5883l never": outcome(lambda: QMC5883L(I2C({0x0D: 0xFF}, (0x06, 0), 1)).read()),
    "ina219 never": outcome(lambda: INA219(I2C({0x02: 0x1F40}, (0x02, 0), 2))),
}))
"""


def test_a_pause_after_the_last_look_is_not_a_timeout_and_never_ready_is(tmp_path):
    (tmp_path / "time.py").write_text(FAKE_TIME)
    proc = run_source(SCRIPT % {"pause": 1000}, path=[tmp_path, ".frozen", FIRMWARE])
    assert proc.returncode == 0, proc.stderr.decode() + proc.stdout.decode()
    assert json.loads(proc.stdout) == {"qmc5883l": "ready", "ina219": "ready",
                                       "qmc5883l never": "timeout", "ina219 never": "timeout"}
