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

Every other section and key is optional; docs/gateway.md lists them all with their defaults.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url

from gateway.errors import ConfigError
from registry.db import shown_url


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
    # A publish not acknowledged (PUBACK) within this time counts the connection as dead.
    publish_timeout_s: float = 5.0
    keepalive_s: int = 30
    # TLS: used for mqtts:// URLs. Without ca_file the system's trust store verifies the broker.
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    max_inflight: int = 2000          # QoS-1 publishes awaiting PUBACK
    stats_interval_s: float = 60.0    # <prefix>/gateway/<id>/stats; 0 turns it off
    state_interval_s: float = 300.0   # least time between two retained device states

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or (8883 if self.tls else 1883)


@dataclass(frozen=True)
class RegistryConfig:
    url: str = "sqlite:///fleet.db"
    # How often an unknown key id may trigger a registry look-up (new devices appear without a
    # restart, but a flood of bogus key ids cannot hammer the database).
    refresh_interval_s: float = 2.0

    @property
    def password(self) -> str | None:
        return make_url(self.url).password

    @property
    def shown(self) -> str:
        """The URL as logs and messages show it: without the database password."""
        return shown_url(self.url)


@dataclass(frozen=True)
class HttpConfig:
    bind: str = "127.0.0.1"
    port: int = 0  # 0: no metrics endpoint


@dataclass(frozen=True)
class SpoolConfig:
    max_rows: int = 2_000_000
    max_mb: int = 1024
    max_age_s: float = 7 * 86400.0
    when_full: str = "reject"     # "reject": nodes get 5.03 and keep the reading;
    #                               "drop_oldest": the oldest spooled readings make room
    commit_delay_ms: float = 2.0  # an idle gateway gathers frames this long per commit


@dataclass(frozen=True)
class DownlinkConfig:
    max_pending: int = 8            # per device; more are refused
    default_ttl_s: float = 3600.0
    max_ttl_s: float = 7 * 86400.0
    observe_refresh_s: float = 60.0  # a notification at least this often to each observer


@dataclass(frozen=True)
class NeighboursConfig:
    enabled: bool = False
    distance_m: float = 60.0
    level: int = 100
    hold_s: int = 30
    min_interval_s: float = 5.0     # least time between two boosts of the same lamp


@dataclass(frozen=True)
class FilesConfig:
    dir: Path | None = None          # default: <state_dir>/files
    source: Path | None = None       # the fleet's release store (a directory); None: none
    sync_interval_s: float = 300.0
    block_size: int = 512            # largest Block2 size served (16..1024, a power of two)


@dataclass(frozen=True)
class OutputsConfig:
    device_state: bool = True
    home_assistant: bool = False
    home_assistant_prefix: str = "homeassistant"
    sensorthings: bool = False
    sensorthings_prefix: str = "v1.1"


@dataclass(frozen=True)
class GatewayConfig:
    id: str = "gw-1"
    state_dir: Path = Path("gateway-state")
    coap: CoapConfig = CoapConfig()
    mqtt: MqttConfig = MqttConfig()
    registry: RegistryConfig = RegistryConfig()
    http: HttpConfig = HttpConfig()
    spool: SpoolConfig = SpoolConfig()
    downlink: DownlinkConfig = DownlinkConfig()
    neighbours: NeighboursConfig = NeighboursConfig()
    files: FilesConfig = FilesConfig()
    outputs: OutputsConfig = OutputsConfig()
    log_level: str = "info"
    log_format: str = "text"

    @property
    def files_dir(self) -> Path:
        return self.files.dir or self.state_dir / "files"


_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_PREFIX_RE = re.compile(r"^[^#+/][^#+]*(?<!/)$")


class _Reader:
    """Typed access to one table of the file, with messages that name the file and section."""

    def __init__(self, data: dict, name: str, allowed: set[str], where: str,
                 required: tuple[str, ...] = ()) -> None:
        self.where = "%s [%s]" % (where, name)
        section = data.get(name, {})
        if not isinstance(section, dict):
            raise ConfigError("%s: [%s] must be a table" % (where, name))
        unknown = set(section) - allowed
        if unknown:
            raise ConfigError("%s: unknown key(s) in [%s]: %s (allowed: %s)"
                              % (where, name, ", ".join(sorted(unknown)),
                                 ", ".join(sorted(allowed))))
        missing = [k for k in required if k not in section]
        if missing:
            raise ConfigError("%s: [%s] needs %s" % (where, name, ", ".join(missing)))
        self.section = section

    def get(self, key: str, kind: type, default: Any) -> Any:
        value = self.section.get(key, default)
        if value is None or isinstance(value, kind) and not (
                kind in (int, float) and isinstance(value, bool)):
            return value
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        raise ConfigError("%s: %s must be %s, not %r" % (self.where, key, kind.__name__, value))

    def number(self, key: str, kind: type, default: Any, low: float, high: float) -> Any:
        value = self.get(key, kind, default)
        if not low <= value <= high:
            raise ConfigError("%s: %s must be between %s and %s, not %s"
                              % (self.where, key, low, high, value))
        return value

    def path(self, key: str, default: Path | None = None) -> Path | None:
        value = self.get(key, str, None)
        return Path(value) if value else default

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.get(key, str, default)
        if value not in choices:
            raise ConfigError("%s: %s must be one of %s, not %r"
                              % (self.where, key, ", ".join(choices), value))
        return value


