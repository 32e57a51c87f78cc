"""I2C buses: devices hang on wires (an SCL and an SDA GPIO), as on a board.

I2C(0), I2C(1) and SoftI2C all reach a device on the pins they are given and nothing on other
pins, so firmware that names the wrong pins finds nothing, as it would on the bench. A device
that is absent or does not acknowledge gives OSError(ENODEV), the ESP32 port's errno; a device
that stops sending reads as 0xff (SDA stays high).

Ops: i2c_scan, i2c_probe, i2c_w, i2c_r, i2c_wr (``I2c``). The VM names a bus as
[controller id or -1 for SoftI2C, scl, sda].
"""

from __future__ import annotations

import errno
from typing import Any, Callable, Mapping

from vboard.bus import BusError
from vboard.hardware.clock import Clock
from vboard.models.base import I2CDevice, Nack

_I2C_DEFAULT_PINS = {0: (18, 19), 1: (25, 26)}   # the port's I2C(0), I2C(1) (scl, sda)


class I2c:
    """The board's I2C wiring. ``board_pins``: the board definition's pins (role -> signal
    -> GPIO), where bus 0's i2c_scl/i2c_sda come from."""

    def __init__(self, clock: Clock, board_pins: Mapping[str, Mapping[str, int]]) -> None:
        self._clock = clock
        self._board_pins = board_pins
        self._devices: dict[tuple[int, int], dict[int, I2CDevice]] = {}   # (scl, sda) -> ...

    def ops(self) -> dict[str, Callable[..., Any]]:
        return {"i2c_scan": self.i2c_scan, "i2c_probe": self.i2c_probe, "i2c_w": self.i2c_w,
                "i2c_r": self.i2c_r, "i2c_wr": self.i2c_wr}

    def wires(self, bus: int | tuple[int, int]) -> tuple[int, int]:
        """The (scl, sda) GPIOs of ``bus``: given as such, or bus n of the board as wired: bus
        0 on the board definition's i2c_scl/i2c_sda pins, else the ESP32 port's default pins
        of I2C(n). Devices hang on wires: I2C(0), I2C(1) and SoftI2C all reach a device on
        the pins they are given, and nothing on other pins."""
        if isinstance(bus, (tuple, list)):
            return int(bus[0]), int(bus[1])
        if bus == 0:
            for pins in self._board_pins.values():
                if "i2c_scl" in pins and "i2c_sda" in pins:
                    return pins["i2c_scl"], pins["i2c_sda"]
        return _I2C_DEFAULT_PINS[bus]

    def attach(self, bus: int | tuple[int, int], device: I2CDevice) -> None:
        self._devices.setdefault(self.wires(bus), {})[device.address] = device

    def detach(self, bus: int | tuple[int, int], address: int) -> None:
        self._devices.get(self.wires(bus), {}).pop(address, None)

    def _device(self, bus: list[int], addr: int) -> I2CDevice:
        """The device at ``addr`` on the wires the VM's I2C object uses."""
        _ctrl, scl, sda = bus
        device = self._devices.get((scl, sda), {}).get(addr)
        if device is None:
            raise BusError(errno.ENODEV)
        return device

    def i2c_probe(self, bus: list[int], addr: int) -> bool:
        """Address + W and stop, as scan() sends it: does anything acknowledge?"""
        try:
            self._device(bus, addr).i2c_write(b"", self._clock.now())
        except (BusError, Nack):
            return False
        return True

    def i2c_scan(self, bus: list[int]) -> list[int]:
        return [addr for addr in range(0x08, 0x78) if self.i2c_probe(bus, addr)]

    def i2c_w(self, bus: list[int], addr: int, data: str) -> int:
        payload = bytes.fromhex(data)
        try:
            self._device(bus, addr).i2c_write(payload, self._clock.now())
        except Nack:
            raise BusError(errno.ENODEV) from None
        return len(payload)

    def i2c_r(self, bus: list[int], addr: int, n: int) -> bytes:
        try:
            data = self._device(bus, addr).i2c_read(n, self._clock.now())
        except Nack:
            raise BusError(errno.ENODEV) from None
        return bytes(data[:n]).ljust(n, b"\xff")   # a device that stops sending: SDA high

    def i2c_wr(self, bus: list[int], addr: int, data: str, n: int) -> bytes:
        self.i2c_w(bus, addr, data)
        return self.i2c_r(bus, addr, n)
