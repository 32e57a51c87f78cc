"""The node core in the MicroPython VM, without a board: configuration, RTC-memory state, the
store-and-forward queue, queued frames' times, and what an uplink costs on the wire.

The hardware shims run board-less here (RTC memory lives in the VM; files in a temporary
folder), so a "reboot" is a new State() and Queue() in the same VM."""

from __future__ import annotations

import json
import socket

import cbor2

from boards.nodeapp import FIRMWARE
from testbed.netem import UdpSink
from vboard.vm import SHIMS, run_source

PATH = [".frozen", FIRMWARE, FIRMWARE / "lib", SHIMS]


def run_fw(source: str, tmp_path, *, timeout: float = 60.0, **options) -> list:
    """Run ``source`` (with emit(obj) printing JSON) in a fresh VM with the firmware on its
    path and ``tmp_path`` as its filesystem; return the emitted objects."""
    prelude = "import json\ndef emit(obj):\n    print('@' + json.dumps(obj))\n"
    proc = run_source(prelude + source, PATH, cwd=tmp_path, timeout=timeout, **options)
    out = proc.stdout.decode("utf-8", "replace")
    assert proc.returncode == 0, out + proc.stderr.decode("utf-8", "replace")
    return [json.loads(line[1:]) for line in out.splitlines() if line.startswith("@")]


def config(**changes) -> dict:
    cfg = {"v": 1, "id": "shaft-01", "role": "shaft", "site": "north",
           "gateway": {"host": "127.0.0.1", "port": 5683},
           "oscore": {"sid": "0001", "rid": "", "secret": "00" * 16, "salt": "11" * 8},
           "interval_s": 900}
    cfg.update(changes)
    return cfg


# --- configuration ----------------------------------------------------------------------------

CONFIG_CASES = [
    (config(), None),
    (config(role="tram"), 13),
    (config(oscore={"sid": "0001", "rid": "", "secret": "00" * 15, "salt": "11" * 8}), 14),
    (config(interval_s="900"), 12),
    (config(interval_s=0), 15),
    (config(max_retransmit=9), 15),
    (config(shaft={"alarm_mm": -1}), 15),
    (config(shaft={"mode": "sideways"}), 15),
    (config(v=2), 16),
    (config(pins={"sonar_trig": 40}), 15),
    (config(sleep="coma"), 15),
]


def test_config_is_validated_with_a_status_code_per_kind_of_error(tmp_path):
    results = run_fw("""
from app import config
for case in CASES:
    with open("config.json", "w") as f:
        f.write(json.dumps(case))
    try:
        c = config.load()
        emit([None, c.max_retransmit, c.settings["alarm_mm"], c.settings["mode"],
              c.pins["sonar_trig"]])
    except config.ConfigError as e:
        emit([e.code])
with open("config.json", "w") as f:
    f.write("{not json")
try:
    config.load()
except config.ConfigError as e:
    emit([e.code])
import os
os.remove("config.json")
try:
    config.load()
except config.ConfigError as e:
    emit([e.code])
""".replace("CASES", json.dumps([c for c, _ in CONFIG_CASES])), tmp_path)
    assert [r[0] for r in results] == [code for _, code in CONFIG_CASES] + [11, 10]
    # defaults: a battery role retransmits less; role settings and pins filled in
    assert results[0] == [None, 2, 2000, "pulse", 5]


def test_config_command_keys_are_checked_and_written_atomically(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(config()))
    results = run_fw("""
from app import config
for key, value in [("interval_s", 60), ("shaft.alarm_mm", 1500), ("shaft.nope", 1),
                   ("lighting.hold_s", 5), ("interval_s", -1), ("max_retransmit", True)]:
    try:
        emit(list(config.settable("shaft", key, value)))
    except config.ConfigError as e:
        emit(e.code)
config.update([(None, "interval_s", 60), ("shaft", "alarm_mm", 1500)])
c = config.load()
emit([c.interval_s, c.settings["alarm_mm"]])
try:
    config.update([(None, "interval_s", 0)])
except config.ConfigError as e:
    emit(e.code)
emit(config.load().interval_s)
""", tmp_path)
    assert results[:6] == [[None, "interval_s", 60], ["shaft", "alarm_mm", 1500], 12, 12, 15, 12]
    assert results[6] == [60, 1500]
    assert results[7:] == [15, 60]     # a change that would not load is not written


# --- RTC memory ----------------------------------------------------------------------------

