"""HLK-LD2410 24 GHz presence radar at its UART and OUT pin (Hi-Link "HLK-LD2410 Serial
Communication Protocol" V1.02, 2022-07-01; the LD2410B/C editions up to V1.08 add the
resolution, light and noise-detection commands and the light/OUT bytes of engineering frames).

UART 256000 baud 8N1 by default; all multi-byte fields little-endian.

- Report frames, every ``report_interval_s`` (0.1 s) outside configuration mode::

    F4 F3 F2 F1 | len u16 | type (02 basic, 01 engineering) | AA | target | 55 00 | F8 F7 F6 F5
    target = state u8 (0 none, 1 moving, 2 stationary, 3 both), moving distance cm u16,
             moving energy u8, stationary distance cm u16, stationary energy u8,
             detection distance cm u16
    engineering adds: max moving gate N, max stationary gate N (8, 8), moving energy of gates
             0..8, stationary energy of gates 0..8, light value u8, OUT level u8 (len 35)

- Command frames ``FD FC FB FA | len u16 | word u16 | value | 04 03 02 01``, each answered by
  an ACK ``FD FC FB FA | len | word|0x0100 | status u16 (0 ok, 1 fail) | data | 04 03 02 01``.
  Only "enable configuration" (0x00FF) is taken outside configuration mode; other commands are
  ignored there. Modelled: 0x00FF (ACK data: protocol version 1, buffer size 0x40), 0x00FE end
  configuration, 0x0060 max gates (2..8) and no-one duration (0..65535 s), 0x0061 read
  parameters, 0x0062/0x0063 engineering mode on/off, 0x0064 gate sensitivities (0..100, gate
  0xFFFF = all), 0x00A0 firmware version, 0x00A1 baud rate (after restart), 0x00A2 factory
  reset (after restart), 0x00A3 restart, 0x00A4 Bluetooth, 0x00A5 MAC, 0x00AA/0x00AB distance
  resolution (after restart), 0x00AD/0x00AE auxiliary control, 0x000B/0x001B noise detection.
- Detection: 9 gates of 0.75 m (0.2 m after resolution 1). A target is seen when its energy at
  its gate exceeds that gate's sensitivity and the gate is within the configured maximum; when
  nobody is seen the last state is held for the no-one duration. OUT is high while the reported
  state is not "no target".

Not modelled: the radar's real signal processing (energies are a plausible function of
distance), Bluetooth, background-noise calibration, and the light-sensing OUT control.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field, replace

from vboard.models.common import Model, UartTx, clamp, pulse_sampled
from vboard.world import World

REPORT_HEAD = b"\xf4\xf3\xf2\xf1"
REPORT_TAIL = b"\xf8\xf7\xf6\xf5"
CMD_HEAD = b"\xfd\xfc\xfb\xfa"
CMD_TAIL = b"\x04\x03\x02\x01"

BAUD_RATES = {1: 9600, 2: 19200, 3: 38400, 4: 57600, 5: 115200, 6: 230400, 7: 256000,
              8: 460800}
GATES = 9
_MAX_GATE = GATES - 1

CMD_ENABLE_CONFIG = 0x00FF
CMD_END_CONFIG = 0x00FE
CMD_SET_MAX_GATES = 0x0060
CMD_READ_PARAMS = 0x0061
CMD_ENGINEERING_ON = 0x0062
CMD_ENGINEERING_OFF = 0x0063
CMD_SET_SENSITIVITY = 0x0064
CMD_FIRMWARE = 0x00A0
CMD_SET_BAUD = 0x00A1
CMD_FACTORY_RESET = 0x00A2
CMD_RESTART = 0x00A3
CMD_BLUETOOTH = 0x00A4
CMD_MAC = 0x00A5
CMD_SET_RESOLUTION = 0x00AA
CMD_GET_RESOLUTION = 0x00AB
CMD_SET_AUX = 0x00AD
CMD_GET_AUX = 0x00AE
CMD_NOISE_DETECT = 0x000B
CMD_NOISE_STATUS = 0x001B


@dataclass
class RadarConfig:
    """What the radar keeps in its flash (factory defaults from the protocol's Table 7)."""
    max_move_gate: int = 8
    max_still_gate: int = 8
    no_one_s: int = 5
    move_sens: list[int] = field(default_factory=lambda: [50, 50, 40, 30, 20, 15, 15, 15, 15])
    still_sens: list[int] = field(default_factory=lambda: [0, 0, 40, 40, 30, 30, 20, 20, 20])
    baud_index: int = 7
    resolution_index: int = 0          # 0: 0.75 m per gate, 1: 0.2 m
    aux: bytes = b"\x00\x80\x00\x00"

    def copy(self) -> "RadarConfig":
        return replace(self, move_sens=list(self.move_sens), still_sens=list(self.still_sens))


def report_frame(intra: bytes) -> bytes:
    return REPORT_HEAD + struct.pack("<H", len(intra)) + intra + REPORT_TAIL


def command_frame(word: int, value: bytes = b"") -> bytes:
    """A command as the MCU sends it (for tests and tools)."""
    body = struct.pack("<H", word) + value
    return CMD_HEAD + struct.pack("<H", len(body)) + body + CMD_TAIL


class LD2410(Model):
    name = "ld2410"

    def __init__(self, world: World, board_id: str, out_gpio: int | None = None, *,
                 report_interval_s: float = 0.1, firmware: tuple[int, int, int] = (1, 2,
                                                                                   0x22062416),
                 ack_delay_s: float = 0.005, boot_s: float = 0.5) -> None:
        super().__init__(world, board_id)
        self.out_gpio = out_gpio
        self.report_interval_s = report_interval_s
        self.firmware = firmware
        self.ack_delay_s = ack_delay_s
        self.boot_s = boot_s
        self.config = RadarConfig()
        self._after_restart = self.config.copy()
        self.baudrate = BAUD_RATES[self.config.baud_index]
        self.tx = UartTx(self.baudrate)
        self._draining: list[UartTx] = []
        self.config_mode = False
        self.engineering = False
        self.out = 0
        self._rx = bytearray()
        self._next_tick: int | None = None    # index of the next tick after world.t0
        self._boot_until = -math.inf
        self._last_seen = -math.inf
        self._held = (0, 0, 0, 0, 0, 0)

    # -- UART -------------------------------------------------------------------------------

    def uart_write(self, data: bytes, now_s: float) -> None:
        self._advance(now_s)
        if self.silent(now_s) or now_s < self._boot_until:
            return
        self._rx += data
        while True:
            start = self._rx.find(CMD_HEAD)
            if start < 0:
                del self._rx[:-3]
                return
            del self._rx[:start]
            if len(self._rx) < 6:
                return
            (length,) = struct.unpack_from("<H", self._rx, 4)
            total = 4 + 2 + length + 4
            if len(self._rx) < total:
                return
            frame = bytes(self._rx[:total])
            if frame[-4:] != CMD_TAIL or length < 2:
                del self._rx[:4]
                continue
            del self._rx[:total]
            (word,) = struct.unpack_from("<H", frame, 6)
            self._command(word, frame[8:-4], now_s)

    def uart_read(self, now_s: float) -> bytes:
        self._advance(now_s)
        out = b"".join(old.take(now_s) for old in self._draining)
        self._draining = [old for old in self._draining if old._chunks]
        return out + self.tx.take(now_s)

    # -- OUT pin ----------------------------------------------------------------------------

    def pin_input(self, gpio: int, now_s: float) -> int:
        self._advance(now_s)
        return self.out

    def pin_output(self, gpio: int, value: int, now_s: float) -> None:
        pass                                # OUT is an output of the radar

    def pulse_us(self, gpio: int, level: int, timeout_us: int, now_s: float) -> int:
        def level_at(t: float) -> int:
            self._advance(t)
            return self.out
        return pulse_sampled(level_at, level, timeout_us, now_s, self.report_interval_s)

    # -- commands ---------------------------------------------------------------------------

    def _ack(self, word: int, now_s: float, ok: bool = True, data: bytes = b"") -> float:
        body = struct.pack("<HH", word | 0x0100, 0 if ok else 1) + data
        frame = CMD_HEAD + struct.pack("<H", len(body)) + body + CMD_TAIL
        return self.tx.send(frame, now_s + self.ack_delay_s)

    def _command(self, word: int, value: bytes, now_s: float) -> None:
        if word == CMD_ENABLE_CONFIG:
            self.config_mode = True
            self._ack(word, now_s, True, struct.pack("<HH", 0x0001, 0x0040))
            return
        if not self.config_mode:
            return                          # "invalid" outside configuration mode
        cfg = self.config
        if word == CMD_END_CONFIG:
            self.config_mode = False
            self._ack(word, now_s)
        elif word == CMD_SET_MAX_GATES:
            self._ack(word, now_s, self._set_max_gates(value))
        elif word == CMD_READ_PARAMS:
            data = (bytes((0xAA, _MAX_GATE, cfg.max_move_gate, cfg.max_still_gate))
                    + bytes(cfg.move_sens) + bytes(cfg.still_sens)
                    + struct.pack("<H", cfg.no_one_s))
            self._ack(word, now_s, True, data)
        elif word in (CMD_ENGINEERING_ON, CMD_ENGINEERING_OFF):
            self.engineering = word == CMD_ENGINEERING_ON
            self._ack(word, now_s)
        elif word == CMD_SET_SENSITIVITY:
            self._ack(word, now_s, self._set_sensitivity(value))
        elif word == CMD_FIRMWARE:
            major, minor, build = self.firmware
            self._ack(word, now_s, True, b"\x00\x01" + bytes((minor, major))
                      + struct.pack("<I", build))
        elif word == CMD_SET_BAUD:
            index = struct.unpack("<H", value[:2])[0] if len(value) >= 2 else 0
            ok = index in BAUD_RATES
            if ok:
                self._after_restart.baud_index = index
            self._ack(word, now_s, ok)
        elif word == CMD_FACTORY_RESET:
            self._after_restart = RadarConfig()
            self._ack(word, now_s)
        elif word == CMD_RESTART:
            end = self._ack(word, now_s)
            self._restart(end)
        elif word == CMD_BLUETOOTH:
            self._ack(word, now_s)
        elif word == CMD_MAC:
            mac = bytes(int(self.chance("mac%d" % i, 0.0) * 256) for i in range(6))
            self._ack(word, now_s, True, mac)
        elif word == CMD_SET_RESOLUTION:
            index = struct.unpack("<H", value[:2])[0] if len(value) >= 2 else -1
            ok = index in (0, 1)
            if ok:
                self._after_restart.resolution_index = index
            self._ack(word, now_s, ok)
        elif word == CMD_GET_RESOLUTION:
            self._ack(word, now_s, True, struct.pack("<H", cfg.resolution_index))
        elif word == CMD_SET_AUX:
            ok = len(value) >= 4 and value[0] in (0, 1, 2) and value[2] in (0, 1)
            if ok:
                cfg.aux = self._after_restart.aux = bytes(value[:4])
            self._ack(word, now_s, ok)
        elif word == CMD_GET_AUX:
            self._ack(word, now_s, True, cfg.aux)
        elif word == CMD_NOISE_DETECT:
            self._ack(word, now_s)
        elif word == CMD_NOISE_STATUS:
            self._ack(word, now_s, True, struct.pack("<H", 0))
        else:
            self._ack(word, now_s, False)

    def _set_max_gates(self, value: bytes) -> bool:
        if len(value) % 6:
            return False
        new = self.config.copy()
        for i in range(0, len(value), 6):
            word, param = struct.unpack_from("<HI", value, i)
            if word in (0x0000, 0x0001) and 2 <= param <= _MAX_GATE:
                if word == 0x0000:
                    new.max_move_gate = param
                else:
                    new.max_still_gate = param
            elif word == 0x0002 and param <= 0xFFFF:
                new.no_one_s = param
            else:
                return False
        self._keep(new)
        return True

    def _set_sensitivity(self, value: bytes) -> bool:
        if len(value) != 18:
            return False
        fields = {}
        for i in range(0, 18, 6):
            word, param = struct.unpack_from("<HI", value, i)
            fields[word] = param
        gate, move, still = fields.get(0), fields.get(1), fields.get(2)
        if gate is None or move is None or still is None or move > 100 or still > 100:
            return False
        gates = range(GATES) if gate == 0xFFFF else [gate] if gate <= _MAX_GATE else None
        if gates is None:
            return False
        new = self.config.copy()
        for g in gates:
            new.move_sens[g], new.still_sens[g] = move, still
        self._keep(new)
        return True

    def _keep(self, new: RadarConfig) -> None:
        """Parameters written now take effect now and survive a restart."""
        pending = self._after_restart
        for name in ("max_move_gate", "max_still_gate", "no_one_s"):
            setattr(pending, name, getattr(new, name))
        pending.move_sens, pending.still_sens = list(new.move_sens), list(new.still_sens)
        self.config = new

    def _restart(self, at_s: float) -> None:
        self.config = self._after_restart.copy()
        self.config_mode = self.engineering = False
        self._boot_until = at_s + self.boot_s
        baud = BAUD_RATES[self.config.baud_index]
        if baud != self.baudrate:
            self._draining.append(self.tx)
            self.baudrate = baud
            self.tx = UartTx(baud)
        self._rx.clear()

    # -- detection and reports --------------------------------------------------------------

    def _advance(self, now_s: float) -> None:
        """Run the radar's detection ticks up to ``now_s`` (reports go out at each tick)."""
        interval = self.report_interval_s
        if self._next_tick is None:
            self._next_tick = math.floor((now_s - self.world.t0) / interval)
        due = math.floor((now_s - self.world.t0) / interval + 1e-9)
        if due - self._next_tick > 50:      # older frames would have overflowed any buffer
            self._next_tick = due - 50
        while self._next_tick <= due:
            self._tick(self.world.t0 + self._next_tick * interval)
            self._next_tick += 1

    def _tick(self, t: float) -> None:
        if t < self._boot_until or self.silent(t):
            self.out = 0
            return
        fields, move, still = self._detect(t)
        self.out = 1 if fields[0] else 0
        if self.config_mode:
            return
        target = struct.pack("<BHBHBH", *fields)
        if self.engineering:
            light = int(clamp(255.0 * math.log10(1.0 + max(0.0, self.sense("lux", t))) / 5.0,
                              0, 255))
            target += (bytes((_MAX_GATE, _MAX_GATE)) + bytes(move) + bytes(still)
                       + bytes((light, self.out)))
            intra = b"\x01\xaa" + target + b"\x55\x00"
        else:
            intra = b"\x02\xaa" + target + b"\x55\x00"
        self.tx.send(report_frame(intra), t)

    def gate_cm(self) -> float:
        return 75.0 if self.config.resolution_index == 0 else 20.0

    def _detect(self, t: float) -> tuple[tuple[int, ...], list[int], list[int]]:
        cfg = self.config
        move = [0] * GATES
        still = [0] * GATES

        def gate(d_cm: float) -> int | None:
            if math.isnan(d_cm):
                return None
            g = int(d_cm // self.gate_cm())
            return g if g <= _MAX_GATE else None

        def put(energies: list[int], g: int, e: float) -> None:
            for gg, share in ((g - 1, 0.4), (g, 1.0), (g + 1, 0.4)):
                if 0 <= gg <= _MAX_GATE:
                    energies[gg] = max(energies[gg], int(clamp(e * share, 0, 100)))

        mv = self.sense("moving_target_cm", t)
        st = self.sense("stationary_target_cm", t)
        g_mv, g_st = gate(mv), gate(st)
        if g_mv is not None:
            e = 100.0 - 9.0 * mv / 100.0 + self.noise("move_e", t, 3.0)
            put(move, g_mv, clamp(e, 5, 100))
            put(still, g_mv, 0.35 * clamp(e, 5, 100))
        if g_st is not None:
            e = 80.0 - 7.0 * st / 100.0 + self.noise("still_e", t, 3.0)
            put(still, g_st, clamp(e, 5, 100))
            move[g_st] = max(move[g_st], int(clamp(8.0 + self.noise("breath", t, 2.0), 0, 15)))

        moving = None
        if (g_mv is not None and g_mv <= cfg.max_move_gate
                and move[g_mv] > cfg.move_sens[g_mv]):
            moving = (mv, move[g_mv])
        standing = []
        for d, g in ((st, g_st), (mv, g_mv)):
            if g is not None and g <= cfg.max_still_gate and still[g] > cfg.still_sens[g]:
                standing.append((d, still[g]))
        stationary = min(standing) if standing else None

        if moving or stationary:
            state = (1 if moving else 0) | (2 if stationary else 0)
            m_cm = int(round(moving[0] + self.noise("m_cm", t, 2.0))) if moving else 0
            s_cm = int(round(stationary[0] + self.noise("s_cm", t, 2.0))) if stationary else 0
            detection = min(d for d in (m_cm, s_cm) if d) if (m_cm or s_cm) else 0
            self._held = (state, max(0, m_cm), moving[1] if moving else 0, max(0, s_cm),
                          stationary[1] if stationary else 0, max(0, detection))
            self._last_seen = t
            return self._held, move, still
        if t - self._last_seen < cfg.no_one_s:
            return self._held, move, still
        return (0, 0, 0, 0, 0, 0), move, still
