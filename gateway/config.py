"""Gateway configuration: one TOML file, validated once into frozen dataclasses.

Minimal file::

    [coap]
    bind = "0.0.0.0"
    port = 5683

    [mqtt]
    url = "mqtt://127.0.0.1:1883"
    prefix = "city"

    [registry]
    url = "sqlite:////var/lib/citytestbed/fleet.db"
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.errors import ConfigError


@dataclass(frozen=True)
class CoapConfig:
    bind: str = "0.0.0.0"
    port: int = 5683


@dataclass(frozen=True)
class MqttConfig:
    url: str = "mqtt://127.0.0.1:1883"
    prefix: str = "city"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    publish_timeout_s: float = 5.0

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 1883


@dataclass(frozen=True)
class RegistryConfig:
    url: str = "sqlite:///fleet.db"
    # How often an unknown key id may trigger a registry look-up (new devices appear without a
    # restart, but a flood of bogus key ids cannot hammer the database).
    refresh_interval_s: float = 2.0


@dataclass(frozen=True)
class HttpConfig:
    bind: str = "127.0.0.1"
    port: int = 0  # 0: no metrics endpoint


@dataclass(frozen=True)
class GatewayConfig:
    id: str = "gw-1"
    state_dir: Path = Path("gateway-state")
    coap: CoapConfig = CoapConfig()
    mqtt: MqttConfig = MqttConfig()
    registry: RegistryConfig = RegistryConfig()
    http: HttpConfig = HttpConfig()
    log_level: str = "info"


def _section(data: dict, name: str, allowed: set[str], where: str) -> dict[str, Any]:
    section = data.get(name, {})
    if not isinstance(section, dict):
        raise ConfigError("%s: [%s] must be a table" % (where, name))
    unknown = set(section) - allowed
    if unknown:
        raise ConfigError("%s: unknown key(s) in [%s]: %s (allowed: %s)"
                          % (where, name, ", ".join(sorted(unknown)), ", ".join(sorted(allowed))))
    return section


def _typed(section: dict, key: str, kind: type, default: Any, where: str) -> Any:
    value = section.get(key, default)
    if value is None or isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    raise ConfigError("%s: %s must be %s, not %r" % (where, key, kind.__name__, value))


def _port(value: int, key: str, where: str, *, allow_zero: bool = False) -> int:
    if not (0 if allow_zero else 1) <= value <= 65535:
        raise ConfigError("%s: %s must be a port number 1-65535, not %d" % (where, key, value))
    return value


def _address(value: str, key: str, where: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ConfigError("%s: %s must be an IP address such as 0.0.0.0 or ::, not %r"
                          % (where, key, value)) from None
    return value


def parse(data: dict, where: str = "config") -> GatewayConfig:
    top_allowed = {"gateway", "coap", "mqtt", "registry", "http", "log"}
    unknown = set(data) - top_allowed
    if unknown:
        raise ConfigError("%s: unknown section(s) %s (allowed: %s)"
                          % (where, ", ".join(sorted(unknown)), ", ".join(sorted(top_allowed))))
    gw = _section(data, "gateway", {"id", "state_dir"}, where)
    coap = _section(data, "coap", {"bind", "port"}, where)
    mqtt = _section(data, "mqtt", {"url", "prefix", "username", "password",
                                   "publish_timeout_s"}, where)
    reg = _section(data, "registry", {"url", "refresh_interval_s"}, where)
    http = _section(data, "http", {"bind", "port"}, where)
    log = _section(data, "log", {"level"}, where)

    for name, section, keys in (("coap", coap, ("bind", "port")), ("mqtt", mqtt, ("url", "prefix")),
                                ("registry", reg, ("url",))):
        missing = [k for k in keys if k not in section]
        if missing:
            raise ConfigError("%s: [%s] needs %s" % (where, name, ", ".join(missing)))

    mqtt_url = _typed(mqtt, "url", str, None, where + " [mqtt]")
    parts = urlsplit(mqtt_url)
    if parts.scheme != "mqtt" or not parts.hostname:
        raise ConfigError("%s: [mqtt] url must look like mqtt://host:port, not %r"
                          % (where, mqtt_url))
    try:
        parts.port
    except ValueError:
        raise ConfigError("%s: [mqtt] url has an invalid port: %r" % (where, mqtt_url)) from None
    prefix = _typed(mqtt, "prefix", str, None, where + " [mqtt]")
    if not prefix or any(c in prefix for c in "#+") or prefix.startswith("/") \
            or prefix.endswith("/"):
        raise ConfigError("%s: [mqtt] prefix must be a topic prefix without wildcards or "
                          "leading/trailing '/', not %r" % (where, prefix))
    level = _typed(log, "level", str, "info", where + " [log]").lower()
    if level not in ("debug", "info", "warning", "error"):
        raise ConfigError("%s: [log] level must be debug, info, warning or error" % where)

    return GatewayConfig(
        id=_typed(gw, "id", str, "gw-1", where + " [gateway]"),
        state_dir=Path(_typed(gw, "state_dir", str, "gateway-state", where + " [gateway]")),
        coap=CoapConfig(
            bind=_address(_typed(coap, "bind", str, None, where), "[coap] bind", where),
            port=_port(_typed(coap, "port", int, None, where + " [coap]"), "[coap] port", where)),
        mqtt=MqttConfig(
            url=mqtt_url, prefix=prefix,
            username=_typed(mqtt, "username", str, None, where + " [mqtt]"),
            password=_typed(mqtt, "password", str, None, where + " [mqtt]"),
            publish_timeout_s=_typed(mqtt, "publish_timeout_s", float, 5.0, where + " [mqtt]")),
        registry=RegistryConfig(
            url=_typed(reg, "url", str, None, where + " [registry]"),
            refresh_interval_s=_typed(reg, "refresh_interval_s", float, 2.0,
                                      where + " [registry]")),
        http=HttpConfig(
            bind=_address(_typed(http, "bind", str, "127.0.0.1", where), "[http] bind", where),
            port=_port(_typed(http, "port", int, 0, where + " [http]"), "[http] port", where,
                       allow_zero=True)),
        log_level=level,
    )


def load(path: Path) -> GatewayConfig:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError("cannot read the configuration %s: %s" % (path, exc.strerror)) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("%s is not valid TOML: %s" % (path, exc)) from None
    return parse(data, str(path))
