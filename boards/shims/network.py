# `network` for firmware on the MicroPython unix VM: the ESP32 port's names and status codes.
# Traffic goes over the host's loopback; the "radio" is always in range unless the board's
# world model says otherwise (the virtual board extends this).

STA_IF = 0
AP_IF = 1
STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010
STAT_BEACON_TIMEOUT = 200
STAT_NO_AP_FOUND = 201
STAT_WRONG_PASSWORD = 202
STAT_ASSOC_FAIL = 203
STAT_HANDSHAKE_TIMEOUT = 204

_RSSI_DBM = -61


class WLAN:
    _state = {}

    def __init__(self, interface_id=STA_IF):
        self._if = interface_id
        s = WLAN._state.setdefault(interface_id, {"active": False, "status": STAT_IDLE})
        self._s = s

    def active(self, is_active=None):
        if is_active is None:
            return self._s["active"]
        self._s["active"] = bool(is_active)
        if not is_active:
            self._s["status"] = STAT_IDLE
        return None

    def connect(self, ssid=None, key=None, *, bssid=None):
        if not self._s["active"]:
            raise OSError("Wifi Not Started")
        self._s["status"] = STAT_GOT_IP

    def disconnect(self):
        self._s["status"] = STAT_IDLE

    def isconnected(self):
        return self._s["status"] == STAT_GOT_IP

    def status(self, param=None):
        if param == "rssi":
            if not self.isconnected():
                raise OSError("STA must be connected")
            return _RSSI_DBM
        if param is not None:
            raise ValueError("unknown status param")
        return self._s["status"]

    def ifconfig(self, config=None):
        if config is None:
            return ("127.0.0.1", "255.0.0.0", "127.0.0.1", "127.0.0.1")
        return None

    def config(self, *args, **kwargs):
        if args == ("mac",):
            return b"\x24\x0a\xc4\x00\x00\x01"
        if args:
            raise ValueError("unknown config param")
        return None

    def scan(self):
        return []
