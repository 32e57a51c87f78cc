"""The virtual ESP32's hardware shims, end to end: real MicroPython code on the VM talks over the
bus to a BoardHardware (in its own asyncio loop on a thread) with simple device models behind.

VM starts cost ~50 ms, so each test batches its checks into one or two VM runs; the program
prints one JSON line per result.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
from pathlib import Path

import pytest

from boards.app_image import build_app_image, merged_image, read_app
from boards.definitions import board as board_def
from boards.otadata import (
    OTA_IMG_ABORTED,
    OTA_IMG_NEW,
    OTA_IMG_PENDING_VERIFY,
    OTA_IMG_VALID,
    otadata_partition,
    read_otadata,
    select_boot_partition,
    write_otadata,
)
from boards.partition_table import (
    PARTITION_TABLE_OFFSET,
    build_partition_table,
    read_partition_table,
)
from vboard.flash import FlashFile
from vboard.hardware.adc import adc_reading
from vboard.hardware.clock import SimClock
from vboard.hardware.core import BoardHardware
from vboard.hardware.ota import boot_partition, set_boot_partition
from vboard.models.base import Nack
from vboard.vm import SHIMS, board_heap_flag, micropython_executable, vm_env

pytestmark = pytest.mark.timeout(60)

MAC = bytes.fromhex("240ac4a1b2c3")


# --- fake devices (vboard/models/base.py interfaces) -------------------------------------------

class RegisterDevice:
    """An I2C device with 256 byte registers and an auto-incrementing register pointer."""

    def __init__(self, address: int, present: bool = True) -> None:
        self.address = address
        self.regs = bytearray(range(256))
        self.ptr = 0
        self.present = present

    def i2c_write(self, data: bytes, now_s: float) -> None:
        if not self.present:
            raise Nack()
        if data:
            self.ptr = data[0]
            for b in data[1:]:
                self.regs[self.ptr] = b
                self.ptr = (self.ptr + 1) & 0xFF

    def i2c_read(self, n: int, now_s: float) -> bytes:
        if not self.present:
            raise Nack()
        out = bytes(self.regs[(self.ptr + i) & 0xFF] for i in range(n))
        self.ptr = (self.ptr + n) & 0xFF
        return out


class PongUart:
    """Answers each "ping" with "PONG\\n", 50 ms (simulated) after it was sent."""

    baudrate = 9600

    def __init__(self) -> None:
        self.received = b""
        self.pending: list[tuple[float, bytes]] = []

    def uart_write(self, data: bytes, now_s: float) -> None:
        self.received += data
        if b"ping" in data:
            self.pending.append((now_s + 0.050, b"PONG\n"))

    def uart_read(self, now_s: float) -> bytes:
        ready = b"".join(d for t, d in self.pending if t <= now_s)
        self.pending = [(t, d) for t, d in self.pending if t > now_s]
        return ready


class Sonar:
    """A pin device: records what the MCU drives, rises on ``gpio_in`` at ``rise_at``, and
    answers pulses on the echo pin with 1234 us (base.py's -1, "never started", on others)."""

    def __init__(self, rise_at: float = float("inf"), fall_at: float = float("inf")) -> None:
        self.outputs: list[tuple[int, int]] = []
        self.rise_at = rise_at
        self.fall_at = fall_at

    def pin_input(self, gpio: int, now_s: float) -> int:
        return 1 if self.rise_at <= now_s < self.fall_at else 0

    def pin_output(self, gpio: int, value: int, now_s: float) -> None:
        self.outputs.append((gpio, value))

    def pulse_us(self, gpio: int, level: int, timeout_us: int, now_s: float) -> int:
        return 1234 if gpio == 18 and level == 1 else -1


class Voltage:
    def __init__(self, uv: int) -> None:
        self.uv = uv

    def adc_uv(self, gpio: int, now_s: float) -> int:
        return self.uv


class Lamp:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int]] = []

    def pwm(self, gpio: int, freq_hz: int, duty_u16: int, now_s: float) -> None:
        self.calls.append((gpio, freq_hz, duty_u16))


class FaultyWorld(SimClock):
    """SimClock plus the world's fault() for "wifi_lost" in [lost_from, lost_to)."""

    lost_from = lost_to = float("inf")

    def fault(self, board_id: str, name: str, now_s: float) -> bool:
        return name == "wifi_lost" and self.lost_from <= now_s < self.lost_to


