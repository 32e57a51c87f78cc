"""`make demo` is the project's front door: it must show readings and stop cleanly."""

import subprocess
import sys

import paho.mqtt.publish as publish

from testbed.broker import Broker
from testbed.mqttwatch import MqttWatch


def test_demo_prints_live_readings_and_stops_cleanly():
    proc = subprocess.run([sys.executable, "-m", "testbed.demo", "--seconds", "12",
                           "--interval", "2"], capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "MQTT broker:" in out
    readings = [line for line in out.splitlines() if "/up " in line]
    assert any("city/north/shaft-01/up" in line and "level=" in line for line in readings)
    assert any("city/north/shaft-02/up" in line for line in readings)
    assert "stopped cleanly" in out


def test_embedded_broker_carries_messages_when_mosquitto_is_absent():
    with Broker(prefer="amqtt") as broker:
        assert broker.kind == "amqtt"
        watch = MqttWatch(broker.url, "t/#")
        try:
            publish.single("t/x", b"hello", qos=1, hostname="127.0.0.1", port=broker.port)
            assert watch.wait_for(lambda t, p: p == b"hello", timeout=10)
        finally:
            watch.close()
