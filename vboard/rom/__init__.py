"""The virtual ESP32's ROM serial bootloader: unmodified esptool flashes a virtual board over TCP.

``vboard.rom.server.RomBootloader`` serves the ESP32 (rev v3.1, ESP32-D0WD-V3, 40 MHz crystal)
UART download protocol on a TCP port, so ``esptool --chip esp32 --port socket://HOST:PORT
--before no-reset`` reads the MAC, identifies the flash and writes, verifies, reads and erases
a ``vboard.flash.FlashFile``, with and without esptool's flasher stub. The flash answers RDID
as a GigaDevice GD25Q (C8 40 16 for 4 MB). ``start_rfc2217`` serves the same chip behind an
RFC 2217 port with a DevKitC's auto-reset circuit, so esptool's default DTR/RTS reset
sequences switch the board between its firmware and the ROM.

One idea per module; each imports only modules listed below it (pyproject.toml's contract):

    server.py   the TCP server (RomBootloader) and serve_in_thread
    rfc2217.py  the RFC 2217 port with a DevKitC's auto-reset circuit
    session.py  one client's session: the ROM's download protocol and the flasher stub's
    chip.py     registers, eFuse, flash ID and SFDP as esptool reads them; the ROM's boot messages
    slip.py     SLIP framing and the data checksum

The package re-exports nothing: import each name from the module that defines it.
"""
