"""Find the source videos under an input folder: one walker for the whole project."""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Iterator

from curate import layouts
from curate.config import InputSettings


@dataclass(frozen=True, slots=True)
class ScannedSource:
    source_id: str      # path relative to the input folder, '/'-separated
    path: str           # absolute path
    out_key: str        # folder of its clips under <output>/clips
    size_bytes: int
    mtime_ns: int
    # frame ranges [start, end) of the output timeline to cut clips in (HDTF's annotations); None: all of it
    intervals: tuple[tuple[int, int], ...] | None = None


@dataclass(frozen=True)
class ScanResult:
    sources: list[ScannedSource]
    skipped: list[tuple[str, str]]   # (relative path, why) for folders and files that could not be looked at
    # relative path -> a short snake_case code for the same, to group by (symlink_loop, linked_twice,
    # broken_symlink, not_a_file, unreadable_folder, unreadable; by the layout: not_in_layout, not_annotated,
    # missing_annotated_video)
    reasons: dict[str, str] = field(default_factory=dict)
    intervals: dict[str, tuple[tuple[int, int], ...]] = field(default_factory=dict)   # source_id -> its intervals


def scan_inputs(input_dir: Path, settings: InputSettings, exclude: Path | None = None, fps: int = 25) -> ScanResult:
    """Walk `input_dir` recursively, in a stable order, for files with the configured extensions.

    `exclude` (the output folder, when it lies inside the input) is never entered. Symlinked folders are
    followed when configured; a folder reached again through a link (a symlink loop, or a second link to a
    folder already scanned) is skipped and reported, and so is anything named like a video that is not a file
    to read (a link that leads nowhere, a named pipe, a device). Nothing is opened here but HDTF's
    annotation files (`settings.layout`; see curate.layouts), read onto a timeline of `fps`
    (stages.resample.fps).
    """
    input_dir = input_dir.resolve()
    extensions = {ext.lower() for ext in settings.extensions}
    excluded = exclude.resolve() if exclude is not None else None
    found: list[tuple[str, str, int, int]] = []
    skipped: list[tuple[str, str, str]] = []      # (relative path, code, why)
    seen_dirs: dict[tuple[int, int], str] = {}    # folder -> where it was first scanned
    on_path: set[tuple[int, int]] = set()         # the folders being walked, root to current

    def enter(folder: Path, relative: PurePosixPath) -> tuple[tuple[int, int], Iterator[os.DirEntry]] | None:
        try:
            info = folder.stat()
        except OSError as exc:
            skipped.append((relative.as_posix(), *_why(exc, "unreadable_folder", "cannot read folder")))
            return None
        key = (info.st_dev, info.st_ino)
        if key in on_path:
            skipped.append((relative.as_posix(), "symlink_loop", "folder already visited (symlink loop)"))
            return None
        if key in seen_dirs:
            skipped.append((relative.as_posix(), "linked_twice",
                            f"folder already scanned as '{_clean(seen_dirs[key])}' (linked twice)"))
            return None
        seen_dirs[key] = relative.as_posix()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            skipped.append((relative.as_posix(), *_why(exc, "unreadable_folder", "cannot list folder")))
            return None
        on_path.add(key)
        return key, iter(entries)

    # depth first with an explicit stack, not recursion: a tree thousands of folders deep must not crash
    stack: list[tuple[PurePosixPath, tuple[int, int], Iterator[os.DirEntry]]] = []
    opened = enter(input_dir, PurePosixPath("."))
    if opened is not None:
        stack.append((PurePosixPath("."), *opened))
    while stack:
        relative, key, entries = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            on_path.discard(key)
            continue
        child = relative / entry.name
        try:
            if entry.is_dir(follow_symlinks=settings.follow_symlinks):
                if excluded is not None and Path(entry.path).resolve() == excluded:
                    continue
                opened = enter(Path(entry.path), child)
                if opened is not None:
                    stack.append((child, *opened))
                continue
            wanted = Path(entry.name).suffix.lower() in extensions
            if not entry.is_file(follow_symlinks=True):
                if wanted:  # named like a video but nothing to read: say why it is left out (never open it)
                    skipped.append((child.as_posix(), *_not_a_file(entry)))
                continue
            if not wanted:
                continue
            info = entry.stat(follow_symlinks=True)
        except OSError as exc:
            skipped.append((child.as_posix(), *_why(exc, "unreadable", "cannot stat")))
            continue
        found.append((child.as_posix(), os.path.abspath(entry.path), info.st_size, info.st_mtime_ns))

    keys = _output_keys([source_id for source_id, *_ in found])
    sources = [
        ScannedSource(_clean(source_id), path, keys[source_id], size, mtime)
        for source_id, path, size, mtime in found
    ]
    if settings.layout == "voxceleb2":
        sources = _voxceleb2(sources, skipped)
    elif settings.layout == "hdtf":
        sources = _hdtf(sources, skipped, Path(settings.annotations or input_dir).expanduser(), fps)
    return ScanResult(sources, [(_clean(path), why) for path, _, why in skipped],
                      {_clean(path): code for path, code, _ in skipped},
                      {source.source_id: source.intervals for source in sources if source.intervals})


def _voxceleb2(sources: list[ScannedSource], skipped: list) -> list[ScannedSource]:
    kept = []
    for source in sources:
        if layouts.voxceleb_speaker(source.source_id) is None:
            skipped.append((source.source_id, "not_in_layout",
                            "not in a VoxCeleb2 speaker folder (idNNNNN/<youtube id>/NNNNN.mp4)"))
        else:
            kept.append(source)
    return kept


def _hdtf(sources: list[ScannedSource], skipped: list, where: Path, fps: int) -> list[ScannedSource]:
    """The annotated videos with their intervals (a clip HDTF's download already cut is kept whole); the others
    are skipped, and each annotated video the folder lacks is reported."""
    annotations = layouts.read_annotations(where, fps)
    kept, present = [], set()
    for source in sources:
        found = layouts.match(PurePosixPath(source.source_id).stem, annotations)
        if found is None:
            skipped.append((source.source_id, "not_annotated", f"not named in the annotations at {where}"))
            continue
        note, whole = found
        present.add(note.name)
        kept.append(replace(source, intervals=note.intervals) if whole else source)
    for note in annotations.values():
        if note.name not in present:
            skipped.append((note.video, "missing_annotated_video",
                            f"named in {note.file} (line {note.line}) but not in the input folder"))
    return kept


def _not_a_file(entry: os.DirEntry) -> tuple[str, str]:
    if entry.is_symlink() and not os.path.exists(entry.path):
        return "broken_symlink", f"broken symlink: {os.readlink(entry.path)} does not exist"
    mode = os.stat(entry.path).st_mode
    kinds = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"))
    return "not_a_file", "not a regular file" + next((f": {name}" for test, name in kinds if test(mode)), "")


def _why(exc: OSError, code: str, doing: str) -> tuple[str, str]:
    if exc.errno == errno.ELOOP:  # links that lead to each other, never to a file or folder
        return "symlink_loop", "symlink loop: too many levels of symbolic links"
    return code, f"{doing}: {exc.strerror or exc}"


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
