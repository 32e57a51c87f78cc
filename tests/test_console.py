"""The virtual board's console plumbing: input the VM is not reading must not stall the event
loop every board of a fleet shares, and a client that stops reading must not grow memory."""

import asyncio
import hashlib
import os
import socket
import sys
import time

from vboard.console import INPUT_BUFFER, OUTPUT_BUFFER, ConsoleServer, VmProcess

# A stand-in for the VM: reads N bytes of stdin once told to (a line), half a second later,
# and prints their SHA-256.
READER = ("import sys, hashlib, time\n"
          "n = int(sys.stdin.buffer.readline())\n"
          "time.sleep(0.5)\n"
          "data = b''\n"
          "while len(data) < n:\n"
          "    data += sys.stdin.buffer.read1(n - len(data))\n"
          "print(hashlib.sha256(data).hexdigest(), flush=True)\n")


async def test_input_the_vm_is_not_reading_waits_without_blocking_the_loop(tmp_path):
    out = bytearray()
    vm = VmProcess([sys.executable, "-c", READER], dict(os.environ), str(tmp_path), out.extend)
    await vm.start()
    data = (b"0123456789abcdef" * 4096)[:60_000]          # more than a pty takes at once
    ticks = 0

    async def tick():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)
    ticker = asyncio.create_task(tick())
    vm.write(b"%d\n" % len(data))
    t0 = time.monotonic()
    vm.write(data)                       # returns at once: the rest waits for the reader
    took = time.monotonic() - t0
    await asyncio.wait_for(vm.wait(), 20)
    ticker.cancel()
    assert hashlib.sha256(data).hexdigest().encode() in bytes(out)   # every byte arrived
    assert took < 0.1 and ticks >= 10    # the loop ran while the reader slept 0.5 s


async def test_input_beyond_the_buffer_is_dropped_not_spun_on(tmp_path):
    vm = VmProcess([sys.executable, "-c", "import time; time.sleep(30)"], dict(os.environ),
                   str(tmp_path), lambda data: None)
    await vm.start()
    try:
        for _ in range(8):
            vm.write(b"x" * 64 * 1024)   # nobody reads: without a bound this loops forever
        assert len(vm._pending) == INPUT_BUFFER
    finally:
        await vm.kill()
    assert len(vm._pending) == 0


async def test_output_for_a_client_that_does_not_read_is_dropped_beyond_a_bound():
    console = ConsoleServer(lambda data: None)
    await console.start("127.0.0.1", 0)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", console.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        for _ in range(200):
            await asyncio.sleep(0)
            if console.connected:
                break
        assert console.connected
        chunk = b"y" * 65536
        for _ in range(256):             # 16 MB towards a client that reads nothing
            console.emit(chunk)
            await asyncio.sleep(0)
        assert console.dropped > 0
        buffered = console._writer.transport.get_write_buffer_size()
        assert buffered < OUTPUT_BUFFER + len(chunk)
    finally:
        writer.close()
        await console.stop()
