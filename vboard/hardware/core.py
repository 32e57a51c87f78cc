"""The virtual ESP32's hardware, host side: what the shims in vboard/shims/ reach over the bus.

``BoardHardware`` owns one board's bus server (vboard/bus.py) and everything behind it: the
device models plugged into its I2C buses, UARTs, pins, ADC inputs and PWM outputs
(vboard/models/base.py), RTC memory and clock, the watchdog, WiFi state, NVS, flash writes and
the OTA data, and the lifecycle requests the firmware makes (reset, deep sleep, ...), which it
reports to the board core through ``events(kind, **details)``.

Ops (VM -> board; "hex" marks bytes as hex strings; errors are ESP32 errnos):

    pin_in gpio pull -> level              pin_out gpio level
    pin_irq gpio trigger pull -> level     pulse gpio level timeout_us -> us | -2 | -1
    adc gpio atten width -> [raw, uv]      pwm gpio freq duty_u16  (freq 0: output off)
    i2c_scan bus -> [addr]                 i2c_probe bus addr -> bool
    i2c_w bus addr hex -> acks             i2c_r bus addr n -> hex
    i2c_wr bus addr hex n -> hex           (bus = [controller id or -1 for SoftI2C, scl, sda])
    uart_init id baudrate bits parity stop tx rx rxbuf
    uart_w id hex -> n                     uart_r id n until_newline -> hex
    uart_any id -> n
    rtc_set offset_us                      rtc_mem hex
    wdt_start timeout_ms                   wdt_feed
    reset | soft_reset | deepsleep ms wake | power.cut -> halt     lightsleep ms
    wlan_active flag|null -> bool          wlan_connect ssid     wlan_disconnect
    wlan_status -> status                  wlan_rssi -> dBm
    flash_write offset hex mode            flash_erase offset length
    ota_set_boot label                     ota_mark_valid        ota_boot -> label
    nvs_set ns key kind value              nvs_get ns key kind -> value
    nvs_erase ns key                       nvs_commit ns
    temp -> raw (esp32.raw_temperature)
    intr_taken                             (KeyboardInterrupt raised for a console Ctrl-C)

Board -> VM pushes: ["irq", gpio, level] (a Pin IRQ edge), ["intr"] (Ctrl-C on the console,
vboard/board.py), ["halt"].

Time: device models and the watchdog see ``world.now()`` (simulated seconds); the VM computes
the same clock itself from the anchor in ``vm_environment()`` (VBOARD_CLOCK), so time costs no
round trip. That holds while the world's clock advances at ``world.speed`` x wall time.
"""

from __future__ import annotations

import asyncio
import errno
import json
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from boards.app_image import AppInfo
from boards.definitions import Board, Partition
from boards.errors import FlashError
from vboard.bus import BusError, BusHalt, BusServer, BusValueError
from vboard.flash import FlashFile, PowerCut
from vboard.hardware.adc import ADC2_GPIOS, adc_reading
from vboard.hardware.chip import default_mac, uname_environment
from vboard.hardware.nvs import NvsStore, nvs_capacity
from vboard.hardware.ota import boot_partition, mark_app_valid, running_app, set_boot_partition
from vboard.models.base import AnalogDevice, I2CDevice, Nack, PinDevice, PwmLoad, UartDevice

# machine.reset_cause() values and wake reasons of the ESP32 port (ports/esp32/modmachine.c)
PWRON_RESET, HARD_RESET, WDT_RESET, DEEPSLEEP_RESET, SOFT_RESET = 1, 2, 3, 4, 5
WAKE_UNDEFINED, EXT0_WAKE, EXT1_WAKE, TIMER_WAKE = 0, 2, 3, 4

# next_boot(cause): the reset cause it gives, and whether the chip lost power (RTC memory and
# the RTC clock gone)
_CAUSES = {
    "poweron": (PWRON_RESET, True),
    "powercut": (PWRON_RESET, True),
    "brownout": (PWRON_RESET, True),      # esp_reset_reason() BROWNOUT maps to PWRON_RESET
    "reset": (HARD_RESET, False),         # machine.reset(): esp_restart()
    "wdt": (WDT_RESET, False),
    "deepsleep": (DEEPSLEEP_RESET, False),
    "soft_reset": (SOFT_RESET, False),
    "soft": (SOFT_RESET, False),
}

