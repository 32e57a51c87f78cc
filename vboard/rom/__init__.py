"""The virtual ESP32's ROM serial bootloader: unmodified esptool flashes a virtual board over TCP.

The package re-exports nothing: import each name from the module that defines it.
"""
