# HLK-LD2410 24 GHz presence radar on a UART (256000 baud 8N1 by default), with its OUT pin
# (high while someone is present) optional. Hi-Link "LD2410 Serial Communication Protocol"
# V1.02: report frames F4 F3 F2 F1 | len u16 LE | type, 0xAA, target data, 0x55, 0x00 |
# F8 F7 F6 F5, sent continuously; command frames FD FC FB FA | len | word u16 LE, value |
# 04 03 02 01, answered by an ACK with word | 0x0100 and a u16 status (0 = success). Commands
# are accepted only between "enable configuration" (0x00FF, value 0x0001) and "end
# configuration" (0x00FE); the radar stops reporting meanwhile. All fields little-endian.
#
# Create the UART with room for a few frames between polls (an engineering frame is 45 bytes,
# several per 100 ms): UART(2, 256000, tx=17, rx=16, rxbuf=1024), and poll() every ~100 ms.
import time
from micropython import const
from drivers.errors import SensorError

_RX_SIZE = const(128)         # room for two of the longest frames
_MAX_LEN = const(64)          # intra-frame length we accept (engineering frame: 35)
_SILENT_MS = const(1000)      # no valid report for this long: the radar is missing or mute
_ACK_MS = const(300)          # wait for each command's ACK

_T_BASIC = const(0x02)
_T_ENGINEERING = const(0x01)
_HEAD = const(0xAA)
_TAIL = const(0x55)

_CMD_ENABLE_CFG = const(0x00FF)
_CMD_END_CFG = const(0x00FE)
_CMD_MAX_GATES = const(0x0060)
_CMD_ENG_ON = const(0x0062)
_CMD_ENG_OFF = const(0x0063)
_CMD_VERSION = const(0x00A0)
_ACK_BIT = const(0x0100)

_GATES = const(9)             # distance gates 0..8, 0.75 m each
_MIN_GATE = const(2)          # the max-gate command takes 2..8
_MAX_GATE = const(8)

# offsets in a report frame
_O_TYPE = const(6)
_O_HEAD = const(7)
_O_STATE = const(8)
_O_MOVE_CM = const(9)
_O_MOVE_E = const(11)
_O_STILL_CM = const(12)
_O_STILL_E = const(14)
_O_DIST_CM = const(15)
_O_ENG = const(17)            # engineering: max moving gate N, max still gate M, energies


def _u16(buf, i):
    return buf[i] | (buf[i + 1] << 8)


