"""One node's reading travels firmware -> CoAP/OSCORE -> gateway -> MQTT, end to end; and what
must not travel (replays, wrong keys, strangers, malformed frames) does not."""

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiocoap
import cbor2
from aiocoap.oscore import NotAProtectedMessage

from fleet.cli import main as fleet_main
from registry.db import export_oscore
from testbed.gwharness import aiocoap_as_device
from testbed.netem import UdpRelay

SHAFT = {"shaft": {"depth_mm": 3000}, "standin": {"dist_mm": 1766}}


def _up(device):
    return lambda topic, payload: topic.endswith("/%s/up" % device)


def test_node_reading_arrives_on_mqtt_as_senml_json(testbed, mqtt):
    started = time.monotonic()
    testbed.add_node("shaft-01", "shaft", "north", interval_s=2, extra=SHAFT)
    (topic, payload), = mqtt.wait_for(_up("shaft-01"), timeout=20)
    elapsed = time.monotonic() - started
    assert topic == "city/north/shaft-01/up"
    records = json.loads(payload)
    assert records[0]["bn"] == "urn:dev:id:shaft-01:"
    level = next(r for r in records if r["n"] == "level")
    assert (level["u"], level["v"]) == ("mm", 3000 - 1766)
    assert abs(level["t"] - time.time()) < 30
    assert elapsed < 20
    # the status frame from boot went to its own topic
    (_, status), = mqtt.wait_for(lambda t, p: t == "city/north/shaft-01/status", timeout=5)
    assert {r["n"] for r in json.loads(status)} >= {"fw", "app", "uptime", "heap"}


def _send_raw(port, datagram, timeout=3.0):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(datagram, ("127.0.0.1", port))
        return s.recv(2048)


def test_replayed_frame_is_rejected_and_never_published(testbed, mqtt):
    relay = UdpRelay(testbed.gateway.coap_port)
    try:
        testbed.add_node("shaft-01", "shaft", "north", interval_s=60, extra=SHAFT,
                         gateway_port=relay.port)
        mqtt.wait_for(_up("shaft-01"), timeout=20)
        # The accepted uplink is the last datagram the node sent; an attacker replays it with a
        # fresh message id (so CoAP deduplication does not simply repeat the cached answer).
        accepted = relay.uplink[-1]
        published_before = len([m for m in mqtt.messages if _up("shaft-01")(*m)])
        replay = bytearray(accepted)
        replay[2:4] = ((int.from_bytes(accepted[2:4], "big") + 77) % 65536).to_bytes(2, "big")
        answer = aiocoap.Message.decode(_send_raw(testbed.gateway.coap_port, bytes(replay)))
        assert answer.code == aiocoap.UNAUTHORIZED
        assert answer.payload == b"Replay detected"
        time.sleep(1.0)
        assert len([m for m in mqtt.messages if _up("shaft-01")(*m)]) == published_before
        assert testbed.gateway.metrics()['gateway_frames_rejected_total{reason="replay"}'] == 1
    finally:
        relay.close()


async def _post_all(ctx_dir, port, payloads):
    """POST each payload to /u speaking as the device whose context is in ``ctx_dir``."""
    responses = []
    async with aiocoap_as_device(ctx_dir) as ctx:
        for payload in payloads:
            req = aiocoap.Message(code=aiocoap.POST, uri="coap://127.0.0.1:%d/u" % port,
                                  payload=payload, content_format=112)
            try:
                responses.append(await asyncio.wait_for(ctx.request(req).response, 20))
            except NotAProtectedMessage as exc:
                # an error the gateway's OSCORE layer sent in the clear
                responses.append(exc.plain_message)
    return responses


def _post_with(ctx_dir, port, payload):
    return asyncio.run(_post_all(ctx_dir, port, [payload]))[0]


