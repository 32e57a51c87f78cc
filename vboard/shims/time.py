# time for the virtual ESP32: the ESP32 port's time module on the board's simulated clock.
#
# Simulated time runs at the world's speed (VBOARD_CLOCK, see _vbus): sleep(s) takes s/speed of
# wall time, and the clock jumps across a deep sleep as the chip's RTC does.
# - time(), time_ns(), gmtime(), localtime(), mktime() count from 2000-01-01 like the ESP32
#   port (its epoch is 2000, the unix port's is 1970). localtime() is gmtime(): no time zone.
#   The board clock is the RTC's: 2000-01-01 00:00:00 at power-on unless set (RTC.datetime(),
#   ntptime), kept across resets and deep sleep.
# - ticks_ms/us/cpu count from boot and wrap at 2**30 as on the ESP32 (small-int range);
#   ticks_cpu counts cycles at machine.freq().
# - Sleeping runs Timer callbacks and Pin IRQ handlers as they fall due (see _vbus); so do
#   asyncio's waits (patched below) and, cheaply, ticks_ms()/ticks_us().
# - select.poll() waits on the simulated clock too (the select shim); socket timeouts
#   (settimeout) are not shimmed and wait wall time.
from micropython import const
import _vbus

_MASK = const(0x3FFFFFFF)
_HALF = const(0x20000000)
_now = _vbus.now_us
_tick = _vbus.tick
_boot = _vbus.boot_us
_wait_us = _vbus.wait_us
_DAYS_BEFORE = (0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334)


def ticks_ms():
    now = _now()
    _tick(now)
    return ((now - _boot) // 1000) & _MASK


def ticks_us():
    now = _now()
    _tick(now)
    return (now - _boot) & _MASK


def ticks_cpu():
    return ((_now() - _boot) * _vbus.cpu_mhz) & _MASK


def ticks_add(ticks, delta):
    if not -_HALF <= delta < _HALF:
        raise OverflowError("ticks interval overflow")
    return (ticks + delta) & _MASK


def ticks_diff(end, start):
    return ((end - start + _HALF) & _MASK) - _HALF


def sleep(seconds):
    _wait_us(int(seconds * 1000000))


def sleep_ms(ms):
    # even 0 (or less) runs what is pending, as the port's mp_hal_delay_ms does: a Ctrl-C, IRQs
    _wait_us(max(0, ms) * 1000)


def sleep_us(us):
    if us > 0:
        _wait_us(us)


def time():
    return (_now() + _vbus.rtc_offset_us) // 1000000


def time_ns():
    return (_now() + _vbus.rtc_offset_us) * 1000


def _is_leap(year):
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _days_from_civil(y, m, d):
    # days since 2000-01-01 (proleptic Gregorian)
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 730425


def gmtime(secs=None):
    if secs is None:
        secs = time()
    secs = int(secs)
    days, rem = divmod(secs, 86400)
    hour, rem = divmod(rem, 3600)
    minute, second = divmod(rem, 60)
    z = days + 730425
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    mday = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (month <= 2)
    yday = _DAYS_BEFORE[month - 1] + mday + (month > 2 and _is_leap(year))
    return (year, month, mday, hour, minute, second, (days + 5) % 7, yday)


localtime = gmtime


def mktime(t):
    if len(t) not in (8, 9):
        raise TypeError("mktime needs a tuple of length 8 or 9")
    year, month = t[0], t[1]
    year += (month - 1) // 12
    month = (month - 1) % 12 + 1
    return (_days_from_civil(year, month, 1) + t[2] - 1) * 86400 + t[3] * 3600 + t[4] * 60 \
        + t[5]


# asyncio (frozen in the VM) takes ticks_ms, ticks_diff and ticks_add from here, but its C task
# queue (_asyncio) stamps tasks it schedules "now" with the host's real ticks and compares keys
# with the unix port's ticks period (2**62). So asyncio gets its own clock: simulated like ours
# but in the real ticks' domain (never behind them, unwrapped). Its poll waits are turned from
# simulated into wall milliseconds, end early for due Timer callbacks, and wake on Pin IRQs
# from the board (the bus socket is polled with the streams).
_b = _vbus._time
_real_ms = _b.ticks_ms
_origin_us = _vbus._mono0 - _vbus._sim0
_core = None


def _asyncio_ticks():
    if _core is None:
        _patch_io()
    sim = (_origin_us + _now()) // 1000
    real = _real_ms()
    return sim if sim > real else real


def _patch_io():
    global _core
    import asyncio
    _core = asyncio.core
    wait = _core.IOQueue.wait_io_event
    service = _vbus.service
    POLLIN = _vbus._select.POLLIN

    def wait_io_event(self, dt):
        service()
        timeout = _vbus.wall_timeout_ms(dt)
        sock = _vbus._sock
        key = id(sock)
        watch = sock is not None and timeout != 0 and key not in self.map
        if watch:
            self.map[key] = [None, None, sock]     # no task waits on it: dequeued if readable
            self.poller.register(sock, POLLIN)
        wait(self, timeout)
        if watch and key in self.map:
            del self.map[key]
            self.poller.unregister(sock)
        service()

    _core.IOQueue.wait_io_event = wait_io_event
    _core.ticks = _asyncio_ticks
    _core.ticks_diff = _b.ticks_diff
    _core.ticks_add = _b.ticks_add


_for_asyncio = {"ticks_ms": _asyncio_ticks, "ticks_diff": _b.ticks_diff, "ticks_add": _b.ticks_add}


def _serve_asyncio(name):
    # Module __getattr__ while asyncio.core runs `from time import ticks_ms as ticks, ...`:
    # it gets the asyncio clock; then our own functions come back for everyone else.
    g = globals()
    fn = _for_asyncio.pop(name, None)
    if fn is None:
        raise AttributeError(name)
    if not _for_asyncio:
        g.update(_user_fns)
        del g["__getattr__"]
    return fn


def _hook_asyncio():
    import sys
    if "asyncio.core" in sys.modules:
        # asyncio is importing us: hand its core the asyncio clock as it imports it
        g = globals()
        for name in _for_asyncio:
            del g[name]
        g["__getattr__"] = _serve_asyncio
        return
    try:
        _patch_io()
    except ImportError:      # no frozen asyncio on the path (e.g. the thin host runner)
        pass


_user_fns = {"ticks_ms": ticks_ms, "ticks_diff": ticks_diff, "ticks_add": ticks_add}
_hook_asyncio()
