"""Board definitions and the ESP32 formats that real and virtual boards share: partition
table, app image and descriptor, otadata and boot selection, firmware files, littlefs images,
and where the node application lives.

The bottom layer with protocol/ (docs/architecture.md): the fleet tools read real chips with
it, the virtual board lays out and boots its flash file with it.
"""
