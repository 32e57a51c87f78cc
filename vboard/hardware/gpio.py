"""GPIOs, digital side: pin levels in and out, Pin IRQ edges, time_pulse_us, and PWM outputs.

Device models hang on pins (vboard/models/base.py PinDevice, PwmLoad); a pin with nothing
attached reads its pull (floating inputs read low). What the firmware drives is kept in
``outputs`` and ``pwm_outputs`` for tests and the world to inspect.

Pin timing must not depend on how fast the host answers: pin_in, pin_out and pulse carry the
VM's own time stamp (``at_us``) when it has one, and the device models see that. IRQ edges are
found by sampling, since PinDevice has no change notification.

Ops: pin_in, pin_out, pin_irq, pulse (``Pins``); pwm (``Pwm``).
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from vboard.hardware.clock import Clock
from vboard.models.base import PinDevice, PwmLoad

IRQ_RISING, IRQ_FALLING = 1, 2
PULL_DOWN, PULL_UP = 1, 2


class Pins:
    """Digital pins: levels, IRQs (edges pushed to the VM as ["irq", gpio, level] through
    ``push``) and pulse timing. ``irq_poll_s``: how often (wall time) armed pins are
    sampled."""

    def __init__(self, clock: Clock, push: Callable[..., Any], irq_poll_s: float) -> None:
        self._clock = clock
        self._push = push
        self.irq_poll_s = irq_poll_s
        self._devices: dict[int, PinDevice] = {}
        self.outputs: dict[int, int] = {}            # what the MCU drives, for inspection
        self._irq: dict[int, list[int]] = {}         # gpio -> [trigger, pull, last level]
        self._irq_task: asyncio.Task | None = None

    def ops(self) -> dict[str, Callable[..., Any]]:
        return {"pin_in": self.pin_in, "pin_out": self.pin_out, "pin_irq": self.pin_irq,
                "pulse": self.pulse}

    def attach(self, gpio: int, device: PinDevice) -> None:
        self._devices[gpio] = device

    def detach(self, gpio: int) -> None:
        self._devices.pop(gpio, None)

    def reset(self) -> None:
        """A chip reset: no IRQ stays armed (the sampling task ends by itself)."""
        self._irq.clear()

    def stop(self) -> None:
        if self._irq_task is not None:
            self._irq_task.cancel()

    def _level(self, gpio: int, pull: int, now: float) -> int:
        device = self._devices.get(gpio)
        if device is not None:
            return 1 if device.pin_input(gpio, now) else 0
        return 1 if pull == PULL_UP else 0      # floating inputs read low

    def _at(self, at_us: int | None) -> float:
        """The simulated time of an operation: the VM's stamp when it sent one (pin timing
        must not depend on how fast this process answers), else now."""
        return self._clock.now() if at_us is None else at_us / 1e6

    def pin_in(self, gpio: int, pull: int, at_us: int | None = None) -> int:
        level = self._level(gpio, pull, self._at(at_us))
        self._check_edge(gpio, level)
        return level

    def pin_out(self, gpio: int, level: int, at_us: int | None = None) -> None:
        self.outputs[gpio] = level
        device = self._devices.get(gpio)
        if device is not None:
            device.pin_output(gpio, level, self._at(at_us))

    def pin_irq(self, gpio: int, trigger: int, pull: int) -> int:
        level = self._level(gpio, pull, self._clock.now())
        if trigger:
            self._irq[gpio] = [trigger, pull, level]
            if self._irq_task is None or self._irq_task.done():
                self._irq_task = asyncio.get_running_loop().create_task(self._poll_irqs())
        else:
            self._irq.pop(gpio, None)
        return level

    def _check_edge(self, gpio: int, level: int) -> None:
        armed = self._irq.get(gpio)
        if armed is None or level == armed[2]:
            return
        armed[2] = level
        if armed[0] & (IRQ_RISING if level else IRQ_FALLING):
            self._push("irq", gpio, level)

    async def _poll_irqs(self) -> None:
        # PinDevice has no change notification: sample armed pins every irq_poll_s of wall
        # time. Pulses shorter than that (times world.speed in simulated time) can be missed.
        while self._irq:
            await asyncio.sleep(self.irq_poll_s)
            now = self._clock.now()
            for gpio, armed in list(self._irq.items()):
                self._check_edge(gpio, self._level(gpio, armed[1], now))

    def pulse(self, gpio: int, level: int, timeout_us: int, at_us: int | None = None) -> int:
        device = self._devices.get(gpio)
        if device is None:
            return -1 if self._level(gpio, 0, 0.0) == level else -2
        result = device.pulse_us(gpio, level, timeout_us, self._at(at_us))
        # models/base.py says -1: no start, -2: no end; machine.time_pulse_us returns the
        # opposite (-2: timed out waiting for the pulse, -1: timed out measuring it)
        return {-1: -2, -2: -1}.get(result, result)


class Pwm:
    """PWM outputs (the LEDC): the last frequency and duty per pin, handed to the load on it.
    Frequency 0 turns the output off."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._loads: dict[int, PwmLoad] = {}
        self.outputs: dict[int, tuple[int, int]] = {}   # gpio -> (freq, duty_u16)

    def ops(self) -> dict[str, Callable[..., Any]]:
        return {"pwm": self.pwm}

    def attach(self, gpio: int, device: PwmLoad) -> None:
        self._loads[gpio] = device

    def detach(self, gpio: int) -> None:
        self._loads.pop(gpio, None)

    def pwm(self, gpio: int, freq: int, duty_u16: int) -> None:
        self.outputs[gpio] = (freq, duty_u16)
        load = self._loads.get(gpio)
        if load is not None:
            load.pwm(gpio, freq, duty_u16, self._clock.now())
