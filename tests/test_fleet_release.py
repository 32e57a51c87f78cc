"""Signed releases on the fleet side: the release key (a private file, its public half in the
registry), building a release into the store, listing, showing and verifying it, and the key
reaching a node only through provisioning (never through a `config` command)."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from boards.app_image import build_app_image, merged_image
from boards.definitions import board
from boards.nodeapp import FIRMWARE, UPDATABLE_DIRS, is_updatable
from boards.partition_table import (
    PARTITION_TABLE_OFFSET,
    PARTITION_TABLE_SIZE,
    filesystem_partition,
    parse_partition_table,
)
from fleet.appbuild import build_app
from fleet.boardfs import CONFIG_FILE, read_node_files
from fleet.cli import _settings
from fleet.cli import main as fleet_main
from fleet.errors import FleetError
from fleet.nodeconfig import SiteProfile, node_config
from fleet.release import built_at
from protocol import manifest as mf
from protocol.commands import CONFIG_KEYS, validate
from protocol.errors import CommandError
from registry.db import Registry, key_fingerprint
from vboard.flash import FlashFile
from vboard.rom.server import serve_in_thread

BOARD = board("esp32-devkitc")


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A registry, a key path (not yet a file) and a store, as the environment names them."""
    monkeypatch.setenv("FLEET_REGISTRY", "sqlite:///%s" % (tmp_path / "fleet.db"))
    monkeypatch.setenv("FLEET_RELEASE_KEY", str(tmp_path / "keys" / "release-key.pem"))
    monkeypatch.setenv("FLEET_RELEASE_STORE", str(tmp_path / "releases"))
    return tmp_path


@pytest.fixture
def app(tmp_path):
    """A small node application: the boot stage at the root, modules in app/ and lib/."""
    root = tmp_path / "app-src"
    (root / "app").mkdir(parents=True)
    (root / "lib").mkdir()
    (root / "boot.py").write_text("# boot stage\n")
    (root / "main.py").write_text("import app.node\napp.node.run()\n")
    (root / "app" / "__init__.py").write_text("")
    (root / "app" / "node.py").write_text('APP_VERSION = "1.0.0"\n\n\ndef run():\n'
                                          '    return 1\n')
    (root / "lib" / "util.py").write_text("def inc(x):\n    return x + 1\n")
    return root


def run(capsys, *argv):
    code = fleet_main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def key_create(capsys, *extra):
    return run(capsys, "release", "key", "create", *extra)


def build(capsys, version, *extra):
    return run(capsys, "release", "build", version, *extra)


def manifest_of(path):
    body, signature = mf.unpack((path / mf.MANIFEST).read_bytes())
    return mf.Manifest.from_body(body), body, signature


def store_entries(store):
    """What a gateway or a person would see in the store (the build lock is a dot file)."""
    return sorted(p.name for p in store.iterdir() if p.name != ".lock") if store.exists() else []


def mp_image(tmp_path, version="v1.24.1"):
    path = tmp_path / ("ESP32_GENERIC-%s.bin" % version)
    path.write_bytes(merged_image(BOARD, build_app_image("micropython", version)))
    return path


# --- the release key ------------------------------------------------------------------------

def test_the_key_file_is_private_from_the_start_and_never_silently_replaced(env, capsys):
    key = env / "keys" / "release-key.pem"
    code, out, err = key_create(capsys)
    assert code == 0, err
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    public = mf.public_key_bytes(private.public_key())
    record = Registry().release_key()
    assert record.public_key == public and len(public) == 65
    assert record.fingerprint == hashlib.sha256(public).digest()[:8].hex()
    assert "created release key %s" % record.fingerprint in out
    pem = key.read_text()
    secret_lines = [ln for ln in pem.splitlines() if "PRIVATE KEY" not in ln]
    assert not any(ln in out + err for ln in secret_lines)

    # A second create refuses: the file and the registry are untouched.
    code, _, err = key_create(capsys)
    assert code == 1 and err.startswith("fleet: a release key already exists at %s" % key)
    assert "--force" in err and "nodes provisioned with the old public key will refuse" in err
    assert key.read_text() == pem and Registry().release_key().public_key == public
    # Another path while the registry has a key: the same refusal, naming the registry's key.
    code, _, err = key_create(capsys, "--key", str(env / "elsewhere.pem"))
    assert code == 1 and "already has release key %s" % record.fingerprint in err
    assert not (env / "elsewhere.pem").exists()

    code, out, _ = key_create(capsys, "--force")
    assert code == 0 and "nodes provisioned with the old public key will refuse" in out
    assert key.read_text() != pem and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert Registry().release_key().fingerprint != record.fingerprint
    assert [p.name for p in key.parent.iterdir()] == ["release-key.pem"]   # no temp file


