"""The street lamp's LED driver behind a PWM dimming input (a PwmLoad).

The MCU's PWM duty sets the light output (linear; ``inverted`` for drivers whose dimming
input is pulled down through an opto-coupler). The driver draws ``standby_w`` plus
``rated_w`` times the output from its DC supply (the world's ``supply_v``, 24 V), which is the
circuit the INA219 measures (``electrical``), and some of its light falls on the board's own
light sensor (``lux_at_sensor``, ``leak_lux`` at full output). A PWM frequency of 0 (PWM
stopped) leaves the input at its idle level.

Fault ``lamp_failure``: the driver or LEDs are dead: commanded on, no current, no light.
Not modelled: the driver's warm-up and soft-start, flicker, and minimum dimming level.
"""

from __future__ import annotations

from vboard.models.common import Model, clamp
from vboard.world import World


class Lamp(Model):
    name = "lamp"

    def __init__(self, world: World, board_id: str, gpio: int | None = None, *,
                 rated_w: float = 40.0, standby_w: float = 0.5, leak_lux: float = 8.0,
                 inverted: bool = False) -> None:
        super().__init__(world, board_id)
        self.gpio = gpio
        self.rated_w = rated_w
        self.standby_w = standby_w
        self.leak_lux = leak_lux
        self.inverted = inverted
        self.freq_hz = 0
        self.duty_u16 = 0

    def pwm(self, gpio: int, freq_hz: int, duty_u16: int, now_s: float) -> None:
        self.freq_hz = int(freq_hz)
        self.duty_u16 = int(clamp(duty_u16, 0, 65535))

    def commanded(self) -> float:
        """The output the MCU asks for, 0..1."""
        duty = self.duty_u16 / 65535.0 if self.freq_hz > 0 else 0.0
        return 1.0 - duty if self.inverted else duty

    def failed(self, now_s: float) -> bool:
        return self.world.fault(self.board_id, "lamp_failure", now_s)

    def level(self, now_s: float) -> float:
        """The light actually produced, 0..1."""
        return 0.0 if self.failed(now_s) else self.commanded()

    def power_w(self, now_s: float) -> float:
        if self.failed(now_s):
            return 0.0
        return self.standby_w + self.rated_w * self.level(now_s)

    def electrical(self, now_s: float) -> tuple[float, float]:
        """(supply volts, amps drawn) as seen by a current monitor in the supply line."""
        volts = self.sense("supply_v", now_s)
        return volts, (self.power_w(now_s) / volts if volts > 0 else 0.0)

    def lux_at_sensor(self, now_s: float) -> float:
        return self.leak_lux * self.level(now_s)
