"""Find the source videos under an input folder: one walker for the whole project."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from curate.config import InputSettings


@dataclass(frozen=True)
class ScannedSource:
    source_id: str      # path relative to the input folder, '/'-separated
    path: str           # absolute path
    out_key: str        # folder of its clips under <output>/clips
    size_bytes: int
    mtime_ns: int


@dataclass(frozen=True)
class ScanResult:
    sources: list[ScannedSource]
    skipped: list[tuple[str, str]]   # (relative path, why) for folders and files that could not be looked at


def scan_inputs(input_dir: Path, settings: InputSettings, exclude: Path | None = None) -> ScanResult:
    """Walk `input_dir` recursively, in a stable order, for files with the configured extensions.

    `exclude` (the output folder, when it lies inside the input) is never entered. Symlinked folders are
    followed when configured; a folder reached twice (a symlink loop) is skipped and reported.
    """
    input_dir = input_dir.resolve()
    extensions = {ext.lower() for ext in settings.extensions}
    excluded = exclude.resolve() if exclude is not None else None
    found: list[tuple[str, str, int, int]] = []
    skipped: list[tuple[str, str]] = []
    seen_dirs: set[tuple[int, int]] = set()

    def walk(folder: Path, relative: PurePosixPath) -> None:
        try:
            info = folder.stat()
        except OSError as exc:
            skipped.append((relative.as_posix(), f"cannot read folder: {exc.strerror}"))
            return
        key = (info.st_dev, info.st_ino)
        if key in seen_dirs:
            skipped.append((relative.as_posix(), "folder already visited (symlink loop)"))
            return
        seen_dirs.add(key)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            skipped.append((relative.as_posix(), f"cannot list folder: {exc.strerror}"))
            return
        for entry in entries:
            child = relative / entry.name
            try:
                is_dir = entry.is_dir(follow_symlinks=settings.follow_symlinks)
                if is_dir:
                    if excluded is not None and Path(entry.path).resolve() == excluded:
                        continue
                    walk(Path(entry.path), child)
                    continue
                if not entry.is_file(follow_symlinks=True):
                    continue
                if Path(entry.name).suffix.lower() not in extensions:
                    continue
                stat = entry.stat(follow_symlinks=True)
            except OSError as exc:
                skipped.append((child.as_posix(), f"cannot stat: {exc.strerror}"))
                continue
            found.append((child.as_posix(), os.path.abspath(entry.path), stat.st_size, stat.st_mtime_ns))

    walk(input_dir, PurePosixPath("."))
    keys = _output_keys([source_id for source_id, *_ in found])
    sources = [
        ScannedSource(_clean(source_id), path, keys[source_id], size, mtime)
        for source_id, path, size, mtime in found
    ]
    return ScanResult(sources, [(_clean(path), why) for path, why in skipped])


def _clean(relative: str) -> str:
    return relative[2:] if relative.startswith("./") else relative


def _output_keys(source_ids: list[str]) -> dict[str, str]:
    """Output folder per source: its relative path without the extension, as a dataset's layout is mirrored.

    When two sources differ only by extension (talk.mp4, talk.mkv) both keep it, as talk_mp4 and talk_mkv.
    """
    stems: dict[str, list[str]] = {}
    for source_id in source_ids:
        stems.setdefault(_clean(str(PurePosixPath(source_id).with_suffix(""))), []).append(source_id)
    keys = {}
    for stem, owners in stems.items():
        for source_id in owners:
            suffix = PurePosixPath(source_id).suffix
            keys[source_id] = stem if len(owners) == 1 else f"{stem}_{suffix.lstrip('.')}"
    return keys
