# _vbus: the virtual ESP32's bus to its board process, its simulated clock, and the scheduler
# that runs soft interrupts (Timer callbacks, Pin IRQ handlers) on the MicroPython VM.
#
# Bus: call(op, *args) writes one JSON line [op, arg, ...] to the AF_UNIX stream socket named by
# VBOARD_BUS and blocks for one reply line: ["ok", result], ["err", errno, message] (raises
# OSError), ["val", message] (raises ValueError) or ["halt"] (the board is going down: deep
# sleep, reset, power cut; we stop here until the board process ends us). Bytes travel as
# lowercase hex strings; each op's signature says which arguments and results are bytes. The
# board may also send unsolicited lines, [kind, arg, ...] (["irq", gpio, level], ["intr"] for a
# console Ctrl-C); they are queued and dispatched by service().
#
# Clock: simulated time runs at `speed` simulated seconds per wall second from the anchor in
# VBOARD_CLOCK ("<monotonic_us> <sim_us> <speed>", taken by the board when it started us).
# ticks count from that anchor (our boot).
#
# Soft interrupts run from service(), which is called after every bus call, while sleeping (a
# sleep waits on the bus socket, so a pushed IRQ ends the wait at once), by asyncio's poll (see
# time.py: it waits on the bus socket too and wakes for due Timers), by machine.idle() and,
# cheaply, by time.ticks_ms()/ticks_us() (busy-wait loops). A callback therefore runs at the
# next of these points, never in the middle of C code: like the ESP32 port's scheduled (soft)
# callbacks, with more latency while the VM is blocked elsewhere (select.poll() or a socket
# with a long timeout, a long computation without any of the calls above).
#
# Without VBOARD_BUS (firmware run outside a virtual board) nothing is connected: call()
# raises OSError(ENODEV) and the clock runs at wall speed from the VM's start.
import sys


def builtin(name):
    # The built-in module `name`, even when a shim of that name is on the path.
    saved = sys.path[:]
    sys.path.clear()
    try:
        return __import__(name)
    finally:
        sys.path.extend(saved)


_os = builtin("os")
_time = builtin("time")
_socket = builtin("socket")
_select = builtin("select")
_json = builtin("json")
_struct = builtin("struct")

ENODEV = 19
_ticks_us = _time.ticks_us     # the unix port's CLOCK_MONOTONIC, in us: same clock as the host's
_sleep_us = _time.sleep_us
_loads = _json.loads
_dumps = _json.dumps


def getenv(name, default=None):
    value = _os.getenv(name)
    return default if value is None else value


# --- clock ------------------------------------------------------------------------------------

def _anchor():
    spec = getenv("VBOARD_CLOCK")
    if spec:
        mono, sim, speed = spec.split()
        return int(mono), int(sim), float(speed)
    return _ticks_us(), 0, 1.0


_mono0, _sim0, speed = _anchor()


def now_us():
    # Simulated time in us (the board's world clock; our boot is at boot_us).
    return _sim0 + int((_ticks_us() - _mono0) * speed)


boot_us = _sim0


def wall_us(sim_us):
    # Wall-clock microseconds that `sim_us` of simulated time take.
    return int(sim_us / speed)


# --- the board: what the board process tells us at boot -----------------------------------------

def _rtc_offset():
    # board clock (us since 2000-01-01) minus simulated time; without a board: the host's UTC
    value = getenv("VBOARD_RTC")
    if value is not None:
        return int(value)
    return int((_time.time() - 946684800) * 1000000) - now_us()


rtc_offset_us = _rtc_offset()
rtc_mem = bytes.fromhex(getenv("VBOARD_RTC_MEM", ""))
reset_cause = int(getenv("VBOARD_RESET_CAUSE", "1"))      # PWRON_RESET
wake_reason = int(getenv("VBOARD_WAKE_REASON", "0"))
mac = bytes.fromhex(getenv("VBOARD_MAC", "240ac4000001"))
cpu_mhz = 160                                             # the port's default CPU clock
wake_config = None        # esp32.wake_on_ext0/ext1: told to the board with a deep sleep


# --- bus --------------------------------------------------------------------------------------

_sock = None
_poller = None
_rx = b""
_pushes = []          # unsolicited [kind, args...] from the board, not yet dispatched


def _connect(path):
    global _sock, _poller
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    # The unix port takes a raw sockaddr_un: family, path, NUL.
    sock.connect(_struct.pack("H", _socket.AF_UNIX) + path.encode() + b"\x00")
    _sock = sock
    _poller = _select.poll()
    _poller.register(sock, _select.POLLIN)


_bus_path = getenv("VBOARD_BUS")
if _bus_path:
    _connect(_bus_path)

connected = _sock is not None


def _host_gone():
    # The board process closed the bus: the board is off. Nothing can run without it.
    raise SystemExit(1)


def _fill(timeout_ms):
    # Read what the board sent within timeout_ms (-1: block); False when nothing came.
    global _rx
    if timeout_ms >= 0 and not _poller.poll(timeout_ms):
        return False
    # recv allocates its buffer size on every call: keep it near a typical reply, not 8 KB
    # (a longer reply simply takes more than one call).
    data = _sock.recv(512)
    if not data:
        _host_gone()
    _rx += data
    return True


def _next_line():
    global _rx
    i = _rx.find(b"\n")
    if i < 0:
        return None
    line = _rx[:i]
    _rx = _rx[i + 1:]
    return _loads(line)


