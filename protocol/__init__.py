"""What node firmware, gateway, fleet and testbed agree on: the protocol of docs/protocol.md.

The bottom layer (docs/architecture.md): it imports nothing of the project. Each definition
lives here once and everything above uses it; what the MicroPython firmware must share is
generated from it or held to it by a test (tests/test_vocabulary.py, tests/test_firmware_pins.py).

- ``vocabulary``: the SenML names, units and roles (§4);
- ``wire``: CoAP resources, content formats, response codes, retransmission (§1, §2, §6);
- ``envelope``: the downlink envelope and a command's wire form (§2, §8.2);
- ``topics``: the MQTT topic names (§7);
- ``commands``: the downlink command set (§8.3); ``outcomes``: what became of a command (§8.6).
"""
