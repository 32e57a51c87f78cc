# The node core: configuration, network, the OSCORE client, and the main loop
# read -> encode -> POST -> handle the response -> wait.

import gc
import sys
import time

import network

import cbor
import coap
import oscore
import senml
from app import config

APP_VERSION = "0.1.0"
SEQ_FILE = "oscore.seq"
_WIFI_TIMEOUT_MS = 15000


def log(msg):
    print(msg)


def code_text(code):
    return "%d.%02d" % (code >> 5, code & 31)


def wifi_up(cfg):
    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    if not wlan.isconnected():
        wlan.connect(cfg.wifi_ssid, cfg.wifi_psk)
        start = time.ticks_ms()
        while not wlan.isconnected():
            if time.ticks_diff(time.ticks_ms(), start) > _WIFI_TIMEOUT_MS:
                raise OSError("wifi: no connection to %s (status %d)"
                              % (cfg.wifi_ssid, wlan.status()))
            time.sleep_ms(100)
    return wlan


def make_role(cfg):
    if cfg.role == "shaft":
        from app.shaft import Shaft
        return Shaft(cfg)
    raise config.ConfigError(config.E_ROLE, "role %s has no application yet" % cfg.role)


class Node:
    def __init__(self, cfg):
        self.cfg = cfg
        self.boot_ms = time.ticks_ms()
        self.wlan = wifi_up(cfg)
        self.seq = oscore.SeqStore(SEQ_FILE)
        ctx = oscore.Context(cfg.secret, cfg.salt, cfg.sender_id, cfg.recipient_id, self.seq)
        client = coap.Client(cfg.gateway_host, cfg.gateway_port,
                             max_retransmit=cfg.max_retransmit)
        self.client = oscore.SecureClient(client, ctx)
        self.clock_offset = None  # gateway time minus local time, once a response set it
        self.role = make_role(cfg)

    def status_records(self):
        rssi = self.wlan.status("rssi") if self.wlan.isconnected() else None
        uptime_s = time.ticks_diff(time.ticks_ms(), self.boot_ms) // 1000
        gc.collect()
        records = [("fw", "%d.%d.%d" % sys.implementation.version[:3]),
                   ("app", APP_VERSION), ("uptime", uptime_s), ("heap", gc.mem_free())]
        if rssi is not None:
            records.append(("rssi", rssi))
        return records

    def send(self, path, records):
        """POST records; return the response code. Raises on no answer or OSCORE failure."""
        # A live reading carries no time: the gateway stamps it on receipt (protocol.md §3).
        payload = senml.encode(records)
        code, body = self.client.post(path, payload)
        if code == coap.CHANGED and body:
            self.handle_envelope(body)
        return code

    def handle_envelope(self, body):
        try:
            envelope = cbor.loads(body)
        except ValueError:
            log("gateway sent an unreadable envelope")
            return
        if isinstance(envelope, dict):
            gw_time = envelope.get(1)
            if isinstance(gw_time, int):
                self.clock_offset = gw_time - int(time.time())

    def try_send(self, path, records):
        what = " ".join("%s=%s" % (r[0], r[1]) for r in records)
        try:
            code = self.send(path, records)
        except coap.Timeout:
            log("%s %s -> no answer from %s:%d" % (path, what, self.cfg.gateway_host,
                                                   self.cfg.gateway_port))
            return None
        except oscore.UnprotectedResponse as e:
            log("%s %s -> %s %s (check provisioning)" % (path, what, code_text(e.code),
                                                        bytes(e.diagnostic).decode()))
            return None
        except (oscore.OscoreError, OSError) as e:
            log("%s %s -> error %r" % (path, what, e))
            return None
        log("%s %s -> %s" % (path, what, code_text(code)))
        return code

    def run(self):
        log("node %s (%s, site %s) app %s, gateway %s:%d, every %d s" % (
            self.cfg.id, self.cfg.role, self.cfg.site, APP_VERSION, self.cfg.gateway_host,
            self.cfg.gateway_port, self.cfg.interval_s))
        self.try_send("s", self.status_records())
        while True:
            self.try_send("u", self.role.measure())
            time.sleep(self.cfg.interval_s)


def main():
    try:
        cfg = config.load()
    except config.ConfigError as e:
        log("config error %d: %s" % (e.code, e))
        return e.code
    Node(cfg).run()
