"""`fleet provision` and `fleet batch` against virtual boards: blank boards become registered,
reporting nodes through their ROM port (unmodified esptool underneath), with the repository's
firmware/ built by fleet.appbuild; errors a field engineer meets give their one-line message.

The MicroPython image is a stand-in (boards.flash.build_app_image: a valid ESP32 app image
whose descriptor names MicroPython v1.24.1); the virtual board boots the real VM for it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from boards.app_image import build_app_image, merged_image
from boards.definitions import BOARDS, MB, Partition
from boards.definitions import board as board_def
from fleet.cli import main as fleet_main
from fleet.firmware import add_to_cache
from hil_tests.rack import VirtualDut, show, virtual_boards
from registry.db import Registry
from testbed.gatewayproc import PREFIX
from vboard.flash import FlashFile
from vboard.rom.server import serve_in_thread
from vboard.rom.slip import slip_encode

BOARD = board_def("esp32-devkitc")
BIN = Path(sys.executable).parent
DEPTH_MM, DIST_MM = 3000, 1766
NODE_SETTINGS = ["--set", "interval_s=2", "--set", "shaft.depth_mm=%d" % DEPTH_MM,
                 "--set", "standin.dist_mm=%d" % DIST_MM]
PROVISION_BUDGET_S = 30


@pytest.fixture
def cache(tmp_path) -> Path:
    """A firmware cache holding MicroPython v1.24.1 for the DevKitC."""
    image = tmp_path / "ESP32_GENERIC-20241129-v1.24.1.bin"
    image.write_bytes(merged_image(BOARD, build_app_image("micropython", "v1.24.1")))
    add_to_cache(image, BOARD, tmp_path / "fw-cache")
    return tmp_path / "fw-cache"


@pytest.fixture
def site(testbed, broker):
    """Site "north": the testbed's gateway and broker, typed once."""
    assert fleet_main(["--registry", testbed.registry_url, "site", "set", "north",
                       "--gateway", "127.0.0.1:%d" % testbed.gateway.coap_port,
                       "--wifi-ssid", "testbed-north", "--wifi-psk", "not-a-real-key",
                       "--mqtt", broker.url, "--prefix", PREFIX]) == 0
    return "north"


@pytest.fixture
def boards(tmp_path):
    with virtual_boards(tmp_path / "boards", 3, role="shaft") as fleet:
        duts = [VirtualDut(fleet, "board-%02d" % i) for i in range(3)]
        for dut in duts:      # the water stands still: the sonar sees the same distance
            dut.world.set_value(dut.vboard.board_id, "distance_mm", DIST_MM)
        yield duts


def fleet(testbed, cache, *args) -> list[str]:
    return ["--registry", testbed.registry_url, *args, "--firmware-cache", str(cache)]


def run_fleet(capsys, argv) -> tuple[int, str, str]:
    code = fleet_main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _up(device):
    return lambda topic, payload: topic == "%s/north/%s/up" % (PREFIX, device)


# --- the whole path ---------------------------------------------------------------------------

def test_blank_board_becomes_a_reporting_node_with_one_command(testbed, site, cache, boards,
                                                               mqtt, capsys):
    dut = boards[0]
    assert dut.wait_console("flash read err") and dut.state == "blank"
    argv = fleet(testbed, cache, "provision", dut.rom_url, "--device", "shaft-01",
                 "--role", "shaft", "--site", "north", *NODE_SETTINGS)
    started = time.monotonic()
    code, out, err = run_fleet(capsys, argv)
    elapsed = time.monotonic() - started
    show(capsys, "\n$ fleet %s\n%s%s(%.1f s)" % (" ".join(argv), out, err, elapsed))
    assert code == 0, err + dut.console_text()[-3000:]
    assert elapsed < PROVISION_BUDGET_S
    assert "micropython v1.24.1 written (no partition table (a blank board))" in out
    assert "provisioned shaft-01 in" in out and "uplink    city/north/shaft-01/status" in out

    # Its first reading arrives on MQTT, through the gateway, under its OSCORE key.
    (topic, payload), = mqtt.wait_for(_up("shaft-01"), timeout=20)
    level = next(r for r in json.loads(payload) if r["n"] == "level")
    assert abs(level["v"] - (DEPTH_MM - DIST_MM)) <= 10     # the sonar's few mm of noise
    console = dut.console_text()
    assert "Loaded app from partition at offset 0x10000" in console
    assert "node shaft-01 (shaft, site north)" in console

    device = Registry(testbed.registry_url).get("shaft-01")
    assert device.provisioned_at is not None and device.provision_status == "provisioned"
    assert device.mac == "24:0a:c4:00:01:00" and device.firmware_version == "v1.24.1"
    assert device.settings()["shaft"] == {"depth_mm": DEPTH_MM}
    # The key material went onto the board and nowhere else.
    for secret in (device.master_secret.hex(), device.master_salt.hex(), "not-a-real-key"):
        assert secret not in out + err


