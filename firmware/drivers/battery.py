# Battery voltage through a resistor divider into an ESP32 ADC1 pin (GPIO 32-39: ADC2 is
# WiFi's while the radio runs). 11 dB attenuation: ESP-IDF's recommended range at the pin is
# 150-2450 mV, read_uv() applies the chip's eFuse calibration. Samples are sorted and the
# middle half averaged: one noisy conversion (the radio switching on) does not move it.
from array import array
from machine import ADC, Pin
from micropython import const
from drivers.errors import SensorError

_PIN_MIN_MV = const(150)      # below: the ADC's dead zone, nothing connected
_PIN_MAX_MV = const(2450)     # above: compressed, reads low


class Battery:
    def __init__(self, pin, r_top_ohm=100000, r_bottom_ohm=100000, samples=8):
        if samples < 1 or r_top_ohm < 0 or r_bottom_ohm <= 0:
            raise ValueError("samples >= 1, resistors > 0")
        self._adc = ADC(Pin(pin) if isinstance(pin, int) else pin, atten=ADC.ATTN_11DB)
        self._uv = array("i", [0] * samples)
        # battery = pin * (top + bottom) / bottom, as a reduced fraction (small-int math)
        num, den = r_top_ohm + r_bottom_ohm, r_bottom_ohm
        a, b = num, den
        while b:
            a, b = b, a % b
        num, den = num // a, den // a
        while num > 20000:            # keep pin_mv * 10 * num inside a 31-bit small int
            num, den = (num + 1) // 2, (den + 1) // 2
        self._num, self._den = num, den

    def read_mv(self):
        """Battery voltage, mV. SensorError "absent" (nothing at the pin) or "range" (the
        pin is above the ADC's linear range: wrong divider)."""
        uv = self._uv
        n = len(uv)
        for i in range(n):           # insertion sort as the samples come in
            v = self._adc.read_uv()
            j = i
            while j and uv[j - 1] > v:
                uv[j] = uv[j - 1]
                j -= 1
            uv[j] = v
        lo = n // 4
        hi = n - lo
        total = 0
        for i in range(lo, hi):
            total += uv[i] // 100     # 0.1 mV
        pin_dmv = total // (hi - lo)
        if pin_dmv < _PIN_MIN_MV * 10:
            raise SensorError("absent", "battery: %d mV at the ADC pin" % (pin_dmv // 10))
        if pin_dmv > _PIN_MAX_MV * 10:
            raise SensorError("range", "battery: %d mV at the ADC pin" % (pin_dmv // 10))
        return (pin_dmv * self._num // self._den + 5) // 10
