# The node's configuration: /config.json, written at provisioning (fleet/nodeconfig.py makes it).
#
# load() validates it once and returns a Config; a problem raises ConfigError whose `code` is a
# small integer the node prints on its console and reports in its status frame (faults >> 16),
# so a field engineer can tell a missing key from a bad secret without a debugger.
# docs/firmware.md lists every key with its type, range and default.

import json
from micropython import const

PATH = "config.json"

# Status codes (docs/firmware.md, docs/field-guide.md).
E_MISSING = const(10)    # no config.json: the node was not provisioned
E_SYNTAX = const(11)     # config.json is not valid JSON
E_FIELD = const(12)      # a required field is missing or has the wrong type
E_ROLE = const(13)       # unknown role
E_OSCORE = const(14)     # OSCORE material malformed
E_RANGE = const(15)      # a value is outside its allowed range
E_VERSION = const(16)    # written for a newer config format than this firmware reads

VERSION = const(1)
ROLES = ("lighting", "parking", "shaft")
BATTERY_ROLES = ("parking", "shaft")

# Optional top-level keys: key -> (default for mains, default for battery, low, high).
# interval_s: lighting's periodic report; shaft's normal report; parking's heartbeat.
TOP = {
    "interval_s": (60, 900, 1, 86400),
    "max_retransmit": (4, 2, 0, 4),
    "ack_timeout_ms": (2000, 2000, 200, 10000),
    "status_s": (3600, 21600, 10, 604800),
    "wdt_s": (60, 60, 5, 3600),
    "safe_wdt_s": (600, 600, 30, 3600),
    "safe_after": (3, 3, 1, 20),
    "safe_awake_s": (300, 300, 10, 3600),
    "queue_kb": (32, 32, 4, 256),
    "queue_stage": (384, 384, 0, 1024),
    "wifi_timeout_s": (20, 10, 1, 120),
    "ota_trial_boots": (3, 3, 1, 20),      # boots a new app may take to reach the gateway
    "ota_trial_s": (600, 600, 60, 86400),  # ... and seconds, before it is rolled back
}

# Role settings: config["<role>"]["<key>"], also settable with the `config` command as
# "<role>.<key>". key -> (default, low, high) for integers, (default, choices) for texts.
ROLE_KEYS = {
    "lighting": {
        "dusk_lux": (20, 0, 100000),       # darker than this: night (lamp on)
        "dawn_lux": (60, 0, 100000),       # brighter than this: day (lamp off)
        "night_pct": (20, 0, 100),         # floor level at night
        "full_pct": (100, 0, 100),         # level with presence
        "hold_s": (60, 0, 3600),           # full level held after the last presence
        "ramp_ms": (1500, 0, 60000),       # ramp time of a level change
        "lux_s": (10, 1, 3600),            # ambient light sample period
        "power_s": (10, 1, 3600),          # power (INA219) sample period
        "fail_mw": (1500, 0, 1000000),     # less power than this while on: lamp failure
        "fail_lux": (2, 0, 100000),        # no INA219: less light than this at >= 50 %: failure
        "fail_checks": (3, 1, 100),        # consecutive failed checks before the alarm
        "pwm_hz": (1000, 100, 40000),
        "safe_pct": (100, 0, 100),         # lamp level in safe mode (fail-safe: lit)
    },
    "parking": {
        "sample_s": (10, 1, 3600),         # magnetometer sample period, quiet
        "fast_s": (2, 1, 600),             # sample period while a change is being confirmed
        "debounce": (3, 1, 20),            # consecutive agreeing, settled samples to decide
        "on_nt": (10000, 100, 1000000),    # field change above this: occupied
        "off_nt": (5000, 100, 1000000),    # field change below this: empty
        "settle_nt": (1500, 10, 1000000),  # sample-to-sample change of a settled field
        "drift_nt": (3000, 0, 1000000),    # empty and closer than this: baseline follows
        "drift_shift": (6, 0, 12),         # baseline += error >> shift per sample (0: off)
        "cal_samples": (8, 1, 64),
    },
    "shaft": {
        "depth_mm": (3000, 100, 30000),    # sensor (in the lid) to the shaft floor
        "alarm_mm": (2000, 0, 30000),      # level at or above: alarm
        "alarm_hyst_mm": (100, 0, 5000),   # alarm clears below alarm_mm - this
        "sample_s": (300, 10, 86400),      # measure (without radio) this often
        "fast_s": (60, 10, 3600),          # measure and report this often when fast
        "fast_rise_mm": (20, 1, 10000),    # rise (mm per minute) that makes reporting fast
        "fast_margin_mm": (200, 0, 30000), # fast already this far below the alarm level
        "samples": (7, 3, 15),             # echoes per measurement
        "agree_mm": (30, 5, 1000),         # echoes within this of each other agree
        "spike_mm": (300, 50, 30000),      # a jump larger than this needs a confirmation
        "max_rise_mm": (200, 10, 100000),  # faster rises (mm/min) are not physical: confirm
        "temp_offset_cc": (2500, -5000, 10000),  # die above air temperature after wake
        "mode": ("pulse", ("pulse", "uart")),
    },
}

