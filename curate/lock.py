"""One run per output folder at a time."""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from curate.errors import RunError
from manifests.io import STATE_DIR


class OutputLock:
    """An exclusive lock on ``<output>/.curate/lock``, held for the whole run.

    It is a kernel lock (flock) on an open file, so it goes away with the process that holds it: a crashed
    or killed run never leaves the folder locked. The file's text says who holds it, for the error message.
    """

    def __init__(self, output_dir: Path):
        self.path = output_dir / STATE_DIR / "lock"
        self._handle = None

    def __enter__(self) -> "OutputLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunError(
                f"another curate run ({holder}) is using {self.path.parent.parent}; "
                "wait for it to finish or use another output folder"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.truncate(0)
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None
