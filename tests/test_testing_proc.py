"""The /proc readers the memory tests, cluster tests and benchmarks share (sparkvision.testing.proc)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from sparkvision.testing.proc import alive, cmdline, descendants, is_python, peak_rss_mib, status_kib

# A child that starts a grandchild holding ~64 MiB, then both sleep.
CHILD = (
    "import subprocess, sys, time; "
    "subprocess.Popen([sys.executable, '-c', 'b = bytearray(64 << 20); import time; time.sleep(60)']); "
    "time.sleep(60)"
)


def test_process_tree_memory_and_liveness():
    child = subprocess.Popen([sys.executable, "-c", CHILD])
    below: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while not below or (peak_rss_mib(below[0]) or 0) < 64:
            assert time.monotonic() < deadline, descendants()
            time.sleep(0.1)
            below = descendants(child.pid)
        assert len(below) == 1 and set(descendants()) >= {child.pid, *below}
        grandchild = below[0]
        assert "bytearray(64 << 20)" in cmdline(grandchild) and is_python(grandchild)
        assert 64 <= peak_rss_mib(grandchild) < 1024
        assert status_kib(grandchild, "VmRSS") >= 64 * 1024
        assert alive(child.pid) and alive(os.getpid())
    finally:
        for pid in below:
            os.kill(pid, signal.SIGKILL)
        child.kill()
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not yet reaped: a zombie
    assert os.path.exists(f"/proc/{child.pid}") and not alive(child.pid)
    child.wait()
    assert not alive(child.pid) and cmdline(child.pid) == "" and peak_rss_mib(child.pid) is None