# GPIOs per role, as boards/definitions.py has them for the DevKitC; config "pins" overrides.
PINS = {
    "lighting": {"i2c_scl": 22, "i2c_sda": 21, "radar_tx": 17, "radar_rx": 16,
                 "radar_out": 27, "pwm_led": 25},
    "parking": {"i2c_scl": 22, "i2c_sda": 21, "mag_drdy": 34, "batt_adc": 35},
    "shaft": {"sonar_tx": 17, "sonar_rx": 16, "sonar_trig": 5, "sonar_echo": 18,
              "temp_1wire": 4, "batt_adc": 35, "sensor_power": 26},
}


class ConfigError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def _need(d, key, kind, where):
    v = d.get(key)
    if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
        raise ConfigError(E_FIELD, "%s.%s missing or not %s" % (where, key, kind.__name__))
    return v


def _hex(d, key, size, where):
    s = _need(d, key, str, where)
    try:
        b = bytes.fromhex(s)
    except ValueError:
        raise ConfigError(E_OSCORE, "%s.%s is not hex" % (where, key))
    if size is not None and len(b) != size:
        raise ConfigError(E_OSCORE, "%s.%s must be %d bytes" % (where, key, size))
    return b


def check_value(spec, key, value):
    """The value of `key` checked against its spec; ConfigError when it does not fit."""
    if isinstance(spec[1], tuple):               # a text with choices
        if not isinstance(value, str) or value not in spec[1]:
            raise ConfigError(E_RANGE, "%s must be one of %s" % (key, ", ".join(spec[1])))
        return value
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(E_FIELD, "%s must be an integer" % key)
    if not spec[-2] <= value <= spec[-1]:
        raise ConfigError(E_RANGE, "%s must be %d..%d, not %d" % (key, spec[-2], spec[-1], value))
    return value


class Config:
    """The validated configuration: attributes only (no methods), so a node can drop this
    module from its heap after boot (app/run.py) while it keeps the settings."""


