"""Process trees, their memory and CPU time, read from Linux's ``/proc`` (for tests and benchmarks).

Children are found from every process's parent pid (``/proc/PID/stat``), so processes
started by any thread of a JVM are included, and no kernel option is needed.
Memory is ``VmHWM`` (the peak resident set of the process's own address space) rather
than ``ru_maxrss``, which Linux carries over ``exec`` from the parent.
"""

from __future__ import annotations

import os
import threading


def _read(pid: int, name: str) -> bytes | None:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as handle:
            return handle.read()
    except OSError:  # gone, or not ours to read
        return None


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (state, ppid, ...)."""
    data = _read(pid, "stat")
    if data is None or b")" not in data:
        return None
    return data.rsplit(b")", 1)[1].decode("ascii", "replace").split()


def status_kib(pid: int, field: str) -> int:
    """A ``kB`` field of ``/proc/PID/status`` (``VmRSS``, ``VmHWM``), 0 when unreadable."""
    data = _read(pid, "status")
    for line in (data or b"").decode("ascii", "replace").splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def peak_rss_mib(pid: int) -> float | None:
    """Peak resident memory (``VmHWM``) of a live process, in MiB; None when it cannot be read."""
    kib = status_kib(pid, "VmHWM")
    return kib / 1024.0 if kib else None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and of its children it has waited for; 0 when it cannot be read."""
    fields = _stat_fields(pid)
    if not fields or len(fields) < 15:
        return 0.0
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime, stime, cutime, cstime


def cmdline(pid: int) -> str:
    """The command line, arguments separated by spaces ("" when the process is gone)."""
    data = _read(pid, "cmdline")
    return "" if data is None else data.replace(b"\0", b" ").decode(errors="replace").strip()


def is_python(pid: int) -> bool:
    return "python" in cmdline(pid).split(" ", 1)[0]


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] != "Z"


def descendants(root: int | None = None) -> list[int]:
    """Every process below ``root`` (default: this one), children before their children."""
    tree: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat_fields(int(name))
            if fields and len(fields) > 1:
                tree.setdefault(int(fields[1]), []).append(int(name))
    found: list[int] = []
    stack = list(tree.get(os.getpid() if root is None else root, []))
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(tree.get(pid, []))
    return found


class Sampler:
    """Calls ``_sample()`` every ``interval`` seconds in a daemon thread while its ``with`` block runs, and once
    more when the block ends (a peak reached just before the end is kept). Subclasses define ``_sample``."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
