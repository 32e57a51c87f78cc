# Store-and-forward: readings the gateway did not take, kept until it does, oldest first.
#
# A queued reading is an *entry*: the time it was measured and its records. Entries are first
# staged in RTC memory (state.stage: survives deep sleep and resets, costs no flash wear) and
# spilled to flash when the stage is full, appended to segment files q/00000001, q/00000002 ...
# of at most SEGMENT bytes (one littlefs block each). Appending rewrites only the tail block,
# once per spill, not once per reading. The read cursor (segment, offset) is written to q/head
# (a small inline file) when a drained frame ends inside a segment; a segment drained to its
# end is deleted. Bound: queue_kb of flash; when full the oldest segment is dropped and the
# number of readings lost is reported (state.dropped, faults bit QUEUE_DROPPED).
#
# A power cut loses what was staged (at most queue_stage bytes, about 16 readings; queue_stage 0
# writes every reading through) and may send again the part of a segment drained since the
# last q/head write (at most one frame).
#
# Entry: <I t> <B flags> <B session> <B n>, then n records: <B len> name, <B tag> [<i value>]
# with tag 0 integer (value follows), 1 false, 2 true. flags bit 0: t is Unix time (the clock
# was set); otherwise t is the local clock (seconds since 2000, counting from power-on in
# `session`), converted when sent (protocol.md §3: bt absolute once the clock is set).

from micropython import const
import os
import struct

ABSOLUTE = const(1)
SEGMENT = const(4000)
_HEAD = "<IBBB"
_DIR = "q"


def encode_entry(t, flags, session, records):
    buf = bytearray(struct.pack(_HEAD, t, flags, session, len(records)))
    for name, value in records:
        raw = name.encode()
        buf.append(len(raw))
        buf.extend(raw)
        if value is True:
            buf.append(2)
        elif value is False:
            buf.append(1)
        else:
            buf.append(0)
            buf.extend(struct.pack("<i", value))
    return buf


def decode_entry(buf, pos):
    """(t, flags, session, records, next pos); ValueError when the bytes end mid-entry."""
    end = len(buf)
    if pos + 7 > end:
        raise ValueError("truncated entry")
    t, flags, session, n = struct.unpack_from(_HEAD, buf, pos)
    pos += 7
    records = []
    for _ in range(n):
        if pos >= end:
            raise ValueError("truncated entry")
        size = buf[pos]
        name = bytes(buf[pos + 1:pos + 1 + size]).decode()
        pos += 1 + size
        if pos >= end:
            raise ValueError("truncated entry")
        tag = buf[pos]
        pos += 1
        if tag == 0:
            if pos + 4 > end:
                raise ValueError("truncated entry")
            records.append((name, struct.unpack_from("<i", buf, pos)[0]))
            pos += 4
        else:
            records.append((name, tag == 2))
    return t, flags, session, records, pos


def _path(seg):
    return "%s/%08d" % (_DIR, seg)


