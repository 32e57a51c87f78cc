"""Run firmware library code in the real MicroPython VM (vboard/vm.py) from pytest.

Starting a VM costs ~30 ms, so tests batch cases: the cases go in on stdin as JSON, the VM
prints one JSON line per result, the test compares them in CPython.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

from hypothesis import HealthCheck, settings

from boards.nodeapp import FIRMWARE
from testbed.broker import free_port
from vboard.vm import run_source

LIB = FIRMWARE / "lib"
# MICROPYPATH replaces the VM's default path: keep ".frozen" (asyncio lives there) ahead of
# the firmware's lib, in the order an ESP32 searches them.
VM_PATH = [".frozen", LIB]


class VMError(AssertionError):
    """The MicroPython program failed (its traceback is the message)."""


def run_mpy(source: str, *, stdin: bytes | None = None, cwd: Path | None = None,
            timeout: float = 30.0) -> str:
    """Run ``source`` in a fresh VM with firmware/lib on its path; return its stdout."""
    proc = run_source(source, path=VM_PATH, cwd=cwd, timeout=timeout, input=stdin)
    out = proc.stdout.decode("utf-8", "replace")
    if proc.returncode != 0:
        raise VMError("MicroPython exited with %d\n--- stdout\n%s\n--- stderr\n%s"
                      % (proc.returncode, out, proc.stderr.decode("utf-8", "replace")))
    return out


def run_mpy_cases(source: str, cases: list, *, cwd: Path | None = None,
                  timeout: float = 30.0) -> list:
    """Run ``source`` with ``CASES`` (a list decoded from JSON) defined and ``emit(obj)``
    available to print a JSON result; return the emitted objects in order."""
    prelude = (
        "import json, sys\n"
        "CASES = json.loads(sys.stdin.read())\n"
        "def emit(obj):\n"
        "    print(json.dumps(obj))\n"
    )
    out = run_mpy(prelude + source, stdin=json.dumps(cases).encode(), cwd=cwd,
                  timeout=timeout)
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def free_udp_port() -> int:
    return free_port(socket.SOCK_DGRAM)


def vm_settings(max_examples: int) -> settings:
    """Hypothesis settings for tests that run a VM per example: few examples (each one
    carries a batch of cases), no deadline, no example database in the work tree."""
    return settings(max_examples=max_examples, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
