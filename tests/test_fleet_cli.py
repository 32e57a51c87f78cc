"""The `fleet` command line for sites, the firmware cache and provisioning's early refusals
(everything that needs no board)."""

from __future__ import annotations

import io
import json
import socket

import pytest

from boards.app_image import build_app_image, merged_image
from boards.definitions import board
from fleet.cli import _settings
from fleet.cli import main as fleet_main
from fleet.errors import FleetError


@pytest.fixture
def registry(tmp_path):
    return ["--registry", "sqlite:///%s" % (tmp_path / "fleet.db")]


def run(capsys, argv):
    code = fleet_main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_a_site_profile_is_typed_once_and_its_wifi_key_never_shown(registry, capsys,
                                                                  monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("geheim-123\n"))
    code, out, _ = run(capsys, registry + ["site", "set", "north", "--gateway", "10.0.0.2",
                                           "--wifi-ssid", "stadtwerke", "--wifi-psk", "-",
                                           "--mqtt", "mqtt://10.0.0.3:1883"])
    assert code == 0 and "gateway 10.0.0.2:5683" in out and "key set" in out
    assert run(capsys, registry + ["site", "set", "north", "--gateway", "10.0.0.9:5684"])[0] == 0
    code, out, _ = run(capsys, registry + ["site", "list", "--json"])
    (site,) = json.loads(out)
    assert site["gateway"] == "10.0.0.9:5684" and site["wifi_ssid"] == "stadtwerke"
    assert site["wifi_psk"] == "set"
    code, out, _ = run(capsys, registry + ["site", "list"])
    assert "north" in out and "geheim-123" not in out


def test_settings_from_the_command_line():
    assert _settings(["interval_s=60", "shaft.depth_mm=3000", "shaft.mode=uart",
                      "standin.dist_mm=1766"]) == {
        "interval_s": 60, "shaft": {"depth_mm": 3000, "mode": "uart"},
        "standin": {"dist_mm": 1766}}
    with pytest.raises(FleetError, match="write KEY=VALUE"):
        _settings(["depth"])
    # what names the device and reaches its gateway is the registry's, never a --set
    for pair in ("id=shaft-99", "oscore.secret=00", "gateway.host=10.9.9.9", "wifi.psk=x"):
        with pytest.raises(FleetError, match="comes from the registry and the site profile"):
            _settings([pair])


def test_batch_refuses_a_name_pattern_without_n(registry, capsys):
    code, _, err = run(capsys, registry + ["batch", "--site", "north", "--role", "shaft",
                                           "--names", "shaft", "--count", "1"])
    assert code != 0 and "the pattern needs {n}" in err


def test_firmware_cache_add_and_list(registry, capsys, tmp_path):
    image = tmp_path / "ESP32_GENERIC-20241129-v1.24.1.bin"
    image.write_bytes(merged_image(board("esp32-devkitc"), build_app_image("micropython",
                                                                           "v1.24.1")))
    cache = str(tmp_path / "cache")
    code, out, _ = run(capsys, registry + ["firmware", "add", str(image), "--board",
                                           "esp32-devkitc", "--firmware-cache", cache])
    assert code == 0 and "added micropython v1.24.1 for board esp32-devkitc" in out
    code, out, _ = run(capsys, registry + ["firmware", "list", "--firmware-cache", cache])
    assert "esp32-devkitc" in out and "v1.24.1" in out and image.name in out


def test_provisioning_refuses_early_without_a_site_profile_or_a_reachable_port(
        registry, capsys, tmp_path):
    image = tmp_path / "mp.bin"
    image.write_bytes(merged_image(board("esp32-devkitc"), build_app_image("micropython",
                                                                           "v1.24.1")))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = "socket://127.0.0.1:%d" % s.getsockname()[1]
    argv = registry + ["provision", free, "--device", "shaft-01", "--role", "shaft", "--site",
                       "north", "--firmware", str(image)]
    code, _, err = run(capsys, argv)
    assert code == 1 and err.startswith("fleet: no site profile for site north: create it "
                                        "once with `fleet site set north")
    assert run(capsys, registry + ["site", "set", "north", "--gateway", "127.0.0.1"])[0] == 0
    code, _, err = run(capsys, argv)
    assert code == 1 and err == "fleet: nothing listens at %s: is the board server (vboard, " \
                                "ser2net, an RFC 2217 server) running at that address?\n" % free
    code, out, _ = run(capsys, registry + ["device", "list", "--json"])
    assert json.loads(out) == []          # nothing was registered for a board never reached
    code, _, err = run(capsys, argv[:-2] + ["--firmware", "v9.9.9", "--firmware-cache",
                                            str(tmp_path / "empty")])
    assert code == 1 and "no MicroPython v9.9.9 for board esp32-devkitc" in err


def test_commands_without_the_registry_neither_open_nor_need_it(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, ["firmware", "list", "--firmware-cache", str(tmp_path / "c")])
    assert code == 0 and not (tmp_path / "fleet.db").exists()
    # A PostgreSQL registry whose driver is not installed: a sentence, not a traceback, and
    # without the password.
    code, _, err = run(capsys, ["--registry", "postgresql+nosuchdriver://u:pw-123@db/fleet",
                                "device", "list"])
    assert code == 1 and err.startswith("fleet: the registry postgresql+nosuchdriver://u:***@")
    assert "pw-123" not in err and "Traceback" not in err


def test_messages_that_name_the_registry_hide_its_password(tmp_path, capsys, monkeypatch):
    """A PostgreSQL URL carries the database password: "no devices in", "no device X in" and
    the site list show it as ***. (The registry behind it is SQLite: no server here.)"""
    from sqlalchemy import create_engine
    sqlite = "sqlite:///%s" % (tmp_path / "fleet.db")
    monkeypatch.setattr("registry.db.create_engine", lambda url: create_engine(sqlite))
    url = "postgresql://fleet:pw-123@db.local/fleet"
    for argv in (["device", "list"], ["site", "list"],
                 ["device", "export-oscore", "lamp-99", str(tmp_path / "x")]):
        code, out, err = run(capsys, ["--registry", url] + argv)
        assert "postgresql://fleet:***@db.local/fleet" in out + err, (argv, out, err)
        assert "pw-123" not in out + err
    assert code == 1 and "no device lamp-99" in err


def test_a_provisioned_lamp_is_placed_on_its_street(registry, capsys):
    assert run(capsys, registry + ["device", "add", "lamp-01", "--role", "lighting",
                                   "--site", "north"])[0] == 0
    code, out, _ = run(capsys, registry + ["device", "place", "lamp-01", "--street",
                                           "golden-mile", "--position", "30"])
    assert code == 0 and "lamp-01 stands on golden-mile at 30 m" in out
    (lamp,) = json.loads(run(capsys, registry + ["device", "list", "--json"])[1])
    assert (lamp["street"], lamp["position_m"]) == ("golden-mile", 30.0)
    code, _, err = run(capsys, registry + ["device", "place", "lamp-99", "--street", "x"])
    assert code == 1 and "no device lamp-99" in err