RTC_USER_MEM_MAX = 2048          # MICROPY_HW_RTC_USER_MEM_MAX
_SECONDS_1970_TO_2000 = 946684800

# network.WLAN status codes (ports/esp32/network_wlan.c)
STAT_IDLE, STAT_CONNECTING, STAT_GOT_IP = 1000, 1001, 1010

IRQ_RISING, IRQ_FALLING = 1, 2
_I2C_DEFAULT_PINS = {0: (18, 19), 1: (25, 26)}   # the port's I2C(0), I2C(1) (scl, sda)
PULL_DOWN, PULL_UP = 1, 2


# --- devices on the buses ------------------------------------------------------------------

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


class BoardHardware:
    """One virtual ESP32's hardware. Create it, ``await start()`` in the board's loop, pass
    ``vm_environment()`` to each VM, call ``next_boot(cause)`` between VMs, ``await close()``.

    ``events(kind, **details)`` is told of lifecycle requests: "reset", "soft_reset",
    "deepsleep" (ms=... (0: no timer), wake=... (esp32.wake_on_ext0/ext1 settings)), "wdt"
    (the watchdog expired), "powercut" (``power_cut()``, or the VM spent its flash write
    budget). The board core then stops the VM, calls ``next_boot`` and starts the next one.
    Methods are called from the loop's thread.

    ``mac``: the base MAC (unique_id(), WLAN); pass the ROM's eFuse MAC so esptool and the
    firmware agree (default: the board's OUI and 3 bytes from ``board_id``).
    ``clock_at_power_on``: the RTC clock after power-on, in seconds since 2000-01-01 (the
    ESP32 starts at 0); None: the world's calendar (``world.now()`` taken as Unix time).
    ``wifi_connect_s``: simulated time an association takes. ``irq_poll_s``: how often (wall
    time) pins with an IRQ armed are sampled.
    """

    def __init__(self, board: Board, board_id: str, world: Any, *, flash_path: Path,
                 events: Callable[..., None], bus_path: Path | None = None,
                 mac: bytes | None = None, nvs_path: Path | None = None,
                 clock_at_power_on: float | None = 0.0, wifi_connect_s: float = 1.0,
                 wifi_rssi_dbm: int = -61, irq_poll_s: float = 0.002) -> None:
        self.board = board
        self.board_id = board_id
        self.world = world
        self.events = events
        self.flash = FlashFile(Path(flash_path), board.flash_size)
        self.mac = mac or default_mac(board, board_id)
        self.nvs = NvsStore(nvs_path or Path(str(flash_path) + ".nvs.json"),
                            capacity=nvs_capacity(board.partitions))
        if bus_path is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="vboard-")
            bus_path = Path(self._tmpdir.name) / "bus"
        self.bus = BusServer(bus_path, self._handlers())
        self.clock_at_power_on = clock_at_power_on
        self.wifi_connect_s = wifi_connect_s
        self.wifi_rssi_dbm = wifi_rssi_dbm
        self.irq_poll_s = irq_poll_s
        self.wifi_listeners: list[Callable[[bool], None]] = []   # told when the link changes

        self._i2c: dict[tuple[int, int], dict[int, I2CDevice]] = {}   # (scl, sda) -> devices
        self._uarts: dict[int, _Uart] = {}
        self._pins: dict[int, PinDevice] = {}
        self._adc: dict[int, AnalogDevice] = {}
        self._pwm: dict[int, PwmLoad] = {}
        self.pin_outputs: dict[int, int] = {}            # what the MCU drives, for inspection
        self.pwm_outputs: dict[int, tuple[int, int]] = {}   # gpio -> (freq, duty_u16)
        self._irq: dict[int, list[int]] = {}              # gpio -> [trigger, pull, last level]
        self._irq_task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wdt_timeout_s: float | None = None
        self._wdt_deadline = 0.0
        self._wdt_handle: asyncio.TimerHandle | None = None
        self._wifi_lost_until = -math.inf
        self.lightsleeps = 0

        self.rtc_memory = b""
        self.rtc_offset_us = 0
        self.reset_cause = PWRON_RESET
        self.wake_reason = WAKE_UNDEFINED
        self.app: Partition | None = None       # the app partition running (RUNNING)
        self.app_info: AppInfo | None = None
        self._app_chosen = False
        self._power_on()
        self._reset_vm_state(keep_wifi=False)

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.bus.start()

    async def stop(self) -> None:
        self._stop_wdt()
        if self._irq_task is not None:
            self._irq_task.cancel()
        await self.bus.close()
        self.flash.close()
        if hasattr(self, "_tmpdir"):
            self._tmpdir.cleanup()

    close = stop

    def _power_on(self) -> None:
        self.rtc_memory = b""
        if self.clock_at_power_on is None:
            clock_us = self._sim_us() - _SECONDS_1970_TO_2000 * 1000000
        else:
            clock_us = int(self.clock_at_power_on * 1e6)
        self.rtc_offset_us = clock_us - self._sim_us()

    def _reset_vm_state(self, keep_wifi: bool) -> None:
        """What a chip reset clears: peripherals, IRQs, UART buffers (and WiFi, unless soft)."""
        self._irq.clear()
        for uart in self._uarts.values():
            uart.rx.clear()
        if not keep_wifi:
            self.wlan_active = False
            self._wlan_requested = False
            self._wlan_since = 0.0

    def next_boot(self, cause: str, *, app: str | None = None, wake: int | None = None) -> None:
        """Prepare the next VM after ``cause`` ("poweron", "powercut", "brownout", "reset",
        "wdt", "deepsleep", "soft_reset" or "soft"). The board core plays the second-stage
        bootloader (boards/otadata.py select_boot_partition); ``app`` is the label of the app
        partition it loaded. Without it, the partition the OTA data selects now
        (esp_ota_get_boot_partition) is taken as running, at the next vm_environment()."""
        try:
            reset_cause, power_lost = _CAUSES[cause]
        except KeyError:
            raise ValueError("unknown boot cause %r; one of %s"
                             % (cause, ", ".join(_CAUSES))) from None
        soft = reset_cause == SOFT_RESET
        self.reset_cause = reset_cause
        self.wake_reason = (wake if wake is not None else TIMER_WAKE) \
            if cause == "deepsleep" else WAKE_UNDEFINED
        if power_lost:
            self._power_on()
        if not soft:
            self._stop_wdt()      # a soft reset does not stop the task watchdog on the ESP32
        self._reset_vm_state(keep_wifi=soft)
        if app is not None:
            self._set_app(app)
        elif not soft:
            self._app_chosen = False

    def _set_app(self, label: str | None) -> None:
        self._app_chosen = True
        self.app, self.app_info = running_app(self.flash, label)

    def _sim_us(self) -> int:
        return int(self.world.now() * 1e6)

    def vm_environment(self) -> dict[str, str]:
        """Environment variables for the next VM (the board core merges them in)."""
        if not self._app_chosen:
            self._set_app(None)
        mono_us = time.monotonic_ns() // 1000
        sim_us = self._sim_us()
        env = {
            "VBOARD_BUS": str(self.bus.path),
            "VBOARD_CLOCK": "%d %d %r" % (mono_us, sim_us, float(self.world.speed)),
            "VBOARD_RTC": str(self.rtc_offset_us),
            "VBOARD_RTC_MEM": self.rtc_memory.hex(),
            "VBOARD_RESET_CAUSE": str(self.reset_cause),
            "VBOARD_WAKE_REASON": str(self.wake_reason),
            "VBOARD_MAC": self.mac.hex(),
            "VBOARD_BOARD": self.board.name,
            "VBOARD_ID": self.board_id,
            "VBOARD_PINS": json.dumps(self.board.pins, separators=(",", ":")),
            "VBOARD_FLASH": str(self.flash.path),
            "VBOARD_FLASH_SIZE": str(self.flash.size),
            "VBOARD_APP": self.app.name if self.app else "",
        }
        env.update(uname_environment(self.board, self.app_info))
        return env

    def power_cut(self) -> None:
        """The world cut the power: the VM stops now; the board core calls
        next_boot("powercut") when power returns."""
        self._stop_wdt()
        self.bus.push("halt")
        self.events("powercut")

    # --- the world plugs devices in ---------------------------------------------------------

    def i2c_wires(self, bus: int | tuple[int, int]) -> tuple[int, int]:
        """The (scl, sda) GPIOs of ``bus``: given as such, or bus n of the board as wired: bus
        0 on the board definition's i2c_scl/i2c_sda pins, else the ESP32 port's default pins
        of I2C(n). Devices hang on wires: I2C(0), I2C(1) and SoftI2C all reach a device on
        the pins they are given, and nothing on other pins."""
        if isinstance(bus, (tuple, list)):
            return int(bus[0]), int(bus[1])
        if bus == 0:
            for pins in self.board.pins.values():
                if "i2c_scl" in pins and "i2c_sda" in pins:
                    return pins["i2c_scl"], pins["i2c_sda"]
        return _I2C_DEFAULT_PINS[bus]

    def attach_i2c(self, bus: int | tuple[int, int], device: I2CDevice) -> None:
        self._i2c.setdefault(self.i2c_wires(bus), {})[device.address] = device

    def detach_i2c(self, bus: int | tuple[int, int], address: int) -> None:
        self._i2c.get(self.i2c_wires(bus), {}).pop(address, None)

    def attach_uart(self, uart_id: int, device: UartDevice) -> None:
        self._uarts.setdefault(uart_id, _Uart()).device = device

    def detach_uart(self, uart_id: int) -> None:
        if uart_id in self._uarts:
            self._uarts[uart_id].device = None

    def attach_pin(self, gpio: int, device: PinDevice) -> None:
        self._pins[gpio] = device

    def detach_pin(self, gpio: int) -> None:
        self._pins.pop(gpio, None)

    def attach_adc(self, gpio: int, device: AnalogDevice) -> None:
        self._adc[gpio] = device

    def detach_adc(self, gpio: int) -> None:
        self._adc.pop(gpio, None)

    def attach_pwm(self, gpio: int, device: PwmLoad) -> None:
        self._pwm[gpio] = device

    def detach_pwm(self, gpio: int) -> None:
        self._pwm.pop(gpio, None)

    # --- faults the world injects -----------------------------------------------------------

    def wifi_lost(self, duration_s: float) -> None:
        """The access point is gone for ``duration_s`` simulated seconds (math.inf: for good);
        the ESP32 then reconnects by itself, which takes wifi_connect_s."""
        now = self.world.now()
        self._wifi_lost_until = now + duration_s
        self._notify_wifi(False)
        if self._loop is not None and math.isfinite(duration_s):
            self._loop.call_later(max(0.0, duration_s / self.world.speed),
                                  self._notify_wifi, True)

    def _notify_wifi(self, up: bool) -> None:
        for listener in self.wifi_listeners:
            listener(up)

    # --- ops: pins, ADC, PWM ----------------------------------------------------------------

    def _handlers(self) -> dict[str, Callable[..., Any]]:
        ops = {name[4:]: getattr(self, name) for name in dir(self) if name.startswith("_op_")}
        ops["power.cut"] = self._power_cut_op
        return ops

    def _level(self, gpio: int, pull: int, now: float) -> int:
        device = self._pins.get(gpio)
        if device is not None:
            return 1 if device.pin_input(gpio, now) else 0
        return 1 if pull == PULL_UP else 0      # floating inputs read low

    def _at(self, at_us: int | None) -> float:
        """The simulated time of an operation: the VM's stamp when it sent one (pin timing
        must not depend on how fast this process answers), else now."""
        return self.world.now() if at_us is None else at_us / 1e6

    def _op_pin_in(self, gpio: int, pull: int, at_us: int | None = None) -> int:
        level = self._level(gpio, pull, self._at(at_us))
        self._check_edge(gpio, level)
        return level

    def _op_pin_out(self, gpio: int, level: int, at_us: int | None = None) -> None:
        self.pin_outputs[gpio] = level
        device = self._pins.get(gpio)
        if device is not None:
            device.pin_output(gpio, level, self._at(at_us))

    def _op_pin_irq(self, gpio: int, trigger: int, pull: int) -> int:
        level = self._level(gpio, pull, self.world.now())
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
            self.bus.push("irq", gpio, level)

    async def _poll_irqs(self) -> None:
        # PinDevice has no change notification: sample armed pins every irq_poll_s of wall
        # time. Pulses shorter than that (times world.speed in simulated time) can be missed.
        while self._irq:
            await asyncio.sleep(self.irq_poll_s)
            now = self.world.now()
            for gpio, armed in list(self._irq.items()):
                self._check_edge(gpio, self._level(gpio, armed[1], now))

    def _op_pulse(self, gpio: int, level: int, timeout_us: int,
                  at_us: int | None = None) -> int:
        device = self._pins.get(gpio)
        if device is None:
            return -1 if self._level(gpio, 0, 0.0) == level else -2
        result = device.pulse_us(gpio, level, timeout_us, self._at(at_us))
        # models/base.py says -1: no start, -2: no end; machine.time_pulse_us returns the
        # opposite (-2: timed out waiting for the pulse, -1: timed out measuring it)
        return {-1: -2, -2: -1}.get(result, result)

    def _op_adc(self, gpio: int, atten: int, width: int) -> list[int]:
        if gpio in ADC2_GPIOS and self.wlan_active:
            raise BusError(errno.ETIMEDOUT, "ESP_ERR_TIMEOUT")  # ADC2 is WiFi's while it runs
        device = self._adc.get(gpio)
        uv = device.adc_uv(gpio, self.world.now()) if device is not None else 0
        return list(adc_reading(uv, atten, width))

    def _op_pwm(self, gpio: int, freq: int, duty_u16: int) -> None:
        self.pwm_outputs[gpio] = (freq, duty_u16)
        load = self._pwm.get(gpio)
        if load is not None:
            load.pwm(gpio, freq, duty_u16, self.world.now())

    # --- ops: I2C ---------------------------------------------------------------------------

    def _i2c_device(self, bus: list[int], addr: int) -> I2CDevice:
        """The device at ``addr`` on the wires the VM's I2C object uses."""
        _ctrl, scl, sda = bus
        device = self._i2c.get((scl, sda), {}).get(addr)
        if device is None:
            raise BusError(errno.ENODEV)
        return device

    def _op_i2c_probe(self, bus: list[int], addr: int) -> bool:
        """Address + W and stop, as scan() sends it: does anything acknowledge?"""
        try:
            self._i2c_device(bus, addr).i2c_write(b"", self.world.now())
        except (BusError, Nack):
            return False
        return True

    def _op_i2c_scan(self, bus: list[int]) -> list[int]:
        return [addr for addr in range(0x08, 0x78) if self._op_i2c_probe(bus, addr)]

    def _op_i2c_w(self, bus: list[int], addr: int, data: str) -> int:
        payload = bytes.fromhex(data)
        try:
            self._i2c_device(bus, addr).i2c_write(payload, self.world.now())
        except Nack:
            raise BusError(errno.ENODEV) from None
        return len(payload)

    def _op_i2c_r(self, bus: list[int], addr: int, n: int) -> bytes:
        try:
            data = self._i2c_device(bus, addr).i2c_read(n, self.world.now())
        except Nack:
            raise BusError(errno.ENODEV) from None
        return bytes(data[:n]).ljust(n, b"\xff")   # a device that stops sending: SDA high

    def _op_i2c_wr(self, bus: list[int], addr: int, data: str, n: int) -> bytes:
        self._op_i2c_w(bus, addr, data)
        return self._op_i2c_r(bus, addr, n)

    # --- ops: UART --------------------------------------------------------------------------

    def _uart(self, uart_id: int) -> _Uart:
        return self._uarts.setdefault(uart_id, _Uart())

    def _op_uart_init(self, uart_id: int, baudrate: int, bits: int, parity: Any, stop: int,
                      tx: int, rx: int, rxbuf: int) -> None:
        uart = self._uart(uart_id)
        uart.baudrate, uart.rxbuf = baudrate, rxbuf

    def _op_uart_w(self, uart_id: int, data: str) -> int:
        uart = self._uart(uart_id)
        payload = bytes.fromhex(data)
        if uart.device is not None:
            if uart.device.baudrate != uart.baudrate:
                payload = _garble(payload)
            uart.device.uart_write(payload, self.world.now())
        return len(payload)

    def _op_uart_r(self, uart_id: int, n: int, until_newline: bool) -> bytes:
        uart = self._uart(uart_id)
        uart.pull(self.world.now())
        take = len(uart.rx) if n < 0 else min(n, len(uart.rx))
        if until_newline:
            nl = uart.rx.find(b"\n", 0, take)
            if nl >= 0:
                take = nl + 1
        out = bytes(uart.rx[:take])
        del uart.rx[:take]
        return out

    def _op_uart_any(self, uart_id: int) -> int:
        uart = self._uart(uart_id)
        uart.pull(self.world.now())
        return len(uart.rx)

    # --- ops: RTC, watchdog, lifecycle ------------------------------------------------------

    def _op_rtc_set(self, offset_us: int) -> None:
        self.rtc_offset_us = offset_us

    def _op_rtc_mem(self, data: str) -> None:
        payload = bytes.fromhex(data)
        if len(payload) > RTC_USER_MEM_MAX:
            raise BusValueError("buffer too long")
        self.rtc_memory = payload

    def _op_wdt_start(self, timeout_ms: int) -> None:
        self._wdt_timeout_s = timeout_ms / 1000
        self._op_wdt_feed()

    def _op_wdt_feed(self) -> None:
        if self._wdt_timeout_s is None:
            return
        self._wdt_deadline = self.world.now() + self._wdt_timeout_s
        if self._wdt_handle is None:
            self._arm_wdt()

    def _arm_wdt(self) -> None:
        remaining = max(0.0, self._wdt_deadline - self.world.now())
        loop = self._loop or asyncio.get_running_loop()
        self._wdt_handle = loop.call_later(remaining / self.world.speed + 0.001, self._wdt_check)

    def _wdt_check(self) -> None:
        self._wdt_handle = None
        if self._wdt_timeout_s is None:
            return
        if self.world.now() < self._wdt_deadline:
            self._arm_wdt()
            return
        self._wdt_timeout_s = None
        self.bus.push("halt")
        self.events("wdt")

    def _stop_wdt(self) -> None:
        self._wdt_timeout_s = None
        if self._wdt_handle is not None:
            self._wdt_handle.cancel()
            self._wdt_handle = None

    def _going_down(self, kind: str, **details: Any) -> None:
        self._stop_wdt()
        asyncio.get_running_loop().call_soon(lambda: self.events(kind, **details))
        raise BusHalt()

    def _op_reset(self) -> None:
        self._going_down("reset")

    def _op_intr_taken(self) -> None:
        self.events("intr_taken")

    def _op_soft_reset(self) -> None:
        self._going_down("soft_reset")

    def _op_deepsleep(self, ms: int | None, wake: Any = None) -> None:
        # ms 0: no timer (only a wake pin, which the board core does not model, or a reset)
        self._going_down("deepsleep", ms=ms or 0, wake=wake)

    def _power_cut_op(self) -> None:
        """"power.cut": the VM's flash layer (_vflash.py) spent the world's write budget."""
        self.power_cut()
        raise BusHalt()

    def _op_lightsleep(self, ms: int | None) -> None:
        # WiFi does not stay associated through light sleep; the port reconnects afterwards
        self.lightsleeps += 1
        if self._wlan_requested and ms:
            self._wlan_since = max(self._wlan_since, self.world.now() + ms / 1000)

    # --- ops: WiFi --------------------------------------------------------------------------

    def _op_wlan_active(self, flag: bool | None) -> bool:
        if flag is not None:
            self.wlan_active = bool(flag)
            if not flag:
                self._wlan_requested = False
        return self.wlan_active

    def _op_wlan_connect(self, ssid: str | None) -> None:
        if not self.wlan_active:
            raise BusError(None, "Wifi Not Started")
        self._wlan_requested = True
        self._wlan_since = self.world.now()

    def _op_wlan_disconnect(self) -> None:
        self._wlan_requested = False

    def _world_wifi_lost(self, now: float) -> bool:
        fault = getattr(self.world, "fault", None)
        return bool(fault is not None and fault(self.board_id, "wifi_lost", now))

    def wlan_status(self) -> int:
        if not self.wlan_active or not self._wlan_requested:
            return STAT_IDLE
        now = self.world.now()
        if self._world_wifi_lost(now):
            # while the world's fault lasts; reconnecting takes wifi_connect_s after it ends
            self._wifi_lost_until = max(self._wifi_lost_until, now)
            return STAT_CONNECTING
        up_at = max(self._wlan_since, self._wifi_lost_until) + self.wifi_connect_s
        return STAT_GOT_IP if now >= up_at else STAT_CONNECTING

    def _op_wlan_status(self) -> int:
        return self.wlan_status()

    def _op_wlan_rssi(self) -> int:
        if self.wlan_status() != STAT_GOT_IP:
            raise BusError(None, "Wifi Not Connected")
        return self.wifi_rssi_dbm

    # --- ops: flash, OTA, NVS, misc ---------------------------------------------------------

    def _op_flash_write(self, offset: int, data: str, mode: int) -> None:
        """mode 0: program (NOR: bits only clear); 1: erase [offset, +len) first (must be
        sector aligned); 2: erase the covering sectors, keeping bytes outside the range."""
        payload = bytes.fromhex(data)
        try:
            if mode == 2:
                self.flash.write(offset, payload)
                return
            if mode == 1:
                self.flash.erase(offset, len(payload))
            self.flash.program(offset, payload)
        except PowerCut:
            self.power_cut()
            raise BusHalt() from None
        except FlashError as exc:
            raise BusError(errno.EIO, str(exc)) from None

    def _op_flash_erase(self, offset: int, length: int) -> None:
        try:
            self.flash.erase(offset, length)
        except FlashError as exc:
            raise BusError(errno.EIO, str(exc)) from None

    def _op_ota_set_boot(self, label: str) -> None:
        set_boot_partition(self.flash, label)

    def _op_ota_mark_valid(self) -> None:
        mark_app_valid(self.flash)

    def _op_ota_boot(self) -> str | None:
        part = boot_partition(self.flash)
        return part.name if part else None

    def _op_nvs_set(self, ns: str, key: str, kind: str, value: Any) -> None:
        self.nvs.set(ns, key, kind, value)

    def _op_nvs_get(self, ns: str, key: str, kind: str) -> Any:
        return self.nvs.get(ns, key, kind)

    def _op_nvs_erase(self, ns: str, key: str) -> None:
        self.nvs.erase_key(ns, key)

    def _op_nvs_commit(self, ns: str) -> None:
        return None      # every set is already on the host's disk

    def _op_temp(self) -> int:
        """esp32.raw_temperature(): the die, about 25 degC above the air, in Fahrenheit."""
        celsius = 45.0
        value = getattr(self.world, "value", None)
        if value is not None:
            try:
                air = float(value(self.board_id, "air_temp_c", self.world.now()))
                if not math.isnan(air):
                    celsius = air + 25.0
            except (LookupError, TypeError, ValueError):
                pass
        return int(celsius * 9 / 5 + 32)
