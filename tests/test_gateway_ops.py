"""What an operator sees: /metrics, /health, the stats message, the logs (never with keys),
MQTT with a password over TLS, check-config."""

import asyncio
import json
import subprocess
import urllib.request

from bench.harness import GatewayUnderTest, wait_until
from gateway import metrics
from gateway.cli import main as gateway_main
from registry.db import Registry
from testbed.broker import Broker, free_port, reserved_port
from testbed.gwharness import Listener, Node, make_config, running
from testbed.nodesim import SimNode, reading

REQUIRED_METRICS = (
    "gateway_frames_in_total", "gateway_frames_accepted_total", "gateway_frames_published_total",
    'gateway_frames_rejected_total{reason="bad_tag"}', "gateway_spool_rows",
    "gateway_spool_oldest_age_seconds", 'gateway_devices_known{role="shaft"}',
    'gateway_devices_known{role="lighting"}', "gateway_ack_latency_seconds_bucket",
    "gateway_publish_latency_seconds_count", "gateway_mqtt_connected",
    "gateway_resident_memory_bytes", "gateway_commands_pending")


def _get(port, path):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def test_metrics_health_and_stats(tmp_path, broker):
    registry = Registry("sqlite:///%s" % (tmp_path / "fleet.db"))
    shaft = registry.add_device("shaft-01", "shaft", "north")
    registry.add_device("lamp-01", "lighting", "north")
    http_port = free_port()
    cfg = make_config(tmp_path, broker.port, registry.url,
                      http={"port": http_port}, mqtt={"stats_interval_s": 1})
    listener = await Listener().start(broker.port, "city/#")
    async with running(cfg) as gw:
        node = Node(SimNode.of(shaft), gw.config.coap.port)
        await node.post("u", reading(5))
        datagram, _ = node.sim.request("u", reading(6), mid=node.next_mid())
        damaged = bytearray(datagram)
        damaged[-1] ^= 1
        node.send_raw(bytes(damaged))
        await node.receive()
        await listener.wait_for("north/shaft-01/up")
        await asyncio.sleep(0.3)             # the PUBACK behind it
        status, text = await asyncio.to_thread(_get, http_port, "/metrics")
        assert status == 200
        for name in REQUIRED_METRICS:
            assert name in text, name
        # every counter is on the page from the start: the values say what happened
        values = metrics.parse(text)
        # a new device's first request (answered with an Echo challenge), its retry, the forgery
        assert values["gateway_frames_in_total"] == 3
        assert values['gateway_frames_accepted_total{resource="up",role="shaft"}'] == 1
        assert values['gateway_frames_rejected_total{reason="bad_tag"}'] == 1
        assert values['gateway_frames_published_total{resource="up"}'] == 1
        assert values["gateway_publish_latency_seconds_count"] == 1
        assert values['gateway_devices_known{role="shaft"}'] == 1
        status, body = await asyncio.to_thread(_get, http_port, "/health")
        assert status == 200 and json.loads(body)["mqtt"] == "connected"
        async with asyncio.timeout(5):
            while True:       # one message per second; wait for one that saw the forgery
                stats = json.loads(listener.on("gw-test/stats")[-1]) \
                    if listener.on("gw-test/stats") else {}
                if stats.get("rejected", {}).get("bad_tag"):
                    break
                await asyncio.sleep(0.1)
        assert stats["devices"] == {"lighting": 1, "shaft": 1}
        assert stats["rejected"]["bad_tag"] == 1 and isinstance(stats["spool"]["rows"], int)
        assert (await asyncio.to_thread(_get, http_port, "/nothing"))[0] == 404
        node.close()
    await listener.close()


async def test_health_is_503_without_the_broker(tmp_path):
    registry = Registry("sqlite:///%s" % (tmp_path / "fleet.db"))
    http_port = free_port()
    with reserved_port() as no_broker:
        cfg = make_config(tmp_path, no_broker, registry.url, http={"port": http_port})
        async with running(cfg, connected=False):
            status, body = await asyncio.to_thread(_get, http_port, "/health")
            assert status == 503
            detail = json.loads(body)
            assert detail["mqtt"] == "disconnected" and "mqtt_error" in detail


def test_logs_are_structured_and_never_contain_keys(tmp_path):
    """A debug-level JSON log of a gateway that saw valid, forged and unknown frames, with an
    MQTT password: no master secret, salt or password appears in it."""
    registry = Registry("sqlite:///%s" % (tmp_path / "fleet.db"))
    devices = [registry.add_device("shaft-%02d" % i, "shaft", "north") for i in range(3)]
    pwfile = tmp_path / "passwd"
    pwfile.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(pwfile), "gateway", "hunter2-pw"], check=True)
    broker = Broker(conf="allow_anonymous false\npassword_file %s\n" % pwfile,
                    log_path=tmp_path / "mosquitto.log").start()
    port = broker.port
    gw = GatewayUnderTest(tmp_path / "gw", registry.url, port,
                          extra='[log]\nlevel = "debug"\nformat = "json"\n')
    gw.config.write_text(gw.config.read_text().replace(
        'prefix = "city"', 'prefix = "city"\nusername = "gateway"\npassword = "hunter2-pw"'))
    gw.start()
    try:
        async def talk():
            for device in devices:
                node = Node(SimNode.of(device), gw.coap_port)
                await node.post("u", reading(1))
                forged = SimNode(device.kid_bytes, bytes(16), device.master_salt, seq=10 ** 6)
                datagram, _ = forged.request("u", reading(2), mid=5)
                node.send_raw(datagram)
                await node.receive()
                node.close()
        asyncio.run(talk())
        # the password worked
        assert wait_until(lambda: gw.health()[1]["mqtt"] == "connected", 10), gw.log_text()
    finally:
        gw.stop()
        broker.close()
    log = gw.log_text()
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert lines and all({"t", "level", "logger", "msg"} <= set(r) for r in lines)
    assert any(r.get("reason") == "bad_tag" for r in lines)
    for device in devices:
        for secret in (device.master_secret.hex(), device.master_salt.hex(),
                       device.master_secret.hex().upper()):
            assert secret not in log
    assert "hunter2-pw" not in log


def test_check_config_reports_the_new_sections(tmp_path, capsys):
    path = tmp_path / "gw.toml"
    path.write_text('[coap]\nbind = "0.0.0.0"\nport = 5683\n[mqtt]\nurl = "mqtts://b:8883"\n'
                    'prefix = "city"\nca_file = "/etc/ssl/ca.pem"\n'
                    '[registry]\nurl = "sqlite:///f.db"\n'
                    '[spool]\nmax_rows = 1000\nwhen_full = "drop_oldest"\n'
                    '[neighbours]\nenabled = true\ndistance_m = 45\n')
    assert gateway_main(["check-config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "mqtts://b:8883" in out and "drop_oldest" in out and "neighbours on" in out
