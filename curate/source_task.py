"""What the driver hands a source-pass worker.

Kept apart from curate.source_pass so that the driver (curate run) does not import the pass's libraries
(PyAV, OpenCV, PySceneDetect, the face stage): a worker imports them on its first source, the driver never.
"""

from __future__ import annotations

from dataclasses import dataclass


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
    intervals: list[tuple[int, int]] | None = None  # the only frame ranges to cut clips in (HDTF); None: all


class TransientSourceError(RuntimeError):
    """An unexpected error in a source task: Ray retries it; if it persists, the source is rejected with it."""
