"""The registry's provisioning columns and site profiles: added compatibly (older registries
gain the columns on open), secrets never in summaries."""

from __future__ import annotations

import sqlite3

import pytest

from registry.db import Registry, RegistryError


@pytest.fixture
def reg(tmp_path):
    return Registry("sqlite:///%s" % (tmp_path / "fleet.db"))


def test_a_registry_from_before_provisioning_gains_the_columns(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:    # the schema of the walking skeleton
        db.execute("CREATE TABLE devices (id VARCHAR(48) PRIMARY KEY, role VARCHAR(16), "
                   "site VARCHAR(48), kid INTEGER UNIQUE, master_secret BLOB, master_salt BLOB, "
                   "created_at DATETIME, provisioned_at DATETIME)")
        db.execute("INSERT INTO devices VALUES ('shaft-01', 'shaft', 'north', 1, x'00', x'00', "
                   "'2025-01-01 00:00:00', NULL)")
    reg = Registry("sqlite:///%s" % path)
    device = reg.get("shaft-01")
    assert device.mac is None and device.provision_status is None and device.settings() == {}
    reg.record_provisioning("shaft-01", mac="24:0a:c4:00:00:01", provision_status="failed")
    assert reg.by_mac("24:0A:C4:00:00:01").id == "shaft-01"
    assert reg.sites() == []


def test_site_profiles_are_stored_once_and_updated_field_by_field(reg):
    with pytest.raises(RegistryError, match="give its gateway address"):
        reg.set_site("north", wifi_ssid="x")
    reg.set_site("north", gateway_host="10.0.0.2", wifi_ssid="stadtwerke", wifi_psk="geheim123",
                 mqtt_url="mqtt://10.0.0.3:1883")
    reg.set_site("north", wifi_ssid="stadtwerke-iot")
    site = reg.site("north")
    assert (site.gateway_host, site.gateway_port, site.wifi_ssid, site.wifi_psk) == (
        "10.0.0.2", 5683, "stadtwerke-iot", "geheim123")
    assert "geheim123" not in repr(site) + str(site.summary())
    assert site.summary()["wifi_psk"] == "set"
    with pytest.raises(RegistryError, match="site 'North Side'"):
        reg.set_site("North Side", gateway_host="x")


def test_rotation_makes_new_material_under_the_same_key_id(reg):
    before = reg.add_device("shaft-01", "shaft", "north")
    reg.record_provisioning("shaft-01", provisioned_at=before.created_at,
                            key_written_at=before.created_at)
    after = reg.rotate_key("shaft-01")
    assert after.kid == before.kid
    assert after.master_secret != before.master_secret and after.master_salt != before.master_salt
    assert after.key_written_at is None and after.provisioned_at is None
    assert after.key_rotated_at is not None
    assert before.master_secret.hex() not in str(after.summary())


def test_only_a_device_whose_key_never_left_the_registry_can_be_removed(reg):
    device = reg.add_device("shaft-01", "shaft", "north")
    reg.remove_unused_device("shaft-01")
    assert reg.devices() == []
    device = reg.add_device("shaft-01", "shaft", "north")
    reg.record_provisioning("shaft-01", key_written_at=device.created_at)
    with pytest.raises(RegistryError, match="has been on a board"):
        reg.remove_unused_device("shaft-01")


def test_provisioning_fields_are_a_closed_set(reg):
    reg.add_device("shaft-01", "shaft", "north")
    with pytest.raises(TypeError, match="master_secret"):
        reg.record_provisioning("shaft-01", master_secret=b"x" * 16)
    with pytest.raises(RegistryError, match="no device shaft-02"):
        reg.record_provisioning("shaft-02", mac="x")
