# machine for the virtual ESP32: the ESP32 port's classes, constants and errors. The hardware
# behind them lives in the board process (vboard/hardware/) and is reached through _vbus; the
# devices on the buses are models (vboard/models/).
#
# Soft interrupts: Pin.irq handlers and Timer callbacks run like the port's soft (scheduled)
# callbacks, at the next dispatch point (any bus access, any sleep, time.ticks_ms(), idle());
# see _vbus. hard=True is accepted for Pin.irq and runs the same way.
#
# Not here: SPI/SoftSPI, DAC, TouchPad, I2S, SDCard, bitstream, mem8/16/32, UART.irq, Pin.board.
from micropython import const
import _vbus
import time

_call = _vbus.call
_board = _vbus.connected
_hexs = _vbus.hexs
_unhex = _vbus.unhex
PinBase = _vbus.builtin("machine").PinBase

PWRON_RESET = const(1)
HARD_RESET = const(2)
WDT_RESET = const(3)
DEEPSLEEP_RESET = const(4)
SOFT_RESET = const(5)
PIN_WAKE = const(2)
EXT0_WAKE = const(2)
EXT1_WAKE = const(3)
TIMER_WAKE = const(4)
TOUCHPAD_WAKE = const(5)
ULP_WAKE = const(6)
SLEEP = const(2)
DEEPSLEEP = const(4)

_GPIOS = frozenset(tuple(range(0, 20)) + (21, 22, 23, 25, 26, 27) + tuple(range(32, 40)))
_FIRST_INPUT_ONLY = const(34)


def _gpio(pin):
    # GPIO number of a Pin or an int, as machine_pin_get_id() accepts them
    if isinstance(pin, Pin):
        return pin._id
    if isinstance(pin, int) and pin in _GPIOS:
        return pin
    raise ValueError("invalid pin")


# --- Pin --------------------------------------------------------------------------------------

_pin_state = {}    # gpio -> [mode, pull, output level, output sent]; shared by Pin(n) objects
_irqs = {}         # gpio -> [pin, handler, trigger]


class Pin(PinBase):
    IN = const(1)
    OUT = const(3)
    OPEN_DRAIN = const(7)
    PULL_DOWN = const(1)
    PULL_UP = const(2)
    IRQ_RISING = const(1)
    IRQ_FALLING = const(2)
    WAKE_LOW = const(4)
    WAKE_HIGH = const(5)
    DRIVE_0 = const(0)
    DRIVE_1 = const(1)
    DRIVE_2 = const(2)
    DRIVE_3 = const(3)

    def __init__(self, id, *args, **kwargs):
        self._id = _gpio(id)
        self._s = _pin_state.setdefault(self._id, [0, 0, 0, False])
        if args or kwargs:
            self.init(*args, **kwargs)

    def init(self, mode=None, pull=-1, *, value=None, drive=None, hold=None):
        s = self._s
        if value is not None:
            s[2] = 1 if value else 0
            s[3] = False
        if mode is not None:
            if self._id >= _FIRST_INPUT_ONLY and mode & 2:
                raise ValueError("pin can only be input")
            s[0] = mode
        if pull != -1:
            s[1] = pull or 0
        if s[0] & 2:
            self._drive()

    def _drive(self):
        s = self._s
        if not s[3]:
            if _board:
                _call("pin_out", self._id, s[2], _vbus.now_us())
            s[3] = True

    def value(self, x=None):
        s = self._s
        if x is None:
            if s[0] == 3 or (s[0] == 7 and s[2] == 0):
                return s[2]
            if not _board:      # nothing attached: the pull decides, floating reads low
                return 1 if s[1] == 2 else 0
            return _call("pin_in", self._id, s[1], _vbus.now_us())
        level = 1 if x else 0
        if level != s[2]:
            s[2] = level
            s[3] = False
        if s[0] & 2:
            self._drive()

    def __call__(self, x=None):
        return self.value(x)

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    def toggle(self):
        self.value(1 - self._s[2])

    def irq(self, handler=None, trigger=3, *, wake=None, hard=False):
        if handler is None:
            trigger = 0
        if trigger:
            _irqs[self._id] = [self, handler, trigger]
        else:
            _irqs.pop(self._id, None)
        if _board:
            _call("pin_irq", self._id, trigger, self._s[1])
        return _PinIRQ(self)

    def __eq__(self, other):
        return isinstance(other, Pin) and other._id == self._id

    def __hash__(self):
        return self._id

    def __repr__(self):
        return "Pin(%d)" % self._id