def test_state_survives_in_rtc_memory_and_fits_it(tmp_path):
    results = run_fw("""
from app import state as st
import machine
s = st.State()
emit(s.fresh)
s.flags |= st.RUNNING | st.SYNCED
s.crashes = 2
s.shift = -12345
s.mark_handled(7, True)
s.mark_handled(8, False)
s.role[0:3] = b"abc"
s.stage = bytearray(b"x" * (s.stage_max))
s.save()
emit(len(machine.RTC().memory()))
t = st.State()
emit([t.fresh, t.flags, t.crashes, t.shift, t.handled_as(7), t.handled_as(8), t.handled_as(9),
      t.ack_records(), bytes(t.role[0:3]).decode(), bytes(t.stage) == b"x" * s.stage_max])
t.acks_sent(1)
t.save()
emit(st.State().ack_records())
emit(s.stage_max)
""", tmp_path)
    assert results[0] is True
    assert results[1] <= 2048                        # the ESP32's RTC user memory
    assert results[2] == [False, 1 | 4, 2, -12345, True, False, None,
                          [["ack", 7], ["rej", 8]], "abc", True]   # the whole stage came back
    assert results[3] == [["rej", 8]]
    assert results[4] >= 256                         # room for a few readings while offline


# --- the queue -------------------------------------------------------------------------------

QUEUE_PRELUDE = """
from app import state as st
from app.store import Queue, ABSOLUTE
def reboot(max_bytes=8192, stage=100):
    s = st.State()
    return s, Queue(s, max_bytes, stage)
def drain(q, limit=1000):
    got = []
    while not q.empty():
        entries, cursor = q.peek(120, 5)
        got.extend(e[3][0][1] for e in entries)
        q.delivered(cursor)
        if len(got) > limit:
            break
    return got
"""


def test_queue_keeps_order_across_stage_flash_and_reboots_and_writes_flash_per_spill(tmp_path):
    results = run_fw(QUEUE_PRELUDE + """
s, q = reboot()
for i in range(40):
    q.put(1000 + 60 * i, 0, [("level", i), ("temp", 1200)])
    if i % 7 == 0:
        s.save()
        s, q = reboot()            # a reset: RTC memory and flash survive
s.save()
emit([len(q), q.spills])
entries, cursor = q.peek(100, 6)
emit([[e[0], e[3]] for e in entries])
q.delivered(cursor)
s.save()
s, q = reboot()
emit(drain(q))
emit(q.empty())
""", tmp_path)
    count, spills = results[0]
    assert count == 40
    assert spills <= 40 * 30 // 100 + 1       # one flash append per ~3 readings, not per reading
    assert results[1] == [[1000, [["level", 0], ["temp", 1200]]],
                          [1060, [["level", 1], ["temp", 1200]]],
                          [1120, [["level", 2], ["temp", 1200]]]]
    assert results[2] == list(range(3, 40))
    assert results[3] is True


def test_queue_after_a_power_cut_keeps_flash_loses_only_the_stage(tmp_path):
    results = run_fw(QUEUE_PRELUDE + """
import machine
s, q = reboot(stage=100)
for i in range(10):
    q.put(2000 + i, ABSOLUTE, [("level", i)])
entries, cursor = q.peek(40, 2)
q.delivered(cursor)              # two delivered: the cursor goes to q/head
s.save()
staged = q.count() - len([1 for seg in q.segments for _ in [0]])
machine.RTC().memory(b"")        # power cut: RTC memory gone, flash stays
s, q = reboot(stage=100)
emit([s.fresh, drain(q)])
""", tmp_path)
    fresh, got = results[0]
    assert fresh is True
    # what reached flash survives, from where delivery stopped; only staged readings are lost
    assert got and got == list(range(2, 2 + len(got))) and len(got) < 8


def test_queued_frames_stay_within_the_protocols_record_and_size_limits(tmp_path):
    results = run_fw(QUEUE_PRELUDE + """
s, q = reboot(max_bytes=65536, stage=0)
lamp = [("dim", 20), ("pres", False), ("lux", 3), ("power", 8500), ("energy", 12)]
for i in range(50):
    q.put(1795000000 + i, ABSOLUTE, lamp)
sizes = []
while not q.empty():
    entries, cursor = q.peek(560, 48)
    sizes.append(sum(len(e[3]) for e in entries))
    q.delivered(cursor)
emit(sizes)
""", tmp_path)
    assert results[0] == [45] * 5 + [25]       # 9 five-record readings a frame: <= 48 records


