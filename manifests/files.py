"""Files a run reads and writes: the content hash of an input, and the error that stops a run when its output
cannot be written."""

from __future__ import annotations

import hashlib


class OutputError(OSError):
    """Writing to the output directory failed (disk full, read-only, permissions): the run must stop."""


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