# --- the rig: a board's hardware in a loop thread, and VMs against it ----------------------

class Rig:
    def __init__(self, tmp: Path, board: str = "esp32-devkitc-ota", speed: float = 1.0,
                 **hw_args) -> None:
        self.board = board_def(board)
        self.flash_path = tmp / "flash.bin"
        make_flash(self.flash_path, self.board)
        self.world = FaultyWorld(speed=speed, start_s=1_750_000_000.0)
        self.events: list[tuple[str, dict]] = []
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.hw = self.call(self._make(hw_args))

    async def _make(self, hw_args) -> BoardHardware:
        hw = BoardHardware(self.board, "node-7", self.world, flash_path=self.flash_path,
                           events=lambda kind, **d: self.events.append((kind, d)), mac=MAC,
                           **hw_args)
        await hw.start()
        return hw

    def call(self, coro_or_fn):
        if not asyncio.iscoroutine(coro_or_fn):
            fn = coro_or_fn

            async def wrap():
                return fn()
            coro_or_fn = wrap()
        return asyncio.run_coroutine_threadsafe(coro_or_fn, self.loop).result(20)

    def close(self) -> None:
        self.call(self.hw.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    def env(self, board: bool = True) -> dict[str, str]:
        env = vm_env([".frozen", SHIMS])
        if board:
            env.update(self.call(self.hw.vm_environment))
        return env

    def run(self, source: str, *, until_event: str | None = None, stdin: bytes = b"",
            board: bool = True, timeout: float = 20.0) -> list:
        """Run ``source`` on a fresh VM; its JSON lines. With ``until_event`` the VM is
        expected to halt (deep sleep, WDT ...): it is killed once that event arrives."""
        prelude = "import json\ndef emit(*v):\n    print(json.dumps(v))\n"
        proc = subprocess.Popen([micropython_executable(), "-X", board_heap_flag(), "-c",
                                 prelude + source], env=self.env(board), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if until_event is None:
            out, err = proc.communicate(stdin, timeout=timeout)
            if proc.returncode != 0:
                raise AssertionError("VM failed (%d):\n%s\n%s" % (proc.returncode,
                                                                 out.decode(), err.decode()))
        else:
            proc.stdin.write(stdin)
            proc.stdin.close()
            deadline = time.monotonic() + timeout
            while not any(k == until_event for k, _ in self.events):
                if proc.poll() is not None:
                    raise AssertionError("VM ended before %s:\n%s\n%s" % (
                        until_event, proc.stdout.read().decode(), proc.stderr.read().decode()))
                if time.monotonic() > deadline:
                    proc.kill()
                    raise AssertionError("no %s event" % until_event)
                time.sleep(0.01)
            time.sleep(0.05)
            assert proc.poll() is None, "the VM must halt, not run on, after %s" % until_event
            proc.kill()
            out = proc.stdout.read()
            proc.wait()
        return [json.loads(line) for line in out.decode().splitlines() if line.startswith("[")]


def make_flash(path: Path, board) -> None:
    """A flash file with the board's partition table and MicroPython v1.24.1 in the first app
    partition."""
    f = FlashFile(path, board.flash_size)
    f.write(PARTITION_TABLE_OFFSET, build_partition_table(board.partitions))
    app = next(p for p in board.partitions if p.type == "app")
    f.write(app.offset, build_app_image("micropython", "v1.24.1", date="Nov 29 2024"))
    f.close()


@pytest.fixture
def rig(tmp_path):
    r = Rig(tmp_path)
    yield r
    r.close()


def results(lines) -> dict:
    return {line[0]: line[1] if len(line) == 2 else line[1:] for line in lines}


# --- tests ---------------------------------------------------------------------------------------

def test_i2c_uart_pins_adc_pwm_round_trips(rig):
    light, power, gone = RegisterDevice(0x23), RegisterDevice(0x40), RegisterDevice(0x50, False)
    wired = RegisterDevice(0x0D)
    sonar, lamp, uart = Sonar(), Lamp(), PongUart()

    def plug():
        for dev in (light, power, gone):
            rig.hw.attach_i2c(0, dev)
        rig.hw.attach_i2c((22, 21), wired)
        rig.hw.attach_uart(2, uart)
        for gpio in (5, 18):
            rig.hw.attach_pin(gpio, sonar)
        rig.hw.attach_adc(35, Voltage(1_000_000))
        rig.hw.attach_adc(34, Voltage(500_000))
        rig.hw.attach_pwm(25, lamp)
    rig.call(plug)

    lines = rig.run("""
import machine, time
from machine import Pin, I2C, SoftI2C, UART, ADC, PWM
i2c = I2C(0, scl=Pin(22), sda=Pin(21), freq=100000)
emit("scan", i2c.scan())
i2c.writeto_mem(0x23, 0x10, b"\\xaa\\xbb")
emit("mem", i2c.readfrom_mem(0x23, 0x10, 3).hex())
buf = bytearray(2)
i2c.readfrom_mem_into(0x40, 0x05, buf)
emit("into", buf.hex())
emit("acks", i2c.writeto(0x40, b"\\x07\\x01\\x02"))
emit("read", i2c.readfrom(0x40, 2).hex())
emit("vto", i2c.writevto(0x40, (b"\\x09", b"\\x33")), i2c.readfrom_mem(0x40, 0x09, 1).hex())
emit("mem16", i2c.readfrom_mem(0x23, 0x0102, 1, addrsize=16).hex())
for addr in (0x50, 0x51):
    try:
        i2c.readfrom_mem(addr, 0, 1)
    except OSError as e:
        emit("nodev", addr, e.errno, list(e.args))
soft = SoftI2C(scl=Pin(22), sda=Pin(21))
emit("soft", soft.scan(), soft.readfrom_mem(0x0D, 0x20, 2).hex())
emit("other_controller", I2C(1, scl=Pin(22), sda=Pin(21)).readfrom(0x23, 1).hex())
try:
    I2C(0).readfrom(0x23, 1)
except OSError as e:
    emit("other_pins", e.errno)

u = UART(2, baudrate=9600, tx=17, rx=16, timeout=0)
emit("uart_w", u.write(b"ping"))
emit("uart_early", u.read(), u.any())
time.sleep_ms(60)
emit("uart_any", u.any())
emit("uart_r", u.read().decode())
u.init(timeout=100)
u.write(b"ping")
emit("uart_line", u.readline().decode())
emit("uart_quiet", u.read(4))

out = Pin(5, Pin.OUT, value=0)
out.on(); out.off(); out(1)
emit("out", out.value())
emit("in", Pin(18, Pin.IN).value(), Pin(4, Pin.IN, Pin.PULL_UP).value(), Pin(15, Pin.IN).value())
sig = machine.Signal(Pin(5, Pin.OUT), invert=True)
sig.on()
emit("signal", Pin(5).value(), sig.value())
try:
    Pin(36, Pin.OUT)
except ValueError as e:
    emit("input_only", str(e))
t0 = time.ticks_us()
echo = Pin(18, Pin.IN)
emit("pulse", machine.time_pulse_us(echo, 1, 30000), machine.time_pulse_us(echo, 0, 30000))
emit("pulse_time", time.ticks_diff(time.ticks_us(), t0) >= 1234 + 30000)

a = ADC(Pin(35), atten=ADC.ATTN_11DB)
emit("uv11", a.read_uv(), a.read())
a.atten(ADC.ATTN_0DB)
emit("uv0", a.read_uv())
b = ADC(Pin(34))
b.atten(ADC.ATTN_0DB)
emit("uv0_half", b.read_uv())
a.atten(ADC.ATTN_11DB)
a.width(ADC.WIDTH_9BIT)
emit("w9", a.read(), a.read_u16(), a.read_uv())

p = PWM(Pin(25), freq=1000, duty_u16=16384)
emit("pwm", p.freq(), p.duty_u16(), p.duty())
p.duty(512)
p.init(invert=True)
p.deinit()
try:
    p.duty_u16()
except RuntimeError as e:
    emit("pwm_off", str(e))

emit("causes", [machine.PWRON_RESET, machine.HARD_RESET, machine.WDT_RESET,
                machine.DEEPSLEEP_RESET, machine.SOFT_RESET], machine.reset_cause(),
     machine.wake_reason(), [machine.PIN_WAKE, machine.EXT0_WAKE, machine.EXT1_WAKE,
                             machine.TIMER_WAKE, machine.TOUCHPAD_WAKE, machine.ULP_WAKE])
emit("mac", machine.unique_id().hex())
machine.freq(240000000)
emit("freq", machine.freq())
import network
emit("wlan_mac", network.WLAN(network.STA_IF).config("mac").hex(),
     network.WLAN(network.AP_IF).config("mac").hex())
import os
emit("uname", list(os.uname()), os.uname().release)
""")
    r = results(lines)

    assert r["scan"] == [0x0D, 0x23, 0x40]   # bus 0 of this board is wired to SCL 22, SDA 21
    assert r["mem"] == "aabb12" and light.regs[0x10:0x12] == b"\xaa\xbb"
    assert r["into"] == "0506"
    assert r["acks"] == 3 and power.regs[7:9] == b"\x01\x02"
    assert r["read"] == "090a"       # the pointer moved past the two bytes written
    assert r["vto"] == [2, "33"]
    # a 16-bit memory address goes out big-endian, 01 02: to this 8-bit-pointer device that is
    # pointer 01 and a data byte 02; the read then starts at 02
    assert r["mem16"] == "02" and light.regs[1] == 0x02
    # a device that does not acknowledge, and no device at all: OSError(ENODEV), errno 19
    assert [line[1:] for line in lines if line[0] == "nodev"] == [[0x50, 19, [19]],
                                                                  [0x51, 19, [19]]]
    assert r["soft"] == [[0x0D, 0x23, 0x40], "2021"]
    assert r["other_controller"] == "03"    # same wires, other controller: same devices
    assert r["other_pins"] == 19            # I2C(0) on its default pins 18/19: nothing there
    assert r["uart_w"] == 4 and uart.received == b"pingping"
    assert r["uart_early"] == [None, 0]  # the answer takes 50 ms of simulated time
    assert r["uart_any"] == 5 and r["uart_r"] == "PONG\n"
    assert r["uart_line"] == "PONG\n"      # waited for (timeout 100 ms), up to the newline
    assert r["uart_quiet"] is None
    assert r["out"] == 1 and sonar.outputs[:4] == [(5, 0), (5, 1), (5, 0), (5, 1)]
    assert r["in"] == [0, 1, 0]
    assert r["signal"] == [0, 1]
    assert r["input_only"] == "pin can only be input"
    assert r["pulse"] == [1234, -2]          # base.py's -1 (never started) is the port's -2
    assert r["pulse_time"] is True
    uv11, raw11 = r["uv11"]
    assert abs(uv11 - 1_000_000) <= 2000 and 1200 < raw11 < 1450
    assert 900_000 < r["uv0"] < 990_000      # 1 V is past 0 dB's range: compressed, reads low
    assert abs(r["uv0_half"] - 500_000) <= 2000
    raw9, u16, uv9 = r["w9"]
    assert raw9 == raw11 >> 3 and u16 == (raw9 << 7 | raw9 >> 2) and abs(uv9 - 1_000_000) < 8000
    assert r["pwm"] == [1000, 16384, 256]
    assert lamp.calls[0] == (25, 1000, 16384)
    assert lamp.calls[1] == (25, 1000, 32768)            # duty(512) of 1023
    assert lamp.calls[2] == (25, 1000, 65535 - 32768)    # inverted
    assert lamp.calls[3] == (25, 0, 0)                   # deinit: output off
    assert r["pwm_off"] == "PWM is inactive"
    assert r["causes"] == [[1, 2, 3, 4, 5], 1, 0, [2, 2, 3, 4, 5, 6]]
    assert r["mac"] == MAC.hex()
    assert r["freq"] == 240_000_000
    assert r["wlan_mac"] == [MAC.hex(), MAC[:5].hex() + "c4"]
    uname, release = r["uname"]
    assert uname[:2] == ["esp32", "esp32"] and release == "1.24.1"
    assert uname[3] == "v1.24.1 on 2024-11-29"
    assert uname[4] == "Generic ESP32 module with OTA with ESP32"


def test_uart_readline_and_nodev_for_every_absent_address(rig):
    rig.call(lambda: (rig.hw.attach_uart(2, PongUart()),
                      rig.hw.attach_i2c(0, RegisterDevice(0x50, present=False))))
    lines = rig.run("""
from machine import I2C, UART
i2c = I2C(0)
for addr in (0x50, 0x51):
    try:
        i2c.writeto(addr, b"\\x00")
    except OSError as e:
        emit("nodev", addr, e.errno, str(e))
u = UART(2, 9600, timeout=200)
u.write(b"ping")
emit("line", u.readline().decode())
""")
    assert lines[:2] == [["nodev", 0x50, 19, "[Errno 19] ENODEV"],
                         ["nodev", 0x51, 19, "[Errno 19] ENODEV"]]
    assert lines[2] == ["line", "PONG\n"]


def test_pin_irq_timer_and_asyncio_callbacks(rig):
    now = rig.world.now()
    sonar = Sonar(rise_at=now + 0.4, fall_at=now + 1.4)
    rig.call(lambda: (rig.hw.attach_pin(34, sonar), rig.hw.attach_pin(35, sonar)))
    lines = rig.run("""
import time, machine, asyncio, _vbus
from machine import Pin, Timer
got = []
p = Pin(34, Pin.IN)
p.irq(lambda pin: got.append(("rise", pin.value(), _vbus.now_us())), Pin.IRQ_RISING)
Pin(35, Pin.IN).irq(lambda pin: got.append(("fall",)), Pin.IRQ_FALLING)
t0 = time.ticks_ms()
while not got and time.ticks_diff(time.ticks_ms(), t0) < 3000:
    time.sleep_ms(50)
emit("irq", got)

ticks = []
tm = Timer(0, mode=Timer.PERIODIC, period=20, callback=lambda t: ticks.append(time.ticks_ms()))
time.sleep_ms(210)
tm.deinit()
n = len(ticks)
time.sleep_ms(60)
one = Timer(1, mode=Timer.ONE_SHOT, period=10, callback=lambda t: ticks.append(0))
emit("timer", n, len(ticks))
time.sleep_ms(30)
emit("one_shot", ticks[-1] == 0, len(ticks) == n + 1)

flag = asyncio.ThreadSafeFlag()
fired = []
def cb(t):
    fired.append(1)
    flag.set()
async def main():
    # nothing else to run: the loop sleeps in its poll until the Timer is due
    t0 = time.ticks_ms()
    Timer(2, mode=Timer.ONE_SHOT, period=40, callback=cb)
    await asyncio.wait_for_ms(flag.wait(), 2000)
    t1 = time.ticks_ms()
    Pin(34).irq(lambda pin: flag.set(), Pin.IRQ_FALLING)
    sonar_falls = asyncio.wait_for_ms(flag.wait(), 2000)
    emit("asyncio_irq_armed")
    await sonar_falls
    return len(fired), time.ticks_diff(t1, t0), time.ticks_diff(time.ticks_ms(), t1)
emit("asyncio", asyncio.run(main()))
state = machine.disable_irq()
Timer(3, mode=Timer.ONE_SHOT, period=5, callback=lambda t: fired.append(2))
time.sleep_ms(30)
emit("masked", fired)
machine.enable_irq(state)
emit("unmasked", fired)
""")
    r = results(lines)
    (event,) = r["irq"]                               # once: the falling pin 35 never fell
    assert event[0] == "rise" and event[1] == 1
    latency_s = event[2] / 1e6 - sonar.rise_at        # on the world's clock
    assert 0 <= latency_s < 0.1                       # sampled every 2 ms, sleeping 50 ms
    n, n_later = r["timer"]
    # every 20 ms for 210 ms (a late period is skipped, as on the chip), then stopped
    assert 6 <= n <= 11 and n_later == n
    assert r["one_shot"] == [True, True]
    fired, timer_ms, fall_ms = r["asyncio"]
    assert fired == 1 and 40 <= timer_ms < 200     # the idle loop woke for the Timer
    assert 100 < fall_ms < 1000                    # and for the falling edge at 1.4 s
    assert r["masked"] == [1] and r["unmasked"] == [1, 2]


def test_deep_sleep_keeps_rtc_memory_and_the_clock_jumps(tmp_path):
    rig = Rig(tmp_path, speed=60.0)
    try:
        wall0 = time.monotonic()
        first = results(rig.run("""
import machine, time, _vbus
rtc = machine.RTC()
rtc.memory(b"count=41")
wall = _vbus._ticks_us()
t0 = time.ticks_ms()
time.sleep(6)
emit("sleep", time.ticks_diff(time.ticks_ms(), t0), _vbus._ticks_us() - wall)
import asyncio
wall = _vbus._ticks_us()
t0 = time.ticks_ms()
async def nap():
    await asyncio.sleep(6)
asyncio.run(nap())
emit("asleep", time.ticks_diff(time.ticks_ms(), t0), _vbus._ticks_us() - wall)
emit("before", time.time())
machine.deepsleep(60000)
emit("after", "deepsleep returned")
""", until_event="deepsleep"))
        # 6 s at speed 60: 0.1 s of wall time (a loaded host oversleeps, and that counts x 60)
        sim_ms, wall_us = first["sleep"]
        assert 6000 <= sim_ms < 9000 and 90_000 <= wall_us < 1_000_000
        sim_ms, wall_us = first["asleep"]                                # asyncio's too
        assert 6000 <= sim_ms < 9000 and 90_000 <= wall_us < 1_000_000
        assert rig.events[-1] == ("deepsleep", {"ms": 60000, "wake": None})
        assert "after" not in first
        # the board core sleeps 60 s of simulated time (1 s of wall time), then wakes us
        time.sleep(60 / 60.0)
        rig.call(lambda: rig.hw.next_boot("deepsleep"))
        second = results(rig.run("""
import machine, time
emit("boot", machine.reset_cause() == machine.DEEPSLEEP_RESET,
     machine.wake_reason() == machine.TIMER_WAKE, machine.RTC().memory().decode(), time.time())
"""))
        assert time.monotonic() - wall0 < 30
        ok_cause, ok_wake, memory, t_after = second["boot"]
        assert ok_cause and ok_wake and memory == "count=41"
        assert 60 <= t_after - first["before"] <= 300    # the sleep, plus boot time x 60

        rig.call(lambda: rig.hw.next_boot("powercut"))
        third = results(rig.run("""
import machine, time
emit("boot", machine.reset_cause(), machine.RTC().memory(), time.time(), time.localtime()[:3])
"""))
        cause, memory, clock, date = third["boot"]
        assert cause == 1 and memory == "" and clock < 600 and date == [2000, 1, 1]
    finally:
        rig.close()


def test_watchdog_expiry_resets_the_board(rig):
    lines = rig.run("""
import machine, time
wdt = machine.WDT(timeout=300)
for i in range(4):
    time.sleep_ms(150)
    wdt.feed()
emit("fed", i)
while True:
    time.sleep_ms(10)
""", until_event="wdt")
    assert lines == [["fed", 3]]
    assert [k for k, _ in rig.events] == ["wdt"]
    rig.call(lambda: rig.hw.next_boot("wdt"))
    again = rig.run("import machine\nemit(machine.reset_cause() == machine.WDT_RESET)")
    assert again == [[True]]


def test_ota_update_writes_the_other_slot_and_switches_boot(rig):
    image = build_app_image("micropython", "v1.25.0", payload_size=6000)
    lines = rig.run("""
import sys
from esp32 import Partition
image = bytes.fromhex(sys.stdin.read().strip())
running = Partition(Partition.RUNNING)
emit("running", running.info())
nxt = running.get_next_update()
emit("next", nxt.info()[4], nxt.ioctl(4, 0), nxt.ioctl(5, 0))
buf = bytearray(4096)
for block in range((len(image) + 4095) // 4096):
    chunk = image[block * 4096:(block + 1) * 4096]
    buf[:] = b"\\xff" * 4096
    buf[:len(chunk)] = chunk
    nxt.writeblocks(block, buf)
check = bytearray(len(image))
nxt.readblocks(0, check)
emit("readback", check == image)
try:
    nxt.readblocks(nxt.ioctl(4, 0), bytearray(16))
except OSError as e:
    emit("beyond", list(e.args))
try:
    Partition("vfs").set_boot()
except OSError as e:
    emit("not_app", list(e.args))
nxt.set_boot()
emit("boot", Partition(Partition.BOOT).info()[4])
emit("find", [p.info()[4] for p in Partition.find(Partition.TYPE_APP)],
     [p.info()[4] for p in Partition.find(Partition.TYPE_DATA, label="nvs")])
""", stdin=image.hex().encode())
    r = results(lines)
    assert r["running"] == [0, 0x10, 0x10000, 0x180000, "ota_0", False]
    assert r["next"] == ["ota_1", 0x180000 // 4096, 4096]
    assert r["readback"] is True
    assert r["beyond"] == [-0x104, "ESP_ERR_INVALID_SIZE"]
    assert r["not_app"] == [-0x1503, "ESP_ERR_OTA_VALIDATE_FAILED"]   # no app image there
    assert r["boot"] == "ota_1"
    assert r["find"] == [["ota_0", "ota_1"], ["nvs"]]

    # on the host: otadata as ESP-IDF writes it, and the lead's bootloader agrees
    f = rig.hw.flash
    parts = read_partition_table(f)
    entries = read_otadata(f, parts)
    # blank otadata: entry 0 gets seq 2 (slot (2 - 1) % 2 = ota_1), state NEW (rollback on)
    assert entries[0].seq == 2 and entries[0].state == OTA_IMG_NEW and entries[0].valid
    assert entries[1].seq == 0xFFFFFFFF
    assert boot_partition(f, parts).name == "ota_1"
    # the board core's bootloader agrees
    assert select_boot_partition(f, parts, commit=False)[0].name == "ota_1"
    assert read_app(f, next(p for p in parts if p.name == "ota_1")).version == "v1.25.0"


def test_ota_otadata_sequence_and_rollback_marking(tmp_path):
    rig = Rig(tmp_path)
    try:
        f = rig.hw.flash
        board = rig.board
        app1 = next(p for p in board.partitions if p.name == "ota_1")
        f.write(app1.offset, build_app_image("micropython", "v1.25.0"))
        parts = read_partition_table(f)
        set_boot_partition(f, "ota_1")                  # blank otadata: entry 0, seq 2
        e = read_otadata(f, parts)
        assert (e[0].seq, e[0].state) == (2, OTA_IMG_NEW) and e[1].seq == 0xFFFFFFFF
        assert boot_partition(f, parts).name == "ota_1"
        set_boot_partition(f, "ota_0")                  # next entry: seq 3 -> slot 0
        e = read_otadata(f, parts)
        assert (e[1].seq, e[1].state) == (3, OTA_IMG_NEW)
        assert boot_partition(f, parts).name == "ota_0"
        set_boot_partition(f, "ota_1")                  # entry 0 again: seq 4 -> slot 1
        e = read_otadata(f, parts)
        assert e[0].seq == 4 and boot_partition(f, parts).name == "ota_1"
        part, _why = select_boot_partition(f, parts)     # the board core's bootloader
        assert part.name == "ota_1"
        assert read_otadata(f, parts)[0].state == OTA_IMG_PENDING_VERIFY
        rig.call(lambda: rig.hw.next_boot("reset", app="ota_1"))
        lines = rig.run("""
import esp32, os
p = esp32.Partition(esp32.Partition.RUNNING)
p.mark_app_valid_cancel_rollback()
emit(p.info()[4], os.uname().release)
try:
    esp32.Partition("ota_0").set_boot()
    emit("set_boot", "ok")
except OSError as e:
    emit("set_boot", list(e.args))
""")
        assert lines[0] == ["ota_1", "1.25.0"]
        assert lines[1] == ["set_boot", "ok"]
        e = read_otadata(f, parts)
        assert e[0].state == OTA_IMG_VALID and e[0].seq == 4
        assert e[1].seq == 5 and boot_partition(f, parts).name == "ota_0"
        # an image that does not validate is refused as esp_ota_set_boot_partition does
        f.erase(app1.offset, 4096)
        lines = rig.run("""
import esp32
try:
    esp32.Partition("ota_1").set_boot()
except OSError as e:
    emit(list(e.args))
""")
        assert lines == [[[-0x1503, "ESP_ERR_OTA_VALIDATE_FAILED"]]]
    finally:
        rig.close()


def test_nvs_survives_vm_runs_and_raises_the_ports_errors(rig):
    first = rig.run("""
import esp32
nvs = esp32.NVS("node")
nvs.set_i32("boots", -5)
nvs.set_i32("big", 0xFFFFFFFF)
nvs.set_blob("key", b"\\x01\\x02\\x03")
nvs.commit()
try:
    nvs.get_i32("missing")
except OSError as e:
    emit("missing", list(e.args))
try:
    nvs.set_i32("a_key_that_is_too_long", 1)
except OSError as e:
    emit("long", e.errno)
""")
    assert first == [["missing", [-4354, "ESP_ERR_NVS_NOT_FOUND"]], ["long", -0x1109]]
    second = rig.run("""
import esp32
nvs = esp32.NVS("node")
buf = bytearray(8)
emit(nvs.get_i32("boots"), nvs.get_i32("big"), nvs.get_blob("key", buf), buf[:3].hex())
try:
    nvs.get_blob("key", bytearray(2))
except OSError as e:
    emit(list(e.args))
try:
    nvs.get_i32("key")
except OSError as e:
    emit(e.errno)
nvs.erase_key("boots")
try:
    esp32.NVS("node").get_i32("boots")
except OSError as e:
    emit(e.errno)
""")
    assert second == [[-5, -1, 3, "010203"], [[-0x110C, "ESP_ERR_NVS_INVALID_LENGTH"]],
                      [-4354], [-4354]]
    assert Path(str(rig.flash_path) + ".nvs.json").exists()


def test_wifi_follows_the_world_and_connects_after_a_delay(tmp_path):
    rig = Rig(tmp_path, wifi_connect_s=0.2)
    try:
        now = rig.world.now()
        rig.world.lost_from, rig.world.lost_to = now + 0.6, now + 0.9
        lines = rig.run("""
import network, time
w = network.WLAN(network.STA_IF)
emit("idle", w.status(), w.active())
try:
    w.connect("city", "secret")
except OSError as e:
    emit("not_started", str(e))
w.active(True)
w.connect("city", "secret")
emit("connecting", w.isconnected(), w.status())
time.sleep_ms(250)
emit("up", w.isconnected(), w.status("rssi"))
time.sleep_ms(400)
emit("lost", w.isconnected(), w.status())
try:
    w.status("rssi")
except OSError as e:
    emit("rssi_err", str(e))
time.sleep_ms(600)
emit("back", w.isconnected())
""")
        r = results(lines)
        assert r["idle"] == [1000, False]
        assert r["not_started"] == "Wifi Not Started"
        assert r["connecting"] == [False, 1001]
        assert r["up"] == [True, -61]
        assert r["lost"] == [False, 1001]
        assert r["rssi_err"] == "Wifi Not Connected"
        assert r["back"] is True
    finally:
        rig.close()


def test_shims_work_without_a_board(rig):
    lines = rig.run("""
import time, machine, network, esp32, esp, os
emit("imported", os.uname()[0], machine.reset_cause())
t0 = time.ticks_ms(); time.sleep_ms(20)
emit("ticks", time.ticks_diff(time.ticks_ms(), t0) >= 20)
p = machine.Pin(4, machine.Pin.OUT); p.on()
emit("pin", p.value(), machine.Pin(5, machine.Pin.IN, machine.Pin.PULL_UP).value())
try:
    machine.I2C(0).scan()
except OSError as e:
    emit("i2c", e.errno)
w = network.WLAN(network.STA_IF); w.active(True); w.connect("x", "y")
emit("wlan", w.isconnected())
emit("wrap", time.ticks_add(2**30 - 1, 1), time.ticks_diff(0, 2**30 - 1))
""", board=False)
    assert lines == [["imported", "esp32", 1], ["ticks", True], ["pin", 1, 1], ["i2c", 19],
                     ["wlan", True], ["wrap", 0, 1]]


def test_adc_model_ranges():
    for atten, top_mv in ((0, 950), (1, 1250), (2, 1750), (3, 2450)):
        for mv in (200, top_mv // 2, top_mv):
            raw, uv = adc_reading(mv * 1000, atten, 12)
            assert abs(uv - mv * 1000) <= 1000, (atten, mv, uv)
        assert adc_reading(20_000, atten, 12) == (0, adc_reading(0, atten, 12)[1])
        assert adc_reading(3_300_000, atten, 12)[0] == 4095
    assert adc_reading(3_000_000, 3, 12)[1] < 2_900_000       # compressed near full scale


def test_an_app_never_confirmed_is_rolled_back_at_the_next_boot(tmp_path):
    board = board_def("esp32-devkitc-ota")
    f = FlashFile(tmp_path / "flash.bin", board.flash_size)
    f.write(0x1000, merged_image(board, build_app_image("micropython",
                                                                          "v1.24.1")))
    app1 = next(p for p in board.partitions if p.name == "ota_1")
    f.write(app1.offset, build_app_image("micropython", "v1.25.0"))
    parts = read_partition_table(f)
    set_boot_partition(f, "ota_0")                      # running ota_0, confirmed
    e = read_otadata(f, parts)[0]
    e.state = OTA_IMG_VALID
    write_otadata(f, otadata_partition(parts), 0, e)
    set_boot_partition(f, "ota_1")                      # the update
    assert select_boot_partition(f, parts) == (app1, "new app, pending verification")
    # it crashed before marking itself valid: the next boot goes back to ota_0, for good
    part, why = select_boot_partition(f, parts)
    assert (part.name, why) == ("ota_0", "rollback: the new app was never confirmed")
    assert select_boot_partition(f, parts)[0].name == "ota_0"
    assert [x.state for x in read_otadata(f, parts)] == [OTA_IMG_VALID, OTA_IMG_ABORTED]
    f.close()