def test_queue_bound_drops_the_oldest_and_counts_them(tmp_path):
    results = run_fw(QUEUE_PRELUDE + """
s, q = reboot(max_bytes=8000, stage=0)
for i in range(600):
    q.put(i, ABSOLUTE, [("level", i)])
emit([len(q.segments), s.dropped, len(q)])
got = drain(q)
emit([got[0], got[-1], len(got)])
q.put(9999, ABSOLUTE, [("level", 9999)])
emit([list(q.segments), drain(q)])
""", tmp_path)
    segments, dropped, left = results[0]
    assert segments == 2 and dropped + left == 600 and dropped > 0
    first, last, n = results[1]
    assert last == 599 and n == left and first == 600 - left
    # numbering goes on after the queue emptied: a stale cursor never points into a new file
    assert results[2][0][0] > 2 and results[2][1] == [9999]


# --- queued frames: SenML times ---------------------------------------------------------------

def test_queued_readings_carry_bt_absolute_once_the_clock_is_set_relative_before(tmp_path):
    """Readings from the queue go out several to a frame, the first record with bt and the
    others with t, so bt + t is each reading's own time (protocol.md §3)."""
    (tmp_path / "config.json").write_text(json.dumps(config(max_retransmit=0)))
    results = run_fw("""
import asyncio, time, cbor
from app import config, state as st
from app.node import Node
from app.link import DONE
state = st.State()
node = Node(config.load(), state)
sent = []
async def post(path, payload):
    sent.append(payload)
    return DONE
node.link.post = post
now = time.time()
node.queue.put(now - 300, 0, [("level", 1), ("temp", 5)])
node.queue.put(now - 240, 0, [("level", 2)])
asyncio.run(node.flush())
node.queue.put(time.time() - 120, 0, [("level", 3)])      # taken before the clock was set
node.link.set_clock(1795000000)
node.queue.put(1795000000 - 60, 1, [("level", 4)])        # after: Unix time
asyncio.run(node.flush())
node.submit([("level", 5)])
asyncio.run(node.flush())
emit([bytes(p).hex() for p in sent])
""", tmp_path)
    frames = [cbor2.loads(bytes.fromhex(h)) for h in results[0]]
    # 1: clock never set: bt relative (negative), t the offset of the later reading
    assert frames[0][0][-3] in (-300, -301) and frames[0][0][2] == 1
    assert frames[0][1] == {0: "temp", 2: 5}
    assert frames[0][2] == {0: "level", 2: 2, 6: 60}
    # 2: clock set: absolute, the local-time reading converted with the clock's jump
    assert frames[1][0][-3] == 1795000000 - 120 and frames[1][1][6] == 60
    # 3: a fresh reading with nothing queued: no time at all (the gateway stamps it)
    assert frames[2] == [{0: "level", 2: 5}]


# --- the 64-byte uplink budget ------------------------------------------------------------------

def test_water_level_uplink_is_at_most_64_bytes_on_the_wire(tmp_path):
    """The datagrams the firmware sends for a shaft's readings, measured on a UDP socket."""
    sink = UdpSink(2)
    cfg = config(max_retransmit=0, ack_timeout_ms=200,
                 gateway={"host": "127.0.0.1", "port": sink.port})
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "oscore.seq").write_text("%d\n" % 70000)    # a 3-byte Partial IV
    run_fw("""
import asyncio
from app import config, state as st
from app.node import Node
node = Node(config.load(), st.State())
node.submit([("level", 1234), ("temp", 1150), ("batt", 3012)])
asyncio.run(node.flush())
node.state.stage = bytearray()      # no answer came: forget it, so the next one goes live
node.submit([("level", 2345), ("temp", 1150), ("alarm", True)])
asyncio.run(node.flush())
""", tmp_path)
    assert [len(d) for d in sink.collected()] == [61, 60]


# --- role logic --------------------------------------------------------------------------------

def test_shaft_distance_prefers_the_far_group_of_agreeing_echoes(tmp_path):
    cases = [
        [2700, 2702, 2698, 2701, 2699, 2703, 2700],          # clean
        [300, 2700, 340, 2702, 2698, 290, 2701],             # condensation: near spurious echoes
        [300, 340, 2700, 320, 2702, 290, 360],               # mostly condensation, two true
        [2700],                                              # one reading is all there is
        [300, 2700],                                         # two that disagree: no decision
        [],
    ]
    results = run_fw("""
from app.shaft import pick_distance
for case in CASES:
    emit(pick_distance(case, 30))
""".replace("CASES", json.dumps(cases)), tmp_path)
    assert results == [2700, 2700, 2701, 2700, None, None]


