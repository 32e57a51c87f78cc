"""What the device models share: their tie to the world, faults, noise, UART timing, pulses.

Fault names a model obeys (set in a scenario's ``[[faults]]`` or with ``world.inject``):
``<model>_silent`` (the device does not answer: I2C Nack, UART and pins quiet) and
``<model>_noise`` (measurement noise times ``factor``, default 5), where ``<model>`` is the
model's ``name`` (bh1750, ld2410, qmc5883l, jsnsr04t, ina219, battery, lamp).
"""

from __future__ import annotations

import math
from typing import Callable

from vboard.world import World

# pulse_us results as vboard/models/base.py defines them: -1 when the pulse did not start within
# the timeout, -2 when it started but did not end within it (each wait has its own timeout).
# machine.time_pulse_us on the ESP32 port uses the opposite numbers; vboard/hardware/gpio.py swaps
# them on the way to the firmware.
PULSE_TIMEOUT_WAITING = -1
PULSE_TIMEOUT_IN_PULSE = -2


class Model:
    """A device on one board, tied to the world it senses."""

    name = "model"

    def __init__(self, world: World, board_id: str) -> None:
        self.world = world
        self.board_id = board_id

    def silent(self, now_s: float) -> bool:
        """The "<name>_silent" fault: the device is unplugged, dead or not powered."""
        return self.world.fault(self.board_id, self.name + "_silent", now_s)

    def sense(self, quantity: str, now_s: float) -> float:
        return self.world.value(self.board_id, quantity, now_s)

    def noise(self, key: str, t: float, sigma: float) -> float:
        """Reproducible measurement noise; a "<name>_noise" fault scales it by ``factor``."""
        params = self.world.fault_params(self.board_id, self.name + "_noise", t)
        if params is not None:
            sigma *= float(params.get("factor", 5.0))
        return self.world.gauss(self.board_id, self.name + "." + key, t, sigma)

    def chance(self, key: str, t: float) -> float:
        """A reproducible number in [0, 1) for this device, ``key`` and time."""
        return self.world.uniform(self.board_id, self.name + "." + key, t)


def clamp(value: float, lo: float, hi: float) -> float:
    return lo if value < lo else hi if value > hi else value


class UartTx:
    """Bytes a device transmits, timed at its baud rate (start bit, 8 data bits, stop bit):
    a byte becomes readable by the MCU when its stop bit has been sent."""

    def __init__(self, baudrate: int, max_pending: int = 65536) -> None:
        self.baudrate = baudrate
        self.max_pending = max_pending
        self._chunks: list[list] = []      # [start time, bytes, bytes already taken]
        self._busy_until = -math.inf

    @property
    def byte_s(self) -> float:
        return 10.0 / self.baudrate

    def send(self, data: bytes, at_s: float) -> float:
        """Queue ``data`` to start at ``at_s`` (or when the line is free); returns its end."""
        start = max(at_s, self._busy_until)
        self._chunks.append([start, bytes(data), 0])
        self._busy_until = start + len(data) * self.byte_s
        pending = sum(len(c[1]) - c[2] for c in self._chunks)
        while pending > self.max_pending and len(self._chunks) > 1:
            dropped = self._chunks.pop(0)
            pending -= len(dropped[1]) - dropped[2]
        return self._busy_until

    def take(self, now_s: float) -> bytes:
        """Everything fully transmitted by ``now_s`` and not yet taken."""
        out = bytearray()
        keep = []
        for chunk in self._chunks:
            start, data, taken = chunk
            done = min(len(data), int((now_s - start) / self.byte_s + 1e-9)) if now_s >= start \
                else 0
            if done > taken:
                out += data[taken:done]
                chunk[2] = done
            if chunk[2] < len(data):
                keep.append(chunk)
        self._chunks = keep
        return bytes(out)

    def clear(self) -> None:
        self._chunks = []


def pulse_from_window(rise_s: float | None, fall_s: float | None, level: int,
                      timeout_us: int, now_s: float) -> int:
    """machine.time_pulse_us for a line that is low except high during [rise_s, fall_s)."""
    timeout = timeout_us / 1e6
    if rise_s is None or fall_s is None or now_s >= fall_s:
        # Low from now on with no pulse ahead: a high pulse never starts, a low one never ends.
        return PULSE_TIMEOUT_WAITING if level else PULSE_TIMEOUT_IN_PULSE
    if level:
        if now_s < rise_s:
            if rise_s - now_s >= timeout:
                return PULSE_TIMEOUT_WAITING
            width = fall_s - rise_s
        else:
            width = fall_s - now_s
        return PULSE_TIMEOUT_IN_PULSE if width >= timeout else int(round(width * 1e6))
    if now_s < rise_s:
        width = rise_s - now_s
        return PULSE_TIMEOUT_IN_PULSE if width >= timeout else int(round(width * 1e6))
    if fall_s - now_s >= timeout:
        return PULSE_TIMEOUT_WAITING
    return PULSE_TIMEOUT_IN_PULSE          # low after the pulse, and stays low


def pulse_sampled(level_at: Callable[[float], int], level: int, timeout_us: int,
                  now_s: float, step_s: float = 0.001) -> int:
    """machine.time_pulse_us for a slow signal known only by sampling (e.g. a radar's OUT)."""
    timeout = timeout_us / 1e6
    t = now_s
    while level_at(t) != level:
        t += step_s
        if t - now_s >= timeout:
            return PULSE_TIMEOUT_WAITING
    start = t
    while level_at(t) == level:
        t += step_s
        if t - start >= timeout:
            return PULSE_TIMEOUT_IN_PULSE
    return int(round((t - start) * 1e6))
