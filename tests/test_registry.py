"""The fleet registry and its CLI."""

import json

import pytest
from aiocoap.oscore import FilesystemSecurityContext

from fleet.cli import main as fleet_main
from registry.db import Registry, RegistryError, export_oscore


@pytest.fixture
def reg(tmp_path):
    return Registry("sqlite:///%s" % (tmp_path / "fleet.db"))


def test_devices_get_distinct_key_ids_and_fresh_secrets(reg):
    a = reg.add_device("shaft-01", "shaft", "north")
    b = reg.add_device("lamp-01", "lighting", "north", street="hauptstrasse", position_m=40.0)
    assert (a.kid, b.kid) == (1, 2)
    assert a.kid_bytes == b"\x00\x01"
    assert len(a.master_secret) == 16 and len(a.master_salt) == 8
    assert a.master_secret != b.master_secret
    assert reg.by_kid(2).id == "lamp-01"
    assert [d.id for d in reg.devices()] == ["lamp-01", "shaft-01"]


@pytest.mark.parametrize("args,message", [
    (("shaft-01", "shaft", "north"), "already registered"),
    (("Bad Id", "shaft", "north"), "device id"),
    (("x", "fountain", "north"), "role"),
    (("y", "shaft", "North Side"), "site"),
])
def test_bad_registrations_are_refused(reg, args, message):
    reg.add_device("shaft-01", "shaft", "north")
    with pytest.raises(RegistryError, match=message):
        reg.add_device(*args)


def test_summary_never_contains_key_material(reg):
    d = reg.add_device("shaft-01", "shaft", "north")
    text = json.dumps(d.summary())
    assert d.master_secret.hex() not in text and d.master_salt.hex() not in text


def test_cli_add_list_json(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default registry: sqlite:///fleet.db in the current folder
    assert fleet_main(["device", "add", "shaft-07", "--role", "shaft", "--site", "south"]) == 0
    assert (tmp_path / "fleet.db").exists()
    capsys.readouterr()
    assert fleet_main(["device", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed[0]["id"] == "shaft-07" and listed[0]["kid"] == "0001"
    assert fleet_main(["device", "add", "shaft-07", "--role", "shaft", "--site", "south"]) == 1
    assert "already registered" in capsys.readouterr().err


def test_registry_from_environment(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FLEET_REGISTRY", "sqlite:///%s" % (tmp_path / "env.db"))
    assert fleet_main(["device", "add", "p-1", "--role", "parking", "--site", "s"]) == 0
    assert (tmp_path / "env.db").exists()


def test_unusable_registry_url_is_a_clear_error(capsys):
    assert fleet_main(["--registry", "sqlite:////nonexistent/dir/fleet.db", "device", "list"]) == 1
    assert "cannot be used" in capsys.readouterr().err


def test_exported_context_loads_in_aiocoap(reg, tmp_path):
    d = reg.add_device("shaft-01", "shaft", "north")
    creds = export_oscore(d, tmp_path / "ctx", seq_start=1000)
    assert json.loads(creds.read_text())["coap://*"]["oscore"]["basedir"].endswith("ctx/")
    assert oct((tmp_path / "ctx" / "secret.json").stat().st_mode & 0o777) == "0o600"
    ctx = FilesystemSecurityContext(str(tmp_path / "ctx"))
    try:
        assert ctx.sender_id == b"\x00\x01" and ctx.recipient_id == b""
        assert ctx.sender_sequence_number == 1000
    finally:
        ctx._destroy()