def _port(value: int, key: str, where: str, *, allow_zero: bool = False) -> int:
    if not (0 if allow_zero else 1) <= value <= 65535:
        raise ConfigError("%s: %s must be a port number 1-65535, not %d" % (where, key, value))
    return value


def _registry_url(url: str, where: str) -> str:
    try:
        make_url(url)
    except Exception:       # sqlalchemy's ArgumentError, ValueError for a bad port
        raise ConfigError("%s: [registry] url must be an SQLAlchemy URL such as "
                          "sqlite:////var/lib/citytestbed/fleet.db, not %r"
                          % (where, url)) from None
    return url


def _address(value: str, key: str, where: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ConfigError("%s: %s must be an IP address such as 0.0.0.0 or ::, not %r"
                          % (where, key, value)) from None
    return value


def _mqtt(data: dict, where: str) -> MqttConfig:
    r = _Reader(data, "mqtt", {"url", "prefix", "username", "password", "publish_timeout_s",
                               "keepalive_s", "ca_file", "cert_file", "key_file",
                               "max_inflight", "stats_interval_s", "state_interval_s"},
                where, required=("url", "prefix"))
    url = r.get("url", str, None)
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError("%s: [mqtt] url must look like mqtt://host:port (or mqtts://host:port "
                          "for TLS), not %r" % (where, url))
    try:
        _ = parts.port      # urlsplit checks the port only when it is read
    except ValueError:
        raise ConfigError("%s: [mqtt] url has an invalid port: %r" % (where, url)) from None
    if parts.username is not None or parts.password is not None:
        raise ConfigError("%s: [mqtt] url must not carry a user name or password: put them in "
                          "[mqtt] username and password" % where)
    prefix = r.get("prefix", str, None)
    if not prefix or not _PREFIX_RE.match(prefix):
        raise ConfigError("%s: [mqtt] prefix must be a topic prefix without wildcards or "
                          "leading/trailing '/', not %r" % (where, prefix))
    cert, key = r.path("cert_file"), r.path("key_file")
    if (cert is None) != (key is None):
        raise ConfigError("%s: [mqtt] cert_file and key_file go together" % where)
    tls_keys = [k for k in ("ca_file", "cert_file", "key_file") if k in r.section]
    if tls_keys and parts.scheme != "mqtts":
        raise ConfigError("%s: [mqtt] %s need an mqtts:// url" % (where, ", ".join(tls_keys)))
    username = r.get("username", str, None)
    password = r.get("password", str, None)
    if password is not None and username is None:
        raise ConfigError("%s: [mqtt] password needs a username" % where)
    return MqttConfig(
        url=url, prefix=prefix, username=username, password=password,
        publish_timeout_s=r.number("publish_timeout_s", float, 5.0, 0.1, 600),
        keepalive_s=r.number("keepalive_s", int, 30, 5, 3600),
        ca_file=r.path("ca_file"), cert_file=cert, key_file=key,
        max_inflight=r.number("max_inflight", int, 2000, 1, 65000),
        stats_interval_s=r.number("stats_interval_s", float, 60.0, 0, 86400),
        state_interval_s=r.number("state_interval_s", float, 300.0, 0, 86400))


def parse(data: dict, where: str = "config") -> GatewayConfig:
    sections = {"gateway", "coap", "mqtt", "registry", "http", "log", "spool", "downlink",
                "neighbours", "files", "outputs"}
    unknown = set(data) - sections
    if unknown:
        raise ConfigError("%s: unknown section(s) %s (allowed: %s)"
                          % (where, ", ".join(sorted(unknown)), ", ".join(sorted(sections))))
    gw = _Reader(data, "gateway", {"id", "state_dir"}, where)
    coap = _Reader(data, "coap", {"bind", "port"}, where, required=("bind", "port"))
    mqtt = _mqtt(data, where)
    reg = _Reader(data, "registry", {"url", "refresh_interval_s"}, where, required=("url",))
    http = _Reader(data, "http", {"bind", "port"}, where)
    log = _Reader(data, "log", {"level", "format"}, where)
    spool = _Reader(data, "spool", {"max_rows", "max_mb", "max_age_s", "when_full",
                                    "commit_delay_ms"}, where)
    down = _Reader(data, "downlink", {"max_pending", "default_ttl_s", "max_ttl_s",
                                      "observe_refresh_s"}, where)
    nb = _Reader(data, "neighbours", {"enabled", "distance_m", "level", "hold_s",
                                      "min_interval_s"}, where)
    files = _Reader(data, "files", {"dir", "source", "sync_interval_s", "block_size"}, where)
    out = _Reader(data, "outputs", {"device_state", "home_assistant", "home_assistant_prefix",
                                    "sensorthings", "sensorthings_prefix"}, where)

    gateway_id = gw.get("id", str, "gw-1")
    if not _ID_RE.match(gateway_id):
        raise ConfigError("%s: [gateway] id must be 1-64 characters A-Z, a-z, 0-9, '-', '_', "
                          "not %r" % (where, gateway_id))
    level = log.get("level", str, "info").lower()
    if level not in ("debug", "info", "warning", "error"):
        raise ConfigError("%s: [log] level must be debug, info, warning or error" % where)
    block_size = files.get("block_size", int, 512)
    if block_size not in (16, 32, 64, 128, 256, 512, 1024):
        raise ConfigError("%s: [files] block_size must be a power of two from 16 to 1024, not %d"
                          % (where, block_size))
    max_ttl = down.number("max_ttl_s", float, 7 * 86400.0, 1, 365 * 86400)
    for name, key, default in (("home_assistant_prefix", "home_assistant_prefix",
                                "homeassistant"),
                               ("sensorthings_prefix", "sensorthings_prefix", "v1.1")):
        value = out.get(key, str, default)
        if not value or not _PREFIX_RE.match(value):
            raise ConfigError("%s: [outputs] %s must be a topic prefix without wildcards, "
                              "not %r" % (where, name, value))

    return GatewayConfig(
        id=gateway_id,
        state_dir=Path(gw.get("state_dir", str, "gateway-state")),
        coap=CoapConfig(
            bind=_address(coap.get("bind", str, None), "[coap] bind", where),
            port=_port(coap.get("port", int, None), "[coap] port", where)),
        mqtt=mqtt,
        registry=RegistryConfig(
            url=_registry_url(reg.get("url", str, None), where),
            refresh_interval_s=reg.number("refresh_interval_s", float, 2.0, 0, 3600)),
        http=HttpConfig(
            bind=_address(http.get("bind", str, "127.0.0.1"), "[http] bind", where),
            port=_port(http.get("port", int, 0), "[http] port", where, allow_zero=True)),
        spool=SpoolConfig(
            max_rows=spool.number("max_rows", int, 2_000_000, 100, 10 ** 9),
            max_mb=spool.number("max_mb", int, 1024, 1, 10 ** 6),
            max_age_s=spool.number("max_age_s", float, 7 * 86400.0, 60, 366 * 86400),
            when_full=spool.choice("when_full", "reject", ("reject", "drop_oldest")),
            commit_delay_ms=spool.number("commit_delay_ms", float, 2.0, 0, 100)),
        downlink=DownlinkConfig(
            max_pending=down.number("max_pending", int, 8, 1, 64),
            default_ttl_s=down.number("default_ttl_s", float, 3600.0, 1, max_ttl),
            max_ttl_s=max_ttl,
            observe_refresh_s=down.number("observe_refresh_s", float, 60.0, 1, 86400)),
        neighbours=NeighboursConfig(
            enabled=nb.get("enabled", bool, False),
            distance_m=nb.number("distance_m", float, 60.0, 0, 10_000),
            level=nb.number("level", int, 100, 0, 100),
            hold_s=nb.number("hold_s", int, 30, 1, 3600),
            min_interval_s=nb.number("min_interval_s", float, 5.0, 0, 3600)),
        files=FilesConfig(
            dir=files.path("dir"), source=files.path("source"),
            sync_interval_s=files.number("sync_interval_s", float, 300.0, 1, 86400),
            block_size=block_size),
        outputs=OutputsConfig(
            device_state=out.get("device_state", bool, True),
            home_assistant=out.get("home_assistant", bool, False),
            home_assistant_prefix=out.get("home_assistant_prefix", str, "homeassistant"),
            sensorthings=out.get("sensorthings", bool, False),
            sensorthings_prefix=out.get("sensorthings_prefix", str, "v1.1")),
        log_level=level,
        log_format=log.choice("format", "text", ("text", "json")),
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
