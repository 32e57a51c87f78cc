# The node's configuration: /config.json, written at provisioning (fleet/nodeconfig.py makes it).
#
# load() validates it once and returns a Config; a problem raises ConfigError whose `code` is a
# small integer the node blinks / prints / reports, so a field engineer can tell a missing key
# from a bad secret without a debugger.

import json
from micropython import const

PATH = "config.json"

# Status codes (also in docs/field-guide and printed on the console).
E_MISSING = const(10)    # no config.json: the node was not provisioned
E_SYNTAX = const(11)     # config.json is not valid JSON
E_FIELD = const(12)      # a required field is missing or has the wrong type
E_ROLE = const(13)       # unknown role
E_OSCORE = const(14)     # OSCORE material malformed

ROLES = ("lighting", "parking", "shaft")


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


class Config:
    def __init__(self, d):
        self.raw = d
        self.id = _need(d, "id", str, "config")
        self.role = _need(d, "role", str, "config")
        if self.role not in ROLES:
            raise ConfigError(E_ROLE, "role %s unknown" % self.role)
        self.site = _need(d, "site", str, "config")
        gw = _need(d, "gateway", dict, "config")
        self.gateway_host = _need(gw, "host", str, "gateway")
        self.gateway_port = _need(gw, "port", int, "gateway")
        wifi = d.get("wifi") or {}
        self.wifi_ssid = wifi.get("ssid", "")
        self.wifi_psk = wifi.get("psk", "")
        osc = _need(d, "oscore", dict, "config")
        self.sender_id = _hex(osc, "sid", 2, "oscore")
        self.recipient_id = _hex(osc, "rid", 0, "oscore")
        self.secret = _hex(osc, "secret", 16, "oscore")
        self.salt = _hex(osc, "salt", 8, "oscore")
        self.interval_s = _need(d, "interval_s", int, "config")
        if self.interval_s < 1:
            raise ConfigError(E_FIELD, "interval_s must be at least 1")
        self.max_retransmit = d.get("max_retransmit", 4)

    def section(self, name):
        """A role's own settings (e.g. config["shaft"]), {} when absent."""
        s = self.raw.get(name)
        return s if isinstance(s, dict) else {}


def load(path=PATH):
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
    return Config(d)