class LD2410:
    def __init__(self, uart, out_pin=None):
        self._uart = uart
        self._out_pin = out_pin
        self._rx = bytearray(_RX_SIZE)
        self._mv = memoryview(self._rx)
        self._n = 0
        self._tx = bytearray(32)
        self._ack = bytearray(16)       # the last ACK's intra-frame data (word, status, ...)
        self._ack_len = 0
        self._heard_ms = time.ticks_ms()
        self.skipped = 0                # bytes thrown away while resynchronising (total)
        self._junk = 0                  # ... since the last valid frame
        self.bad_frames = 0
        self.state = 0                  # 0 none, 1 moving, 2 stationary, 3 both
        self.presence = False
        self.moving_cm = 0
        self.moving_energy = 0
        self.stationary_cm = 0
        self.stationary_energy = 0
        self.distance_cm = 0
        self.last_report_ms = None      # ticks_ms() of the last valid report
        self.engineering = False        # the last report was an engineering frame
        self.gate_energies = bytearray(2 * _GATES)   # moving gates 0..8, then stationary 0..8
        self.moving_gates = memoryview(self.gate_energies)[:_GATES]
        self.stationary_gates = memoryview(self.gate_energies)[_GATES:]
        self.light = 0                  # engineering extra byte (newer firmware), else 0

    def out(self):
        """Level of the OUT pin (1: presence), or None without one."""
        return None if self._out_pin is None else self._out_pin.value()

    # --- reports -------------------------------------------------------------------------

    def poll(self):
        """Parse what the UART holds now; True if a new report arrived. Never blocks.
        SensorError("frame") for a broken frame (already skipped: the next poll goes on),
        "silent" or "garbage" (more than a frame's worth of bytes that were no frame) when no
        valid report came for a second."""
        got = self._pump()
        if not got and time.ticks_diff(time.ticks_ms(), self._heard_ms) > _SILENT_MS:
            if self._junk > _MAX_LEN:     # more than the tail of one torn frame
                self._junk = 0
                raise SensorError("garbage", "ld2410: bytes but no frames (baud rate?)")
            raise SensorError("silent", "ld2410: no report for 1 s")
        return got

    def _pump(self):
        uart = self._uart
        got = False
        while True:
            avail = uart.any()
            if not avail:
                return got
            room = _RX_SIZE - self._n
            if room == 0:                 # cannot happen with _MAX_LEN: defensive
                self._drop(self._n)
                room = _RX_SIZE
            k = uart.readinto(self._mv[self._n:self._n + min(avail, room)])
            if not k:
                return got
            self._n += k
            if self._parse():
                got = True

    def _drop(self, k):
        # forget the first k bytes (a forward copy: safe for overlapping ranges)
        buf = self._rx
        rest = self._n - k
        for i in range(rest):
            buf[i] = buf[k + i]
        self._n = rest

    def _sync(self):
        # move the next frame header to the front; keep a possible partial header
        buf, n = self._rx, self._n
        a = buf.find(b"\xf4\xf3\xf2\xf1", 0, n)
        b = buf.find(b"\xfd\xfc\xfb\xfa", 0, n)
        i = a if b < 0 or (0 <= a < b) else b
        if i < 0:
            i = n - 3 if n > 3 else 0
        if i:
            self.skipped += i
            self._junk += i
            self._drop(i)

    def _parse(self):
        got = False
        buf = self._rx
        while True:
            self._sync()
            if self._n < 6:
                return got
            length = _u16(buf, 4)
            if length > _MAX_LEN or length < 4:
                self._bad(4)
                raise SensorError("frame", "ld2410: bad length %d" % length)
            total = length + 10
            if self._n < total:
                return got
            report = buf[0] == 0xF4
            t = 6 + length
            if report:
                tail_ok = buf[t] == 0xF8 and buf[t + 1] == 0xF7 and buf[t + 2] == 0xF6 \
                    and buf[t + 3] == 0xF5
            else:
                tail_ok = buf[t] == 0x04 and buf[t + 1] == 0x03 and buf[t + 2] == 0x02 \
                    and buf[t + 3] == 0x01
            if not tail_ok:
                self._bad(4)
                raise SensorError("frame", "ld2410: bad frame tail")
            if report:
                why = self._report(length)
                if why is not None:
                    self._bad(total)
                    raise SensorError("frame", why)
                got = True
            else:
                n = min(length, len(self._ack))
                self._ack[:n] = self._mv[6:6 + n]
                self._ack_len = n
                self._heard_ms = time.ticks_ms()
                self._junk = 0
            self._drop(total)

    def _bad(self, skip):
        self.bad_frames += 1
        self._drop(skip)

    def _report(self, length):
        """Decode the report at the front of the buffer; None, or why it is bad."""
        buf = self._rx
        kind = buf[_O_TYPE]
        end = 6 + length                      # inner tail 0x55 and check 0x00 before this
        if kind not in (_T_BASIC, _T_ENGINEERING) or buf[_O_HEAD] != _HEAD \
                or buf[end - 2] != _TAIL or buf[end - 1] != 0 or length < 13 \
                or buf[_O_STATE] > 3:
            return "ld2410: bad report"
        if kind == _T_ENGINEERING:
            if end - 2 < _O_ENG + 2:
                return "ld2410: short engineering report"
            n_move = buf[_O_ENG] + 1
            n_still = buf[_O_ENG + 1] + 1
            first = _O_ENG + 2
            extra = first + n_move + n_still
            if n_move > _GATES or n_still > _GATES or extra > end - 2:
                return "ld2410: bad gate count"
            g = self.gate_energies
            for i in range(_GATES):
                g[i] = buf[first + i] if i < n_move else 0
                g[_GATES + i] = buf[first + n_move + i] if i < n_still else 0
            self.light = buf[extra] if extra < end - 2 else 0
        self.engineering = kind == _T_ENGINEERING
        self.state = buf[_O_STATE]
        self.presence = self.state != 0
        self.moving_cm = _u16(buf, _O_MOVE_CM)
        self.moving_energy = buf[_O_MOVE_E]
        self.stationary_cm = _u16(buf, _O_STILL_CM)
        self.stationary_energy = buf[_O_STILL_E]
        self.distance_cm = _u16(buf, _O_DIST_CM)
        now = time.ticks_ms()
        self.last_report_ms = now
        self._heard_ms = now
        self._junk = 0
        return None

    # --- commands ------------------------------------------------------------------------

    def _send(self, word, value):
        tx = self._tx
        n = 2 + len(value)
        tx[0:4] = b"\xfd\xfc\xfb\xfa"
        tx[4] = n & 0xFF
        tx[5] = n >> 8
        tx[6] = word & 0xFF
        tx[7] = word >> 8
        tx[8:8 + len(value)] = value
        tx[6 + n:10 + n] = b"\x04\x03\x02\x01"
        self._uart.write(memoryview(tx)[:10 + n])

    def _command(self, word, value=b""):
        """Send one command and wait for its ACK; the ACK's return data follows the status
        at self._ack[4:self._ack_len]."""
        self._ack_len = 0
        self._send(word, value)
        want = word | _ACK_BIT
        deadline = time.ticks_add(time.ticks_ms(), _ACK_MS)
        while True:
            # the clock is read before the look: a pause after it must not time out a ready device
            late = time.ticks_diff(deadline, time.ticks_ms()) <= 0
            try:
                self._pump()
            except SensorError:       # a report torn by the mode switch: skipped, go on
                pass
            if self._ack_len >= 4 and _u16(self._ack, 0) == want:
                if _u16(self._ack, 2) != 0:
                    raise SensorError("nak", "ld2410: command 0x%04x refused" % word)
                return
            if late:
                raise SensorError("no_ack", "ld2410: no ACK to command 0x%04x" % word)
            time.sleep_ms(5)

    def _configure(self, word, value=b""):
        self._command(_CMD_ENABLE_CFG, b"\x01\x00")
        try:
            self._command(word, value)
        finally:
            self._command(_CMD_END_CFG)

    def enable_engineering(self, on=True):
        """Engineering mode adds per-gate energies to each report (gate_energies)."""
        self._configure(_CMD_ENG_ON if on else _CMD_ENG_OFF)

    def set_max_gates(self, moving, stationary, unmanned_s):
        """Farthest gate (2..8, 0.75 m each) for moving and stationary targets, and how long
        (0..65535 s) presence is held after the last detection."""
        if not (_MIN_GATE <= moving <= _MAX_GATE and _MIN_GATE <= stationary <= _MAX_GATE):
            raise ValueError("gates 2..8")
        if not 0 <= unmanned_s <= 0xFFFF:
            raise ValueError("unmanned_s 0..65535")
        v = bytearray(18)
        for i, x in enumerate((moving, stationary, unmanned_s)):
            v[6 * i] = i                      # parameter word 0x0000, 0x0001, 0x0002
            v[6 * i + 2] = x & 0xFF           # value, u32 LE
            v[6 * i + 3] = x >> 8
        self._configure(_CMD_MAX_GATES, v)

    def firmware_version(self):
        """The radar's firmware version as the vendor's tool shows it, e.g. "V1.07.22091516"."""
        self._command(_CMD_ENABLE_CFG, b"\x01\x00")
        try:
            self._command(_CMD_VERSION)
            a = self._ack
            if self._ack_len < 12:
                raise SensorError("frame", "ld2410: short version ACK")
            text = "V%x.%02x.%08x" % (a[7], a[6], a[8] | (a[9] << 8) | (a[10] << 16)
                                      | (a[11] << 24))
        finally:
            self._command(_CMD_END_CFG)
        return text
