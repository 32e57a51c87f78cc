"""The gateway's lean MQTT client against mosquitto: QoS 1 both ways, the will, username and
password, TLS with a certificate the test makes."""

import asyncio
import datetime
import ipaddress
import socket
import subprocess
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway import config
from gateway.mqtt import MqttClient, MqttError, Will
from gateway.publisher import tls_context
from testbed.broker import Broker, reserved_port


def _mosquitto(tmp_path, conf: str) -> Broker:
    return Broker(conf=conf, log_path=tmp_path / "mosquitto.log").start()


@pytest.fixture
def plain_broker(tmp_path):
    broker = _mosquitto(tmp_path, "allow_anonymous true\n")
    yield broker.port
    broker.close()


async def _client(port, **kw):
    client = MqttClient()
    await client.connect("127.0.0.1", port, "t-%d" % time.time_ns(), **kw)
    return client


async def test_publish_subscribe_and_acknowledgements(plain_broker):
    sub = await _client(plain_broker)
    got = []
    sub.on_message = lambda t, p, q, pid: (got.append((t, p, q)), sub.ack(pid))
    await sub.subscribe([("a/#", 1)])
    pub = await _client(plain_broker)
    acked = []
    for i in range(1000):
        pub.publish("a/%d" % (i % 3), b"%d" % i, on_ack=lambda i=i: acked.append(i))
    async with asyncio.timeout(10):
        while len(got) < 1000 or len(acked) < 1000:
            await asyncio.sleep(0.01)
    assert sorted(acked) == list(range(1000)) and pub.inflight == 0
    assert [int(p) for _, p, _ in got] == list(range(1000))   # in order, QoS 1
    await pub.disconnect()
    await sub.disconnect()


async def test_the_will_is_published_when_the_connection_just_ends(plain_broker):
    watcher = await _client(plain_broker)
    seen = asyncio.Event()
    watcher.on_message = lambda t, p, q, pid: seen.set() if p == b"offline" else None
    await watcher.subscribe([("gw/state", 1)])
    dying = await _client(plain_broker, will=Will("gw/state", b"offline"))
    dying.close()                     # no DISCONNECT: the broker sends the will
    async with asyncio.timeout(5):
        await seen.wait()
    await watcher.disconnect()


async def test_username_and_password(tmp_path):
    pwfile = tmp_path / "passwd"
    pwfile.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(pwfile), "gateway", "s3cret"], check=True)
    broker = _mosquitto(tmp_path, "allow_anonymous false\npassword_file %s\n" % pwfile)
    port = broker.port
    try:
        with pytest.raises(MqttError, match="not authorized|bad user name"):
            await _client(port, username="gateway", password="wrong")
        ok = await _client(port, username="gateway", password="s3cret")
        await ok.disconnect()
    finally:
        broker.close()


def _certificates(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "citytestbed test CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
          .public_key(key.public_key()).serial_number(1)
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(key, hashes.SHA256()))
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
              .issuer_name(name).public_key(server_key.public_key()).serial_number(2)
              .not_valid_before(now - datetime.timedelta(days=1))
              .not_valid_after(now + datetime.timedelta(days=1))
              .add_extension(x509.SubjectAlternativeName(
                  [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
              .sign(key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(pem))
    (tmp_path / "server.pem").write_bytes(server.public_bytes(pem))
    (tmp_path / "server.key").write_bytes(server_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


async def test_tls_to_the_broker_with_a_private_ca(tmp_path):
    _certificates(tmp_path)
    tls = "cafile %s\ncertfile %s\nkeyfile %s\n" % (
        tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key")
    broker = _mosquitto(tmp_path, "allow_anonymous true\n" + tls)
    port = broker.port
    try:
        cfg = config.parse({"coap": {"bind": "127.0.0.1", "port": 5683},
                            "mqtt": {"url": "mqtts://127.0.0.1:%d" % port, "prefix": "city",
                                     "ca_file": str(tmp_path / "ca.pem")},
                            "registry": {"url": "sqlite:///x.db"}})
        client = MqttClient()
        await client.connect("127.0.0.1", port, "tls-test", tls=tls_context(cfg.mqtt))
        done = asyncio.Event()
        client.publish("t", b"over tls", on_ack=done.set)
        async with asyncio.timeout(5):
            await done.wait()
        await client.disconnect()
        # without the CA the broker's certificate is not trusted
        plain = config.parse({"coap": {"bind": "127.0.0.1", "port": 5683},
                              "mqtt": {"url": "mqtts://127.0.0.1:%d" % port, "prefix": "c"},
                              "registry": {"url": "sqlite:///x.db"}})
        with pytest.raises(MqttError, match="CERTIFICATE_VERIFY_FAILED|certificate"):
            await MqttClient().connect("127.0.0.1", port, "tls-test-2",
                                       tls=tls_context(plain.mqtt))
    finally:
        broker.close()


async def test_a_broker_that_is_not_there(tmp_path):
    with reserved_port() as port, pytest.raises(MqttError, match="cannot connect"):
        await MqttClient().connect("127.0.0.1", port, "nobody", timeout=2)


def test_a_stopped_broker_keeps_its_port(tmp_path):
    # A test that restarts the broker must find its port free: while the broker is away the
    # gateway is refused there, and nothing else can take it (a bind, or the ephemeral port
    # of some connection), yet the broker binds it again.
    broker = _mosquitto(tmp_path, "allow_anonymous true\n")
    try:
        broker.stop()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", broker.port), timeout=2)
        with socket.socket() as other, pytest.raises(OSError, match="in use"):
            other.bind(("127.0.0.1", broker.port))
        broker.start()
        socket.create_connection(("127.0.0.1", broker.port), timeout=2).close()
    finally:
        broker.close()
