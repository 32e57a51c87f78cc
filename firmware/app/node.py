# The node core: uplinks through the store-and-forward queue, the status frame, downlink
# commands and their acknowledgements, the watchdog, and the two ways a role runs: always on
# (an asyncio app, lighting) or wake-measure-send-sleep with machine.deepsleep (battery roles).

from micropython import const
import gc
import sys
import time
import asyncio
import machine

import senml
import bootswitch
from app import faults as F
from app import state as st
from app.link import Link, DONE, DROP, KEEP, WAIT, EPOCH_2000, local_now
from app.store import Queue, ABSOLUTE
from app.heap import forget

APP_VERSION = "0.2.0"
LIVE_MS = const(5000)        # a reading older than this when sent carries its time
FRAME_BYTES = const(560)     # queued entries per drained frame: the frame stays < 1024 B
FRAME_RECORDS = const(48)    # ... and within 64 records with up to 8 acks
HEALTHY_S = const(120)       # always-on: up this long without a crash clears the crash count
RETRY_MIN_S = const(10)
RETRY_MAX_S = const(600)
UPDATE_WAKE_MS = const(15000)  # battery: time an update may take of a wake (it resumes)
UPDATE_RUN_MS = const(5000)    # always on: one stretch of update work (then uplinks, status)

DEEPSLEEP_RESET = const(4)   # machine.DEEPSLEEP_RESET on the ESP32 port
WDT_RESET = const(3)


def log(msg):
    print(msg)


