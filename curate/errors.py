"""Errors the command line turns into a message and an exit status, and the folder check that raises one."""

from __future__ import annotations

import os
from pathlib import Path


class RunError(RuntimeError):
    """A run that cannot start or must stop; the message says why and what to do."""


def writable_folder(folder: Path, what: str) -> None:
    """Make `folder` (the `what`: "--out", "the run folder") if missing; a one-line RunError if it is a file,
    cannot be made or cannot be written."""
    if folder.exists() and not folder.is_dir():
        raise RunError(f"{what} {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"cannot create {what} {folder}: {exc.strerror or exc}") from None
    if not os.access(folder, os.W_OK):
        raise RunError(f"{what} {folder} is not writable")
