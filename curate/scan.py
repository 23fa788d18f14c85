"""Find the source videos under an input folder: one walker for the whole project."""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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


class ScannedSources(Sequence[ScannedSource]):
    """The sources a scan found, in the walk's order, held as columns (`table`: source_id, size_bytes,
    mtime_ns, and `suffixed`: whether its output key keeps its extension), not an object per source: a million
    sources take a few tens of MB. A source's absolute path and output key are made from its id
    (`paths`, `out_keys`); indexing and iterating make ScannedSource objects as they are asked for."""

    def __init__(self, root: str, table: pa.Table, intervals: dict[str, tuple[tuple[int, int], ...]]):
        self.root = root              # the input folder, absolute and resolved
        self.table = table
        self._intervals = intervals

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("source index out of range")
        return next(self._objects(self.table.slice(index, 1)))

    def __iter__(self) -> Iterator[ScannedSource]:
        return self._objects(self.table)

    def __repr__(self) -> str:
        return f"ScannedSources({len(self)} under {self.root!r})"

    @property
    def source_ids(self) -> pa.ChunkedArray:
        return self.table["source_id"]

    def paths(self, source_ids) -> pa.ChunkedArray | pa.Array:
        """The absolute paths of these sources (ids of this scan)."""
        return pc.binary_join_element_wise(os.path.join(self.root, ""), source_ids, "")

    @staticmethod
    def out_keys(source_ids, suffixed) -> pa.ChunkedArray | pa.Array:
        """The output keys of these sources (ids and `suffixed` of this scan): a source's folder of clips is its
        id without the extension, as a dataset's layout is mirrored; when two sources differ only by extension
        (talk.mp4, talk.mkv) both keep it, as talk_mp4 and talk_mkv."""
        return pc.if_else(suffixed, pc.replace_substring_regex(source_ids, _SUFFIX, r"_\1"),
                          pc.replace_substring_regex(source_ids, _SUFFIX, ""))

    def _objects(self, table: pa.Table) -> Iterator[ScannedSource]:
        for batch in table.to_batches(max_chunksize=4096):
            ids = batch.column("source_id")
            keys = self.out_keys(ids, batch.column("suffixed"))
            for source_id, path, out_key, size, mtime in zip(
                    ids.to_pylist(), self.paths(ids).to_pylist(), keys.to_pylist(),
                    batch.column("size_bytes").to_pylist(), batch.column("mtime_ns").to_pylist()):
                yield ScannedSource(source_id, path, out_key, size, mtime, self._intervals.get(source_id))


@dataclass(frozen=True)
class ScanResult:
    sources: ScannedSources
    skipped: list[tuple[str, str]]   # (relative path, why) for folders and files that could not be looked at
    # relative path -> a short snake_case code for the same, to group by (symlink_loop, linked_twice,
    # broken_symlink, not_a_file, unreadable_folder, unreadable; by the layout: not_in_layout, not_annotated,
    # missing_annotated_video)
    reasons: dict[str, str] = field(default_factory=dict)
    intervals: dict[str, tuple[tuple[int, int], ...]] = field(default_factory=dict)   # source_id -> its intervals


_SUFFIX = r"\.([^./]*)$"     # a found file's extension (it has one: it was found by it), after its last dot
_CHUNK = 8192                 # sources gathered as Python values before they become columns
_COLUMNS = pa.schema([("source_id", pa.string()), ("size_bytes", pa.int64()), ("mtime_ns", pa.int64())])


