"""JSN-SR04T waterproof ultrasonic distance sensor (JSN-SR04T-2.0/3.0 module notes, "working
modes" set by the R27 resistor, as published by resellers of the Jieshenna module).

Modes (``mode``):

- ``"pulse"`` (mode 1, R27 open, the default): a high level of at least 10 µs on TRIG starts a
  measurement at its falling edge; the module sends 8 pulses of 40 kHz and drives ECHO high for
  the sound's round trip, distance = time * speed of sound / 2. With no echo (out of range,
  inside the blind zone, nothing facing it) ECHO falls after 60 ms. The speed of sound here
  follows the world's air temperature: 331.3 m/s * sqrt(1 + T/273.15).
- ``"uart_auto"`` (mode 2, R27 = 47 kΩ): 9600 8N1, a frame every 100 ms:
  ``0xFF, H, L, SUM`` with the distance in mm (H*256 + L) and SUM = (0xFF + H + L) & 0xFF.
- ``"uart_trigger"`` (mode 3, R27 = 120 kΩ): the same frame, sent once per 0x55 byte the MCU
  transmits, after the measurement. In UART modes the module converts with a fixed 340 m/s
  (as its datasheet formula does), so readings drift with air temperature; a measurement
  without an echo is reported as 0 mm (an assumption: the notes do not say).

Range ``blind_mm`` (250) to ``max_mm`` (4500); noise about 2 mm + 0.2 % (datasheet: ±1 cm).
Faults: ``jsnsr04t_condensation`` (params ``rate`` 0.3, ``min_mm``, ``max_mm``: that fraction
of readings is a spurious short echo from droplets on the transducer), ``jsnsr04t_silent``
(no echo, no frames), ``jsnsr04t_noise``. The optional ``power_gpio`` is the node's switch for
the sensor's supply: the sensor is powered until that pin is driven low, and needs ``boot_s``
(0.2 s, an assumption) after power returns. TRIG/ECHO and RX/TX are the same module pins, so
only the selected mode's interface is active.

Not modelled: the echo's amplitude and multiple echoes (other than condensation), the beam
angle, and the maximum trigger rate beyond "one measurement at a time".
"""

from __future__ import annotations

import math

from vboard.models.common import Model, UartTx, clamp, pulse_from_window
from vboard.world import World

MODES = ("pulse", "uart_auto", "uart_trigger")
TRIGGER_BYTE = 0x55
FRAME_START = 0xFF


def speed_of_sound(temp_c: float) -> float:
    return 331.3 * math.sqrt(1.0 + temp_c / 273.15)


def frame(distance_mm: int) -> bytes:
    high, low = (distance_mm >> 8) & 0xFF, distance_mm & 0xFF
    return bytes((FRAME_START, high, low, (FRAME_START + high + low) & 0xFF))


