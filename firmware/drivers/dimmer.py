# PWM dimming output to the LED driver's dimming input (LEDC, 1 kHz by default: LED drivers'
# PWM inputs take about 100 Hz-3 kHz). Linear mapping: level % = duty %, so the level is the
# share of the driver's rated current, light and power (as street-lighting dimming profiles
# are specified, and as the INA219 sees it). Ramps are interpolated every 20 ms in 0.01 %
# steps, so no step is visible; a level below min_pct (except 0, off) is raised to it, for
# drivers that flicker at very small duty.
import time
from machine import PWM
from micropython import const

_STEP_MS = const(20)
_FULL = const(10000)          # 100.00 %


class Dimmer:
    def __init__(self, pin, freq_hz=1000, min_pct=0, invert=False):
        if not 0 <= min_pct <= 100:
            raise ValueError("min_pct 0..100")
        self._min = min_pct * 100
        self._cpct = 0               # output level, 0.01 %
        self._gen = 0                # bumped by set() and each ramp: older ramps stop
        if invert:
            self._pwm = PWM(pin, freq=freq_hz, duty_u16=0, invert=True)
        else:
            self._pwm = PWM(pin, freq=freq_hz, duty_u16=0)

    @property
    def level_pct(self):
        return (self._cpct + 50) // 100

    def _out(self, cpct):
        if 0 < cpct < self._min:
            cpct = self._min
        self._cpct = cpct
        self._pwm.duty_u16(cpct * 65535 // _FULL)

    def set(self, level_pct):
        """Output level_pct (clamped to 0..100) now; stops a running ramp."""
        self._gen += 1
        self._out(min(100, max(0, level_pct)) * 100)

    async def ramp_to(self, level_pct, ramp_ms):
        """Move linearly from the present level to level_pct over ramp_ms. Cancelling the
        task leaves the level where it is; set() or a newer ramp_to() replaces this one."""
        import asyncio
        self._gen += 1
        gen = self._gen
        start = self._cpct
        target = min(100, max(0, level_pct)) * 100
        if ramp_ms <= 0 or start == target:
            self._out(target)
            return
        t0 = time.ticks_ms()
        while True:
            await asyncio.sleep_ms(_STEP_MS)
            if self._gen != gen:
                return
            elapsed = time.ticks_diff(time.ticks_ms(), t0)
            if elapsed >= ramp_ms:
                self._out(target)
                return
            if ramp_ms < 0x40000:    # fraction of the ramp in 1/4096, small ints only
                frac = (elapsed << 12) // ramp_ms
            else:
                frac = elapsed // (ramp_ms >> 12)
            self._out(start + (target - start) * frac // 4096)
