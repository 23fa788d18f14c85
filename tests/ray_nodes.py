"""A Ray cluster of several nodes on this machine, started the way a real one is: `ray start --head` and
`ray start --address HEAD` for each further node, each with its own CPUs and its own temp folder.

Used by tests/test_multinode.py and bench/bench_scaling.py. It never runs `ray stop` (that stops every Ray on
the machine, the test session's embedded one included): each node is a `ray start --block` process in a
session of its own; stopping sends it SIGTERM (it then stops its node), and whatever is still in that session
after a while (found through /proc) gets SIGKILL.

The cluster is private: its own temp folder (so its `ray_current_cluster` file and sockets are not the default
/tmp/ray ones that a plain `ray.init()` looks at), its own free GCS port (Ray picks the other ports free by itself)
and its own authentication token (Ray 2.60 starts a head with token authentication when a token exists; every
node and every driver then needs RAY_AUTH_MODE=token and the token). `env()` is what a driver needs to attach.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = Path(sys.executable).with_name("ray")  # the ray CLI of this environment


def _stop_with_parent() -> None:
    """In a node's `ray start`, before it runs: SIGTERM to it when the process that started it dies, so that a
    killed test run does not leave a cluster behind (Linux's PR_SET_PDEATHSIG; best effort elsewhere)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _sessions() -> dict[int, int]:
    """pid -> session id of every process on the machine (from /proc/PID/stat)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp session ...
        found[int(entry.name)] = int(fields[3])
    return found


class LocalCluster:
    """`nodes` Ray nodes of `cpus` CPUs each on this machine; a context manager that always cleans up."""

    def __init__(self, nodes: int = 2, cpus: int = 1, object_store_mb: int = 150, start_timeout_s: float = 90.0):
        self.nodes, self.cpus, self.object_store_mb = nodes, cpus, object_store_mb
        self.start_timeout_s = start_timeout_s
        # short: Ray's Unix sockets live under it and a socket path must stay under 108 bytes
        self.root = Path(tempfile.mkdtemp(prefix="curate-rn-", dir="/tmp"))
        self.token = secrets.token_hex(32)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.processes: list[subprocess.Popen] = []

    def env(self) -> dict[str, str]:
        """The environment of a node or a driver of this cluster (and nothing of the caller's own Ray)."""
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token, RAY_USAGE_STATS_ENABLED="0")
        return env

    def node_dir(self, index: int) -> Path:
        return self.root / f"node{index}"

    def __enter__(self) -> "LocalCluster":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        for index in range(self.nodes):
            common = ["--block", f"--num-cpus={self.cpus}", "--num-gpus=0", f"--temp-dir={self.node_dir(index)}",
                      f"--object-store-memory={self.object_store_mb * 1024 * 1024}", "--disable-usage-stats"]
            if index == 0:
                args = ["--head", f"--port={self.port}", "--include-dashboard=false", *common]
            else:
                args = [f"--address={self.address}", *common]
            log = open(self.root / f"node{index}.log", "wb")
            self.processes.append(subprocess.Popen(
                [str(RAY if RAY.exists() else shutil.which("ray") or "ray"), "start", *args], env=self.env(),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_stop_with_parent, cwd=self.root))
            log.close()
            # `ray start` writes the GCS address into the node's temp folder once the node is up and registered
            self._wait_for(self.node_dir(index) / "ray_current_cluster", index)

    def _wait_for(self, marker: Path, index: int) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        process = self.processes[index]
        while not marker.exists():
            if process.poll() is not None:
                raise RuntimeError(f"ray node {index} exited with {process.returncode}:\n{self.log(index)[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"ray node {index} did not start in {self.start_timeout_s:.0f} s:\n"
                                   f"{self.log(index)[-3000:]}")
            time.sleep(0.2)

    def log(self, index: int) -> str:
        try:
            return (self.root / f"node{index}.log").read_text(errors="replace")
        except OSError:
            return ""

    def processes_left(self) -> list[int]:
        """Every process still running in one of the nodes' sessions (Ray's workers and daemons included)."""
        sessions = {p.pid for p in self.processes}
        return [pid for pid, sid in _sessions().items() if sid in sessions]

    def worker_logs(self, index: int) -> str:
        """All worker output files of node `index`: Ray writes `:task_name:NAME` there when a task starts."""
        return "".join(path.read_text(errors="replace")
                       for path in sorted(self.node_dir(index).glob("session_*/logs/worker-*")))

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM to each node's `ray start` (last node first), which stops its node's processes in order;
        SIGKILL to every process still in a node's session after `timeout_s`; then check that nothing of the
        cluster runs any more, and remove its folder. (SIGTERM to the whole process group at once is slower:
        the daemons then wait for each other, about 30 s here.)"""
        self._signal(signal.SIGTERM, leaders_only=True)
        if not self._wait_gone(timeout_s):
            self._signal(signal.SIGKILL, leaders_only=False)
            self._wait_gone(10.0)
        left = self.processes_left()
        shutil.rmtree(self.root, ignore_errors=True)
        if left:
            raise RuntimeError(f"Ray processes of the test cluster still running after SIGKILL: {left}")

    def _signal(self, signum: int, leaders_only: bool) -> None:
        targets = [p.pid for p in reversed(self.processes)]
        if not leaders_only:
            for process in self.processes:
                try:
                    os.killpg(process.pid, signum)
                except ProcessLookupError:
                    pass
            targets += self.processes_left()  # a process that left its group but not its session
        for pid in targets:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def _wait_gone(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while True:
            for process in self.processes:
                process.poll()  # reap an exited `ray start`, which would otherwise stay as a zombie
            if not self.processes_left():
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