class JSNSR04T(Model):
    name = "jsnsr04t"

    def __init__(self, world: World, board_id: str, *, mode: str = "pulse",
                 trig_gpio: int | None = None, echo_gpio: int | None = None,
                 power_gpio: int | None = None, blind_mm: float = 250.0,
                 max_mm: float = 4500.0, echo_delay_s: float = 0.0005,
                 no_echo_s: float = 0.060, min_trigger_s: float = 10e-6,
                 auto_interval_s: float = 0.1, uart_sound_mps: float = 340.0,
                 boot_s: float = 0.2) -> None:
        super().__init__(world, board_id)
        if mode not in MODES:
            raise ValueError("JSN-SR04T mode must be one of %s" % ", ".join(MODES))
        self.mode = mode
        self.trig_gpio, self.echo_gpio, self.power_gpio = trig_gpio, echo_gpio, power_gpio
        self.blind_mm, self.max_mm = blind_mm, max_mm
        self.echo_delay_s, self.no_echo_s = echo_delay_s, no_echo_s
        self.min_trigger_s = min_trigger_s
        self.auto_interval_s = auto_interval_s
        self.uart_sound_mps = uart_sound_mps
        self.boot_s = boot_s
        self.baudrate = 9600
        self.tx = UartTx(self.baudrate)
        self.powered = True
        self._boot_until = -math.inf
        self._trig_high_since: float | None = None
        self._rise: float | None = None
        self._fall: float | None = None
        self._busy_until = -math.inf
        self._next_auto: int | None = None    # index of the next automatic measurement

    # -- physics ----------------------------------------------------------------------------

    def ready(self, t: float) -> bool:
        return self.powered and t >= self._boot_until and not self.silent(t)

    def echo_distance_mm(self, t: float) -> float | None:
        """Where the echo the module hears comes from (None: no echo)."""
        cond = self.world.fault_params(self.board_id, self.name + "_condensation", t)
        if cond is not None and self.chance("condensation", t) < float(cond.get("rate", 0.3)):
            lo = float(cond.get("min_mm", self.blind_mm + 20.0))
            hi = float(cond.get("max_mm", self.blind_mm + 150.0))
            return lo + (hi - lo) * self.chance("condensation_mm", t)
        d = self.sense("distance_mm", t)
        if math.isnan(d) or d < self.blind_mm or d > self.max_mm:
            return None
        return max(0.0, d + self.noise("mm", t, 2.0 + 0.002 * d))

    def _measure(self, t: float) -> tuple[float, float | None]:
        """(echo high time in s, echo distance in mm or None) of a measurement started at t."""
        d = self.echo_distance_mm(t)
        if d is None:
            return self.no_echo_s, None
        return 2.0 * d / 1000.0 / speed_of_sound(self.sense("air_temp_c", t)), d

    def _uart_mm(self, width_s: float, d: float | None) -> int:
        if d is None:
            return 0
        return int(clamp(round(width_s * self.uart_sound_mps / 2.0 * 1000.0), 0, 0xFFFF))

    # -- pins -------------------------------------------------------------------------------

    def pin_output(self, gpio: int, value: int, now_s: float) -> None:
        if gpio == self.power_gpio:
            if value and not self.powered:
                self._boot_until = now_s + self.boot_s
                self._next_auto = None
            if not value:
                self._rise = self._fall = None
                self._busy_until = -math.inf
                self.tx.clear()
            self.powered = bool(value)
        elif gpio == self.trig_gpio and self.mode == "pulse":
            if value:
                if self._trig_high_since is None:
                    self._trig_high_since = now_s
            elif self._trig_high_since is not None:
                held = now_s - self._trig_high_since
                self._trig_high_since = None
                if held >= self.min_trigger_s * (1.0 - 1e-6):
                    self._trigger(now_s)

    def _trigger(self, t: float) -> None:
        if not self.ready(t) or t < self._busy_until:
            return
        width, _ = self._measure(t)
        self._rise = t + self.echo_delay_s
        self._fall = self._rise + width
        self._busy_until = self._fall

    def pin_input(self, gpio: int, now_s: float) -> int:
        if gpio != self.echo_gpio or self._rise is None or not self.powered:
            return 0
        return 1 if self._rise <= now_s < self._fall else 0

    def pulse_us(self, gpio: int, level: int, timeout_us: int, now_s: float) -> int:
        if gpio != self.echo_gpio or not self.powered:
            return pulse_from_window(None, None, level, timeout_us, now_s)
        return pulse_from_window(self._rise, self._fall, level, timeout_us, now_s)

    # -- UART -------------------------------------------------------------------------------

    def uart_write(self, data: bytes, now_s: float) -> None:
        if self.mode != "uart_trigger" or not self.ready(now_s):
            return
        for byte in data:
            if byte == TRIGGER_BYTE and now_s >= self._busy_until:
                width, d = self._measure(now_s)
                done = now_s + self.echo_delay_s + width + 0.002
                self._busy_until = self.tx.send(frame(self._uart_mm(width, d)), done)

    def uart_read(self, now_s: float) -> bytes:
        if self.mode == "uart_auto" and self.powered:
            self._auto(now_s)
        return self.tx.take(now_s)

    def _auto(self, now_s: float) -> None:
        """Mode 2: a measurement every ``auto_interval_s`` since the sensor came up."""
        interval = self.auto_interval_s
        base = max(self._boot_until, self.world.t0)
        due = math.floor((now_s - base) / interval + 1e-9)
        if self._next_auto is None or due - self._next_auto > 20:
            self._next_auto = max(0, due - 10 if self._next_auto is None else due - 20)
        while self._next_auto <= due:
            t = base + self._next_auto * interval
            self._next_auto += 1
            if self.ready(t):
                width, d = self._measure(t)
                self.tx.send(frame(self._uart_mm(width, d)), t + self.echo_delay_s + width)