def test_second_run_skips_the_firmware_and_the_node_keeps_its_counter(testbed, site, cache,
                                                                      boards, mqtt, capsys):
    dut = boards[0]
    argv = fleet(testbed, cache, "provision", dut.rom_url, "--device", "shaft-01",
                 "--role", "shaft", "--site", "north", *NODE_SETTINGS)
    assert run_fleet(capsys, argv)[0] == 0
    mqtt.wait_for(_up("shaft-01"), timeout=20)
    seen = len(mqtt.messages)
    # A newer image arrives in the cache, but the site stays on v1.24.1: a run that names only
    # the port must follow the profile of the site the board's device belongs to.
    newer = cache.parent / "ESP32_GENERIC-20250415-v1.25.0.bin"
    newer.write_bytes(merged_image(BOARD, build_app_image("micropython", "v1.25.0")))
    add_to_cache(newer, BOARD, cache)
    assert fleet_main(["--registry", testbed.registry_url, "site", "set", "north",
                       "--firmware", "v1.24.1"]) == 0
    # Again, now found by its MAC: the firmware is already there, the settings are remembered.
    started = time.monotonic()
    code, out, err = run_fleet(capsys, fleet(testbed, cache, "provision", dut.rom_url))
    show(capsys, "\n$ fleet provision %s (second run)\n%s%s(%.1f s)"
          % (dut.rom_url, out, err, time.monotonic() - started))
    assert code == 0, err
    assert "micropython v1.24.1 already on the board" in out
    assert "firmware     " in out and "written" not in out.split("firmware")[1].split("\n")[0]
    mqtt.wait_for(lambda t, p: _up("shaft-01")(t, p) and (t, p) not in mqtt.messages[:seen],
                  timeout=20)
    # The node continued from its sequence mark: nothing it sent was taken for a replay.
    metrics = testbed.gateway.metrics()
    assert metrics.get('gateway_frames_rejected_total{reason="replay"}', 0) == 0


def test_rotated_key_reaches_the_gateway_and_a_replacement_board_needs_one(
        testbed, site, cache, boards, mqtt, capsys):
    first, spare = boards[0], boards[1]
    base = ["--device", "shaft-01", "--role", "shaft", "--site", "north", *NODE_SETTINGS]
    assert run_fleet(capsys, fleet(testbed, cache, "provision", first.rom_url, *base))[0] == 0
    old_secret = Registry(testbed.registry_url).get("shaft-01").master_secret

    # The board broke; a spare takes over as shaft-01. Its key was used on the old board,
    # whose message counter the spare does not have: refused, and nothing is written.
    code, _out, err = run_fleet(capsys, fleet(testbed, cache, "provision", spare.rom_url, *base,
                                              "--reassign"))
    assert code == 1 and "reuse OSCORE nonces. Provision it with --rotate-key" in err
    assert len(err.strip().splitlines()) == 1
    assert spare.state == "blank"

    code, out, err = run_fleet(capsys, fleet(testbed, cache, "provision", spare.rom_url, *base,
                                             "--reassign", "--rotate-key"))
    assert code == 0, err
    device = Registry(testbed.registry_url).get("shaft-01")
    assert device.master_secret != old_secret and device.key_rotated_at is not None
    assert device.mac == "24:0a:c4:00:01:01"
    # The gateway took the new key from the registry on the node's first frame, although the
    # spare counts from 0, below the numbers the first board used: nothing taken for a replay.
    assert "uplink    city/north/shaft-01/status" in out
    mqtt.wait_for(_up("shaft-01"), timeout=20)
    metrics = testbed.gateway.metrics()
    assert metrics.get('gateway_frames_rejected_total{reason="replay"}', 0) == 0