def parse(d, network_only=False):
    """Validate `d` (config.json's object) into a Config. With network_only, only what talking
    to the gateway needs must be valid (keys with a wrong value take their defaults, no role
    settings): safe mode runs on that, to report a configuration error and take the `config`
    command that fixes it."""
    c = Config()
    c.raw = d
    version = d.get("v", VERSION)
    if not isinstance(version, int) or version > VERSION:
        raise ConfigError(E_VERSION, "config format %r is newer than this firmware (%d)"
                          % (version, VERSION))
    c.id = _need(d, "id", str, "config")
    c.role = _need(d, "role", str, "config")
    if c.role not in ROLES:
        if not network_only:
            raise ConfigError(E_ROLE, "role %s unknown" % c.role)
        c.role = "lighting"
    c.battery = c.role in BATTERY_ROLES
    c.site = _need(d, "site", str, "config")
    gw = _need(d, "gateway", dict, "config")
    c.gateway_host = _need(gw, "host", str, "gateway")
    c.gateway_port = _need(gw, "port", int, "gateway")
    if not 1 <= c.gateway_port <= 65535:
        raise ConfigError(E_RANGE, "gateway.port must be 1..65535")
    wifi = d.get("wifi") or {}
    if not isinstance(wifi, dict):
        raise ConfigError(E_FIELD, "config.wifi must be an object")
    c.wifi_ssid = wifi.get("ssid", "")
    c.wifi_psk = wifi.get("psk", "")
    if not isinstance(c.wifi_ssid, str) or not isinstance(c.wifi_psk, str):
        raise ConfigError(E_FIELD, "wifi.ssid and wifi.psk must be texts")
    osc = _need(d, "oscore", dict, "config")
    c.sender_id = _hex(osc, "sid", 2, "oscore")
    c.recipient_id = _hex(osc, "rid", 0, "oscore")
    c.secret = _hex(osc, "secret", 16, "oscore")
    c.salt = _hex(osc, "salt", 8, "oscore")
    # The fleet's public release key (an update's manifest must carry its signature). Written
    # at provisioning only: no `config` command can set it. Absent: updates are refused.
    c.release_key = None
    if d.get("release_key") is not None:
        key = d["release_key"]
        try:
            c.release_key = bytes.fromhex(key) if isinstance(key, str) else None
        except ValueError:
            pass
        if c.release_key is None or len(c.release_key) != 65 or c.release_key[0] != 4:
            c.release_key = None
            if not network_only:
                raise ConfigError(E_FIELD, "release_key must be 130 hex digits (04 X Y)")
    column = 1 if c.battery else 0
    for key in TOP:
        spec = TOP[key]
        value = d.get(key, spec[column])
        try:
            setattr(c, key, check_value(spec, key, value))
        except ConfigError:
            if not network_only:
                raise
            setattr(c, key, spec[column])
    c.sleep = d.get("sleep", "deep")
    if c.sleep not in ("deep", "light"):
        if not network_only:
            raise ConfigError(E_RANGE, "sleep must be deep or light")
        c.sleep = "deep"
    c.pins = dict(PINS[c.role])
    if network_only:
        c.settings = {}
        return c
    pins = d.get("pins") or {}
    if not isinstance(pins, dict):
        raise ConfigError(E_FIELD, "config.pins must be an object")
    for name in pins:
        c.pins[name] = check_value((0, 0, 39), "pins." + name, pins[name])
    c.settings = _role_settings(d, c.role)
    return c


def _role_settings(d, role):
    """The role's settings with defaults filled in; wrong types or ranges raise."""
    own = d.get(role) or {}
    if not isinstance(own, dict):
        raise ConfigError(E_FIELD, "config.%s must be an object" % role)
    keys = ROLE_KEYS[role]
    out = {}
    for key in keys:
        spec = keys[key]
        out[key] = check_value(spec, role + "." + key, own.get(key, spec[0]))
    for key in own:
        if key not in keys:
            print("config: %s.%s is not a setting of this firmware; ignored" % (role, key))
    return out


def settable(role, key, value):
    """Check one `config` command key ("interval_s" or "<role>.<key>"); return (section, key,
    value) with section None for a top-level key. Raises ConfigError."""
    if key in TOP:
        return None, key, check_value(TOP[key], key, value)
    dot = key.find(".")
    section, name = key[:dot], key[dot + 1:]
    if dot < 0 or section != role or name not in ROLE_KEYS[role]:
        raise ConfigError(E_FIELD, "%s is not a setting of a %s node" % (key, role))
    return section, name, check_value(ROLE_KEYS[role][name], key, value)


def load(path=PATH, network_only=False):
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        raise ConfigError(E_MISSING, "%s not found: provision this node" % path)
    try:
        d = json.loads(text)
    except ValueError:
        raise ConfigError(E_SYNTAX, "%s is not valid JSON" % path)
    if not isinstance(d, dict):
        raise ConfigError(E_SYNTAX, "%s must hold an object" % path)
    return parse(d, network_only)


def update(changes, path=PATH):
    """Write `changes` [(section or None, key, value)] into config.json: a new file, renamed
    over the old one, so a power cut leaves the old or the new file, never half of one."""
    with open(path) as f:
        d = json.loads(f.read())
    for section, key, value in changes:
        if section is None:
            d[key] = value
        else:
            sub = d.get(section)
            if not isinstance(sub, dict):
                sub = d[section] = {}
            sub[key] = value
    parse(d)     # refuse to write a file that would not load
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(d))
    import os
    os.rename(tmp, path)
