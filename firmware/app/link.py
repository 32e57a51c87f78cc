# The node's link to its gateway: WiFi, the OSCORE-protected CoAP client, the downlink envelope
# (gateway time and commands, protocol.md §2) and the clock set from it.

from micropython import const
import time
import asyncio
import machine
import network

import cbor
import coap
import oscore
from app import state as st

SEQ_FILE = "oscore.seq"
EPOCH_2000 = const(946684800)     # the ESP32's time() counts from 2000-01-01
CLOCK_SLACK_S = const(2)          # closer than this to the gateway's time: leave the clock
_ENV_TIME = const(1)
_ENV_COMMANDS = const(2)
_ENV_OBSERVING = const(3)

# Outcome of a send (protocol.md §6)
DONE = const(0)       # 2.04: delivered
DROP = const(1)       # delivered badly (4.00, 4.02): resending cannot help
KEEP = const(2)       # not delivered: keep the frame, retry next cycle
WAIT = const(3)       # 5.03: keep, retry after link.retry_after_s


def code_text(code):
    return "%d.%02d" % (code >> 5, code & 31)


def local_now():
    return time.time()


class Link:
    def __init__(self, cfg, state, log):
        self.cfg = cfg
        self.state = state
        self.log = log
        self.wlan = network.WLAN(network.STA_IF)
        self.seq = oscore.SeqStore(SEQ_FILE)
        self.context = oscore.Context(cfg.secret, cfg.salt, cfg.sender_id, cfg.recipient_id,
                                      self.seq)
        self._client = None
        self.commands = []            # [id, name, args] from the last envelopes, not yet run
        self.observing = None         # the gateway's key 3 in the last envelope (None: absent)
        self.retry_after_s = 0
        self.bad_frames = 0           # 4.00 answers: dropped frames (status)
        self.version_mismatch = False  # 4.04/4.05: gateway does not know our resource
        self.sent = 0
        self.radio = False            # the radio was used this wake

    # --- WiFi -------------------------------------------------------------------------------

    async def up(self):
        """Associate (if not already); False after wifi_timeout_s."""
        wlan = self.wlan
        self.radio = True
        if wlan.isconnected():
            return True
        wlan.active(True)
        try:
            wlan.connect(self.cfg.wifi_ssid, self.cfg.wifi_psk)
        except OSError as e:
            self.log("wifi: connect failed: %s" % e)
            return False
        start = time.ticks_ms()
        limit = self.cfg.wifi_timeout_s * 1000
        while not wlan.isconnected():
            if time.ticks_diff(time.ticks_ms(), start) > limit:
                self.log("wifi: no connection to %r (status %d)" % (self.cfg.wifi_ssid,
                                                                  wlan.status()))
                return False
            await asyncio.sleep_ms(50)
        return True

    def connected(self):
        return self.wlan.isconnected()

    def rssi(self):
        try:
            return self.wlan.status("rssi") if self.wlan.isconnected() else None
        except OSError:
            return None

    def down(self):
        """Radio off (battery roles, before deep sleep)."""
        self.close()
        self.wlan.active(False)

    def client(self):
        if self._client is None:
            udp = coap.Client(self.cfg.gateway_host, self.cfg.gateway_port,
                              ack_timeout_ms=self.cfg.ack_timeout_ms,
                              max_retransmit=self.cfg.max_retransmit)
            self._client = oscore.SecureClient(udp, self.context)
        return self._client

    def close(self):
        if self._client is not None:
            self._client.client.close()
            self._client = None

    # --- requests -----------------------------------------------------------------------------

    async def post(self, path, payload):
        """POST a SenML-CBOR payload to /u or /s; return DONE, DROP, KEEP or WAIT."""
        if not await self.up():
            return KEEP
        try:
            code, options, body = await self.client().arequest(coap.POST, path, payload)
        except coap.Timeout:
            self.log("%s: no answer from %s:%d" % (path, self.cfg.gateway_host,
                                                   self.cfg.gateway_port))
            self.close()        # a new socket next time (the network may have changed)
            return KEEP
        except oscore.UnprotectedResponse as e:
            # the diagnostic is the sender's text, unauthenticated: shown, never decoded
            self.log("%s: %s %r (provisioning?)" % (path, code_text(e.code),
                                                    bytes(e.diagnostic)))
            if e.code == coap.BAD_OPTION:
                self.bad_frames += 1
                return DROP
            return KEEP
        except (oscore.OscoreError, OSError) as e:
            self.log("%s: %r" % (path, e))
            self.close()
            return KEEP
        self.sent += 1
        if code == coap.CHANGED:
            self.envelope(body)
            return DONE
        self.log("%s: %s" % (path, code_text(code)))
        if code == coap.BAD_REQUEST or code == coap.BAD_OPTION:
            self.bad_frames += 1
            return DROP
        if code == coap.NOT_FOUND or code == coap.METHOD_NOT_ALLOWED:
            self.version_mismatch = True
            return KEEP
        if code == coap.SERVICE_UNAVAILABLE:
            age = coap.option(options, coap.MAX_AGE)
            self.retry_after_s = coap.decode_uint(age) if age is not None else 60
            return WAIT
        return KEEP

    def envelope(self, body):
        """Take the gateway's time and commands from a downlink envelope (protocol.md §2)."""
        if not body:
            return
        try:
            env = cbor.loads(body)
        except ValueError:
            self.log("gateway sent an unreadable envelope")
            return
        if not isinstance(env, dict):
            return
        gw_time = env.get(_ENV_TIME)
        if isinstance(gw_time, int) and gw_time > EPOCH_2000:
            self.set_clock(gw_time)
        self.observing = env.get(_ENV_OBSERVING) is True
        cmds = env.get(_ENV_COMMANDS)
        if isinstance(cmds, list):
            for cmd in cmds:
                if (isinstance(cmd, list) and len(cmd) == 3 and isinstance(cmd[0], int)
                        and isinstance(cmd[1], str)):
                    if not any(c[0] == cmd[0] for c in self.commands):
                        self.commands.append(cmd)

    # --- clock ------------------------------------------------------------------------------

    def set_clock(self, unix_s):
        state = self.state
        local = unix_s - EPOCH_2000
        now = local_now()
        if state.flags & st.SYNCED and abs(local - now) < CLOCK_SLACK_S:
            return
        t = time.gmtime(local)
        machine.RTC().datetime((t[0], t[1], t[2], t[6], t[3], t[4], t[5], 0))
        if not state.flags & st.SYNCED:
            state.shift = local - now    # readings queued before now: convert with this
            state.flags |= st.SYNCED
            self.log("clock set from the gateway (moved %+d s)" % state.shift)

    def synced(self):
        return bool(self.state.flags & st.SYNCED)

    def unix_time(self, t_local, session):
        """A queued reading's local time as Unix time; None when it cannot be known (taken
        before a power cut, with the clock never set in that session)."""
        if session != self.state.session & 0xFF:
            return None
        if self.synced():
            return t_local + self.state.shift + EPOCH_2000
        return None
