"""The virtual ESP32's hardware, host side: what the shims in vboard/shims/ reach over the bus.

``BoardHardware`` owns one board's bus server (vboard/bus.py) and everything behind it: the
device models plugged into its I2C buses, UARTs, pins, ADC inputs and PWM outputs
(vboard/models/base.py), RTC memory and clock, the watchdog, WiFi state, NVS, flash writes and
the OTA data, and the lifecycle requests the firmware makes (reset, deep sleep, ...), which it
reports to the board core (vboard/board.py) through ``events(kind, **details)``.

Each peripheral is a part in its own module of this package, which answers its own ops and
names them in an explicit ``ops()`` table; ``BoardHardware`` builds the parts, hands each what
it needs (the world's clock, the bus's push, the events callback, the flash file) and merges
their tables into the bus server's. The parts never import this module.

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

Where the ops are answered: gpio.py (pin_in, pin_out, pin_irq, pulse, pwm), adc.py (adc),
i2c.py (i2c_*), uart.py (uart_*), rtc.py (rtc_set, rtc_mem), watchdog.py (wdt_*),
lifecycle.py (reset, soft_reset, deepsleep, power.cut, lightsleep, intr_taken), wifi.py
(wlan_*), flash.py (flash_write, flash_erase), ota.py (ota_*), nvs.py (nvs_*), temperature.py
(temp).

Board -> VM pushes: ["irq", gpio, level] (a Pin IRQ edge), ["intr"] (Ctrl-C on the console,
vboard/board.py), ["halt"].

Time: device models and the watchdog see ``world.now()`` (simulated seconds); the VM computes
the same clock itself from the anchor in ``vm_environment()`` (VBOARD_CLOCK), so time costs no
round trip. That holds while the world's clock advances at ``world.speed`` x wall time.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Protocol

from boards.app_image import AppInfo
from boards.definitions import Board, Partition
from vboard.bus import BusServer
from vboard.flash import FlashFile
from vboard.hardware.adc import Adc
from vboard.hardware.chip import default_mac, uname_environment
from vboard.hardware.clock import sim_us
from vboard.hardware.flash import FlashWrites
from vboard.hardware.gpio import Pins, Pwm
from vboard.hardware.i2c import I2c
from vboard.hardware.lifecycle import (
    PWRON_RESET,
    SOFT_RESET,
    TIMER_WAKE,
    WAKE_UNDEFINED,
    Lifecycle,
    boot_cause,
)
from vboard.hardware.nvs import NvsStore, nvs_capacity
from vboard.hardware.ota import Ota, running_app
from vboard.hardware.rtc import Rtc
from vboard.hardware.temperature import DieTemperature
from vboard.hardware.uart import Uarts
from vboard.hardware.watchdog import Watchdog
from vboard.hardware.wifi import Wifi
from vboard.models.base import AnalogDevice, I2CDevice, PinDevice, PwmLoad, UartDevice


class Part(Protocol):
    """A piece of the board's hardware that answers ops from the VM."""

    def ops(self) -> dict[str, Callable[..., Any]]:
        """op name -> handler, as the bus server calls it: handler(*args) -> result."""
        ...


