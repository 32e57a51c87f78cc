# What the node remembers in RTC memory: kept across deep sleep, machine.reset() and watchdog
# resets, lost when the power goes. Rewriting it costs no flash wear, so everything that changes
# per cycle lives here (crash counter, clock shift, queue cursor, pending acks, role state, and
# readings staged before they are written to flash).
#
# Layout (little-endian, 2048 bytes at most on the ESP32): a fixed header (_HEAD), the role's
# own bytes (ROLE_BYTES, packed by the role), then the staged queue entries.

from micropython import const
import struct
import machine

_MAGIC = const(0x5A17)
_LAYOUT = const(3)
RTC_MAX = const(2048)
ROLE_BYTES = const(64)
HANDLED = const(8)       # ids of the last commands carried out (re-delivery is not re-run)
ACKS = const(8)          # acks/rejs waiting for the next uplink
HANDLED_FILE = "cmds"

# Flags
RUNNING = const(1)       # the app is running: still set at the next boot means it crashed
SAFE = const(2)          # safe mode
SYNCED = const(4)        # the clock was set from the gateway since power-on
OBSERVING = const(8)

# magic, layout, flags, crashes, session, wakes, shift, fingerprint, status_due, report_due,
# boots, uptime, q_seg, q_off, dropped, stage_len, handled_pos, n_acks, faults_sent,
# uptime_ms, then HANDLED ids, ACKS ids, ACKS oks
_HEAD = "<HBBBBIiIIIIIIHHHBBIH%dI%dI%dB" % (HANDLED, ACKS, ACKS)
REJECTED = 0x80000000     # in `handled`: the command was refused (not const: > 30 bits)
_HEAD_SIZE = struct.calcsize(_HEAD)


class State:
    def __init__(self):
        self.rtc = machine.RTC()
        self.fresh = True        # nothing valid was in RTC memory: power-on
        self.flags = 0
        self.crashes = 0
        self.session = 0         # low byte of the boot counter at power-on
        self.wakes = 0           # deep-sleep wakes since the last reset
        self.shift = 0           # seconds the clock jumped when it was first set
        self.fingerprint = 0     # of the app that sent the node into safe mode
        self.status_due = 0      # local clock (s) when the next status frame is due
        self.report_due = 0
        self.boots = 0           # boots other than deep-sleep wakes (also in the file "boots")
        self.uptime = 0          # seconds up (awake and asleep) before this wake
        self.uptime_ms = 0       # and the milliseconds beyond them (a wake is not whole seconds)
        self.faults_sent = 0     # the faults bits the last status frame carried
        self.q_seg = 0           # flash queue read cursor: segment number and byte offset
        self.q_off = 0
        self.dropped = 0         # readings the full queue had to drop (reported, then cleared)
        self.handled = [0] * HANDLED
        self.handled_pos = 0
        self.acks = []           # [(id, ok)]
        self.role = bytearray(ROLE_BYTES)
        self.stage = bytearray()
        self.stage_max = RTC_MAX - _HEAD_SIZE - ROLE_BYTES
        self._load()

    def _load(self):
        raw = self.rtc.memory()
        if len(raw) < _HEAD_SIZE + ROLE_BYTES:
            return
        f = struct.unpack_from(_HEAD, raw)
        if f[0] != _MAGIC or f[1] != _LAYOUT:
            return
        (self.flags, self.crashes, self.session, self.wakes, self.shift, self.fingerprint,
         self.status_due, self.report_due, self.boots, self.uptime, self.q_seg, self.q_off,
         self.dropped) = f[2:15]
        stage_len = f[15]
        self.handled_pos = f[16]
        n_acks = f[17]
        self.faults_sent = f[18]
        self.uptime_ms = f[19]
        self.handled = list(f[20:20 + HANDLED])
        ids = f[20 + HANDLED:20 + HANDLED + ACKS]
        oks = f[20 + HANDLED + ACKS:]
        self.acks = [(ids[i], bool(oks[i])) for i in range(min(n_acks, ACKS))]
        self.role[:] = raw[_HEAD_SIZE:_HEAD_SIZE + ROLE_BYTES]
        start = _HEAD_SIZE + ROLE_BYTES
        self.stage = bytearray(raw[start:start + stage_len])
        self.fresh = False

    def save(self):
        ids = [0] * ACKS
        oks = [0] * ACKS
        for i, (cid, ok) in enumerate(self.acks[:ACKS]):
            ids[i] = cid
            oks[i] = 1 if ok else 0
        head = struct.pack(_HEAD, _MAGIC, _LAYOUT, self.flags, self.crashes, self.session & 0xFF,
                           self.wakes, self.shift, self.fingerprint, self.status_due,
                           self.report_due, self.boots, self.uptime, self.q_seg, self.q_off,
                           min(self.dropped, 0xFFFF), len(self.stage), self.handled_pos,
                           len(self.acks[:ACKS]), self.faults_sent, self.uptime_ms,
                           *(self.handled + ids + oks))
        self.rtc.memory(head + bytes(self.role) + bytes(self.stage))

    # --- commands already carried out, and their acknowledgements ------------------------

    def handled_as(self, cid):
        """None if command `cid` was not carried out yet, else whether it was accepted."""
        if cid in self.handled:
            return True
        if (cid | REJECTED) in self.handled:
            return False
        return None

    def mark_handled(self, cid, ok):
        self.handled[self.handled_pos] = cid if ok else cid | REJECTED
        self.handled_pos = (self.handled_pos + 1) % HANDLED
        self.add_ack(cid, ok)

    def add_ack(self, cid, ok):
        for pending in self.acks:
            if pending[0] == cid:
                return
        if len(self.acks) >= ACKS:
            self.acks.pop(0)       # the oldest ack is lost: the gateway re-delivers, we re-ack
        self.acks.append((cid, ok))

    # The handled ids also go to flash (protocol.md §8.4): a power cut must not make a node
    # carry out a command twice. Written once per batch of new commands, read at power-on.

    def save_handled(self):
        with open(HANDLED_FILE, "w") as f:
            f.write(" ".join("%d" % i for i in self.handled) + " %d" % self.handled_pos)

    def load_handled(self):
        try:
            with open(HANDLED_FILE) as f:
                ids = [int(x) for x in f.read().split()]
        except (OSError, ValueError):
            return
        if len(ids) == HANDLED + 1:
            self.handled = ids[:HANDLED]
            self.handled_pos = ids[HANDLED] % HANDLED

    def ack_records(self):
        return [("ack" if ok else "rej", cid) for cid, ok in self.acks]

    def acks_sent(self, count):
        del self.acks[:count]
