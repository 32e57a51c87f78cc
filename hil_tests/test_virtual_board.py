"""The board as tools and firmware see it: unmodified esptool and mpremote, the boot path, the
heap, power cuts, deep sleep, sensors at the bus, and many boards at once."""

import re
import socket
import subprocess
import time

from boards.app_image import build_app_image, merged_image
from boards.definitions import board as board_def
from boards.fsimage import build_littlefs
from boards.partition_table import parse_partition_table
from hil_tests.rack import BIN, VirtualDut, mpremote, virtual_boards
from vboard.flashimage import make_flash

BOARD = board_def("esp32-devkitc")


def test_blank_chip_prints_the_rom_messages_and_nothing_else(dut):
    dut.require("flash-file")
    out = dut.wait_console("flash read err, 1000")
    assert "rst:0x1 (POWERON_RESET)" in out
    assert "MicroPython" not in out and dut.state == "blank"


def test_esptool_writes_firmware_and_a_host_built_filesystem_and_main_py_boots(dut, tmp_path):
    # A stand-in image would leave a real board without working firmware: virtual boards only.
    dut.require("flash-file")
    firmware = tmp_path / "micropython.bin"
    firmware.write_bytes(merged_image(BOARD, build_app_image("micropython", "v1.23.0")))
    # Where the filesystem goes comes from the partition table in the firmware just written,
    # read back from the chip, never from a constant.
    assert dut.esptool("write-flash", "0x1000", str(firmware)).returncode == 0
    table = tmp_path / "table.bin"
    assert dut.esptool("read-flash", "0x8000", "0xc00", str(table)).returncode == 0
    vfs = next(p for p in parse_partition_table(table.read_bytes()) if p.name == "vfs")
    image = tmp_path / "fs.bin"
    image.write_bytes(build_littlefs({"main.py": b"print('main.py from the host image')\n",
                                     "lib/util.py": b"X = 1\n"}, vfs.size))
    written = dut.esptool("write-flash", hex(vfs.offset), str(image))
    assert written.returncode == 0, written.stdout + written.stderr
    verified = dut.esptool("verify-flash", hex(vfs.offset), str(image))
    assert verified.returncode == 0 and "digest matched" in verified.stdout
    if isinstance(dut, VirtualDut):
        out = dut.wait_console("main.py from the host image")
        # then the REPL's banner, with the version the app descriptor names
        dut.wait_console("MicroPython v1.23.0", since=out.index("main.py from the host image"))
        assert dut.state == "running"


def test_mpremote_copies_a_file_runs_it_and_manages_the_filesystem(mp_dut, tmp_path):
    url = mp_dut.console_url
    script = tmp_path / "hello.py"
    script.write_text("import os\nprint('hello from', os.uname().sysname)\n")
    run = mpremote(url, "fs", "cp", str(script), ":hello.py", "+", "fs", "mkdir", ":data",
                   "+", "fs", "ls", "+", "fs", "cat", ":hello.py", "+",
                   "fs", "sha256sum", ":hello.py", "+", "exec", "import hello")
    assert run.returncode == 0, run.stderr
    assert "hello.py" in run.stdout and "data/" in run.stdout
    assert "hello from esp32" in run.stdout
    import hashlib
    assert hashlib.sha256(script.read_bytes()).hexdigest() in run.stdout
    local = mpremote(url, "run", str(script))
    assert local.returncode == 0 and "hello from esp32" in local.stdout
    assert mpremote(url, "eval", "1 + 2").stdout.strip() == "3"
    removed = mpremote(url, "fs", "rm", ":hello.py", "+", "fs", "rmdir", ":data", "+", "fs", "ls")
    assert removed.returncode == 0 and "hello.py" not in removed.stdout.split("ls :")[-1]
    assert mpremote(url, "soft-reset").returncode == 0
    booted = mp_dut.vboard.boots if "vm" in mp_dut.capabilities else None
    assert mpremote(url, "reset").returncode == 0
    deadline = time.monotonic() + 15
    while mpremote(url, "eval", "1 + 2").stdout.strip() != "3":   # it comes back
        assert time.monotonic() < deadline, "no REPL after the reset"
        time.sleep(0.5)
    if booted is not None:
        assert mp_dut.vboard.boots == booted + 1  # machine.reset() rebooted the chip


def test_esptool_identifies_the_chip_and_its_flash_as_the_board_definition_says(dut):
    mac = dut.esptool("read-mac")       # --chip from the definition: esptool checks it
    assert mac.returncode == 0, mac.stdout + mac.stderr
    assert re.search(r"MAC:\s+([0-9a-f]{2}:){5}[0-9a-f]{2}", mac.stdout), mac.stdout
    flash = dut.esptool("flash-id")
    assert flash.returncode == 0, flash.stdout + flash.stderr
    assert "Detected flash size: %dMB" % (dut.board.flash_size >> 20) in flash.stdout


