"""A real Spark standalone cluster on loopback, from the installed pyspark.

Spark's own ``Master`` and ``Worker`` daemons (``spark-class org.apache.spark.deploy...``),
each in its own process group, so that stopping one (or killing it to inject a fault)
reaches its executors and their Python workers too, and nothing else. Used by the
cluster tests, the benchmarks, and anyone who wants to see sparkvision on a cluster
without installing Spark::

    python scripts/cluster.py start --state /tmp/sv-cluster.json   # prints the master URL
    sparkvision ingest DATA --out OUT --master spark://127.0.0.1:PORT
    python scripts/cluster.py stop --state /tmp/sv-cluster.json

The daemons find their jars through ``SPARK_HOME`` = the pyspark package directory.
Readiness is read from the master's web UI JSON (``/json``), which lists every worker
and its state, the same view an operator has.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparkvision.config import ClusterSettings
from sparkvision.testing.proc import alive, cmdline, descendants

log = logging.getLogger(__name__)

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"


def spark_home() -> Path:
    """The installed pyspark package: it holds ``bin/spark-class`` and ``jars/``."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class Daemon:
    """One Spark daemon process: its pid is also its process group id."""

    role: str  # "master" or "worker-<n>"
    pid: int
    port: int
    webui_port: int
    log_file: str
    #: Set when this process started the daemon: its exit status is then known exactly.
    process: subprocess.Popen | None = field(default=None, repr=False, compare=False)

    def running(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        # Started elsewhere (a state file): the pid must still run a Spark daemon, so a pid
        # the OS has since given to another program is never mistaken for it.
        return alive(self.pid) and "org.apache.spark.deploy" in cmdline(self.pid)

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role, "pid": self.pid, "port": self.port, "webui_port": self.webui_port,
                "log_file": self.log_file}