def test_without_waiting_the_registry_says_the_uplink_was_not_watched(testbed, site, cache,
                                                                     boards, capsys):
    code, out, err = run_fleet(capsys, fleet(testbed, cache, "provision", boards[0].rom_url,
                                             "--device", "shaft-01", "--role", "shaft",
                                             "--site", "north", "--no-wait"))
    assert code == 0, err
    assert "report       0.0 s  not watched (--no-wait)" in out and "uplink    not watched" in out
    device = Registry(testbed.registry_url).get("shaft-01")
    assert device.provision_status == "provisioned"
    assert device.provision_message.endswith("written, verified and reset; uplink not watched")


# --- errors a field engineer can act on -------------------------------------------------------

def _assert_refused(capsys, argv, message, registry_url, device="shaft-01"):
    code, out, err = run_fleet(capsys, argv)
    show(capsys, "\n$ fleet %s\n%s" % (" ".join(argv[2:]), err.strip()))
    assert code == 1
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    reg = Registry(registry_url)
    assert all(d.provisioned_at is None for d in reg.devices() if d.id == device)
    return err


def test_no_answer_on_the_port(testbed, site, cache, boards, capsys):
    # The console port is what a field engineer picks by mistake: MicroPython, not the ROM.
    dut = boards[0]
    _assert_refused(capsys, fleet(testbed, cache, "provision", dut.console_url, "--device",
                                  "shaft-01", "--role", "shaft", "--site", "north"),
                    "no ESP chip answered on %s: hold BOOT" % dut.console_url,
                    testbed.registry_url)
    assert Registry(testbed.registry_url).devices() == []


def test_port_busy(testbed, site, cache, boards, capsys):
    dut = boards[0]
    holder = socket.create_connection(("127.0.0.1", dut.vboard.rom_port))
    try:   # another esptool has the board: synced, and the ROM serves one client at a time
        holder.sendall(slip_encode(struct.pack("<BBHI", 0, 8, 36, 0)
                                   + b"\x07\x07\x12\x20" + b"\x55" * 32))
        time.sleep(0.3)
        _assert_refused(capsys, fleet(testbed, cache, "provision", dut.rom_url, "--device",
                                      "shaft-01", "--role", "shaft", "--site", "north"),
                        "%s is busy: another program" % dut.rom_url, testbed.registry_url)
    finally:
        holder.close()


def _app_image_for_chip(image_chip_id: int) -> bytes:
    """A stand-in MicroPython app whose header says it is built for another chip."""
    app = bytearray(build_app_image("micropython", "v1.24.1"))
    app[12:14] = struct.pack("<H", image_chip_id)
    app[-32:] = hashlib.sha256(app[:-32]).digest()      # esptool appends the image's SHA-256
    return bytes(app)


def test_wrong_chip(testbed, site, cache, boards, capsys, monkeypatch, tmp_path):
    """Told to provision an ESP32-S3 board, the tool finds an ESP32 on the port."""
    s3 = dataclasses.replace(BOARD, name="esp32s3-devkitc-test", chip="esp32s3")
    monkeypatch.setitem(BOARDS, s3.name, s3)
    image = tmp_path / "ESP32_GENERIC_S3-v1.24.1.bin"
    image.write_bytes(merged_image(s3, _app_image_for_chip(9)))     # 9: ESP32-S3
    _assert_refused(capsys, fleet(testbed, cache, "provision", boards[0].rom_url, "--device",
                                  "shaft-01", "--role", "shaft", "--site", "north", "--board",
                                  s3.name, "--firmware", str(image)),
                    "the chip on this port is an ESP32 (ESP32-D0WD-V3 (revision v3.1)), but "
                    "board esp32s3-devkitc-test has an ESP32-S3", testbed.registry_url)
    assert Registry(testbed.registry_url).devices() == []
    # and the ESP32 image is refused for the S3 board before any port is opened
    _assert_refused(capsys, fleet(testbed, cache, "provision", "socket://127.0.0.1:1",
                                  "--device", "shaft-01", "--role", "shaft", "--site", "north",
                                  "--board", s3.name, "--firmware", str(
                                      cache / BOARD.name / "ESP32_GENERIC-20241129-v1.24.1.bin")),
                    "is built for the ESP32, board esp32s3-devkitc-test has an ESP32-S3",
                    testbed.registry_url)


