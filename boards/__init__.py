"""Board definitions and the ESP32 formats real and virtual boards share: partition table, app image and descriptor, otadata, littlefs images."""