@dataclass
class ClusterState:
    """Enough to reach and stop a cluster from another process (``scripts/cluster.py stop``)."""

    master_url: str
    web_url: str
    log_dir: str
    daemons: list[Daemon] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({"master_url": self.master_url, "web_url": self.web_url, "log_dir": self.log_dir,
                           "daemons": [d.to_dict() for d in self.daemons]}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> ClusterState:
        data = json.loads(text)
        return cls(
            master_url=data["master_url"],
            web_url=data["web_url"],
            log_dir=data["log_dir"],
            daemons=[Daemon(**d) for d in data["daemons"]],
        )


class ClusterError(RuntimeError):
    """The cluster did not come up (the message names the log to read)."""


class StandaloneCluster:
    """A Spark standalone master and ``settings.workers`` workers on loopback.

    Use as a context manager, or ``start()``/``stop()``. ``kill_worker(i)`` kills a
    worker the way a machine dies (SIGKILL to its whole process group: the worker JVM,
    its executor and the executor's Python workers); ``start_worker(i)`` brings a
    fresh one back under the same slot.
    """

    def __init__(self, log_dir: str | os.PathLike[str], settings: ClusterSettings | None = None) -> None:
        self.settings = settings or ClusterSettings()
        self.log_dir = Path(log_dir).resolve()
        self.master: Daemon | None = None
        self.workers: list[Daemon | None] = [None] * self.settings.workers
        self._master_port = 0
        self._webui_port = 0

    # -- addresses -------------------------------------------------------------------------
    @property
    def master_url(self) -> str:
        return f"spark://{self.settings.host}:{self._master_port}"

    @property
    def web_url(self) -> str:
        return f"http://{self.settings.host}:{self._webui_port}"

    def state(self) -> ClusterState:
        daemons = [d for d in [self.master, *self.workers] if d is not None]
        return ClusterState(self.master_url, self.web_url, str(self.log_dir), daemons)

    # -- processes -------------------------------------------------------------------------
    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["SPARK_HOME"] = str(spark_home())
        env["SPARK_LOCAL_IP"] = self.settings.host
        env["SPARK_DAEMON_MEMORY"] = self.settings.daemon_memory
        # Daemons log to stderr, which goes to their own file under log_dir.
        env.pop("SPARK_CONF_DIR", None)
        if "UTF-8" not in env.get("LC_ALL", "").upper().replace("UTF8", "UTF-8"):
            env["LC_ALL"] = "C.UTF-8"
        return env

    def _launch(self, role: str, main_class: str, args: list[str], port: int, webui_port: int) -> Daemon:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_file = self.log_dir / f"{role}.log"
        command = [str(spark_home() / "bin" / "spark-class"), main_class, *args]
        with open(log_file, "ab") as out:
            # start_new_session: the daemon leads its own process group, and what it starts
            # (a worker's executors) stays in that group; no terminal signal reaches it.
            process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self._environment(), start_new_session=True,
            )
        log.info("started %s (pid %d), log %s", role, process.pid, log_file)
        return Daemon(role, process.pid, port, webui_port, str(log_file), process)

    def start(self) -> StandaloneCluster:
        host = self.settings.host
        self._master_port, self._webui_port = free_port(host), free_port(host)
        self.master = self._launch(
            "master", MASTER_CLASS,
            ["--host", host, "--port", str(self._master_port), "--webui-port", str(self._webui_port)],
            self._master_port, self._webui_port,
        )
        try:
            self._wait(lambda s: s.get("status") == "ALIVE", "the master", self.master)
            for index in range(self.settings.workers):
                self._launch_worker(index)
            self.wait_for_workers(self.settings.workers)
        except BaseException:
            self.stop()
            raise
        log.info("Spark standalone cluster %s with %d workers (UI %s)", self.master_url,
                 self.settings.workers, self.web_url)
        return self

    def _launch_worker(self, index: int) -> Daemon:
        host = self.settings.host
        port, webui = free_port(host), free_port(host)
        work_dir = self.log_dir / f"worker-{index}-work"
        daemon = self._launch(
            f"worker-{index}", WORKER_CLASS,
            ["--host", host, "--port", str(port), "--webui-port", str(webui),
             "--cores", str(self.settings.cores_per_worker), "--memory", self.settings.worker_memory,
             "--work-dir", str(work_dir), self.master_url],
            port, webui,
        )
        self.workers[index] = daemon
        return daemon

    def start_worker(self, index: int) -> Daemon:
        """Start worker ``index`` again (after :meth:`kill_worker`) and wait until it is ALIVE."""
        current = self.workers[index]
        if current is not None and current.running():
            raise ClusterError(f"worker {index} is still running (pid {current.pid})")
        daemon = self._launch_worker(index)
        self._wait(lambda s: any(w.get("port") == daemon.port and w.get("state") == "ALIVE"
                                 for w in s.get("workers", [])), f"worker {index}", daemon)
        return daemon

    def kill_worker(self, index: int) -> list[int]:
        """SIGKILL worker ``index`` and everything it started; returns the pids killed."""
        daemon = self.workers[index]
        if daemon is None:
            raise ClusterError(f"worker {index} was never started")
        pids = [daemon.pid, *descendants(daemon.pid)]
        _signal_group(daemon.pid, signal.SIGKILL)
        for pid in pids:  # Spark's Python daemon leads its own group: reach it by pid
            _signal_pid(pid, signal.SIGKILL)
        _reap(daemon, timeout_s=10.0)
        log.warning("killed worker %d: pids %s", index, pids)
        return pids

    def stop(self) -> None:
        """Stop workers, then the master: SIGTERM to each process group, SIGKILL if it lingers."""
        daemons = [d for d in [*self.workers, self.master] if d is not None]
        stop_daemons(daemons, self.settings.stop_timeout_s)
        self.workers = [None] * self.settings.workers
        self.master = None

    def __enter__(self) -> StandaloneCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what the master says --------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The master's own JSON view: workers with their state, cores, running applications."""
        return master_status(self.web_url)

    def alive_workers(self) -> int:
        try:
            return sum(1 for w in self.status().get("workers", []) if w.get("state") == "ALIVE")
        except OSError:
            return 0

    def wait_for_workers(self, count: int, timeout_s: float | None = None) -> None:
        self._wait(lambda s: sum(1 for w in s.get("workers", []) if w.get("state") == "ALIVE") >= count,
                   f"{count} ALIVE workers", None, timeout_s)

    def _wait(self, ready, what: str, daemon: Daemon | None, timeout_s: float | None = None) -> None:
        deadline = time.monotonic() + (timeout_s or self.settings.start_timeout_s)
        while True:
            for proc in [daemon] if daemon is not None else [d for d in [self.master, *self.workers] if d]:
                if not proc.running():
                    raise ClusterError(f"{proc.role} exited while waiting for {what}; see {proc.log_file}")
            try:
                if ready(self.status()):
                    return
            except (OSError, ValueError):
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise ClusterError(f"timed out waiting for {what}; logs in {self.log_dir}")
            time.sleep(0.5)

    def python_workers(self) -> list[int]:
        """Pids of the Python processes under the workers (Spark's daemon and its forked workers)."""
        pids: list[int] = []
        for daemon in self.workers:
            if daemon is None:
                continue
            pids += [p for p in descendants(daemon.pid) if "pyspark" in cmdline(p) or "python" in cmdline(p)]
        return pids