def test_key_show_names_the_fingerprint_and_the_file(env, capsys):
    code, out, _ = run(capsys, "release", "key", "show")
    assert code == 0 and out.startswith("no release key in the registry")
    assert "release-key.pem: not there" in out
    key_create(capsys)
    record = Registry().release_key()
    code, out, _ = run(capsys, "release", "key", "show")
    assert out.splitlines()[0].startswith("release key %s, made " % record.fingerprint)
    assert record.public_key.hex() in out and "present (signs releases the nodes accept)" in out
    other = env / "other.pem"
    other.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    code, out, _ = run(capsys, "release", "key", "show", "--key", str(other))
    assert "present, but it is key" in out and "not the registry's" in out


def test_an_older_registry_gains_the_release_key_table(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE devices (id VARCHAR(48) PRIMARY KEY, role VARCHAR(16), "
                   "site VARCHAR(48), kid INTEGER UNIQUE, master_secret BLOB, master_salt BLOB, "
                   "created_at DATETIME, provisioned_at DATETIME)")
    reg = Registry("sqlite:///%s" % path)
    assert reg.release_key() is None
    point = mf.public_key_bytes(ec.generate_private_key(ec.SECP256R1()).public_key())
    assert reg.set_release_key(point).fingerprint == key_fingerprint(point)
    second = mf.public_key_bytes(ec.generate_private_key(ec.SECP256R1()).public_key())
    reg.set_release_key(second)                   # one current key: replaced, not added
    assert Registry("sqlite:///%s" % path).release_key().public_key == second
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM release_key").fetchone() == (1,)


# --- building -------------------------------------------------------------------------------

def test_a_release_of_the_real_firmware_is_stored_whole_and_signed_with_the_registry_key(
        env, capsys):
    image = mp_image(env)
    key_create(capsys)
    code, out, err = build(capsys, "0.3.0", "--firmware", str(image), "--notes", "sonar retry")
    assert code == 0, err
    assert out.splitlines()[-1].startswith("built release 0.3.0 (number 1) in ")
    store = env / "releases"
    assert store_entries(store) == ["0.3.0"]

    manifest, body, signature = manifest_of(store / "0.3.0")
    assert mf.verify(Registry().release_key().public_key, body, signature)
    compiled = build_app(FIRMWARE)
    updatable = {p: d for p, d in compiled.items() if is_updatable(p)}
    assert "boot.py" not in updatable and "main.py" not in updatable
    assert {p.split("/")[0] for p in updatable} == set(UPDATABLE_DIRS)
    assert {f.path: (f.size, f.sha256) for f in manifest.files} == {
        p: (len(d), hashlib.sha256(d).digest()) for p, d in updatable.items()}
    assert (manifest.version, manifest.number, manifest.previous) == ("0.3.0", 1, None)
    assert manifest.roles == ("lighting", "parking", "shaft")
    assert (manifest.micropython, manifest.mpy) == ("1.22.0", compiled["app/node.mpy"][1])
    assert manifest.mpy == 6 and manifest.notes == "sonar retry" and not manifest.rollback
    # The merged image contributes its app: what the OTA slot takes.
    fw = manifest.firmware
    assert fw.version == "v1.24.1" and fw.size < len(image.read_bytes())
    assert (store / "0.3.0" / mf.FIRMWARE_FILE).read_bytes() == image.read_bytes()[-fw.size:]
    assert hashlib.sha256((store / "0.3.0" / mf.FIRMWARE_FILE).read_bytes()).digest() == fw.sha256
    names = {f.name for f in manifest.files} | {mf.MANIFEST, mf.FIRMWARE_FILE}
    assert set(os.listdir(store / "0.3.0")) == names
    for f in manifest.files:
        assert (store / "0.3.0" / f.name).read_bytes() == updatable[f.path]


def test_the_next_build_takes_the_next_number_and_names_the_previous(env, app, capsys):
    key_create(capsys)
    assert build(capsys, "1.0.0", "--app-source", str(app))[0] == 0
    code, out, err = build(capsys, "1.0.1", "--app-source", str(app), "--roles", "shaft,lighting",
                           "--rollback", "--micropython", "1.24.0", "-q")
    assert code == 0, err
    assert out == ("built release 1.0.1 (number 2, after 1.0.0) in %s: 3 files, %s bytes of "
                   "app; signed with release key %s\n" % (
                       env / "releases" / "1.0.1",
                       format(manifest_of(env / "releases" / "1.0.1")[0].app_bytes(), ","),
                       Registry().release_key().fingerprint))
    m, _, _ = manifest_of(env / "releases" / "1.0.1")
    assert (m.number, m.previous, m.roles, m.rollback, m.micropython) == (
        2, "1.0.0", ("lighting", "shaft"), True, "1.24.0")
    assert [f.path for f in m.files] == ["app/__init__.mpy", "app/node.mpy", "lib/util.mpy"]
    assert store_entries(env / "releases") == ["1.0.0", "1.0.1"]


def _other_key(path):
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return key


@pytest.mark.parametrize("case,code,message", [
    ("no key file", 1, "fleet: no release key at {key}: create one with `fleet release key "
                       "create`, or give --key FILE"),
    ("another key", 1, "fleet: the release key at {other} ({other_fp}) is not the registry's "
                       "({fp}): nodes would refuse releases signed with it"),
    ("existing version", 1, "fleet: release 1.0.0 is already in the store {store}: releases "
                            "are never rebuilt"),
    ("bad version", 2, "fleet: release version '../1.1': use 1-32 characters"),
    ("old firmware", 2, "fleet: {fw} is MicroPython v1.21.0, older than the release's lowest "
                        "MicroPython (--micropython 1.22.0)"),
])
def test_refused_builds_say_why_and_leave_nothing_in_the_store(env, app, capsys, case, code,
                                                               message):
    key = env / "keys" / "release-key.pem"
    version, extra = "1.1.0", []
    if case != "no key file":
        key_create(capsys)
        assert build(capsys, "1.0.0", "--app-source", str(app), "-q")[0] == 0
    other = env / "other.pem"
    other_fp = ""
    if case == "another key":
        other_fp = key_fingerprint(mf.public_key_bytes(_other_key(other).public_key()))
        extra = ["--key", str(other)]
    elif case == "existing version":
        version = "1.0.0"
    elif case == "bad version":
        version = "../1.1"
    elif case == "old firmware":
        extra = ["--firmware", str(mp_image(env, "v1.21.0"))]
    before = store_entries(env / "releases")
    got, out, err = build(capsys, version, "--app-source", str(app), *extra)
    fp = Registry().release_key().fingerprint if case != "no key file" else ""
    expected = message.format(key=key, other=other, other_fp=other_fp, fp=fp,
                              store=env / "releases", fw=env / "ESP32_GENERIC-v1.21.0.bin")
    assert got == code
    assert err.startswith(expected), err
    assert store_entries(env / "releases") == before     # no new release, no .partial-
    for text in (out, err):                            # the private key is never shown
        assert "PRIVATE KEY" not in text


def test_only_the_boot_stage_stays_out_and_other_folders_are_refused(env, app, capsys):
    key_create(capsys)
    code, out, _ = build(capsys, "1.0.0", "--app-source", str(app))
    assert "boot.py, main.py stay with provisioning" in out
    (app / "tools").mkdir()
    (app / "tools" / "bench.py").write_text("x = 1\n")
    code, _, err = build(capsys, "1.0.1", "--app-source", str(app))
    assert code == 1 and "tools/bench.mpy is in neither the boot stage" in err
    assert store_entries(env / "releases") == ["1.0.0"]


# --- list, show, verify ---------------------------------------------------------------------

@pytest.fixture
def two_releases(env, app, capsys):
    key_create(capsys)
    assert build(capsys, "1.0.0", "--app-source", str(app), "--notes", "first", "-q")[0] == 0
    assert build(capsys, "1.1.0", "--app-source", str(app), "--roles", "shaft",
                 "--firmware", str(mp_image(env)), "-q")[0] == 0
    return env / "releases"


def test_list_and_show(two_releases, capsys):
    (two_releases / ".partial-1.2.0").mkdir()            # an interrupted build: not a release
    (two_releases / "1.3.0").mkdir()                     # no manifest: not (yet) a release
    code, out, _ = run(capsys, "release", "list")
    lines = out.splitlines()
    assert code == 0 and lines[0] == "release store %s" % two_releases
    assert lines[1].split() == ["VERSION", "NUMBER", "PREVIOUS", "ROLES", "FILES", "APP_BYTES",
                                "FIRMWARE", "BUILT", "NOTES"]
    assert lines[2].split()[:5] == ["1.0.0", "1", "-", "lighting,parking,shaft", "3"]
    assert lines[2].endswith("first")
    assert lines[3].split()[:5] == ["1.1.0", "2", "1.0.0", "shaft", "3"]
    assert lines[3].split()[6] == "v1.24.1" and len(lines) == 4
    listed = json.loads(run(capsys, "release", "list", "--json")[1])
    assert [(r["version"], r["number"], r["previous"]) for r in listed] == [
        ("1.0.0", 1, None), ("1.1.0", 2, "1.0.0")]

    code, out, _ = run(capsys, "release", "show", "1.1.0")
    m, _, _ = manifest_of(two_releases / "1.1.0")
    assert code == 0
    assert out.splitlines()[:5] == [
        "release 1.1.0, number 2, after 1.0.0", "  roles        shaft",
        "  micropython  1.22.0 or newer, .mpy format 6",
        "  built        %s" % built_at(m),
        "  notes        -"]
    assert "  firmware     v1.24.1, %s bytes, sha256 %s (micropython.bin)" % (
        format(m.firmware.size, ","), m.firmware.sha256.hex()[:16]) in out
    assert "  files        3, %s bytes of app" % format(m.app_bytes(), ",") in out
    for f in m.files:
        assert any(ln.split() == [f.path, format(f.size, ","), f.sha256.hex()[:16]]
                   for ln in out.splitlines())
    code, _, err = run(capsys, "release", "show", "9.9.9")
    assert code == 1 and "no release 9.9.9 in the store" in err and "1.0.0, 1.1.0" in err

    # A damaged manifest is listed with what is wrong, and blocks the next build's number.
    (two_releases / "1.3.0" / mf.MANIFEST).write_bytes(b"\xff")
    out = run(capsys, "release", "list")[1]
    assert "1.3.0" in out and "its manifest is damaged" in out


def test_a_sound_release_verifies(two_releases, capsys):
    code, out, _ = run(capsys, "release", "verify", "1.1.0")
    fp = Registry().release_key().fingerprint
    assert code == 0 and "ok       signature: valid, release key %s" % fp in out
    assert "files: 4," in out and out.splitlines()[-1].startswith("release 1.1.0 is sound")


def _resign(path, key):
    body, _ = mf.unpack((path / mf.MANIFEST).read_bytes())
    (path / mf.MANIFEST).write_bytes(mf.pack(body, mf.sign(key, body)))


@pytest.mark.parametrize("damage,wrong", [
    ("changed", "app+node.mpy (app/node.mpy): its SHA-256 is not the manifest's"),
    ("missing", "lib+util.mpy (lib/util.mpy): missing"),
    ("extra", "notes.txt: not in the manifest (an extra file)"),
    ("firmware", "micropython.bin (firmware v1.24.1): 3 bytes, the manifest says"),
    ("other key", "signature: does not verify with the registry's release key"),
])
def test_verify_finds_what_a_node_would_refuse(two_releases, capsys, damage, wrong):
    release = two_releases / "1.1.0"
    if damage == "changed":
        data = bytearray((release / "app+node.mpy").read_bytes())
        data[-1] ^= 1
        (release / "app+node.mpy").write_bytes(bytes(data))
    elif damage == "missing":
        (release / "lib+util.mpy").unlink()
    elif damage == "extra":
        (release / "notes.txt").write_text("x")
    elif damage == "firmware":
        (release / mf.FIRMWARE_FILE).write_bytes(b"abc")
    else:
        _resign(release, ec.generate_private_key(ec.SECP256R1()))
    code, out, err = run(capsys, "release", "verify", "1.1.0")
    assert code == 1 and "  WRONG    " + wrong in out
    assert out.count("WRONG") == 1
    assert err.startswith("fleet: release 1.1.0 does not verify (1 problem): nodes would refuse")


# --- the key reaches nodes through provisioning only -----------------------------------------

def _provision(tmp_path, capsys, flash, *extra):
    with serve_in_thread(flash, BOARD, 0x51) as rom:
        return run(capsys, "provision", "socket://127.0.0.1:%d" % rom.port, "--device",
                   "shaft-01", "--role", "shaft", "--site", "north", "--firmware",
                   str(mp_image(tmp_path)), "--no-wait", *extra)


def _config_on(flash):
    parts = parse_partition_table(flash.read(PARTITION_TABLE_OFFSET, PARTITION_TABLE_SIZE))
    return json.loads(read_node_files(flash, filesystem_partition(parts))[CONFIG_FILE])


def test_provisioning_writes_the_registry_key_into_config_json(env, capsys):
    assert run(capsys, "site", "set", "north", "--gateway", "127.0.0.1")[0] == 0
    flash = FlashFile(env / "flash.bin", BOARD.flash_size)
    try:
        code, out, err = _provision(env, capsys, flash)
        assert code == 0, err
        assert "release_key" not in _config_on(flash)
        assert err == ("warning: the registry has no release key: this node will refuse "
                       "updates until provisioned again once one exists (`fleet release key "
                       "create`)\n")
        assert "updates" not in out

        key_create(capsys)
        record = Registry().release_key()
        # The same board again (it never booted, so it holds no message counter: a new key).
        code, out, err = _provision(env, capsys, flash, "--rotate-key")
        assert code == 0 and err == "", err
        config = _config_on(flash)
        assert config["release_key"] == record.public_key.hex()
        assert len(config["release_key"]) == 130
        assert "  updates   accepted when signed with release key %s" % record.fingerprint in out
    finally:
        flash.close()


def test_no_setting_and_no_config_command_can_change_the_key_a_node_trusts(registry):
    device = registry.add_device("shaft-01", "shaft", "north")
    point = mf.public_key_bytes(ec.generate_private_key(ec.SECP256R1()).public_key())
    forged = "04" + "00" * 64
    config = node_config(device, SiteProfile("10.0.0.2"), extra={"release_key": forged},
                         release_key=point)
    assert config["release_key"] == point.hex()
    assert "release_key" not in node_config(device, SiteProfile("10.0.0.2"),
                                            extra={"release_key": forged})
    with pytest.raises(FleetError, match="comes from the registry"):
        _settings(["release_key=%s" % forged])
    # The gateway checks every command it queues: a `config` command cannot name the key.
    assert "release_key" not in CONFIG_KEYS
    for args in ({"release_key": forged}, {"interval_s": 60, "release_key": forged}):
        with pytest.raises(CommandError, match="config key 'release_key' is not settable"):
            validate("config", args, "shaft")
