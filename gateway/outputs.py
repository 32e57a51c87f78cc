"""Messages the gateway derives from frames, besides the SenML JSON on the ``up`` topics.

- **Device state**, retained on ``<prefix>/<site>/<device>/state``: versions, reset cause, boot
  count, battery, RSSI, last seen. Sent on every status frame and otherwise at most every
  ``[mqtt] state_interval_s`` per device.
- **Home Assistant MQTT discovery** (``[outputs] home_assistant``): one retained config message
  per device and quantity under ``<discovery prefix>/sensor|binary_sensor/...``, pointing Home
  Assistant at the ``up`` topic with a template that picks the record.
- **OGC SensorThings** (``[outputs] sensorthings``): each record as an Observation published to
  ``<prefix>/Datastreams('<device>:<name>')/Observations`` (the SensorThings MQTT extension,
  as FROST-Server accepts it); the Things and Datastreams are created on the SensorThings server
  from ``datastreams()``.

Each is switchable; none replaces the SenML JSON contract.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

from gateway.contexts import DeviceInfo
from gateway.senml import Record
from protocol import topics
from protocol.vocabulary import BY_NAME, CONTROL_NAMES

STATUS_NAMES = ("fw", "app", "reset", "boots", "uptime", "heap", "faults", "rssi", "batt", "temp")

_HA_DEVICE_CLASS = {"Cel": "temperature", "mV": "voltage", "lx": "illuminance", "W": "power",
                    "Wh": "energy", "dBm": "signal_strength", "mm": "distance"}
_HA_BINARY_CLASS = {"occ": "occupancy", "pres": "presence", "alarm": "moisture"}


def _dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


class DeviceState:
    """The latest status values of one device (compact: only what the state message shows)."""

    __slots__ = ("values", "last_seen", "last_sent")

    def __init__(self) -> None:
        self.values: dict[str, object] = {}
        self.last_seen = 0.0
        self.last_sent = -1e18

    def update(self, records: list[Record], now: float) -> None:
        self.last_seen = now
        for r in records:
            if r.name in STATUS_NAMES:
                self.values[r.name] = r.published_value()

    def message(self, info: DeviceInfo) -> bytes:
        msg: dict = {"device": info.id, "site": info.site, "role": info.role,
                     "last_seen": round(self.last_seen, 3)}
        for name, value in self.values.items():
            q = BY_NAME[name]
            suffix = "_" + q.unit if q.kind == "v" and q.unit not in ("", "count") else ""
            msg[name + suffix] = value
        return _dumps(msg)


def ha_discovery(prefix: str, discovery_prefix: str, info: DeviceInfo,
                 names: list[str]) -> list[tuple[str, bytes]]:
    """(topic, retained config) per quantity, for Home Assistant's MQTT discovery."""
    up = topics.device(prefix, info.site, info.id, topics.UP)
    device = {"identifiers": ["citytestbed-" + info.id], "name": info.id,
              "model": "citytestbed %s node" % info.role, "manufacturer": "citytestbed",
              "suggested_area": info.site}
    out = []
    for name in names:
        if name in CONTROL_NAMES:
            continue
        q = BY_NAME[name]
        pick = "{%% for r in value_json %%}{%% if r.n == '%s' %%}{{ r.%s }}{%% endif %%}" \
               "{%% endfor %%}" % (name, q.kind)
        config = {"name": name, "unique_id": "%s_%s" % (info.id, name), "state_topic": up,
                  "device": device}
        if q.kind == "vb":
            component = "binary_sensor"
            config.update(value_template="{%% for r in value_json %%}{%% if r.n == '%s' %%}"
                                         "{{ 'ON' if r.vb else 'OFF' }}{%% endif %%}"
                                         "{%% endfor %%}" % name)
            if name in _HA_BINARY_CLASS:
                config["device_class"] = _HA_BINARY_CLASS[name]
        else:
            component = "sensor"
            config["value_template"] = pick
            if q.unit:
                config["unit_of_measurement"] = {"Cel": "°C"}.get(q.unit, q.unit)
                if q.unit in _HA_DEVICE_CLASS:
                    config["device_class"] = _HA_DEVICE_CLASS[q.unit]
        topic = "%s/%s/citytestbed_%s/%s/config" % (discovery_prefix, component,
                                                     info.id.replace("-", "_"), name)
        out.append((topic, _dumps(config)))
    return out


def datastream_id(info: DeviceInfo, name: str) -> str:
    return "%s:%s" % (info.id, name)


def sensorthings(prefix: str, info: DeviceInfo, records: list[Record]) -> list[tuple[str, bytes]]:
    """One SensorThings Observation per record."""
    out = []
    for r in records:
        if r.name in CONTROL_NAMES:
            continue
        when = datetime.fromtimestamp(r.time, timezone.utc).isoformat().replace("+00:00", "Z")
        topic = "%s/Datastreams('%s')/Observations" % (prefix, datastream_id(info, r.name))
        out.append((topic, _dumps({"phenomenonTime": when, "result": r.published_value()})))
    return out


def datastreams(info: DeviceInfo) -> dict:
    """The SensorThings Thing with its Datastreams for one device (to create on the server)."""
    streams = []
    for q in BY_NAME.values():
        if q.name in CONTROL_NAMES or info.role not in q.roles:
            continue
        streams.append({
            "@iot.id": datastream_id(info, q.name),
            "name": "%s %s" % (info.id, q.name),
            "description": q.meaning,
            "observationType": "http://www.opengis.net/def/observationType/OGC-OM/2.0/"
                               + ("OM_TruthObservation" if q.kind == "vb" else
                                  "OM_CategoryObservation" if q.kind == "vs" else
                                  "OM_Measurement"),
            "unitOfMeasurement": {"name": q.unit or q.wire_unit, "symbol": q.unit,
                                  "definition": "urn:ietf:params:senml:units:" + q.unit
                                  if q.unit else ""},
            "ObservedProperty": {"name": q.name, "description": q.meaning,
                                 "definition": "urn:citytestbed:quantity:" + q.name},
            "Sensor": {"name": "citytestbed %s node" % info.role, "description": info.role,
                       "encodingType": "text/plain", "metadata": info.role},
        })
    thing = {"@iot.id": info.id, "name": info.id,
             "description": "citytestbed %s node at site %s" % (info.role, info.site),
             "properties": {"site": info.site, "role": info.role}, "Datastreams": streams}
    if info.street is not None:
        thing["properties"]["street"] = info.street
        thing["properties"]["position_m"] = info.position_m
    return thing
