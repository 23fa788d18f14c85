"""This test session's Ray worker processes, found through /proc, and signals sent to them: how the fault tests
kill or stop a worker in the middle of its work."""

import os
import threading
import time
from pathlib import Path


def processes_named(prefix: bytes) -> list[int]:
    """Workers of this test session's Ray whose command line starts with `prefix` (Ray titles a worker after
    the task or method it runs). Only ours: a worker's parent is the raylet, whose parent is this process."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(prefix) and parent(parent(int(entry.name))) == os.getpid():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


class SignalWorkers(threading.Thread):
    """While in use: sends `signum` to this session's workers titled `prefix`, each `after_s` after it is seen
    at work, `times` workers in all; `hit` lists their pids."""

    def __init__(self, prefix: bytes, signum: int, after_s: float, times: int = 1):
        super().__init__(daemon=True)
        self.prefix, self.signum, self.after_s, self.times = prefix, signum, after_s, times
        self.hit: list[int] = []
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set() and len(self.hit) < self.times:
            for pid in processes_named(self.prefix):
                if pid not in self.hit:
                    time.sleep(self.after_s)
                    try:
                        os.kill(pid, self.signum)
                        self.hit.append(pid)
                    except ProcessLookupError:
                        pass
                    break
            time.sleep(0.01)

    def __enter__(self) -> "SignalWorkers":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.join()


def parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def descendants(root: int) -> dict[int, str]:
    """pid -> command line of every process below `root`, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                children.setdefault(parent(int(entry.name)), []).append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    found, todo = {}, [root]
    while todo:
        for pid in children.get(todo.pop(), []):
            try:
                found[pid] = (Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:
                continue
            todo.append(pid)
    return found