class Queue:
    def __init__(self, state, max_bytes=32768, stage_max=384):
        self.state = state
        self.max_bytes = max_bytes
        self.stage_max = min(stage_max, state.stage_max)
        self.spills = 0       # flash appends this boot (wear accounting, tests)
        try:
            os.mkdir(_DIR)
        except OSError:
            pass
        self.segments = self._list()
        self.last = self.segments[-1] if self.segments else 0   # numbers are never reused
        self._load_head()

    def _list(self):
        segs = []
        for name in os.listdir(_DIR):
            if len(name) == 8 and name.isdigit():
                segs.append(int(name))
        segs.sort()
        return segs

    def _load_head(self):
        # The cursor: RTC memory when it survived, else q/head, else the first segment.
        st = self.state
        if st.fresh or st.q_seg not in self.segments:
            try:
                with open(_DIR + "/head") as f:
                    seg, off = f.read().split()
                st.q_seg, st.q_off = int(seg), int(off)
                self.last = max(self.last, st.q_seg)
            except (OSError, ValueError):
                st.q_seg, st.q_off = 0, 0
        if st.q_seg not in self.segments:
            later = [s for s in self.segments if s > st.q_seg]
            st.q_seg, st.q_off = (later[0] if later else 0), 0

    def __len__(self):
        return self.count()

    def empty(self):
        return not self.state.stage and not self.segments

    def count(self):
        """Entries waiting (reads the segments: for status and tests, not per reading)."""
        n = 0
        for seg in self.segments:
            start = self.state.q_off if seg == self.state.q_seg else 0
            n += self._count(self._read(seg), start)
        return n + self._count(self.state.stage, 0)

    @staticmethod
    def _count(buf, pos):
        n = 0
        while pos < len(buf):
            try:
                pos = decode_entry(buf, pos)[4]
            except ValueError:
                break
            n += 1
        return n

    def _read(self, seg):
        try:
            with open(_path(seg), "rb") as f:
                return f.read()
        except OSError:
            return b""

    # --- in --------------------------------------------------------------------------------

    def put(self, t, flags, records):
        """Queue one reading taken at `t` (local or Unix seconds, see flags)."""
        entry = encode_entry(t, flags, self.state.session, records)
        st = self.state
        if len(st.stage) + len(entry) > self.stage_max:
            self.spill()
        if len(entry) > self.stage_max:
            self._append(entry)
        else:
            st.stage.extend(entry)

    def spill(self):
        """Write what is staged in RTC memory to flash (one append)."""
        if self.state.stage:
            self._append(self.state.stage)
            print("queue: %d B staged to flash" % len(self.state.stage))
            self.state.stage = bytearray()

    def _append(self, data):
        tail = self.segments[-1] if self.segments else 0
        size = SEGMENT
        if tail:
            try:
                size = os.stat(_path(tail))[6]
            except OSError:
                pass
        if size + len(data) > SEGMENT:
            self.last += 1
            tail = self.last
            self.segments.append(tail)
            if not self.state.q_seg:
                self.state.q_seg, self.state.q_off = tail, 0
            self._bound()
        with open(_path(tail), "ab") as f:
            f.write(data)
        self.spills += 1

    def _bound(self):
        # Oldest segments go when the flash share is used up: the newest readings matter most.
        while len(self.segments) > 1 and len(self.segments) * SEGMENT > self.max_bytes:
            oldest = self.segments.pop(0)
            start = self.state.q_off if oldest == self.state.q_seg else 0
            lost = self._count(self._read(oldest), start)
            self.state.dropped += lost
            print("queue full: dropped %d oldest readings" % lost)
            self._remove(oldest)
            if self.state.q_seg == oldest:
                self.state.q_seg, self.state.q_off = self.segments[0], 0

    def _remove(self, seg):
        try:
            os.remove(_path(seg))
        except OSError:
            pass

    # --- out -------------------------------------------------------------------------------

    def peek(self, max_bytes=600, max_records=48):
        """The oldest entries, as [(t, flags, session, records)], and a cursor for delivered().
        max_bytes bounds the entries' encoded size and max_records their records (a frame
        takes at most 1024 bytes and 64 records, protocol.md §3)."""
        st = self.state
        out = []
        used = [0, 0]           # bytes, records
        cursor = [0, None, 0]   # segments consumed whole, (segment, offset) reached, stage bytes
        full = False
        for s in ([s for s in self.segments if s >= st.q_seg] if st.q_seg else []):
            buf = self._read(s)
            pos = st.q_off if s == st.q_seg else 0
            pos, full = self._take(buf, pos, out, used, max_bytes, max_records)
            if pos < len(buf):
                cursor[1] = (s, pos)
                return out, cursor
            cursor[0] += 1
            if full:
                return out, cursor
        cursor[2], full = self._take(st.stage, 0, out, used, max_bytes, max_records)
        return out, cursor

    @staticmethod
    def _take(buf, pos, out, used, max_bytes, max_records):
        # Decode entries from buf[pos:] into out while they fit (used: [bytes, records] so
        # far, updated); returns (pos reached, full).
        while pos < len(buf):
            try:
                t, flags, session, records, nxt = decode_entry(buf, pos)
            except ValueError:
                return len(buf), False     # a torn tail (never written whole): skip it
            if out and (used[0] + nxt - pos > max_bytes or used[1] + len(records) > max_records):
                return pos, True
            used[0] += nxt - pos
            used[1] += len(records)
            out.append((t, flags, session, records))
            pos = nxt
        return pos, False

    def delivered(self, cursor):
        """The entries peek() returned with `cursor` reached the gateway: forget them."""
        st = self.state
        done, reached, stage_bytes = cursor
        for _ in range(done):
            if self.segments:
                self._remove(self.segments.pop(0))
        if self.segments:
            if reached and reached[0] == self.segments[0]:
                st.q_seg, st.q_off = reached
                self._save_head()
            else:
                st.q_seg, st.q_off = self.segments[0], 0
        elif done:
            # Empty: q/head keeps the last number, so a new segment never takes an old name
            # that a stale cursor could point into.
            st.q_seg, st.q_off = self.last, 0
            self._save_head()
            st.q_seg = 0
        if stage_bytes:
            st.stage = bytearray(st.stage[stage_bytes:])

    def _save_head(self):
        with open(_DIR + "/head", "w") as f:
            f.write("%d %d" % (self.state.q_seg, self.state.q_off))
