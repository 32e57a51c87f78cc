# The virtual board's first-stage boot, run by the MicroPython VM (`micropython -i _vboot.py`).
#
# It does what the ESP32 port's frozen _boot.py and main loop do: mount the filesystem partition
# of the flash at "/" (formatting it on first boot, as inisetup does), then run boot.py and, on a
# normal boot, main.py; then the REPL starts. The hardware shims are imported first, because
# after the remount the host's files are out of reach.
#
# Its globals are the REPL's: main.py runs in them, as pyexec_file does on the ESP32.

for _name in ("_vbus", "time", "select", "os", "machine", "network", "esp32", "esp",
              "_vflash"):
    __import__(_name)
del _name
__import__("_vflash").boot(globals())
