"""The device registry: which devices exist, where they stand, their OSCORE keys and sites.

Shared by the gateway (it reads each device's key) and the fleet tools (they write them), so it
sits below both (docs/architecture.md) and imports only the protocol's roles.
"""
