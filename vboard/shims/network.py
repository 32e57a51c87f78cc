# `network` for firmware on the MicroPython unix VM: the ESP32 port's names and status codes.
#
# Traffic goes over the host's loopback; the radio is not modelled. On a virtual board the
# WLAN state lives in the board process (vboard/hardware/wifi.py): connect() takes wifi_connect_s of
# simulated time, and while the world makes the WiFi "lost" isconnected() is False and status()
# is STAT_CONNECTING (the port keeps reconnecting) until the link is back. Losing the link does
# not stop sockets here: a test that needs the packets lost too puts a UDP relay between node
# and gateway (testbed/netem.py) and sets its `down` flag for as long as the loss lasts
# (BoardHardware.wifi_listeners tells of losses, e.g. to drive such a relay).
# Without a board (VBOARD_BUS unset) connect() succeeds at once and the link never drops.
import _vbus

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
_call = _vbus.call
_board = _vbus.connected
_hostname = ["esp32"]


def hostname(name=None):
    if name is None:
        return _hostname[0]
    _hostname[0] = name


class WLAN:
    PM_NONE = 0
    PM_PERFORMANCE = 1
    PM_POWERSAVE = 2
    _state = {}

    def __init__(self, interface_id=STA_IF):
        self._if = interface_id
        s = WLAN._state.setdefault(interface_id, {"active": False, "status": STAT_IDLE})
        self._s = s

    def _sta_board(self):
        return _board and self._if == STA_IF

    def active(self, is_active=None):
        # like the port, returns whether the interface is active (also after setting it)
        if self._sta_board():
            return _call("wlan_active", None if is_active is None else bool(is_active))
        if is_active is not None:
            self._s["active"] = bool(is_active)
            if not is_active:
                self._s["status"] = STAT_IDLE
        return self._s["active"]

    def connect(self, ssid=None, key=None, *, bssid=None):
        if self._sta_board():
            _call("wlan_connect", ssid)
            return
        if not self._s["active"]:
            raise OSError("Wifi Not Started")
        self._s["status"] = STAT_GOT_IP

    def disconnect(self):
        if self._sta_board():
            _call("wlan_disconnect")
            return
        self._s["status"] = STAT_IDLE

    def isconnected(self):
        return self.status() == STAT_GOT_IP

    def status(self, param=None):
        if param == "rssi":
            if self._sta_board():
                return _call("wlan_rssi")
            if not self.isconnected():
                raise OSError("STA must be connected")
            return _RSSI_DBM
        if param is not None:
            raise ValueError("unknown status param")
        if self._sta_board():
            return _call("wlan_status")
        return self._s["status"]

    def ifconfig(self, config=None):
        if config is None:
            return ("127.0.0.1", "255.0.0.0", "127.0.0.1", "127.0.0.1")
        return None

    def config(self, *args, **kwargs):
        if args == ("mac",):
            mac = _vbus.mac
            if self._if == AP_IF:     # the port's AP MAC is the base MAC + 1
                mac = mac[:5] + bytes(((mac[5] + 1) & 0xFF,))
            return mac
        if args == ("hostname",) or args == ("dhcp_hostname",):
            return _hostname[0]
        if args:
            raise ValueError("unknown config param")
        if "hostname" in kwargs:
            _hostname[0] = kwargs["hostname"]
        return None

    def scan(self):
        return []
