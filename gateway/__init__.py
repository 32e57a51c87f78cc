"""Gateway: verifies OSCORE uplinks from nodes, decodes SenML-CBOR and publishes to MQTT."""
