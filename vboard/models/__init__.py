"""Sensor and actuator models of the virtual board, modelled at the bus (see base.py)."""