def master_status(web_url: str, timeout_s: float = 5.0) -> dict[str, Any]:
    with urllib.request.urlopen(web_url.rstrip("/") + "/json/", timeout=timeout_s) as response:
        return json.loads(response.read().decode("utf-8"))


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _signal_pid(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _reap(daemon: Daemon, timeout_s: float = 0.0) -> None:
    """Collect the exit status of a daemon this process started (no zombie left behind)."""
    if daemon.process is not None:
        try:
            daemon.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pass


def stop_daemons(daemons: list[Daemon], timeout_s: float) -> None:
    """SIGTERM each daemon's process group; SIGKILL groups still alive after ``timeout_s``.

    Only daemons whose pid still runs a Spark daemon are signalled, so a pid reused by
    an unrelated process after the cluster died is never touched.
    """
    live = [d for d in daemons if d.running()]
    for daemon in live:
        below = descendants(daemon.pid)
        _signal_group(daemon.pid, signal.SIGTERM)
        for pid in below:
            _signal_pid(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for daemon in live:
        while daemon.running() and time.monotonic() < deadline:
            time.sleep(0.2)
        if daemon.running():
            log.warning("%s (pid %d) ignored SIGTERM; killing its process group", daemon.role, daemon.pid)
            _signal_group(daemon.pid, signal.SIGKILL)
        _reap(daemon, timeout_s=5.0)
        log.info("stopped %s (pid %d)", daemon.role, daemon.pid)


# -- command line (scripts/cluster.py) -------------------------------------------------------
def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="cluster.py",
        description="Start, inspect and stop a Spark standalone cluster (master + workers) on loopback, "
        "from the installed pyspark. The master URL goes to stdout as JSON; pass it to any sparkvision "
        "command as --master.",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    defaults = ClusterSettings()
    start = sub.add_parser("start", help="start the cluster in the background and write its state file")
    run = sub.add_parser("run", help="start the cluster, keep it up until Ctrl-C, then stop it")
    for p in (start, run):
        p.add_argument("--workers", type=int, default=defaults.workers)
        p.add_argument("--cores", type=int, default=defaults.cores_per_worker, help="cores per worker")
        p.add_argument("--memory", default=defaults.worker_memory, help="memory each worker offers (e.g. 4g)")
        p.add_argument("--log-dir", default=None, help="daemon logs and work dirs (default: next to --state)")
    for p in (start, run, sub.add_parser("stop", help="stop the cluster in the state file"),
              sub.add_parser("status", help="the master's view of the cluster")):
        p.add_argument("--state", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "sparkvision-cluster.json"),
                       help="state file: master URL and daemon pids (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    state_file = Path(args.state)
    if args.action in ("start", "run"):
        if state_file.exists():
            old = ClusterState.from_json(state_file.read_text())
            if any(d.running() for d in old.daemons):
                log.error("a cluster from %s is still running (%s); stop it first", state_file, old.master_url)
                return 1
        settings = ClusterSettings(workers=args.workers, cores_per_worker=args.cores, worker_memory=args.memory)
        log_dir = args.log_dir or str(state_file.with_suffix("")) + "-logs"
        cluster = StandaloneCluster(log_dir, settings).start()
        state = cluster.state()
        state_file.write_text(state.to_json())
        print(json.dumps({"master": state.master_url, "web_ui": state.web_url, "log_dir": state.log_dir,
                          "state": str(state_file)}, indent=2), flush=True)
        if args.action == "start":
            return 0
        stopped = False

        def _stop(*_: object) -> None:
            nonlocal stopped
            stopped = True

        signal.signal(signal.SIGTERM, _stop)
        try:
            while not stopped:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        cluster.stop()
        state_file.unlink(missing_ok=True)
        return 0
    if not state_file.exists():
        log.error("no cluster state at %s", state_file)
        return 1
    state = ClusterState.from_json(state_file.read_text())
    if args.action == "stop":
        stop_daemons([d for d in state.daemons if d.role != "master"] +
                     [d for d in state.daemons if d.role == "master"], ClusterSettings().stop_timeout_s)
        state_file.unlink(missing_ok=True)
        print(json.dumps({"stopped": state.master_url}), flush=True)
        return 0
    try:
        view = master_status(state.web_url)
    except OSError as exc:
        log.error("master at %s does not answer: %s", state.web_url, exc)
        return 1
    print(json.dumps({"master": state.master_url, "status": view.get("status"),
                      "workers": [{"id": w["id"], "state": w["state"], "cores": w["cores"],
                                   "cores_used": w["coresused"]} for w in view.get("workers", [])],
                      "active_apps": [a.get("name") for a in view.get("activeapps", [])]}, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