def test_a_person_gets_the_repl_through_a_pty_bridge(mp_dut, tmp_path):
    mp_dut.require("tcp-console")
    port = mp_dut.console_url.rsplit(":", 1)[1]
    link = tmp_path / "tty0"
    bridge = subprocess.Popen([str(BIN / "vboard"), "pty", port,
                               "--link", str(link)], stdout=subprocess.PIPE, text=True)
    try:
        assert "is on /dev/pts/" in bridge.stdout.readline()
        out = mpremote(str(link), "exec", "x = 6\nprint('answer', x * 7)")
        assert out.returncode == 0 and "answer 42" in out.stdout, out.stderr
    finally:
        bridge.terminate()
        bridge.wait(5)
    assert not link.exists()  # the bridge removes its link when it ends


def test_allocating_past_the_heap_budget_raises_memory_error(mp_dut):
    mp_dut.require("vm")       # the budget is the VM's (a real ESP32 has its own)
    probe = mpremote(mp_dut.console_url, "exec",
                     "import gc; gc.collect(); print('free', gc.mem_free())")
    free = int(probe.stdout.split("free")[-1])
    # The modelled ESP32 heap (110 KB), doubled for the 64-bit VM: the REPL has about that free.
    assert 200_000 < free < 240_000, free
    within = mpremote(mp_dut.console_url, "exec", "b = bytearray(%d); print('ok')" % (free // 2))
    assert "ok" in within.stdout
    past = mpremote(mp_dut.console_url, "exec", "b = bytearray(%d)" % (free + 4096))
    assert "MemoryError" in past.stdout + past.stderr


def _run_until_power_cut(dut, code, timeout=20.0):
    """Run ``code`` with mpremote; True if the board lost power meanwhile (mpremote is then
    left waiting on a dead chip, as it would be on a bench, and is stopped)."""
    proc = subprocess.Popen([str(BIN / "mpremote"), "connect", dut.console_url, "exec", code],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and dut.state != "off" and time.monotonic() < deadline:
        time.sleep(0.02)
    cut = dut.state == "off"
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    return cut


REPLACE = "with open('cfg.txt', 'w') as f:\n f.write('new ' * 500)\n"


def test_power_cut_during_a_file_replace_leaves_old_or_new_never_broken(mp_dut):
    mp_dut.require("power", "vm")      # a cut at the Nth flash write
    url = mp_dut.console_url
    old = "old " * 500
    put = ("with open('cfg.txt', 'w') as f:\n f.write(%r)\n"
           "with open('keep.txt', 'w') as f:\n f.write('k')\n" % old)
    assert mpremote(url, "exec", put).returncode == 0
    outcomes = set()
    # The replace takes a few dozen flash program/erase operations; cut at spread points.
    for cut_at in (1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233):
        mp_dut.vboard.write_budget = cut_at
        cut = _run_until_power_cut(mp_dut, REPLACE)
        mp_dut.vboard.write_budget = None
        mp_dut.call(mp_dut.vboard.power_on())
        check = mpremote(url, "exec", "print(repr(open('cfg.txt').read()[:8]), "
                                      "len(open('cfg.txt').read()), open('keep.txt').read())")
        assert check.returncode == 0, check.stderr
        assert check.stdout.strip() in ("'old old ' 2000 k", "'new new ' 2000 k"), check.stdout
        outcomes.add(("cut" if cut else "done", check.stdout.split()[0]))
        # put the old content back for the next cut point
        assert mpremote(url, "exec", put).returncode == 0
        if not cut:
            break
    # Cuts happened before the commit (old content) and the replace eventually completed.
    assert ("cut", "'old") in outcomes and ("done", "'new") in outcomes


def test_deep_sleep_wakes_with_rtc_memory_and_the_clock_moved_on(tmp_path):
    app = {"main.py": (b"import machine, time\n"
                       b"rtc = machine.RTC()\n"
                       b"n = int(rtc.memory() or b'0') + 1\n"
                       b"rtc.memory(str(n).encode())\n"
                       b"print('wake', n, machine.reset_cause(), time.time())\n"
                       b"if n < 3:\n    machine.deepsleep(900000)\n"
                       b"print('slept twice')\n")}
    template = make_flash(BOARD, tmp_path / "sleep.bin", files=app)
    started = time.monotonic()
    with virtual_boards(tmp_path / "b", flash_template=template, speed=300) as fleet:
        dut = VirtualDut(fleet, "board-00")
        out = dut.wait_console("slept twice", timeout=30)   # the wake 3 line is whole
    wall = time.monotonic() - started
    wakes = [line.split() for line in out.splitlines() if line.startswith("wake ")]
    assert [w[1:3] for w in wakes] == [["1", "1"], ["2", "4"], ["3", "4"]]  # PWRON, DEEPSLEEP
    times = [int(w[3]) for w in wakes]
    assert times[1] - times[0] >= 900 and times[2] - times[1] >= 900  # 15 minutes each
    assert wall < 25  # two 15-minute sleeps in seconds of wall time


def test_sensor_model_answers_the_real_driver_and_goes_missing_when_unplugged(tmp_path,
                                                                            micropython_flash):
    with virtual_boards(tmp_path / "b", role="lighting", flash_template=micropython_flash) as fleet:
        dut = VirtualDut(fleet, "board-00")
        dut.wait_console(">>> ")
        dut.world.set_value("board-00", "lux", 250.0)
        code = ("from machine import I2C, Pin\nfrom drivers.bh1750 import BH1750\n"
                "s = BH1750(I2C(0, scl=Pin(22), sda=Pin(21)))\nprint('lux', s.read_lux())\n")
        out = mpremote(dut.console_url, "exec", code)
        assert out.returncode == 0, out.stderr
        lux = int(out.stdout.split("lux")[-1])
        assert abs(lux - 250) <= 3  # the lamp adds a few lux of its own light when it is on
        dut.world.inject("board-00", "bh1750_silent")
        gone = mpremote(dut.console_url, "exec", code)
        assert "SensorError" in gone.stdout + gone.stderr
        assert "no answer at 0x23" in gone.stdout + gone.stderr


def _until(sock, marker, timeout=20.0):
    """What the console sent up to and including ``marker``."""
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        assert time.monotonic() < deadline, seen
        chunk = sock.recv(4096)
        assert chunk, seen + b" (the console closed)"
        seen += chunk
    return seen


def _prompt(port):
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(b"\r\x03\r\n")
        return _until(s, b">>> ")


def test_fifty_boards_start_and_answer_on_their_consoles(tmp_path, micropython_flash):
    started = time.monotonic()
    with virtual_boards(tmp_path / "fleet", 50, flash_template=micropython_flash) as fleet:
        boot_s = time.monotonic() - started
        ports = [b.console_port for b in fleet.fleet.boards]
        assert len(set(ports)) == 50
        answers = [_prompt(port) for port in ports]
        assert all(b">>> " in a for a in answers)
        ok = mpremote("socket://127.0.0.1:%d" % ports[-1], "eval", "2 ** 10")
        assert ok.stdout.strip() == "1024"
    print("50 boards up in %.1f s" % boot_s)


CHURN = (b"import gc, time\n"
         b"keep = [[i, i] for i in range(1500)]\n"     # much to mark at each collection
         b"print('churning')\n"
         b"while True:\n"
         b"    gc.collect()\n"
         b"    time.sleep_ms(0)\n")


def test_ctrl_c_stops_the_firmware_at_a_safe_point_and_the_repl_answers(tmp_path, monkeypatch):
    # This main.py spends most of its time collecting garbage, where mpremote's Ctrl-C lands.
    # Raised there (by a signal), it would leave the VM's heap locked and the REPL dead.
    monkeypatch.setenv("HOME", str(tmp_path))    # the REPL's history file is not the host's
    template = make_flash(BOARD, tmp_path / "churn.bin", files={"main.py": CHURN})
    with virtual_boards(tmp_path / "b", flash_template=template) as fleet:
        dut = VirtualDut(fleet, "board-00")
        for i in range(1, 6):
            deadline = time.monotonic() + 20
            while dut.console_text().count("churning") < i:     # booted again, running
                assert time.monotonic() < deadline, dut.console_text()[-2000:]
                time.sleep(0.05)
            out = mpremote(dut.console_url, "exec", "print('at the REPL', 6 * 7)", "+", "reset")
            assert out.returncode == 0, out.stdout + dut.console_text()[-1500:]
            assert "at the REPL 42" in out.stdout
        assert "FATAL" not in dut.console_text()
    assert not (tmp_path / ".micropython.history").exists()


def _raw_exec_interrupted(port, code, after_s=0.5):
    """Run ``code`` in the raw REPL, send Ctrl-C ``after_s`` later; what it printed."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(b"\r\x03")
        _until(s, b">>> ")
        s.sendall(b"\r\x01")
        _until(s, b"raw REPL; CTRL-B to exit\r\n>")
        s.sendall(code + b"\x04")
        time.sleep(after_s)
        s.sendall(b"\x03")
        out = _until(s, b"\x04>")
        s.sendall(b"\x02")
        return out


def test_ctrl_c_interrupts_code_run_from_the_repl_sleeping_or_computing(mp_dut, caplog):
    mp_dut.require("vm")       # how the VM takes it
    caplog.set_level("INFO", logger="vboard")
    port = mp_dut.vboard.console_port
    slept = _raw_exec_interrupted(port, b"import time\nprint('sleeping')\ntime.sleep(60)")
    assert b"sleeping" in slept and b"KeyboardInterrupt" in slept
    assert "SIGINT" not in caplog.text           # taken at the sleep, no signal needed
    # A loop that never sleeps, polls or touches the hardware gets a signal, as a fallback.
    busy = _raw_exec_interrupted(port, b"n = 0\nwhile True:\n    n += 1")
    assert b"KeyboardInterrupt" in busy
    assert "not taken" in caplog.text
    # The REPL reads a Ctrl-C typed at its prompt (mpremote sends one on every connect): it
    # must not interrupt the code run next.
    ok = mpremote(mp_dut.console_url, "exec", "import time\ntime.sleep(1)\nprint('slept')")
    assert ok.returncode == 0 and "slept" in ok.stdout, (ok.stdout, ok.stderr)
