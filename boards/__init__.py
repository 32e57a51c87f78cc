"""Board definitions and the virtual ESP32 board."""