class Node:
    app_version = APP_VERSION     # of the app as provisioned (a release installed says its own)

    def __init__(self, cfg, state, safe=False):
        self.cfg = cfg
        self.state = state
        self.safe = safe
        self.queue = Queue(state, cfg.queue_kb * 1024, cfg.queue_stage)
        self.link = Link(cfg, state, log)
        self.role = None
        self.heap_base = 0
        self.config_error = 0
        self.crashed = False
        self.woke = False         # this boot is a deep-sleep wake
        self.reboot_pending = False
        self.outbox = []          # readings not yet sent: (t, flags, records, ticks)
        self.submitted = 0        # readings taken (this wake, for battery roles)
        self.wake = asyncio.Event()    # always-on: something to send
        self.retry_ms = 0
        self._delay = 0           # the last backoff (s)
        self.wdt = None
        self._alive = {}          # task -> ticks of its last heartbeat
        self._up_ms = 0
        self._up_last = 0         # ticks count from boot
        ota = bootswitch.load()   # over-the-air update (app/update.py, /bootswitch.py)
        s = ota.get("s") if ota else None
        self.update_active = s in ("fetch", "stage", "fw")
        self.on_trial = s == "trial"
        self.switch_pending = s == "switch"
        self.release = ota.get("cur") if ota and isinstance(ota.get("cur"), list) else None
        self._update_retry = time.ticks_ms()
        self.status_now = False   # something to report at once (an update's progress)

    def log_once(self, msg):
        """Log `msg` unless it is what was logged last this way (a retry loop's messages)."""
        if msg != getattr(self, "_last_msg", None):
            self._last_msg = msg
            log(msg)

    # --- time stamps -------------------------------------------------------------------------

    def stamp(self):
        """(t, flags) for a reading taken now: Unix time once the clock is set, else local."""
        if self.link.synced():
            return local_now() + EPOCH_2000, ABSOLUTE
        return local_now(), 0

    def _when(self, t, flags, session):
        """The SenML time of a queued reading: absolute, or relative (negative) to now."""
        if flags & ABSOLUTE:
            return t
        unix = self.link.unix_time(t, session)
        if unix is not None:
            return unix
        # Clock never set: relative to now. Across a power cut the local clock restarted and
        # the reading's age is unknown; it goes out as "1 s ago" (docs/firmware.md).
        return min(t - local_now(), -1) if session == self.state.session else -1

    # --- uplinks -----------------------------------------------------------------------------

    def submit(self, records):
        """A reading just taken, as [(name, value)]: sent by the next flush(), live (without a
        time) if nothing older waits, else queued with the time it was taken."""
        t, flags = self.stamp()
        self.submitted += 1
        if not self.queue.empty():
            self.queue.put(t, flags, records)
        else:
            self.outbox.append((t, flags, records, time.ticks_ms()))
        self.wake.set()

    def _park_outbox(self):
        for t, flags, records, _ in self.outbox:
            self.queue.put(t, flags, records)
        self.outbox = []

    async def _post(self, path, records, bt=None):
        acks = self.state.ack_records()
        payload = senml.encode(records + acks, bt)
        result = await self.link.post(path, payload)
        if result == DONE:
            self.state.acks_sent(len(acks))
            if self.on_trial:
                from app import update
                update.confirm(self)      # the new app reached the gateway: it stays
        return result

    async def flush(self):
        """Send what waits, oldest first: the queue, then fresh readings, then bare acks.
        Returns DONE when everything went, else why it stopped (KEEP, WAIT)."""
        while True:
            if self.retry_ms and time.ticks_diff(self.retry_ms, time.ticks_ms()) > 0:
                self._park_outbox()
                return WAIT
            if not self.queue.empty():
                result = await self._drain_frame()
            elif self.outbox:
                t, flags, records, ticks = self.outbox[0]
                if time.ticks_diff(time.ticks_ms(), ticks) < LIVE_MS:
                    result = await self._post("u", records)
                else:
                    result = await self._post("u", [(r[0], r[1], None) for r in records],
                                              self._when(t, flags, self.state.session))
                if result == DONE or result == DROP:
                    self.outbox.pop(0)
            elif self.state.acks:
                result = await self._post("u", [])
            else:
                self.retry_ms = 0
                return DONE
            if result == KEEP or result == WAIT:
                self._park_outbox()
                self._backoff(result)
                return result
            self.retry_ms = 0
            self._delay = 0
            self.run_commands()

    def _backoff(self, result):
        if result == WAIT:
            delay = self.link.retry_after_s
        elif self.cfg.battery:
            return        # a battery node tries again at its next wake
        else:
            delay = min(RETRY_MAX_S, max(RETRY_MIN_S, 2 * self._delay))
            self._delay = delay
        self.retry_ms = time.ticks_add(time.ticks_ms(), delay * 1000)

    async def _drain_frame(self):
        entries, cursor = self.queue.peek(FRAME_BYTES, FRAME_RECORDS)
        if not entries:
            self.queue.delivered(cursor)     # only torn bytes were left
            return DONE
        bt = self._when(entries[0][0], entries[0][1], entries[0][2])
        records = []
        for t, flags, session, recs in entries:
            dt = self._when(t, flags, session) - bt
            for name, value in recs:
                records.append((name, value, dt or None))
        result = await self._post("u", records, bt)
        if result == DONE or result == DROP:
            self.queue.delivered(cursor)
            log("queue: %d readings %s" % (len(entries), "sent" if result == DONE
                                            else "dropped (gateway refused them)"))
        return result

    # --- sensors every role has ----------------------------------------------------------------

    def battery_mv(self):
        """Battery voltage (mV) through the divider on batt_adc; None when it reads nothing
        (a divider that is not connected reads about 0 V)."""
        try:
            from drivers.battery import Battery
            from drivers.errors import SensorError
        except ImportError:
            return None
        try:
            mv = Battery(machine.Pin(self.cfg.pins["batt_adc"])).read_mv()
        except (SensorError, OSError, ValueError):
            return None
        return mv if mv >= 500 else None

    # --- status ------------------------------------------------------------------------------

    def faults(self):
        bits = self.role.faults() if self.role is not None else 0
        if self.state.dropped:
            bits |= F.QUEUE_DROPPED
        if not self.link.synced():
            bits |= F.CLOCK
        if self.safe:
            bits |= F.SAFE_MODE
        if self.config_error:
            bits |= F.CONFIG | (self.config_error << 16)
        if self.crashed:
            bits |= F.CRASHED
        if self.link.bad_frames or self.link.version_mismatch:
            bits |= F.REFUSED
        return bits

    def heap(self):
        gc.collect()
        return gc.mem_free(), gc.mem_alloc() - self.heap_base

    def now_s(self):
        """Seconds since the last reset, counting deep sleep: what schedules run on (it never
        jumps when the clock is set, and survives ticks_ms() wrapping after 12 days)."""
        now = time.ticks_ms()
        self._up_ms += time.ticks_diff(now, self._up_last)
        self._up_last = now
        return self.state.uptime + (self.state.uptime_ms + self._up_ms) // 1000

    uptime_s = now_s

    def status_records(self):
        free, used = self.heap()
        app = self.release[0] if self.release else APP_VERSION
        records = [("fw", "%d.%d.%d" % sys.implementation.version[:3]), ("app", app),
                   ("reset", machine.reset_cause()), ("boots", self.state.boots),
                   ("uptime", self.uptime_s()), ("heap", free)]
        rssi = self.link.rssi()
        if rssi is not None:
            records.append(("rssi", rssi))
        if self.role is not None:
            records.extend(self.role.status_records())
        ota = bootswitch.load()
        if ota is not None and not ota.get("rep"):     # an update's state not yet reported
            from app import update
            records.extend(update.records())
        records.append(("faults", self.faults()))
        log("heap: %d B used by the app, %d B free" % (used, free))
        return records

    def report_soon(self):
        """Send a status frame at the next opportunity (not only when status_s is up); in RTC
        memory too, for a battery node's next wake."""
        self.status_now = True
        self.state.status_due = 0
        self.wake.set()

    def status_due(self):
        if self.status_now:
            return True
        state = self.state
        if self.role is not None and (self.faults() & F.SENSOR_MASK) != (
                state.faults_sent & F.SENSOR_MASK):
            return True
        return state.status_due == 0 or self.now_s() >= state.status_due

    async def send_status(self):
        asked = self.status_now
        self.status_now = False       # what changes while this frame is on its way: again
        records = self.status_records()
        bits = records[-1][1]
        result = await self._post("s", records)
        if result == DONE or result == DROP:
            self.state.faults_sent = bits
            # what asked for a report while this frame was on its way gets the next one
            self.state.status_due = 0 if self.status_now else self.now_s() + self.cfg.status_s
            self.state.dropped = 0
            log("status sent: faults=%s" % F.describe(bits))
            shown = [r[1] for r in records if r[0] == "upd"]
            if shown:
                from app import update
                if update.reported(shown[0]):
                    forget("app.update")      # its final state is out: not needed any more
            self.run_commands()
        if result != DONE and result != DROP and asked:
            self.status_now = True
            self.state.status_due = 0
        return result

    # --- commands ----------------------------------------------------------------------------

    def run_commands(self):
        cmds = self.link.commands
        if not cmds:
            return
        self.link.commands = []
        new = False
        for cid, name, args in cmds:
            done = self.state.handled_as(cid)
            if done is not None:          # delivered again: our ack was lost or is pending
                self.state.add_ack(cid, done)
                continue
            if not isinstance(args, dict):
                args = {}
            try:
                ok = self.command(name, args)
            except Exception as e:        # a command must never take the node down
                sys.print_exception(e)
                ok = False
            if ok is None:
                log("command %d %s: unknown here, refused" % (cid, name))
                ok = False
            else:
                log("command %d %s %s: %s" % (cid, name, args, "done" if ok else "refused"))
            self.state.mark_handled(cid, ok)
            new = True
        if new:
            self.state.save_handled()
        self.state.save()
        self.wake.set()

    def command(self, name, args):
        """True: carried out; False: refused; None: not a command this node knows."""
        if name == "reboot":
            self.reboot_pending = True
            return True
        if name == "config":
            return self._configure(args)
        if name == "ota":
            from app import update
            return update.start(self, args)
        if self.role is not None and not self.safe:
            return self.role.command(name, args)
        return None

    def _configure(self, args):
        from app import config
        if not args:
            return False
        changes = []
        try:
            for key in args:
                changes.append(config.settable(self.cfg.role, key, args[key]))
            config.update(changes)
            cfg = config.load()
        except (config.ConfigError, OSError, ValueError) as e:
            log("config command refused: %s" % e)
            return False
        self.cfg = cfg
        self.link.cfg = cfg
        self.link.close()
        if self.role is not None:       # an always-on role lives on: give it the new config
            self.role.reconfigure(cfg)
        if self.config_error:
            self.reboot_pending = True    # a repaired configuration: start the app
        return True

    # --- lifecycle ---------------------------------------------------------------------------

    def start_watchdog(self, seconds):
        self.wdt = machine.WDT(timeout=seconds * 1000)

    def alive(self, task):
        self._alive[task] = time.ticks_ms()

    def waiting(self, task):
        """`task` waits on the network: every exchange there ends by itself (CoAP gives up
        after MAX_TRANSMIT_WAIT, 93 s, WiFi after wifi_timeout_s), possibly later than the
        watchdog's timeout, so it is not supervised until it reports alive() again."""
        self._alive.pop(task, None)

    async def watchdog(self, seconds):
        """Feed the watchdog while every task that reports in (alive()) did so lately: a hung
        task, not only a hung loop, resets the node."""
        limit = seconds * 1000
        while True:
            now = time.ticks_ms()
            if all(time.ticks_diff(now, t) < limit for t in self._alive.values()):
                self.wdt.feed()
            await asyncio.sleep_ms(limit // 4)

    def clean_exit(self):
        """This run ends on purpose (deep sleep, commanded reboot): not a crash."""
        self.state.flags &= ~st.RUNNING
        self.state.save()

    def restart(self, why="command"):
        log("rebooting (%s)" % why)
        self.clean_exit()
        time.sleep_ms(100)
        machine.reset()

    def deep_sleep(self, sleep_ms):
        state = self.state
        self.now_s()                  # counts the time awake up to now into _up_ms
        ms = state.uptime_ms + self._up_ms + sleep_ms
        state.uptime += ms // 1000    # and keeps the part of a second: no drift over wakes
        state.uptime_ms = ms % 1000
        state.wakes += 1
        self.link.down()
        self.clean_exit()
        log("awake %d ms (%s); deep sleep %d s" % (
            time.ticks_ms(), "radio" if self.link.radio else "no radio", sleep_ms // 1000))
        machine.deepsleep(sleep_ms)

    # --- running a role ----------------------------------------------------------------------

    async def cycle(self, role):
        """One wake of a battery role: measure, send what is due, sleep."""
        self.alive("cycle")
        self.submitted = 0
        sleep_ms = await role.wake()
        measured = time.ticks_ms()
        self.alive("cycle")
        # A new reading (live, or queued behind older ones), an ack, a status: contact now.
        # A backlog alone waits for the role's report time (no radio on measuring-only wakes).
        contact = self.submitted or self.state.acks or self.status_due() or (
            not self.queue.empty() and role.retry_due())
        if contact:
            self.waiting("cycle")
            result = DONE
            if self.status_due():
                result = await self.send_status()
            if result != KEEP:         # no answer to the first try: do not wait twice
                result = await self.flush()
            if self.link.commands or self.state.acks:
                self.run_commands()
                if result != KEEP:
                    await self.flush()   # acknowledge in this wake, not 15 minutes later
            if self.reboot_pending and not self.state.acks:
                self.restart()
            if self.update_active or self.switch_pending:
                await self.update(UPDATE_WAKE_MS)   # in the wakes that use the radio anyway
            self.alive("cycle")
        self._park_outbox()
        self.state.crashes = 0
        # the role's schedule counts from its measurement: the radio's time comes off the sleep
        return max(1000, sleep_ms - time.ticks_diff(time.ticks_ms(), measured))

    async def always_on(self, role):
        """The asyncio app of a mains-powered role: the role's tasks, uplinks, status,
        observation of the command resource, and the watchdog."""
        self.alive("uplink")
        asyncio.create_task(self.watchdog(self.cfg.wdt_s))
        asyncio.create_task(role.run())
        asyncio.create_task(self._observe())
        self.wake.set()
        healthy = False
        while True:
            self.waiting("uplink")
            if self.status_due():
                await self.send_status()
            await self.flush()
            self.alive("uplink")
            if self.reboot_pending and not self.state.acks:
                self.restart()
            if self.update_active or self.switch_pending:
                await self.update(UPDATE_RUN_MS)
            if self.on_trial and self.now_s() > self.cfg.ota_trial_s:
                from app import update
                update.give_up(self, "no answer from the gateway within %d s"
                               % self.cfg.ota_trial_s)
                self.restart("the new release did not prove itself")
            if not healthy and time.ticks_ms() > HEALTHY_S * 1000:
                healthy = True
                self.state.crashes = 0
                self.state.save()
            self.state.save()     # RTC memory: the staged queue survives a crash or reset
            try:
                await asyncio.wait_for_ms(self.wake.wait(), 5000)
            except asyncio.TimeoutError:
                pass
            self.wake.clear()

    async def update(self, budget_ms):
        """Work on an over-the-air update (app/update.py) for about `budget_ms`; when the new
        release is staged, say so in a status frame and reset into it (/bootswitch.py)."""
        from app import update
        if self.update_active and time.ticks_diff(self._update_retry, time.ticks_ms()) <= 0:
            if not await update.step(self, budget_ms) and self.update_active:
                self._update_retry = time.ticks_add(time.ticks_ms(), update.RETRY_S * 1000)
        if self.switch_pending:
            await self.send_status()
            self.restart("switching to release %s" % self.release_staged())

    def release_staged(self):
        ota = bootswitch.load()
        return ota.get("v") if ota else "?"

    async def _observe(self):
        """Observe the command resource (GET /c, RFC 7641) so commands arrive at once."""
        from app import observe
        await observe.run(self)


class Role:
    """What every role shares: its node, its config (reconfigure() hands it a config
    command's new one while it runs) and its bytes in RTC memory."""

    def __init__(self, node):
        self.node = node
        self.reconfigure(node.cfg)

    def reconfigure(self, cfg):
        self.cfg = cfg
        self.configure(cfg.settings)

    def rtc_memory(self):
        """The role's bytes in RTC memory, zeroed on a fresh start (power-on, new layout)."""
        raw = self.node.state.role
        if self.node.state.fresh:
            raw[:] = bytes(len(raw))
        return raw


class BatteryRole(Role):
    """What the battery roles share: the battery read (once per wake), its fault kept in the
    role's RTC flags under the bit ``BATT_FAULT``, and the status frame's record."""
    BATT_FAULT = 0
    batt_mv = None

    def read_batt_mv(self):
        mv = self.node.battery_mv()
        self.flags = (self.flags & ~self.BATT_FAULT) if mv else (self.flags | self.BATT_FAULT)
        return mv

    def status_records(self):
        if self.batt_mv is None:
            self.batt_mv = self.read_batt_mv()
        return [("batt", self.batt_mv)] if self.batt_mv else []