def scan_inputs(input_dir: Path, settings: InputSettings, exclude: Path | None = None, fps: int = 25) -> ScanResult:
    """Walk `input_dir` recursively, in a stable order, for files with the configured extensions.

    `exclude` (the output folder, when it lies inside the input) is never entered. Symlinked folders are
    followed when configured; a folder reached again through a link (a symlink loop, or a second link to a
    folder already scanned) is skipped and reported, and so is anything named like a video that is not a file
    to read (a link that leads nowhere, a named pipe, a device). Nothing is opened here but HDTF's
    annotation files (`settings.layout`; see curate.layouts), read onto a timeline of `fps`
    (stages.resample.fps). What is found becomes columns a chunk at a time as the walk goes (ScannedSources).
    """
    input_dir = input_dir.resolve()
    extensions = {ext.lower() for ext in settings.extensions}
    excluded = exclude.resolve() if exclude is not None else None
    found: list[tuple[str, int, int]] = []        # the chunk being gathered
    batches: list[pa.RecordBatch] = []
    suffixed = bytearray()                        # per source found: its output key keeps its extension
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

    # depth first with an explicit stack, not recursion: a tree thousands of folders deep must not crash. Each
    # folder on it has the stems of its files found so far (stem -> the first's index): two sources that
    # differ only by extension are in one folder
    stack: list[tuple[PurePosixPath, tuple[int, int], Iterator[os.DirEntry], dict[str, int]]] = []
    opened = enter(input_dir, PurePosixPath("."))
    if opened is not None:
        stack.append((PurePosixPath("."), *opened, {}))
    while stack:
        relative, key, entries, stems = stack[-1]
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
                    stack.append((child, *opened, {}))
                continue
            suffix = Path(entry.name).suffix
            wanted = suffix.lower() in extensions
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
        index = len(suffixed)
        first = stems.setdefault(entry.name[:-len(suffix)], index)
        suffixed.append(first != index)
        if first != index:
            suffixed[first] = 1
        found.append((_clean(child.as_posix()), info.st_size, info.st_mtime_ns))
        if len(found) == _CHUNK:
            batches.append(_batch(found))
            found = []
    if found:
        batches.append(_batch(found))
    del found
    table = pa.Table.from_batches(batches, _COLUMNS)
    del batches
    table = table.append_column("suffixed", pa.array(np.frombuffer(bytes(suffixed), np.uint8).astype(bool)))
    intervals: dict[str, tuple[tuple[int, int], ...]] = {}
    dropped: list[tuple[str, str, str]] = []      # by the layout, after what the walk skipped
    if settings.layout == "voxceleb2":
        table = _voxceleb2(table, dropped)
    elif settings.layout == "hdtf":
        table = _hdtf(table, dropped, intervals, Path(settings.annotations or input_dir).expanduser(), fps)
    skipped += dropped
    return ScanResult(ScannedSources(str(input_dir), table, intervals),
                      [(_clean(path), why) for path, _, why in skipped],
                      {_clean(path): code for path, code, _ in skipped}, intervals)


def _batch(found: list[tuple[str, int, int]]) -> pa.RecordBatch:
    ids, sizes, mtimes = zip(*found)
    return pa.record_batch([pa.array(ids, pa.string()), pa.array(sizes, pa.int64()), pa.array(mtimes, pa.int64())],
                           schema=_COLUMNS)


def _each_id(table: pa.Table) -> Iterator[str]:
    for batch in table.select(["source_id"]).to_batches(max_chunksize=_CHUNK):
        yield from batch.column(0).to_pylist()


def _voxceleb2(table: pa.Table, skipped: list) -> pa.Table:
    keep = np.ones(len(table), dtype=bool)
    for index, source_id in enumerate(_each_id(table)):
        if layouts.voxceleb_speaker(source_id) is None:
            keep[index] = False
            skipped.append((source_id, "not_in_layout",
                            "not in a VoxCeleb2 speaker folder (idNNNNN/<youtube id>/NNNNN.mp4)"))
    return table if keep.all() else table.filter(pa.array(keep))


def _hdtf(table: pa.Table, skipped: list, intervals: dict, where: Path, fps: int) -> pa.Table:
    """The annotated videos (their intervals into `intervals`: a clip HDTF's download already cut is kept
    whole); the others are skipped, and each annotated video the folder lacks is reported."""
    annotations = layouts.read_annotations(where, fps)
    keep, present = np.ones(len(table), dtype=bool), set()
    for index, source_id in enumerate(_each_id(table)):
        found = layouts.match(PurePosixPath(source_id).stem, annotations)
        if found is None:
            keep[index] = False
            skipped.append((source_id, "not_annotated", f"not named in the annotations at {where}"))
            continue
        note, whole = found
        present.add(note.name)
        if whole and note.intervals:
            intervals[source_id] = note.intervals
    for note in annotations.values():
        if note.name not in present:
            skipped.append((note.video, "missing_annotated_video",
                            f"named in {note.file} (line {note.line}) but not in the input folder"))
    return table if keep.all() else table.filter(pa.array(keep))


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
