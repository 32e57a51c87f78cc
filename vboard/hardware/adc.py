"""The ESP32's ADC as the firmware reads it: a voltage at the pin becomes a raw code and a
calibrated read_uv() value, with the chip's dead zone near 0 V and its compression near full
scale, per attenuation and width.

ADC2 belongs to the WiFi driver while the radio is on: reading an ADC2 pin then fails as on the
chip (ESP_ERR_TIMEOUT).

Ops: adc (``Adc``).
"""

from __future__ import annotations

import errno
from typing import Any, Callable

from vboard.bus import BusError
from vboard.hardware.clock import Clock
from vboard.models.base import AnalogDevice

ADC1_GPIOS = (36, 37, 38, 39, 32, 33, 34, 35)
ADC2_GPIOS = (4, 0, 2, 15, 13, 12, 14, 27, 25, 26)
# Per attenuation (ATTN_0DB, 2_5DB, 6DB, 11DB): the voltage (mV) below which the code reads 0,
# the top of ESP-IDF's recommended range (linear up to here), and where the linear part would
# reach 4095. Above the recommended range the slope halves until the code saturates (at about
# 1.25, 1.7, 2.4 and 3.15 V): the ESP32's compression near full scale.
_ADC_CURVES = ((75, 950, 1100), (78, 1250, 1470), (107, 1750, 2080), (142, 2450, 2800))


def adc_reading(uv: int, atten: int, width: int) -> tuple[int, int]:
    """(raw code at ``width`` bits, calibrated read_uv() value) for ``uv`` at the pin.

    read_uv() inverts the linear part like ESP-IDF's line-fitting calibration and, like the
    port, returns whole millivolts times 1000: exact to 1 mV inside the recommended range,
    stuck at the dead-zone voltage at the bottom, reading low in the compressed top."""
    dead, knee, full = _ADC_CURVES[atten]
    slope = 4095 / (full - dead)            # codes per mV
    mv = uv / 1000
    if mv <= dead:
        raw12 = 0.0
    elif mv <= knee:
        raw12 = (mv - dead) * slope
    else:
        raw12 = (knee - dead) * slope + (mv - knee) * slope / 2
    raw12 = min(4095, int(raw12))
    raw = raw12 >> (12 - width)
    cal_mv = int(round(dead + (raw << (12 - width)) / slope))
    return raw, cal_mv * 1000


class Adc:
    """ADC inputs: the voltage an attached model puts on a pin (0 V on a pin with nothing),
    read as the chip would. ``radio_on()`` tells whether WiFi holds ADC2."""

    def __init__(self, clock: Clock, radio_on: Callable[[], bool]) -> None:
        self._clock = clock
        self._radio_on = radio_on
        self._devices: dict[int, AnalogDevice] = {}

    def ops(self) -> dict[str, Callable[..., Any]]:
        return {"adc": self.adc}

    def attach(self, gpio: int, device: AnalogDevice) -> None:
        self._devices[gpio] = device

    def detach(self, gpio: int) -> None:
        self._devices.pop(gpio, None)

    def adc(self, gpio: int, atten: int, width: int) -> list[int]:
        if gpio in ADC2_GPIOS and self._radio_on():
            raise BusError(errno.ETIMEDOUT, "ESP_ERR_TIMEOUT")  # ADC2 is WiFi's while it runs
        device = self._devices.get(gpio)
        uv = device.adc_uv(gpio, self._clock.now()) if device is not None else 0
        return list(adc_reading(uv, atten, width))
