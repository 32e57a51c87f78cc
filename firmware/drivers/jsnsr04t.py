# JSN-SR04T waterproof ultrasonic ranger (V3.0 board), in one of its modes (set by resistor
# R27 / "mode" pad on the board):
#  - trigger/echo (R27 open): a >= 10 us high pulse on TRIG starts a ranging; ECHO is then
#    high for the sound's round trip (distance = time * 340 m/s / 2 by the datasheet), or
#    ~60 ms when no echo came back;
#  - UART (9600 8N1): on 0x55 (R27 = 120k), or by itself every 100 ms (R27 = 47k), the
#    sensor sends FF H L SUM, distance = H * 256 + L in mm, SUM = (FF + H + L) & 0xFF.
# The sensor converts with a fixed speed of sound (340 m/s) in both modes; read_mm()
# corrects for the air temperature. Blind zone 25 cm, range to 4.5 m (datasheet: 25-450 cm).
import time
from machine import Pin, time_pulse_us
from micropython import const
from drivers.errors import SensorError

_BLIND_MM = const(250)
_MAX_MM = const(4500)
BLIND_MM = _BLIND_MM
MAX_MM = _MAX_MM
_C_REF_MM_S = const(340000)   # the speed the sensor's own conversion assumes
_TRIG_US = const(20)          # >= 10 us
_ECHO_TIMEOUT_US = const(70000)   # longer than the 60 ms "no echo" pulse
_NO_ECHO_US = const(50000)    # a pulse this long is the sensor's "nothing came back"
_CYCLE_MS = const(70)         # between rangings: the last burst's echoes die out
_UART_TIMEOUT_MS = const(200) # a triggered answer, or the next of the 100 ms stream
_STARTUP_MS = const(300)      # after switching the supply on (not in the datasheet)
_TRIGGER = b"\x55"


def sound_speed_mm_s(air_temp_cc):
    """Speed of sound in dry air at air_temp_cc (centi-degC), mm/s: 331.3 m/s *
    sqrt(1 + T/273.15) to third order in T (within 0.005 % from -40 to +50 degC), in
    small-int arithmetic."""
    t = air_temp_cc
    return 331300 + 60644 * t // 10000 - (t * t // 100) * 555 // 100000 \
        + ((t * t // 10000) * t // 100) * 1016 // 1000000


class JSNSR04T:
    BLIND_MM = _BLIND_MM
    MAX_MM = _MAX_MM

    def __init__(self, uart=None, trig=None, echo=None, power=None):
        if uart is None and (trig is None or echo is None):
            raise ValueError("a UART, or trig and echo pins")
        self._uart = uart
        self._trig = Pin(trig, Pin.OUT, value=0) if isinstance(trig, int) else trig
        self._echo = Pin(echo, Pin.IN) if isinstance(echo, int) else echo
        self._power = Pin(power, Pin.OUT, value=0) if isinstance(power, int) else power
        self._frame = bytearray(4)
        self._scratch = bytearray(16)
        self._last_ms = time.ticks_add(time.ticks_ms(), -_CYCLE_MS)
        self._on_ms = None if power is not None else time.ticks_add(
            time.ticks_ms(), -_STARTUP_MS)
        self.raw_mm = 0           # the sensor's own (uncompensated) figure of the last read

    def power(self, on):
        """Switch the sensor's supply (the board's sensor_power pin), if it has one."""
        if self._power is None:
            return
        self._power.value(1 if on else 0)
        self._on_ms = time.ticks_ms() if on else None

    def _ready(self):
        if self._on_ms is None:
            self.power(True)
        wait = _STARTUP_MS - time.ticks_diff(time.ticks_ms(), self._on_ms)
        if wait > 0:
            time.sleep_ms(wait)
        wait = _CYCLE_MS - time.ticks_diff(time.ticks_ms(), self._last_ms)
        if wait > 0:
            time.sleep_ms(wait)
        self._last_ms = time.ticks_ms()

    def read_mm(self, air_temp_cc=2000):
        """Distance to the surface below, mm, corrected for the speed of sound at
        air_temp_cc. SensorError: "timeout" (no answer), "no_echo", "checksum", "frame",
        "blind" (closer than BLIND_MM), "range" (beyond MAX_MM)."""
        self._ready()
        c = sound_speed_mm_s(air_temp_cc)
        if self._uart is not None:
            raw = self._uart_mm()
            if raw == 0:
                raise SensorError("no_echo", "jsnsr04t: no echo")
            if raw > 2 * _MAX_MM:
                raise SensorError("range", "jsnsr04t: %d mm" % raw)
            mm = (raw * (c // 10) + _C_REF_MM_S // 20) // (_C_REF_MM_S // 10)
        else:
            t_us = self._echo_us()
            raw = (t_us * (_C_REF_MM_S >> 5) + 31250) // 62500
            mm = (t_us * (c >> 5) + 31250) // 62500      # t * c / 2, small ints only
        self.raw_mm = raw
        if mm < _BLIND_MM:
            raise SensorError("blind", "jsnsr04t: %d mm, inside the blind zone" % mm)
        if mm > _MAX_MM:
            raise SensorError("range", "jsnsr04t: %d mm, beyond range" % mm)
        return mm

    def _echo_us(self):
        trig = self._trig
        trig.value(1)
        time.sleep_us(_TRIG_US)
        trig.value(0)
        t = time_pulse_us(self._echo, 1, _ECHO_TIMEOUT_US)
        if t == -2:
            raise SensorError("timeout", "jsnsr04t: no echo pulse (sensor missing?)")
        if t < 0 or t >= _NO_ECHO_US:
            raise SensorError("no_echo", "jsnsr04t: no echo")
        return t

    def _uart_mm(self):
        u = self._uart
        s = self._scratch
        while u.any():                    # stale frames of the 100 ms stream
            u.readinto(s, min(u.any(), len(s)))
        u.write(_TRIGGER)
        f = self._frame
        have = 0
        seen = bad = False
        deadline = time.ticks_add(time.ticks_ms(), _UART_TIMEOUT_MS)
        while True:
            # the clock is read before the look: a pause after it must not time out a ready device
            late = time.ticks_diff(deadline, time.ticks_ms()) <= 0
            k = u.any()
            if k:
                k = u.readinto(s, min(k, len(s))) or 0
                for i in range(k):
                    b = s[i]
                    seen = True
                    if have == 0 and b != 0xFF:
                        continue
                    f[have] = b
                    have += 1
                    if have < 4:
                        continue
                    if (f[0] + f[1] + f[2]) & 0xFF == f[3]:
                        return (f[1] << 8) | f[2]
                    bad = True
                    # resynchronise on the next 0xFF inside the rejected frame
                    have = 0
                    for j in (1, 2, 3):
                        if f[j] == 0xFF:
                            for m in range(j, 4):
                                f[have] = f[m]
                                have += 1
                            break
            elif late:
                if bad:
                    raise SensorError("checksum", "jsnsr04t: bad checksum")
                if seen:
                    raise SensorError("frame", "jsnsr04t: no frame header")
                raise SensorError("timeout", "jsnsr04t: no answer")
            else:
                time.sleep_ms(5)
