"""A battery behind a resistor divider into an ESP32 ADC pin (an AnalogDevice).

Chemistries (``chemistry``): ``"2xAA-lithium"`` (two Li-FeS2 AA cells in series, 3000 mAh)
and ``"lipo-1s"`` (one LiPo cell, 2000 mAh); ``capacity_mah`` overrides. The open-circuit
voltage follows a typical discharge curve of the chemistry (tables below: typical shapes,
not one maker's datasheet) from the charge the world says was drawn (``battery_used_mah``,
the world's energy accounting), unless the scenario scripts ``battery_v`` directly. The pin
sees ``v * r_bottom / (r_top + r_bottom)`` (default 100 k / 100 k, as on the LOLIN D32's
GPIO35 divider), clamped to 0..3.3 V, with a little noise; the ESP32's attenuation and ADC
non-linearity belong to the ADC shim.

Not modelled: voltage sag under load pulses, temperature, self-discharge, charging.
"""

from __future__ import annotations

import math

from vboard.models.common import Model, clamp
from vboard.world import World

# state of charge -> open-circuit volts of the pack
CURVES: dict[str, tuple[tuple[float, float], ...]] = {
    "2xAA-lithium": ((0.0, 2.0), (0.05, 2.7), (0.1, 2.95), (0.2, 3.1), (0.5, 3.2),
                     (0.9, 3.32), (0.95, 3.4), (1.0, 3.6)),
    "lipo-1s": ((0.0, 3.0), (0.05, 3.5), (0.1, 3.68), (0.2, 3.73), (0.3, 3.77), (0.4, 3.79),
                (0.5, 3.82), (0.6, 3.87), (0.7, 3.92), (0.8, 3.98), (0.9, 4.06), (1.0, 4.2)),
}
CAPACITY_MAH = {"2xAA-lithium": 3000.0, "lipo-1s": 2000.0}


def open_circuit_v(chemistry: str, soc: float) -> float:
    curve = CURVES[chemistry]
    soc = clamp(soc, 0.0, 1.0)
    for (s0, v0), (s1, v1) in zip(curve, curve[1:]):
        if soc <= s1:
            return v0 + (v1 - v0) * (soc - s0) / (s1 - s0)
    return curve[-1][1]


class Battery(Model):
    name = "battery"

    def __init__(self, world: World, board_id: str, gpio: int | None = None, *,
                 chemistry: str = "lipo-1s", capacity_mah: float | None = None,
                 r_top_ohm: float = 100e3, r_bottom_ohm: float = 100e3,
                 noise_v: float = 0.002) -> None:
        super().__init__(world, board_id)
        if chemistry not in CURVES:
            raise ValueError("unknown battery chemistry %r; known: %s"
                             % (chemistry, ", ".join(CURVES)))
        self.gpio = gpio
        self.chemistry = chemistry
        self.capacity_mah = capacity_mah or CAPACITY_MAH[chemistry]
        self.ratio = r_bottom_ohm / (r_top_ohm + r_bottom_ohm)
        self.noise_v = noise_v

    def state_of_charge(self, now_s: float) -> float:
        used = self.sense("battery_used_mah", now_s)
        return clamp(1.0 - used / self.capacity_mah, 0.0, 1.0)

    def voltage(self, now_s: float) -> float:
        """The battery's terminal voltage."""
        scripted = self.sense("battery_v", now_s)
        if not math.isnan(scripted):
            return scripted
        return open_circuit_v(self.chemistry, self.state_of_charge(now_s))

    def adc_uv(self, gpio: int, now_s: float) -> int:
        if self.silent(now_s):              # divider open: the pin floats low
            return 0
        volts = self.voltage(now_s) * self.ratio + self.noise("pin", now_s, self.noise_v)
        return int(round(clamp(volts, 0.0, 3.3) * 1e6))