def test_frame_under_a_wrong_key_is_rejected_and_never_published(testbed, mqtt, tmp_path):
    device = testbed.registry.add_device("shaft-09", "shaft", "north")
    ctx_dir = tmp_path / "wrong"
    export_oscore(device, ctx_dir, seq_start=0)
    secret = json.loads((ctx_dir / "secret.json").read_text())
    secret["secret_hex"] = bytes(16).hex()  # an attacker who knows the key id but not the key
    (ctx_dir / "secret.json").write_text(json.dumps(secret))
    response = _post_with(ctx_dir, testbed.gateway.coap_port,
                                      cbor2.dumps([{0: "level", 2: 1}]))
    assert (response.code, response.payload) == (aiocoap.BAD_REQUEST, b"Decryption failed")
    time.sleep(0.5)
    assert not [m for m in mqtt.messages if _up("shaft-09")(*m)]
    assert testbed.gateway.metrics()['gateway_frames_rejected_total{reason="bad_tag"}'] >= 1


def test_unknown_key_id_gets_unauthorized(testbed, tmp_path):
    device = testbed.registry.add_device("shaft-10", "shaft", "north")
    ctx_dir = tmp_path / "stranger"
    export_oscore(device, ctx_dir, seq_start=0)
    settings = json.loads((ctx_dir / "settings.json").read_text())
    settings["sender-id_hex"] = "7777"  # a key id the registry never issued
    (ctx_dir / "settings.json").write_text(json.dumps(settings))
    response = _post_with(ctx_dir, testbed.gateway.coap_port,
                                      cbor2.dumps([{0: "level", 2: 1}]))
    assert response.code == aiocoap.UNAUTHORIZED
    assert testbed.gateway.metrics()['gateway_frames_rejected_total{reason="unknown_kid"}'] == 1


def test_malformed_senml_under_a_valid_key_gets_bad_request(testbed, mqtt, tmp_path):
    device = testbed.registry.add_device("shaft-11", "shaft", "north")
    export_oscore(device, tmp_path / "ctx", seq_start=0)
    port = testbed.gateway.coap_port
    bad_cbor, unknown_name = asyncio.run(_post_all(tmp_path / "ctx", port, [
        b"\xff\xfe", cbor2.dumps([{0: "depth", 2: 3}])]))
    assert (bad_cbor.code, bad_cbor.payload) == (aiocoap.BAD_REQUEST, b"bad_cbor")
    assert (unknown_name.code, unknown_name.payload) == (aiocoap.BAD_REQUEST, b"unknown_name")
    metrics = testbed.gateway.metrics()
    assert metrics['gateway_frames_rejected_total{reason="bad_cbor"}'] == 1
    assert metrics['gateway_frames_rejected_total{reason="unknown_name"}'] == 1
    assert not [m for m in mqtt.messages if _up("shaft-11")(*m)]
    # garbage that is not CoAP at all: the gateway keeps serving the device
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"\x00garbage", ("127.0.0.1", port))
    ok, = asyncio.run(_post_all(tmp_path / "ctx", port, [cbor2.dumps([{0: "level", 2: 9}])]))
    assert ok.code == aiocoap.CHANGED
    (_, payload), = mqtt.wait_for(_up("shaft-11"), timeout=5)
    assert json.loads(payload)[0]["v"] == 9


def test_aiocoap_client_with_exported_context_gets_its_frame_published(testbed, mqtt, tmp_path,
                                                                      capsys):
    """What a field engineer does to debug: export a device's context and post by hand."""
    registry = ["--registry", testbed.registry_url]
    assert fleet_main(registry + ["device", "add", "shaft-12", "--role", "shaft",
                                  "--site", "south"]) == 0
    assert fleet_main(registry + ["device", "export-oscore", "shaft-12",
                                  str(tmp_path / "ctx")]) == 0
    client = shutil.which("aiocoap-client", path=str(Path(sys.executable).parent))
    proc = subprocess.run(
        [client, "--credentials", str(tmp_path / "ctx" / "credentials.json"), "-m", "POST",
         "--content-format", "112", "--payload", '[{0: "level", 2: 4321}]',
         "coap://127.0.0.1:%d/u" % testbed.gateway.coap_port],
        capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    (topic, payload), = mqtt.wait_for(_up("shaft-12"), timeout=10)
    assert topic == "city/south/shaft-12/up"
    assert json.loads(payload)[0]["v"] == 4321
