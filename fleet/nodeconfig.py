"""The node's /config.json, made from the registry at provisioning time.

This file is the only place besides the registry that holds the device's master secret.
firmware/app/config.py reads and validates it on the node.

It also carries ``release_key``: the fleet's release public key (130 hex digits, the 65-byte
uncompressed P-256 point) that the node checks every update's signed manifest with. Only
provisioning writes it: neither ``--set`` nor the node settings stored in the registry, nor
a `config` downlink command (protocol/commands.py) can set it, so the gateway can never
change which key a node trusts. Without it the node refuses every update.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from registry.db import Device, material_of

CONFIG_VERSION = 1
RELEASE_KEY = "release_key"
DEFAULT_INTERVAL_S = {"lighting": 60, "parking": 1800, "shaft": 900}


@dataclass(frozen=True)
class SiteProfile:
    """What every node of a site shares: the network and the gateway."""

    gateway_host: str
    gateway_port: int = 5683
    wifi_ssid: str = ""
    wifi_psk: str = field(default="", repr=False)


def node_config(device: Device, site: SiteProfile, *, interval_s: int | None = None,
                extra: dict | None = None, release_key: bytes | None = None) -> dict:
    """The node's configuration; ``release_key`` (the registry's public release key, 65
    bytes) is written as ``"release_key"`` when given."""
    m = material_of(device)
    cfg = {
        "v": CONFIG_VERSION,
        "id": device.id,
        "role": device.role,
        "site": device.site,
        "gateway": {"host": site.gateway_host, "port": site.gateway_port},
        "wifi": {"ssid": site.wifi_ssid, "psk": site.wifi_psk},
        "oscore": {"sid": m.sender_id.hex(), "rid": m.recipient_id.hex(),
                   "secret": m.master_secret.hex(), "salt": m.master_salt.hex()},
        "interval_s": interval_s or DEFAULT_INTERVAL_S[device.role],
    }
    for key, value in (extra or {}).items():
        cfg[key] = value
    cfg.pop(RELEASE_KEY, None)          # never from settings: the registry's key or none
    if release_key is not None:
        cfg[RELEASE_KEY] = release_key.hex()
    return cfg


def node_config_bytes(*args, **kwargs) -> bytes:
    return (json.dumps(node_config(*args, **kwargs), indent=1) + "\n").encode()