PARKING_PRELUDE = """
from app import state as st
from app.parking import Parking
class Cfg:
    interval_s = 1800
    pins = {"i2c_scl": 22, "i2c_sda": 21, "mag_drdy": 34, "batt_adc": 35}
    settings = {"sample_s": 10, "fast_s": 2, "debounce": 3, "on_nt": 10000, "off_nt": 5000,
                "settle_nt": 1500, "drift_nt": 3000, "drift_shift": 6, "cal_samples": 8}
class FakeNode:
    cfg = Cfg()
    woke = False
    def __init__(self):
        self.state = st.State()
    def log_once(self, msg):
        pass
p = Parking(FakeNode())
p.baseline = [18000, 1000, -44000]
p.flags |= 1
def run(fields):
    out = []
    for b in fields:
        flipped = p.decide(list(b))
        out.append([flipped, bool(p.flags & 2), p.magnitude])
    return out
"""


def test_parking_decides_with_hysteresis_debounce_and_settling_and_ignores_neighbours(tmp_path):
    base = (18000, 1000, -44000)
    car = (18000 + 8000, 1000 - 5000, -44000 + 30000)          # ~ 32 uT change
    half = tuple((a + b) // 2 for a, b in zip(base, car))      # still manoeuvring
    neighbour = (18000 + 1000, 1000 - 600, -44000 + 3600)      # ~ 3.8 uT: the next bay's car
    drift = (18000 + 400, 1000, -44000 - 200)                  # temperature
    results = run_fw(PARKING_PRELUDE + """
emit(run(SEQ))
emit(p.baseline)
""".replace("SEQ", json.dumps(
        [neighbour] * 6 + [base] + [half, car, car, car, car] + [car, half, base, base, base,
                                                                  base] + [drift] * 40)), tmp_path)
    steps = results[0]
    flips = [(i, occ) for i, (flipped, occ, _) in enumerate(steps) if flipped]
    # the neighbour's car never counts; the own car flips at the third settled sample of it
    # (the half-way sample and the first full one do not count: the field still moved)
    assert flips[0] == (11, True)
    # leaving: the same, back to empty
    assert flips[1] == (17, False) and len(flips) == 2
    assert not any(occ for _, occ, _ in steps[:11])
    # while empty, the baseline followed the slow drift part of the way
    baseline = results[1]
    assert 18000 < baseline[0] <= 18400 and -44200 <= baseline[2] < -44000


def test_a_bad_setting_still_lets_the_node_reach_its_gateway_in_safe_mode(tmp_path):
    """firmware.md: a node that can talk to its gateway runs safe mode (and can be repaired by
    a config command) whatever else is wrong with its config.json."""
    results = run_fw("""
from app import config
for bad in ({"sleep": "hibernate"}, {"interval_s": 0}):
    case = dict(CASE)
    case.update(bad)
    with open("config.json", "w") as f:
        f.write(json.dumps(case))
    try:
        config.load()
        emit("loaded")
    except config.ConfigError as e:
        emit(e.code)
    c = config.load(network_only=True)
    emit([c.sleep, c.interval_s, c.gateway_port])
""".replace("CASE", json.dumps(config())), tmp_path)
    # refused for the app (code 15: a value out of range), taken for the network with defaults
    assert results == [15, ["deep", 900, 5683], 15, ["deep", 900, 5683]]


def test_an_observe_registration_goes_out_as_fetch_and_an_uplink_as_post(tmp_path):
    """RFC 8613 §4.2: the outer code of an OSCORE request with Observe is FETCH."""
    sink = UdpSink(2)
    cfg = config(max_retransmit=0, ack_timeout_ms=200,
                 gateway={"host": "127.0.0.1", "port": sink.port})
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    run_fw("""
import asyncio
from app import config, state as st
from app.node import Node
node = Node(config.load(), st.State())
client = node.link.client()
for call in (client.aobserve("c"), client.arequest(2, "u", b"")):
    try:
        asyncio.run(call)
    except Exception:
        pass                    # nobody answers
""", tmp_path)
    assert [d[1] for d in sink.collected()] == [0x05, 0x02]      # FETCH, POST


def test_an_unprotected_error_with_a_garbled_diagnostic_is_logged_not_fatal(tmp_path):
    """Anyone on the network can answer with an unprotected 4.01; its diagnostic text is not
    authenticated and may not even be UTF-8. The node logs it and keeps its reading."""
    import threading

    from gateway import coap as gw_coap

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(20)

    def answer():
        data, addr = sock.recvfrom(2048)
        request = gw_coap.parse(data)
        sock.sendto(gw_coap.encode(gw_coap.ACK, gw_coap.UNAUTHORIZED, request.mid,
                                   request.token, [], b"\xff\xfe\x80 forged"), addr)
    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    cfg = config(max_retransmit=0, ack_timeout_ms=2000,
                 gateway={"host": "127.0.0.1", "port": sock.getsockname()[1]})
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    results = run_fw("""
import asyncio
from app import config, state as st
from app.node import Node
from app.link import KEEP
node = Node(config.load(), st.State())
emit(asyncio.run(node.link.post("u", b"\\\\x81")) == KEEP)
""", tmp_path)
    thread.join(5)
    sock.close()
    assert results == [True]


def test_a_battery_wake_makes_one_exchange_when_the_first_gets_no_answer(tmp_path):
    """firmware.md: a wake with no answer to its first request goes back to sleep; a pending
    ack must not start a second exchange (that doubled the radio time of every wake in an
    outage)."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)   # answers nothing
    sink.bind(("127.0.0.1", 0))
    cfg = config(max_retransmit=0, ack_timeout_ms=300,
                 gateway={"host": "127.0.0.1", "port": sink.getsockname()[1]})
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    results = run_fw("""
import asyncio
from app import config, state as st
from app.node import Node
state = st.State()
state.status_due = 10 ** 6          # no status this wake
state.acks = [(7, True)]            # a command's ack waits for the next uplink
node = Node(config.load(), state)
class Role:
    async def wake(self):
        node.submit([("l", 125)])
        return 900000
    def retry_due(self):
        return True
asyncio.run(node.cycle(Role()))
emit([len(node.state.acks), node.queue.empty()])
""", tmp_path)
    sink.setblocking(False)             # the VM has exited: all it sent is in the buffer
    sent = []
    while True:
        try:
            sent.append(sink.recv(2048))
        except BlockingIOError:
            break
    sink.close()
    assert results == [[1, False]]     # the ack still waits, the reading is queued
    assert len(sent) == 1, [d.hex() for d in sent]


def test_a_config_command_reaches_the_running_lighting_loop(tmp_path):
    """A lamp is always on: a config command changes the loop that is running, not only the
    file (the loop reports every cfg.interval_s and dims by its settings)."""
    cfg = config(id="lamp-01", role="lighting", interval_s=60)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    results = run_fw("""
from app import config, state as st
from app.node import Node
from app.lighting import Lighting
node = Node(config.load(), st.State())
node.role = Lighting(node)
emit(node._configure({"interval_s": 30, "lighting.night_pct": 25}))
emit([node.role.cfg.interval_s, node.role.s["night_pct"]])
""", tmp_path, heap_flag="heapsize=512K")   # compiled from source here, not frozen
    assert results == [True, [30, 25]]
    assert json.loads((tmp_path / "config.json").read_text())["interval_s"] == 30


def test_uptime_across_deep_sleeps_keeps_the_parts_of_a_second(tmp_path):
    """Each wake lasts a fraction of a second more than whole seconds; uptime (and the
    schedules that run on it) counted only the whole seconds, losing up to 1 s per wake."""
    (tmp_path / "config.json").write_text(json.dumps(config()))
    results = run_fw("""
import machine, time
from app import config, state as st
from app.node import Node
machine.deepsleep = lambda ms: None     # the test plays the wakes in this VM
cfg = config.load()
awake = 0
for wake in range(10):
    node = Node(cfg, st.State())
    node._up_last = start = time.ticks_ms()     # a wake starts the tick count
    time.sleep_ms(150)
    awake += time.ticks_diff(time.ticks_ms(), start)
    node.deep_sleep(60000)
s = st.State()
emit([s.uptime * 1000 + s.uptime_ms, awake])
""", tmp_path)
    counted, awake = results[0]
    assert awake >= 1500
    assert abs(counted - (10 * 60000 + awake)) <= 50, (counted, awake)