class _PinIRQ:
    def __init__(self, pin):
        self._pin = pin

    def trigger(self):
        entry = _irqs.get(self._pin._id)
        return entry[2] if entry else 0

    def __call__(self):
        entry = _irqs.get(self._pin._id)
        if entry:
            entry[1](entry[0])


def _on_irq(gpio, level):
    entry = _irqs.get(gpio)
    if entry is not None:
        _vbus.run_callback(entry[1], entry[0])


_vbus.on_push("irq", _on_irq)


class Signal:
    def __init__(self, pin, *args, invert=False, **kwargs):
        if not isinstance(pin, PinBase):
            pin = Pin(pin, *args, **kwargs)
        self._pin = pin
        self._invert = 1 if invert else 0

    def value(self, x=None):
        if x is None:
            return self._pin.value() ^ self._invert
        self._pin.value((1 if x else 0) ^ self._invert)

    def __call__(self, x=None):
        return self.value(x)

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)


def time_pulse_us(pin, pulse_level, timeout_us=1000000):
    # The board asks the pin's model for the pulse; the simulated time it takes passes here.
    # Pin operations carry the VM's own clock, so the model sees the trigger and the start of
    # the measurement as far apart as this code had them, however late the bus delivers.
    gpio = _gpio(pin)
    level = 1 if pulse_level else 0
    if _board:
        result = _call("pulse", gpio, level, timeout_us, _vbus.now_us())
    else:
        result = -1 if Pin(gpio).value() == level else -2
    _vbus.wait_us(result if result >= 0 else timeout_us)
    return result


# --- ADC --------------------------------------------------------------------------------------

_ADC1 = (36, 37, 38, 39, 32, 33, 34, 35)
_ADC2 = (4, 0, 2, 15, 13, 12, 14, 27, 25, 26)
_adc_atten = {}             # gpio -> attenuation, kept per channel as the port does
_adc_width = [12, 12]       # per block (ADC1, ADC2)


class ADC:
    ATTN_0DB = const(0)
    ATTN_2_5DB = const(1)
    ATTN_6DB = const(2)
    ATTN_11DB = const(3)
    WIDTH_9BIT = const(9)
    WIDTH_10BIT = const(10)
    WIDTH_11BIT = const(11)
    WIDTH_12BIT = const(12)

    def __init__(self, pin, *, atten=-1):
        gpio = _gpio(pin)
        if gpio not in _ADC1 and gpio not in _ADC2:
            raise ValueError("invalid pin")
        self._id = gpio
        self._block = 0 if gpio in _ADC1 else 1
        self.init(atten=atten)

    def init(self, *, atten=-1):
        self.atten(atten if atten != -1 else 3)
        _adc_width[self._block] = 12

    def deinit(self):
        pass

    def atten(self, atten):
        if not 0 <= atten <= 3:
            raise ValueError("invalid attenuation")
        _adc_atten[self._id] = atten

    def width(self, bits):
        if not 9 <= bits <= 12:
            raise ValueError("invalid bit-width")
        _adc_width[self._block] = bits

    def block(self):
        return ADCBlock(self._block + 1)

    def _read(self):
        if not _board:
            return (0, 0)
        return _call("adc", self._id, _adc_atten[self._id], _adc_width[self._block])

    def read(self):
        return self._read()[0]

    def read_u16(self):
        raw = self._read()[0]
        bits = _adc_width[self._block]
        return (raw << (16 - bits)) | (raw >> (2 * bits - 16))

    def read_uv(self):
        return self._read()[1]

    def __repr__(self):
        return "ADC(Pin(%d), atten=%d)" % (self._id, _adc_atten[self._id])


