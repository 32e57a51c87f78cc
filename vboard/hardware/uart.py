"""UARTs: bytes between the firmware and a device model, with the driver's buffering.

Received bytes wait in the driver's ring buffer (``rxbuf``) plus the hardware FIFO; what does
not fit is dropped, as on the chip when the firmware reads too slowly. A device whose baud rate
differs from the UART's sees, and sends, framing garbage of the same length (a model of what a
mismatch looks like, not of the bit errors themselves).

Ops: uart_init, uart_w, uart_r, uart_any (``Uarts``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from vboard.hardware.clock import Clock
from vboard.models.base import UartDevice


@dataclass
class _Uart:
    device: UartDevice | None = None
    baudrate: int = 115200
    rxbuf: int = 256
    rx: bytearray = field(default_factory=bytearray)
    dropped: int = 0

    _FIFO = 128    # the UART's hardware FIFO, on top of the driver's ring buffer

    def pull(self, now_s: float) -> None:
        if self.device is None:
            return
        data = self.device.uart_read(now_s)
        if not data:
            return
        if self.device.baudrate != self.baudrate:
            data = _garble(data)
        room = self.rxbuf + self._FIFO - len(self.rx)
        if len(data) > room:
            self.dropped += len(data) - max(room, 0)
            data = data[:max(room, 0)]
        self.rx += data


def _garble(data: bytes) -> bytes:
    """Bytes sampled at the wrong baud rate: framing garbage of the same length (a model)."""
    return bytes(((b * 0x9D) + 0x3B) & 0xFF for b in data)


class Uarts:
    """The chip's UARTs by id, each with the device model attached to it, if any."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._uarts: dict[int, _Uart] = {}

    def ops(self) -> dict[str, Callable[..., Any]]:
        return {"uart_init": self.uart_init, "uart_w": self.uart_w, "uart_r": self.uart_r,
                "uart_any": self.uart_any}

    def attach(self, uart_id: int, device: UartDevice) -> None:
        self._uarts.setdefault(uart_id, _Uart()).device = device

    def detach(self, uart_id: int) -> None:
        if uart_id in self._uarts:
            self._uarts[uart_id].device = None

    def reset(self) -> None:
        """A chip reset: the receive buffers are lost (the devices stay attached)."""
        for uart in self._uarts.values():
            uart.rx.clear()

    def _uart(self, uart_id: int) -> _Uart:
        return self._uarts.setdefault(uart_id, _Uart())

    def uart_init(self, uart_id: int, baudrate: int, bits: int, parity: Any, stop: int,
                  tx: int, rx: int, rxbuf: int) -> None:
        uart = self._uart(uart_id)
        uart.baudrate, uart.rxbuf = baudrate, rxbuf

    def uart_w(self, uart_id: int, data: str) -> int:
        uart = self._uart(uart_id)
        payload = bytes.fromhex(data)
        if uart.device is not None:
            if uart.device.baudrate != uart.baudrate:
                payload = _garble(payload)
            uart.device.uart_write(payload, self._clock.now())
        return len(payload)

    def uart_r(self, uart_id: int, n: int, until_newline: bool) -> bytes:
        uart = self._uart(uart_id)
        uart.pull(self._clock.now())
        take = len(uart.rx) if n < 0 else min(n, len(uart.rx))
        if until_newline:
            nl = uart.rx.find(b"\n", 0, take)
            if nl >= 0:
                take = nl + 1
        out = bytes(uart.rx[:take])
        del uart.rx[:take]
        return out

    def uart_any(self, uart_id: int) -> int:
        uart = self._uart(uart_id)
        uart.pull(self._clock.now())
        return len(uart.rx)
