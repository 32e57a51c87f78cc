"""The virtual ESP32 board: the real MicroPython VM behind a flash file, a console, a ROM
bootloader and sensors modelled at the bus, in a world with scenarios and faults.

It runs the same firmware as a real board (docs/virtual-boards.md). It builds on the board
definitions and ESP32 formats of boards/, never on the gateway, the fleet tools or the testbed
(docs/architecture.md).
"""
