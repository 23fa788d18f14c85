"""What the driver hands a source-pass worker, and the Ray task's entry point.

Kept apart from curate.source_pass so that the driver (curate run) does not import the pass's libraries
(PyAV, OpenCV, PySceneDetect, the face stage): a worker imports them on its first source, the driver never.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterator


@dataclass
class SourceTask:
    """What the driver hands a worker for one source."""

    source_id: str                     # the path relative to the input folder (posix); unique in a run
    path: str                          # absolute path to read (never written)
    out_key: str                       # the source's folder under <output>/clips
    output_dir: str
    size_bytes: int
    mtime_ns: int
    fingerprints: dict[str, str]
    sha256: str | None = None          # known from an earlier run when the file's stat is unchanged
    known_cuts: list[int] | None = None  # shot cuts an earlier run found for this content and shot settings


class TransientSourceError(RuntimeError):
    """An unexpected error in a source task: Ray retries it; if it persists, the source is rejected with it."""


def source_pass(task: SourceTask, config) -> Iterator[dict]:
    """The body of the Ray task (curate.runner makes it remote; Ray titles its workers `ray::source_pass`): the
    source pass, imported here, in the worker."""
    from curate import source_pass as the_pass

    yield from the_pass.source_pass(task, config)


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
