"""Files a run reads and writes: the content hash of an input, writing a file so that it appears only when
complete, the per-frame arrays beside a clip, and the error that stops a run when its output cannot be written."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import numpy as np


class OutputError(OSError):
    """Writing to the output directory failed (disk full, read-only, permissions): the run must stop."""


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Let `write` fill a temporary file beside `path`, then fsync it and rename it into place, so the file
    appears under its name only when complete. A failure to write is an OutputError: the run must stop."""
    partial = path.with_name(path.name + ".partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(partial)
        with open(partial, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except OSError as exc:
        _discard(partial)
        raise OutputError(exc.errno, f"cannot write {path}: {exc.strerror or exc}") from exc
    except BaseException:
        _discard(partial)
        raise


def _discard(partial: Path) -> None:
    """Remove a half-written file if the disk lets us; if not (read-only now), the next run's sweep does."""
    try:
        partial.unlink(missing_ok=True)
    except OSError:
        pass


def write_arrays(path: Path, arrays: dict) -> None:
    """Per-frame arrays beside a clip (.npz)."""

    def save(target: Path) -> None:
        with open(target, "wb") as handle:  # a handle: given a name, numpy would append ".npz" to it
            np.savez_compressed(handle, **arrays)

    write_atomically(path, save)