def test_flash_too_small(testbed, site, cache, capsys, tmp_path):
    small = dataclasses.replace(BOARD, name="esp32-2mb-test", flash_size=2 * MB)
    flash = FlashFile(tmp_path / "small.bin", small.flash_size)
    try:
        with serve_in_thread(flash, small, 0x77) as rom:
            _assert_refused(capsys, fleet(testbed, cache, "provision",
                                          "socket://127.0.0.1:%d" % rom.port, "--device",
                                          "shaft-01", "--role", "shaft", "--site", "north"),
                            "this chip has 2 MB of flash, board esp32-devkitc needs 4 MB",
                            testbed.registry_url)
    finally:
        flash.close()


def test_firmware_too_large_for_its_partition(testbed, site, cache, boards, capsys, tmp_path):
    big = tmp_path / "huge.bin"
    app = build_app_image("micropython", "v1.24.1", payload_size=0x1D0000)
    big.write_bytes(merged_image(BOARD, app))
    _assert_refused(capsys, fleet(testbed, cache, "provision", boards[0].rom_url, "--device",
                                  "shaft-01", "--role", "shaft", "--site", "north",
                                  "--firmware", str(big)),
                    "is larger than its own app partition (1,900,544 bytes)",
                    testbed.registry_url)


def test_app_too_large_for_the_filesystem(testbed, site, cache, boards, capsys, tmp_path):
    """Firmware whose partition table leaves a 16 KB filesystem: refused before writing."""
    tiny = dataclasses.replace(BOARD, partitions=BOARD.partitions[:-1] + (
        Partition("vfs", "data", "fat", 0x200000, 0x4000),))
    image = tmp_path / "tiny-vfs.bin"
    image.write_bytes(merged_image(tiny, build_app_image("micropython", "v1.24.1")))
    dut = boards[0]
    _assert_refused(capsys, fleet(testbed, cache, "provision", dut.rom_url, "--device",
                                  "shaft-01", "--role", "shaft", "--site", "north",
                                  "--firmware", str(image)),
                    "do not fit the 16 KB filesystem partition 'vfs'", testbed.registry_url)
    assert dut.state == "blank"     # refused before anything was written


def test_verify_failure_leaves_the_device_unprovisioned(testbed, site, cache, boards, capsys):
    dut = boards[0]
    flash = dut.vboard.flash
    program = flash.program

    def stuck_bit(offset, data):      # one bit of the filesystem area reads 0 forever
        at = 0x200000 + 100
        if offset <= at < offset + len(data):
            data = bytearray(data)
            data[at - offset] &= 0xFE
        program(offset, bytes(data))
    flash.program = stuck_bit
    try:
        _assert_refused(capsys, fleet(testbed, cache, "provision", dut.rom_url, "--device",
                                      "shaft-01", "--role", "shaft", "--site", "north"),
                        "verify failed", testbed.registry_url)
    finally:
        flash.program = program
    device = Registry(testbed.registry_url).get("shaft-01")
    assert device.provision_status == "failed" and "verify failed" in device.provision_message


def test_no_uplink_leaves_the_device_unprovisioned(testbed, site, cache, boards, capsys):
    # The site profile points the nodes at a gateway port where nobody answers.
    reg = Registry(testbed.registry_url)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        reg.set_site("north", gateway_port=s.getsockname()[1])
        _assert_refused(capsys, fleet(testbed, cache, "provision", boards[0].rom_url,
                                      "--device", "shaft-01", "--role", "shaft", "--site",
                                      "north", "--uplink-timeout", "4"),
                        "the node did not report within 4 s", testbed.registry_url)
    device = reg.get("shaft-01")
    assert device.provision_status == "failed" and device.mac == "24:0a:c4:00:01:00"