def op_table(*parts: Part) -> dict[str, Callable[..., Any]]:
    """The bus server's handlers: the parts' op tables merged; an op two parts claim is a
    bug, caught when the board is built rather than by an answer from the wrong part."""
    table: dict[str, Callable[..., Any]] = {}
    for part in parts:
        for name, handler in part.ops().items():
            if name in table:
                raise ValueError("op %r is answered by two parts" % name)
            table[name] = handler
    return table


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
        self._loop: asyncio.AbstractEventLoop | None = None

        # The parts, each answering its own ops. What one needs of another (WiFi's state for
        # ADC2, the watchdog stopping, a power cut) it gets as a plain callable: no part
        # imports another, or this module.
        self.pins = Pins(world, self._push, irq_poll_s)
        self.pwm = Pwm(world)
        self.wifi = Wifi(world, board_id, connect_s=wifi_connect_s, rssi_dbm=wifi_rssi_dbm,
                         loop=self._board_loop)
        self.adc = Adc(world, radio_on=lambda: self.wifi.active)
        self.i2c = I2c(world, board.pins)
        self.uarts = Uarts(world)
        self.rtc = Rtc(world, clock_at_power_on)
        self.watchdog = Watchdog(world, self._board_loop, self._push, self._event)
        self.lifecycle = Lifecycle(self._push, self._event, stop_watchdog=self.watchdog.stop,
                                   light_sleep=self.wifi.light_sleep)
        self.flash_writes = FlashWrites(self.flash, power_cut=self.lifecycle.power_cut)
        self.ota = Ota(self.flash)
        self.nvs = NvsStore(nvs_path or Path(str(flash_path) + ".nvs.json"),
                            capacity=nvs_capacity(board.partitions))
        self.temperature = DieTemperature(world, board_id)

        if bus_path is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="vboard-")
            bus_path = Path(self._tmpdir.name) / "bus"
        self.bus = BusServer(bus_path, op_table(
            self.pins, self.pwm, self.adc, self.i2c, self.uarts, self.rtc, self.watchdog,
            self.lifecycle, self.wifi, self.flash_writes, self.ota, self.nvs, self.temperature))

        self.pin_outputs = self.pins.outputs      # gpio -> level the MCU drives, for inspection
        self.pwm_outputs = self.pwm.outputs       # gpio -> (freq, duty_u16)
        self.wifi_listeners = self.wifi.listeners   # told when the link changes
        self.reset_cause = PWRON_RESET
        self.wake_reason = WAKE_UNDEFINED
        self.app: Partition | None = None       # the app partition running (RUNNING)
        self.app_info: AppInfo | None = None
        self._app_chosen = False

    def _push(self, kind: str, *args: Any) -> None:
        """Push an event to the VM (the bus server is made after the parts that push)."""
        self.bus.push(kind, *args)

    def _event(self, kind: str, **details: Any) -> None:
        """Tell the board core, through ``events`` as it is at the time of the call."""
        self.events(kind, **details)

    def _board_loop(self) -> asyncio.AbstractEventLoop | None:
        return self._loop

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.bus.start()

    async def stop(self) -> None:
        self.watchdog.stop()
        self.pins.stop()
        await self.bus.close()
        self.flash.close()
        if hasattr(self, "_tmpdir"):
            self._tmpdir.cleanup()

    close = stop

    def _reset_vm_state(self, keep_wifi: bool) -> None:
        """What a chip reset clears: peripherals, IRQs, UART buffers (and WiFi, unless soft)."""
        self.pins.reset()
        self.uarts.reset()
        if not keep_wifi:
            self.wifi.reset()

    def next_boot(self, cause: str, *, app: str | None = None, wake: int | None = None) -> None:
        """Prepare the next VM after ``cause`` ("poweron", "powercut", "brownout", "reset",
        "wdt", "deepsleep", "soft_reset" or "soft"). The board core plays the second-stage
        bootloader (boards/otadata.py select_boot_partition); ``app`` is the label of the app
        partition it loaded. Without it, the partition the OTA data selects now
        (esp_ota_get_boot_partition) is taken as running, at the next vm_environment()."""
        reset_cause, power_lost = boot_cause(cause)
        soft = reset_cause == SOFT_RESET
        self.reset_cause = reset_cause
        self.wake_reason = (wake if wake is not None else TIMER_WAKE) \
            if cause == "deepsleep" else WAKE_UNDEFINED
        if power_lost:
            self.rtc.power_on()
        if not soft:
            self.watchdog.stop()  # a soft reset does not stop the task watchdog on the ESP32
        self._reset_vm_state(keep_wifi=soft)
        if app is not None:
            self._set_app(app)
        elif not soft:
            self._app_chosen = False

    def _set_app(self, label: str | None) -> None:
        self._app_chosen = True
        self.app, self.app_info = running_app(self.flash, label)

    def vm_environment(self) -> dict[str, str]:
        """Environment variables for the next VM (the board core merges them in)."""
        if not self._app_chosen:
            self._set_app(None)
        mono_us = time.monotonic_ns() // 1000
        now_us = sim_us(self.world)
        env = {
            "VBOARD_BUS": str(self.bus.path),
            "VBOARD_CLOCK": "%d %d %r" % (mono_us, now_us, float(self.world.speed)),
            "VBOARD_RTC": str(self.rtc.offset_us),
            "VBOARD_RTC_MEM": self.rtc.memory.hex(),
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

    # --- faults the world injects -----------------------------------------------------------

    def power_cut(self) -> None:
        """The world cut the power: the VM stops now; the board core calls
        next_boot("powercut") when power returns."""
        self.lifecycle.power_cut()

    def wifi_lost(self, duration_s: float) -> None:
        """The access point is gone for ``duration_s`` simulated seconds (math.inf: for good);
        the ESP32 then reconnects by itself, which takes wifi_connect_s."""
        self.wifi.lost(duration_s)

    # --- the world plugs devices in ---------------------------------------------------------

    def i2c_wires(self, bus: int | tuple[int, int]) -> tuple[int, int]:
        """The (scl, sda) GPIOs of ``bus`` (vboard/hardware/i2c.py ``I2c.wires``)."""
        return self.i2c.wires(bus)

    def attach_i2c(self, bus: int | tuple[int, int], device: I2CDevice) -> None:
        self.i2c.attach(bus, device)

    def detach_i2c(self, bus: int | tuple[int, int], address: int) -> None:
        self.i2c.detach(bus, address)

    def attach_uart(self, uart_id: int, device: UartDevice) -> None:
        self.uarts.attach(uart_id, device)

    def detach_uart(self, uart_id: int) -> None:
        self.uarts.detach(uart_id)

    def attach_pin(self, gpio: int, device: PinDevice) -> None:
        self.pins.attach(gpio, device)

    def detach_pin(self, gpio: int) -> None:
        self.pins.detach(gpio)

    def attach_adc(self, gpio: int, device: AnalogDevice) -> None:
        self.adc.attach(gpio, device)

    def detach_adc(self, gpio: int) -> None:
        self.adc.detach(gpio)

    def attach_pwm(self, gpio: int, device: PwmLoad) -> None:
        self.pwm.attach(gpio, device)

    def detach_pwm(self, gpio: int) -> None:
        self.pwm.detach(gpio)
