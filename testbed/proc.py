"""Child processes of the virtual testbed: their own session, and gone when we are gone.

A terminal's Ctrl-C reaches only the orchestrator, which then stops its children in order
(nodes, gateway, broker); if the orchestrator dies hard, Linux's parent-death signal takes the
children with it instead of leaving VMs and brokers behind.
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(cmd: list[str], **kwargs) -> subprocess.Popen:
    """subprocess.Popen in a new session that ends when this process ends."""
    return subprocess.Popen(cmd, start_new_session=True, preexec_fn=_die_with_parent, **kwargs)


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 5.0) -> int:
    """Signal ``proc``, wait up to ``timeout`` s, then kill it. Returns its exit status."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