def test_board_registered_as_another_device_is_not_taken_silently(testbed, site, cache, boards,
                                                                   capsys, tmp_path):
    dut = boards[0]
    assert run_fleet(capsys, fleet(testbed, cache, "provision", dut.rom_url, "--device",
                                   "shaft-01", "--role", "shaft", "--site", "north",
                                   *NODE_SETTINGS))[0] == 0
    _assert_refused(capsys, fleet(testbed, cache, "provision", dut.rom_url, "--device",
                                  "shaft-02", "--role", "shaft", "--site", "north"),
                    "this board (MAC 24:0a:c4:00:01:00) is registered as shaft-01",
                    testbed.registry_url, device="shaft-02")
    # Even with --reassign, a run refused before writing leaves shaft-01 as it was.
    tiny = dataclasses.replace(BOARD, partitions=BOARD.partitions[:-1] + (
        Partition("vfs", "data", "fat", 0x200000, 0x4000),))
    image = tmp_path / "tiny-vfs.bin"
    image.write_bytes(merged_image(tiny, build_app_image("micropython", "v1.24.1")))
    _assert_refused(capsys, fleet(testbed, cache, "provision", dut.rom_url, "--device",
                                  "shaft-02", "--role", "shaft", "--site", "north",
                                  "--reassign", "--firmware", str(image)),
                    "do not fit the 16 KB filesystem partition", testbed.registry_url,
                    device="shaft-02")
    reg = Registry(testbed.registry_url)
    assert [d.id for d in reg.devices()] == ["shaft-01"]      # shaft-02 was not left behind
    kept = reg.get("shaft-01")
    assert kept.provisioned_at is not None and kept.mac == "24:0a:c4:00:01:00"


# --- batch ------------------------------------------------------------------------------------

def test_batch_provisions_boards_as_they_are_plugged_in(testbed, site, cache, boards, mqtt,
                                                        capsys, tmp_path):
    ports = tmp_path / "ports"
    ports.mkdir()

    def plug_in():      # an engineer plugs the boards in one after another
        for i, dut in enumerate(boards):
            (ports / ("board-%02d.port" % i)).write_text(dut.rom_url + "\n")
            time.sleep(1.0)
    plugger = threading.Thread(target=plug_in)
    plugger.start()
    started = time.monotonic()
    try:
        code, out, err = run_fleet(capsys, fleet(
            testbed, cache, "batch", "--site", "north", "--role", "shaft",
            "--names", "shaft-{n:02d}", "--ports-dir", str(ports), "--count", "3",
            *NODE_SETTINGS))
    finally:
        plugger.join()
    show(capsys, "\n%s%s(%.1f s for 3 boards)" % (out, err, time.monotonic() - started))
    assert code == 0, err
    table = out[out.index("PORT "):]
    for i, dut in enumerate(boards):
        assert "%s  shaft-%02d  24:0a:c4:00:01:%02x  provisioned" % (
            dut.rom_url, i + 1, i) in table
    assert "3 provisioned, 0 failed" in out
    for i in range(3):
        mqtt.wait_for(_up("shaft-%02d" % (i + 1)), timeout=20)


def test_the_console_script_runs_as_a_field_engineer_types_it(testbed, site, cache, boards,
                                                              mqtt):
    dut = boards[0]
    proc = subprocess.run([str(BIN / "fleet"), *fleet(testbed, cache, "provision", dut.rom_url,
                                                       "--device", "shaft-07", "--role",
                                                       "shaft", "--site", "north",
                                                       *NODE_SETTINGS)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stdout        # not a terminal: step lines, no repainted bars
    steps = [line.split()[0] for line in proc.stdout.splitlines()[:5]]
    assert steps == ["connect", "firmware", "files", "verify", "report"]
    mqtt.wait_for(_up("shaft-07"), timeout=20)


@pytest.mark.filterwarnings("ignore::DeprecationWarning:serial.rfc2217")
def test_over_rfc2217_esptool_resets_the_board_into_the_rom_and_back(testbed, site, cache,
                                                                    boards, mqtt, capsys):
    """A rack's remote serial port: DTR/RTS work, so the tool resets a running board into its
    ROM loader and, at the end, hard-resets it into the new firmware (slow: pyserial's RFC
    2217 client waits for each setting to be acknowledged)."""
    dut = boards[0]
    port = dut.call(dut.vboard.rom.start_rfc2217())
    url = "rfc2217://127.0.0.1:%d" % port
    code, out, err = run_fleet(capsys, fleet(testbed, cache, "provision", url, "--device",
                                             "shaft-01", "--role", "shaft", "--site", "north",
                                             *NODE_SETTINGS))
    show(capsys, "\n%s%s" % (out, err))
    assert code == 0, err + dut.console_text()[-2000:]
    console = dut.console_text()
    assert "waiting for download" in console           # esptool's reset into the ROM
    assert console.rindex("SPI_FAST_FLASH_BOOT") > console.rindex("waiting for download")
    mqtt.wait_for(_up("shaft-01"), timeout=20)