def halt():
    # The board is going down (deep sleep, reset, power cut) and will end this process; like
    # the chip, we run no more code meanwhile.
    while True:
        try:
            _sleep_us(1000000)
        except KeyboardInterrupt:
            pass


_stale = 0            # replies still to come for calls a KeyboardInterrupt abandoned


def _sort(msg):
    # A reply we wait for (returned), or a push (queued), a halt, or a stale reply (dropped).
    global _stale
    kind = msg[0]
    if kind == "ok" or kind == "err" or kind == "val":
        if not _stale:
            return msg
        _stale -= 1
    elif kind == "halt":
        halt()
    else:
        _pushes.append(msg)
    return None


def _reply():
    while True:
        msg = _next_line()
        if msg is None:
            _fill(-1)
        else:
            msg = _sort(msg)
            if msg is not None:
                return msg


def call(op, *args):
    global _stale
    if _sock is None:
        raise OSError(ENODEV)
    _sock.write(_dumps((op,) + args).encode() + b"\n")
    try:
        msg = _reply()
    except KeyboardInterrupt:
        _stale += 1
        raise
    kind = msg[0]
    if kind != "ok":
        if kind == "val":
            raise ValueError(msg[1])
        if msg[1] is None:
            raise OSError(msg[2])
        if msg[2]:
            raise OSError(msg[1], msg[2])
        raise OSError(msg[1])
    if _pushes or _alarms:
        service()
    return msg[1]


def hexs(buf):
    # any buffer (str too, as the port's buffer protocol takes it) -> hex str for the bus
    return (buf.encode() if isinstance(buf, str) else bytes(buf)).hex()


def unhex(text):
    return bytes.fromhex(text)


# --- soft interrupts ----------------------------------------------------------------------------

_alarms = []          # [due_us, callback, arg] sorted by due_us; Timer uses these
_push_handlers = {}   # kind -> function(*args)
_busy = False
enabled = True        # machine.disable_irq() clears this
_last_check_us = 0


def on_push(kind, handler):
    _push_handlers[kind] = handler


_stdin = None


def _console_intr():
    # ["intr"]: Ctrl-C on the console. Raised here, at a service point, as the ESP32 port
    # raises it at the VM's next safe point (the board sends no SIGINT: see vboard/console.py),
    # unless the Ctrl-C is no longer in stdin: then the REPL read it and no code was running.
    global _stdin
    if _stdin is None:
        _stdin = _select.poll()
        _stdin.register(0, _select.POLLIN)
    if _stdin.poll(0):
        call("intr_taken")
        raise KeyboardInterrupt


on_push("intr", _console_intr)


def add_alarm(due_us, callback, arg):
    entry = [due_us, callback, arg]
    i = 0
    while i < len(_alarms) and _alarms[i][0] <= due_us:
        i += 1
    _alarms.insert(i, entry)
    return entry


def cancel_alarm(entry):
    try:
        _alarms.remove(entry)
    except ValueError:
        pass


def run_callback(callback, arg):
    # The ESP32 port runs soft IRQ callbacks through the scheduler: an exception is printed
    # and the program goes on.
    try:
        callback(arg)
    except Exception as exc:
        sys.print_exception(exc)


def _drain():
    while _sock is not None and _fill(0):
        pass
    while True:
        msg = _next_line()
        if msg is None:
            return
        _sort(msg)


def service():
    # Run due Timer callbacks and queued IRQ handlers (never re-entered, never while disabled).
    global _busy
    if _busy or not enabled:
        return
    _busy = True
    try:
        if _sock is not None:
            _drain()
        while _pushes:
            msg = _pushes.pop(0)
            handler = _push_handlers.get(msg[0])
            if handler is not None:
                handler(*msg[1:])
        while _alarms and _alarms[0][0] <= now_us():
            entry = _alarms.pop(0)
            entry[1](entry)
    finally:
        _busy = False


def tick(now):
    # Cheap check from ticks_ms(): due alarms, and at most every 2 ms of wall time the socket.
    global _last_check_us
    if _busy or not enabled:
        return
    if _alarms and _alarms[0][0] <= now:
        service()
        return
    if _sock is not None:
        wall = _ticks_us()
        if wall - _last_check_us > 2000:
            _last_check_us = wall
            if _rx or _poller.poll(0):
                service()


def wait_until(target_us, dispatch=True):
    # Let simulated time reach target_us, running soft interrupts as they fall due (unless
    # dispatch is False, e.g. light sleep: the CPU is stopped).
    while True:
        if dispatch:
            service()
        now = now_us()
        remaining = target_us - now
        if remaining <= 0:
            return
        if dispatch and enabled and _alarms and _alarms[0][0] < target_us:
            remaining = max(0, _alarms[0][0] - now)
        wall = wall_us(remaining)
        if _sock is None or not dispatch or wall < 2000:
            _sleep_us(wall)
        else:
            _fill(wall // 1000)


def wall_timeout_ms(sim_ms):
    # A poll timeout in wall ms for waiting sim_ms (-1: forever), cut short for the next due
    # alarm. Rounded down: a wait under 1 ms of wall time polls without blocking.
    wall = -1 if sim_ms < 0 else int(sim_ms / speed)
    if enabled and _alarms:
        due = int(max(0, _alarms[0][0] - now_us()) / speed / 1000)
        if wall < 0 or due < wall:
            wall = due
    return wall


def wait_us(sim_us, dispatch=True):
    wait_until(now_us() + sim_us, dispatch)
