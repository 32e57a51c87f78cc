"""The contract between the virtual board's buses (vboard/hardware/) and device models.

A model sees exactly what the device sees on its pins and buses, and answers as the datasheet
says, so the firmware's real drivers are what gets tested. Physical quantities come from the
world (vboard/world.py) through ``world.value(board_id, name, now_s)``; time is the world's
simulated time in seconds (float), passed in by the bus on every access.

Errors: a device that does not acknowledge its address (absent, unplugged, powered off) raises
``Nack``; the I2C shim turns that into ``OSError(ENODEV)`` as the ESP32 port does.
"""

from __future__ import annotations

from typing import Protocol

from vboard.errors import VBoardError


class Nack(VBoardError):
    """The device did not acknowledge (absent, unplugged, or busy)."""


class I2CDevice(Protocol):
    address: int

    def i2c_write(self, data: bytes, now_s: float) -> None:
        """A write transaction (address + W, then ``data``). Register-pointer devices take the
        first byte as the register address."""

    def i2c_read(self, n: int, now_s: float) -> bytes:
        """A read transaction of ``n`` bytes (address + R), e.g. after a write that set the
        register pointer (readfrom_mem is write([reg]) then read(n) with a repeated start)."""


class UartDevice(Protocol):
    baudrate: int

    def uart_write(self, data: bytes, now_s: float) -> None:
        """Bytes the MCU transmits to the device (its RX line)."""

    def uart_read(self, now_s: float) -> bytes:
        """Bytes the device has transmitted to the MCU up to ``now_s`` and not yet collected
        (a streaming radar produces frames at its own rate; a sonar answers a trigger)."""


class PinDevice(Protocol):
    def pin_input(self, gpio: int, now_s: float) -> int:
        """Level (0/1) the device drives on ``gpio`` (an input of the MCU)."""

    def pin_output(self, gpio: int, value: int, now_s: float) -> None:
        """The MCU drove ``gpio`` to ``value`` (e.g. a sonar trigger)."""

    def pulse_us(self, gpio: int, level: int, timeout_us: int, now_s: float) -> int:
        """For machine.time_pulse_us on ``gpio``: the length of the next pulse at ``level`` in
        microseconds, -1 if it did not start within timeout_us, -2 if it did not end."""


class AnalogDevice(Protocol):
    def adc_uv(self, gpio: int, now_s: float) -> int:
        """Voltage at the ADC pin in microvolts (before the ESP32's attenuation and width)."""


class PwmLoad(Protocol):
    def pwm(self, gpio: int, freq_hz: int, duty_u16: int, now_s: float) -> None:
        """The MCU set a PWM output (e.g. the dimming input of an LED driver)."""