class ADCBlock:
    def __init__(self, id, *, bits=12):
        if id not in (1, 2):
            raise ValueError("invalid block id")
        self._index = id - 1
        self.init(bits=bits)

    def init(self, *, bits=12):
        if not 9 <= bits <= 12:
            raise ValueError("invalid bit-width")
        _adc_width[self._index] = bits

    def connect(self, *args, atten=-1):
        gpios = _ADC1 if self._index == 0 else _ADC2
        gpio = None
        for arg in args:
            if isinstance(arg, Pin):
                gpio = arg._id
            elif len(args) == 1 and isinstance(arg, int) and arg >= len(gpios):
                gpio = arg
            elif gpio is None:
                gpio = gpios[arg]
        if gpio not in gpios:
            raise ValueError("invalid pin")
        bits = _adc_width[self._index]
        adc = ADC(gpio, atten=atten)
        _adc_width[self._index] = bits
        return adc


# --- PWM --------------------------------------------------------------------------------------

_pwm_active = {}    # gpio -> PWM


def _duty_resolution(freq):
    # LEDC: as many duty bits as the 80 MHz clock divides into one period, at most 20
    bits = 0
    while bits < 20 and (80000000 // freq) >> (bits + 1):
        bits += 1
    return bits


class PWM:
    def __init__(self, dest, freq=-1, *, duty=-1, duty_u16=-1, duty_ns=-1, invert=False,
                 lightsleep=False):
        self._id = _gpio(dest)
        self._freq = 0
        self._duty = 32768      # duty_u16, 65536 meaning always on
        self._invert = False
        self.init(freq, duty=duty, duty_u16=duty_u16, duty_ns=duty_ns, invert=invert)

    def init(self, freq=-1, *, duty=-1, duty_u16=-1, duty_ns=-1, invert=None,
             lightsleep=False):
        if freq != -1:
            self._check_freq(freq)
        elif not self._freq:
            freq = 5000
        else:
            freq = self._freq
        if invert is not None:
            self._invert = bool(invert)
        self._freq = freq
        if duty_u16 >= 0:
            self._set_u16(duty_u16)
        elif duty_ns >= 0:
            self._set_ns(duty_ns)
        elif duty >= 0:
            self._set_u10(duty)
        if _pwm_active.get(self._id) is not self:
            if self._id not in _pwm_active:    # a PWM on the same pin hands its channel over
                if len(_pwm_active) >= 16:
                    raise RuntimeError("out of PWM channels:16")
                freqs = set(p._freq for p in _pwm_active.values())
                if freq not in freqs and len(freqs) >= 8:
                    raise RuntimeError("out of PWM timers:8")
            _pwm_active[self._id] = self
        self._apply()

    def _check_freq(self, freq):
        if not 0 < freq <= 40000000:
            raise ValueError("frequency must be from 1Hz to 40MHz")

    def _active(self):
        if _pwm_active.get(self._id) is not self:
            raise RuntimeError("PWM is inactive")

    def _apply(self):
        bits = _duty_resolution(self._freq)
        duty = self._duty
        # the LEDC holds duty in `bits` bits: what the pin really outputs
        reg = (duty << bits) >> 16 if duty < 65536 else 1 << bits
        self._out = min(65535, (reg << 16) >> bits)
        out = 65535 - self._out if self._invert else self._out
        if _board:
            _call("pwm", self._id, self._freq, out)

    def _set_u16(self, duty):
        if not 0 <= duty <= 65535:
            raise ValueError("duty_u16 must be from 0 to 65535")
        self._duty = 65536 if duty == 65535 else duty

    def _set_u10(self, duty):
        if not 0 <= duty <= 1023:
            raise ValueError("duty must be from 0 to 1023")
        self._duty = 65536 if duty == 1023 else duty << 6

    def _set_ns(self, ns):
        top = 1000000000 // self._freq
        if not 0 <= ns <= top:
            raise ValueError("duty_ns must be from 0 to %d ns" % top)
        self._duty = min(65536, ns * self._freq * 65536 // 1000000000)

    def deinit(self):
        if _pwm_active.get(self._id) is self:
            del _pwm_active[self._id]
            if _board:
                _call("pwm", self._id, 0, 0)

    def freq(self, freq=None):
        self._active()
        if freq is None:
            return self._freq
        self._check_freq(freq)
        self._freq = freq
        self._apply()

    def duty_u16(self, duty=None):
        self._active()
        if duty is None:
            return self._out
        self._set_u16(duty)
        self._apply()

    def duty(self, duty=None):
        self._active()
        if duty is None:
            return self._out >> 6
        self._set_u10(duty)
        self._apply()

    def duty_ns(self, ns=None):
        self._active()
        if ns is None:
            return self._out * 1000000000 // (self._freq * 65536)
        self._set_ns(ns)
        self._apply()

    def __repr__(self):
        if _pwm_active.get(self._id) is not self:
            return "PWM(Pin(%d))" % self._id
        return "PWM(Pin(%d), freq=%d, duty_u16=%d)" % (self._id, self._freq, self._out)


# --- I2C --------------------------------------------------------------------------------------

_I2C_PINS = ((18, 19), (25, 26))    # default (scl, sda) of I2C(0), I2C(1)


def _memaddr(memaddr, addrsize):
    if addrsize & 7 or not 0 < addrsize <= 32:
        raise ValueError("invalid addrsize")
    return memaddr.to_bytes(addrsize // 8, "big") if memaddr >= 0 else \
        (memaddr & ((1 << addrsize) - 1)).to_bytes(addrsize // 8, "big")


class _I2CBase:
    def scan(self):
        return _call("i2c_scan", self._bus)

    def readfrom(self, addr, nbytes, stop=True):
        return _unhex(_call("i2c_r", self._bus, addr, nbytes))

    def readfrom_into(self, addr, buf, stop=True):
        data = _unhex(_call("i2c_r", self._bus, addr, len(buf)))
        buf[:len(data)] = data

    def writeto(self, addr, buf, stop=True):
        return _call("i2c_w", self._bus, addr, _hexs(buf))

    def writevto(self, addr, vector, stop=True):
        return _call("i2c_w", self._bus, addr, "".join(_hexs(b) for b in vector))

    def readfrom_mem(self, addr, memaddr, nbytes, *, addrsize=8):
        return _unhex(_call("i2c_wr", self._bus, addr, _memaddr(memaddr, addrsize).hex(),
                            nbytes))

    def readfrom_mem_into(self, addr, memaddr, buf, *, addrsize=8):
        data = _unhex(_call("i2c_wr", self._bus, addr, _memaddr(memaddr, addrsize).hex(),
                            len(buf)))
        buf[:len(data)] = data

    def writeto_mem(self, addr, memaddr, buf, *, addrsize=8):
        _call("i2c_w", self._bus, addr, _memaddr(memaddr, addrsize).hex() + _hexs(buf))

    def start(self):
        raise OSError("I2C operation not supported")

    stop = start

    def readinto(self, buf, nack=True):
        raise OSError("I2C operation not supported")

    def write(self, buf):
        raise OSError("I2C operation not supported")


class I2C(_I2CBase):
    def __init__(self, id=0, *, scl=None, sda=None, freq=400000, timeout=50000):
        if id not in (0, 1):
            raise ValueError("I2C(%d) doesn't exist" % id)
        self._id = id
        self._scl, self._sda = _I2C_PINS[id]
        self.init(scl=scl, sda=sda, freq=freq, timeout=timeout)

    def init(self, *, scl=None, sda=None, freq=400000, timeout=50000):
        if scl is not None:
            self._scl = _gpio(scl)
        if sda is not None:
            self._sda = _gpio(sda)
        self._freq = freq
        self._timeout = timeout
        self._bus = (self._id, self._scl, self._sda)

    def __repr__(self):
        return "I2C(%d, scl=%d, sda=%d, freq=%d, timeout=%d)" % (
            self._id, self._scl, self._sda, self._freq, self._timeout)


class SoftI2C(_I2CBase):
    # Bit-level primitives are grouped into transactions: start(), the address byte and data
    # bytes written, then readinto() or stop() send them to the device model.
    def __init__(self, scl, sda, *, freq=400000, timeout=50000):
        self.init(scl, sda, freq=freq, timeout=timeout)

    def init(self, scl, sda, *, freq=400000, timeout=50000):
        self._scl, self._sda = _gpio(scl), _gpio(sda)
        self._freq = freq
        self._bus = (-1, self._scl, self._sda)
        self._addr = None
        self._reading = False
        self._out = b""

    def start(self):
        self._flush()
        self._addr = -1

    def stop(self):
        self._flush()
        self._addr = None

    def _flush(self):
        if self._addr is not None and self._addr >= 0 and not self._reading and self._out:
            _call("i2c_w", self._bus, self._addr, self._out.hex())
        self._out = b""

    def write(self, buf):
        acks = 0
        for b in bytes(buf):
            if self._addr == -1:
                self._addr, self._reading = b >> 1, bool(b & 1)
                if not _call("i2c_probe", self._bus, self._addr):
                    self._addr = -2
                    return acks
            elif self._addr is None or self._addr < 0:
                return acks
            else:
                self._out += bytes((b,))
            acks += 1
        return acks

    def readinto(self, buf, nack=True):
        if self._addr is None or self._addr < 0:
            buf[:] = b"\xff" * len(buf)
            return
        data = _unhex(_call("i2c_r", self._bus, self._addr, len(buf)))
        buf[:len(data)] = data

    def __repr__(self):
        return "SoftI2C(scl=%d, sda=%d, freq=%d)" % (self._scl, self._sda, self._freq)


# --- UART -------------------------------------------------------------------------------------

_UART_PINS = ((1, 3), (10, 9), (17, 16))    # default (tx, rx) of UART 0, 1, 2
_uart_state = {}    # id -> settings dict, shared by UART(n) objects


class UART:
    INV_TX = const(32)
    INV_RX = const(4)
    INV_RTS = const(64)
    INV_CTS = const(8)
    RTS = const(1)
    CTS = const(2)
    IRQ_RX = const(1)
    IRQ_RXIDLE = const(4096)
    IRQ_BREAK = const(2)

    def __init__(self, id, *args, **kwargs):
        if not 0 <= id <= 2:
            raise ValueError("UART(%d) does not exist" % id)
        self._id = id
        if id not in _uart_state:
            tx, rx = _UART_PINS[id]
            _uart_state[id] = {"baudrate": 115200, "bits": 8, "parity": None, "stop": 1,
                               "tx": tx, "rx": rx, "txbuf": 256, "rxbuf": 256, "timeout": 0,
                               "timeout_char": 0, "busy_until": 0}
        self._s = _uart_state[id]
        if args or kwargs or not self._s.get("init"):
            self.init(*args, **kwargs)

    def init(self, baudrate=0, bits=0, parity=-1, stop=0, *, tx=None, rx=None, rts=None,
             cts=None, txbuf=-1, rxbuf=-1, timeout=-1, timeout_char=-1, invert=-1, flow=-1):
        s = self._s
        if baudrate > 0:
            s["baudrate"] = baudrate
        if bits:
            if bits not in (5, 6, 7, 8):
                raise ValueError("invalid data bits")
            s["bits"] = bits
        if parity != -1:
            s["parity"] = parity
        if stop:
            if stop not in (1, 2):
                raise ValueError("invalid stop bits")
            s["stop"] = stop
        if tx is not None:
            s["tx"] = _gpio(tx)
        if rx is not None:
            s["rx"] = _gpio(rx)
        for key, value in (("txbuf", txbuf), ("rxbuf", rxbuf), ("timeout", timeout),
                           ("timeout_char", timeout_char)):
            if value >= 0:
                s[key] = value
        s["init"] = True
        if _board:
            _call("uart_init", self._id, s["baudrate"], s["bits"], s["parity"], s["stop"],
                  s["tx"], s["rx"], s["rxbuf"])

    def deinit(self):
        self._s["init"] = False

    def any(self):
        return _call("uart_any", self._id)

    def _wait_step_us(self, remaining):
        # poll the board about every 8 characters' time, but not more than 1000x per wall second
        step = max(80000000 // self._s["baudrate"], 1000, int(1000 * _vbus.speed))
        return min(step, remaining)

    def _collect(self, n, until_newline):
        out = b""
        timeout_us = self._s["timeout"] * 1000
        deadline = _vbus.now_us() + timeout_us
        while True:
            want = -1 if n < 0 else n - len(out)
            chunk = _unhex(_call("uart_r", self._id, want, until_newline))
            if chunk:
                out += chunk
                deadline = _vbus.now_us() + timeout_us
                if (n >= 0 and len(out) >= n) or (until_newline and out[-1:] == b"\n"):
                    return out
            remaining = deadline - _vbus.now_us()
            if remaining <= 0:
                return out
            _vbus.wait_us(self._wait_step_us(remaining))

    def read(self, nbytes=-1):
        if nbytes == 0:
            return b""
        data = self._collect(-1 if nbytes is None else nbytes, False)
        return data or None

    def readinto(self, buf, nbytes=-1):
        n = len(buf) if nbytes < 0 else min(nbytes, len(buf))
        data = self._collect(n, False)
        if not data:
            return None
        buf[:len(data)] = data
        return len(data)

    def readline(self):
        return self._collect(-1, True) or None

    def write(self, buf):
        n = _call("uart_w", self._id, _hexs(buf))
        s = self._s
        frame_bits = 1 + s["bits"] + (0 if s["parity"] is None else 1) + s["stop"]
        s["busy_until"] = max(s["busy_until"], _vbus.now_us()) + \
            n * frame_bits * 1000000 // s["baudrate"]
        return n

    def flush(self):
        remaining = self._s["busy_until"] - _vbus.now_us()
        if remaining > 0:
            _vbus.wait_us(remaining)

    def txdone(self):
        return _vbus.now_us() >= self._s["busy_until"]

    def sendbreak(self):
        pass

    def __repr__(self):
        s = self._s
        return "UART(%d, baudrate=%d, bits=%d, parity=%s, stop=%d, tx=%d, rx=%d, rts=-1, " \
            "cts=-1, txbuf=%d, rxbuf=%d, timeout=%d, timeout_char=%d, irq=0)" % (
                self._id, s["baudrate"], s["bits"], s["parity"], s["stop"], s["tx"], s["rx"],
                s["txbuf"], s["rxbuf"], s["timeout"], s["timeout_char"])


# --- Timer ------------------------------------------------------------------------------------

_hw_timers = {}     # id -> the Timer object running on that hardware timer


class Timer:
    ONE_SHOT = const(0)
    PERIODIC = const(1)

    def __init__(self, id=-1, *args, **kwargs):
        if id >= 4:
            raise ValueError("Timer(%d) doesn't exist, there are only 4 hardware timers" % id)
        self._id = id
        self._alarm = None
        self._start = 0
        self._period = 0
        if args or kwargs:
            self.init(*args, **kwargs)

    def init(self, *, mode=1, callback=None, period=0xFFFFFFFF, tick_hz=1000, freq=None,
             hard=False):
        if hard:
            raise ValueError("hard Timers are not implemented")
        self.deinit()
        if freq is not None:
            period_us = int(1000000 / freq)
        else:
            period_us = period * 1000000 // tick_hz
        if period_us <= 0:
            raise ValueError("Timer period is too short for this timer")
        if self._id >= 0:
            old = _hw_timers.get(self._id)
            if old is not None and old is not self:
                old.deinit()
            _hw_timers[self._id] = self
        self._period = period_us
        self._repeat = mode
        self._callback = callback
        self._start = _vbus.now_us()
        self._alarm = _vbus.add_alarm(self._start + period_us, self._fire, None)

    def _fire(self, entry):
        self._alarm = None
        if self._repeat:
            due = entry[0] + self._period
            now = _vbus.now_us()
            if due <= now:    # late: the hardware timer would have coalesced the periods
                due = now + self._period - (now - entry[0]) % self._period
            self._start = due - self._period
            self._alarm = _vbus.add_alarm(due, self._fire, None)
        if self._callback is not None:
            _vbus.run_callback(self._callback, self)

    def deinit(self):
        if self._alarm is not None:
            _vbus.cancel_alarm(self._alarm)
            self._alarm = None
        if _hw_timers.get(self._id) is self:
            del _hw_timers[self._id]

    def value(self):
        if self._alarm is None:
            return 0
        return (_vbus.now_us() - self._start) // 1000

    def __repr__(self):
        return "Timer(%d; alarm_en=%d, period=%d)" % (self._id, self._alarm is not None,
                                                      self._period // 1000)


# --- WDT, RTC ---------------------------------------------------------------------------------

class WDT:
    # The board counts the deadline (in simulated time) and resets the chip when it passes.
    def __init__(self, id=0, timeout=5000):
        if id != 0:
            raise ValueError()
        if timeout <= 0:
            raise ValueError("WDT timeout too short")
        if _board:
            _call("wdt_start", timeout)

    def feed(self):
        if _board:
            _call("wdt_feed")


class RTC:
    def __init__(self, id=0):
        pass

    def datetime(self, datetimetuple=None):
        if datetimetuple is None:
            now = _vbus.now_us() + _vbus.rtc_offset_us
            t = time.gmtime(now // 1000000)
            return (t[0], t[1], t[2], t[6], t[3], t[4], t[5], now % 1000000)
        y, mo, d, _weekday, h, mi, s = datetimetuple[:7]
        us = datetimetuple[7] if len(datetimetuple) > 7 else 0
        clock_us = time.mktime((y, mo, d, h, mi, s, 0, 0)) * 1000000 + us
        _vbus.rtc_offset_us = clock_us - _vbus.now_us()
        if _board:
            _call("rtc_set", _vbus.rtc_offset_us)

    def init(self, datetimetuple):
        self.datetime(datetimetuple)

    def memory(self, data=None):
        if data is None:
            return _vbus.rtc_mem
        data = data.encode() if isinstance(data, str) else bytes(data)   # any buffer
        if len(data) > 2048:
            raise ValueError("buffer too long")
        if _board:
            _call("rtc_mem", data.hex())
        _vbus.rtc_mem = data


# --- module functions -------------------------------------------------------------------------

def freq(hz=None):
    if hz is None:
        return _vbus.cpu_mhz * 1000000
    mhz = hz // 1000000
    if mhz not in (20, 40, 80, 160, 240):
        raise ValueError("frequency must be 20MHz, 40MHz, 80Mhz, 160MHz or 240MHz")
    _vbus.cpu_mhz = mhz


def unique_id():
    return _vbus.mac


def reset_cause():
    return _vbus.reset_cause


def wake_reason():
    return _vbus.wake_reason


def wake_pins():
    return ()


def _going_down(op, *args):
    if _board:
        _call(op, *args)      # the board answers ["halt"]: this does not return
    raise SystemExit          # no board to restart us: end the program


def reset():
    _going_down("reset")


def soft_reset():
    # As on the port: SystemExit, which ends boot.py/main.py or the REPL line; the board core
    # soft-reboots when the VM ends that way.
    raise SystemExit


def deepsleep(time_ms=None):
    if not _board and time_ms:
        _vbus.wait_us(time_ms * 1000, False)
    _going_down("deepsleep", time_ms, _vbus.wake_config)


def lightsleep(time_ms=None):
    if time_ms is None:
        return        # no wake-up source configured that we model: returns at once
    if _board:
        _call("lightsleep", time_ms)
    _vbus.wait_us(time_ms * 1000, False)    # the CPU is stopped: no callbacks meanwhile
    _vbus.wake_reason = TIMER_WAKE


sleep = lightsleep


def idle():
    _vbus.service()
    _vbus.wait_us(int(500 * _vbus.speed))


def disable_irq():
    state = _vbus.enabled
    _vbus.enabled = False
    return 1 if state else 0


def enable_irq(state=1):
    _vbus.enabled = bool(state)
    if _vbus.enabled:
        _vbus.service()
