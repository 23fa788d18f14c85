"""Input layouts (`inputs.layout`): how a dataset names its videos and its speakers, and HDTF's annotations.

- folder: any tree of videos; the speaker is VoxCeleb2's `idNNNNN` folder where the path has one, else the file.
- voxceleb2: `idNNNNN/<youtube id>/NNNNN.mp4` (at any depth); a video outside an `idNNNNN` folder is left out.
- hdtf: a flat folder of `<Set>_<Name>.mp4` (the videos HDTF names, downloaded whole) or `<Set>_<Name>_<NNN>.mp4`
  (clips already cut at the annotated times), with HDTF's `<Set>_annotion_time.txt` files (its own spelling;
  `_annotation_time.txt` too). Each of their lines reads `<Name>.mp4 <from>-<to> <from>-<to> ...`, times as
  mm:ss or hh:mm:ss: the stretches of the video to keep.

Light on purpose (the driver imports it): no PyAV, no pandas.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from curate.errors import RunError

ANNOTATION_SUFFIXES = ("_annotion_time.txt", "_annotation_time.txt")
VOXCELEB_ID = re.compile(r"id\d+")
_ID_IN_TEXT = re.compile(r"(?<![A-Za-z0-9])id\d+(?![A-Za-z0-9])")
_CLIP_NUMBER = re.compile(r"^(.+)_(\d+)$")       # HDTF's cut clips: <Set>_<Name>_<NNN>
_TIME = re.compile(r"^(?:(?:(\d+):)?(\d+):)?(\d+(?:\.\d+)?)$")


class AnnotationError(RunError):
    """HDTF annotations that cannot be used; one line naming the file (and line)."""


@dataclass(frozen=True)
class Annotation:
    name: str                                   # the video's stem in the input folder: WDA_BarackObama
    video: str                                  # its file name as annotated, set prefix added: WDA_BarackObama.mp4
    intervals: tuple[tuple[int, int], ...]      # frame ranges [start, end) on the output timeline, merged
    file: Path
    line: int


# -- HDTF's annotation files ------------------------------------------------------------------------

def annotation_files(where: Path) -> list[Path]:
    """The annotation files at `where`: the file itself, or a folder's `*_annotion_time.txt` and
    `*_annotation_time.txt` files. None there is an error that names what was looked for."""
    if where.is_file():
        return [where]
    if not where.exists():
        raise AnnotationError(f"inputs.annotations: {where} does not exist")
    try:
        found = sorted({p for suffix in ANNOTATION_SUFFIXES for p in where.glob(f"*{suffix}") if p.is_file()})
    except OSError as exc:
        raise AnnotationError(f"inputs.annotations: cannot list {where}: {exc.strerror or exc}") from None
    if not found:
        raise AnnotationError(f"inputs.layout hdtf: no annotation file {where / ('*' + ANNOTATION_SUFFIXES[0])} "
                              f"(or *{ANNOTATION_SUFFIXES[1]}); set inputs.annotations to HDTF's files or their folder")
    return found


def parse_time(text: str) -> float:
    """Seconds of `ss`, `mm:ss` or `hh:mm:ss` (seconds may have a fraction); ValueError if it is none of them."""
    match = _TIME.fullmatch(text)
    if not match:
        raise ValueError(f"{text!r} is not a time (mm:ss or hh:mm:ss)")
    hours, minutes, seconds = match.groups()
    if (minutes is not None and float(seconds) >= 60) or (hours is not None and int(minutes) >= 60):
        raise ValueError(f"{text!r} is not a time (mm:ss or hh:mm:ss): a field is 60 or more")
    return int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds)


def merge(ranges: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Frame ranges sorted, the overlapping and adjacent ones merged."""
    merged: list[list[int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return tuple((start, end) for start, end in merged)


def parse_annotations(path: Path, fps: int, text: str | None = None) -> list[Annotation]:
    """One Annotation per line of an annotation file (blank lines and `#` comments skipped). The set prefix
    comes from the file's name (`WDA_annotion_time.txt`: WDA) and is put before each name that lacks it."""
    if text is None:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = getattr(exc, "strerror", None) or exc
            raise AnnotationError(f"cannot read annotation file {path}: {why}") from None
    prefix = next((path.name[:-len(s)] for s in ANNOTATION_SUFFIXES if path.name.endswith(s)), "")
    out = []
    for number, line in enumerate(text.removeprefix("\ufeff").splitlines(), start=1):
        fields = line.replace("|", " ").split()
        if not fields or fields[0].startswith("#"):
            continue
        try:
            out.append(_annotation(fields, prefix, fps, path, number))
        except ValueError as exc:
            raise AnnotationError(f"{path}, line {number}: {exc}") from None
    return out


def _annotation(fields: list[str], prefix: str, fps: int, path: Path, number: int) -> Annotation:
    video, times = fields[0], fields[1:]
    if prefix and not video.startswith(prefix + "_"):
        video = f"{prefix}_{video}"
    if not times:
        raise ValueError(f"{fields[0]} has no time intervals (want <name>.mp4 mm:ss-mm:ss ...)")
    ranges = []
    for interval in times:
        ends = interval.split("-")
        if len(ends) != 2:
            raise ValueError(f"{interval!r} is not an interval (want from-to, e.g. 00:30-01:00)")
        start, end = (round(parse_time(t) * fps) for t in ends)
        if end <= start:
            raise ValueError(f"interval {interval!r} ends before it starts (or is empty)")
        ranges.append((start, end))
    return Annotation(_stem(video), video, merge(ranges), path, number)


def _stem(name: str) -> str:
    suffix = PurePosixPath(name).suffix
    return name[:-len(suffix)] if re.fullmatch(r"\.[A-Za-z0-9]{2,4}", suffix or "") else name


def read_annotations(where: Path, fps: int) -> dict[str, Annotation]:
    """Every annotated video at `where` (a file or a folder of them), by its stem in the input folder."""
    found: dict[str, Annotation] = {}
    for path in annotation_files(where):
        for note in parse_annotations(path, fps):
            if note.name in found:
                first = found[note.name]
                raise AnnotationError(f"{note.file}, line {note.line}: {note.video} is annotated twice "
                                      f"(first in {first.file}, line {first.line})")
            found[note.name] = note
    return found


def match(stem: str, annotations: dict[str, Annotation]) -> tuple[Annotation, bool] | None:
    """The annotation of a video named `stem`, and whether the video is the whole one (True: its intervals
    apply) or a clip already cut at them (`<name>_<NNN>`: the whole clip is kept); None when not annotated."""
    if stem in annotations:
        return annotations[stem], True
    clip = _CLIP_NUMBER.match(stem)
    if clip and clip.group(1) in annotations:
        return annotations[clip.group(1)], False
    return None


# -- speakers ---------------------------------------------------------------------------------------

def voxceleb_speaker(source_id: str) -> str | None:
    """VoxCeleb2's speaker folder (`id00012/<video>/00001.mp4`, at any depth), None where the path has none."""
    return next((part for part in PurePosixPath(source_id).parts[:-1] if VOXCELEB_ID.fullmatch(part)), None)


def hdtf_speaker(source_id: str) -> str:
    """HDTF's speaker: the file's name without its clip number (`WDA_BarackObama_000.mp4`: WDA_BarackObama)."""
    stem = _stem(PurePosixPath(source_id).name)
    clip = _CLIP_NUMBER.match(stem)
    return clip.group(1) if clip else stem


def read_speaker_list(path: Path) -> set[str]:
    """Speakers named in a text file, one a line (blank lines and `#` comments skipped). A line with a
    VoxCeleb id in it (`id00017`, or a path or address holding `id00017/...`) names every such id; any other
    line is a speaker as `curate filelist` names it (HDTF: `WDA_BarackObama`)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise RunError(f"cannot read the speaker list {path}: {getattr(exc, 'strerror', None) or exc}") from None
    speakers: set[str] = set()
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            speakers.update(_ID_IN_TEXT.findall(line) or [line])
    return speakers
