"""The clips a trainer reads: the lists they come from, their features computed once per clip, and which of
them are long enough to use.

Where they come from: what `curate filelist` writes (a folder with train.txt, val.txt and split.parquet), or a
plain list of clip paths, one a line (LatentSync's fileslist), for clips made elsewhere. Clips must be square
aligned faces at 25 fps with an audio stream.

**Features, once per clip** (`prepare`): the audio is decoded and its mel spectrogram (media.mel) stored in
a cache folder under a key made of the clip's absolute path and the sha256 of its bytes, so clips of the same
name in different folders never collide, and a clip whose audio changes (the sync stage shifts it) gets a
new entry. `index.jsonl` maps (path, size, mtime) to the entry, so a later start only looks at the files.
Training reads the mel from the cache and never decodes audio.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from manifests.files import file_sha256
from manifests.rejected import Rejected
from media import probe as probe_stage
from media.frames import FFmpegError, count_frames
from media.mel import SAMPLE_RATE, mel_columns, mel_start, melspectrogram
from media.timeline import AudioTrack
from networks.syncnet.experts import Framing

FPS = 25
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS


class DataError(ValueError):
    """Training data that cannot be used at all; the message says what and why."""


# -- the lists ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Lists:
    train: list[str]
    val: list[str]
    source: str          # what they were read from, for messages


def read_lists(lists: Path, val_list: Path | None = None) -> Lists:
    """Clip paths for training and validation from a `curate filelist` folder or a plain list file."""
    lists = Path(lists)
    if lists.is_dir():
        split = lists / "split.parquet"
        if split.is_file():
            import pyarrow.parquet as pq

            table = pq.read_table(split, columns=["abs_path", "split"]).to_pydict()
            train = [p for p, s in zip(table["abs_path"], table["split"]) if s == "train"]
            val = [p for p, s in zip(table["abs_path"], table["split"]) if s == "val"]
        elif (lists / "train.txt").is_file():
            train = _read_list(lists / "train.txt")
            val = _read_list(lists / "val.txt") if (lists / "val.txt").is_file() else []
        else:
            raise DataError(f"{lists} holds neither split.parquet nor train.txt (write them with `curate filelist`)")
    elif lists.is_file():
        train, val = _read_list(lists), []
    else:
        raise DataError(f"{lists} does not exist")
    if val_list is not None:
        val = _read_list(Path(val_list))
    if not train:
        raise DataError(f"{lists} lists no training clips")
    return Lists(train, val, str(lists))


def _read_list(path: Path) -> list[str]:
    """One clip a line (blank lines and '#' comments skipped); relative paths are relative to the list."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the list {path}: {exc}") from None
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(str((path.parent / line).resolve()) if not os.path.isabs(line) else line)
    return out


# -- features, once per clip ----------------------------------------------------------------------------------

def cache_dir(settings) -> Path:
    """The mel cache of `settings` (a WindowSettings): its `cache_dir`, else $CURATE_FEATURES_DIR, else the default."""
    configured = settings.cache_dir or os.environ.get("CURATE_FEATURES_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "lipsync-curate" / "features"


@dataclass(frozen=True)
class Clip:
    path: str
    frames: int          # frames with audio under them
    mel: str             # the cached mel (.npy, 80 x columns)

    def last_start(self, num_frames: int) -> int:
        """The last start of a window of `num_frames` frames whose mel columns are all there."""
        columns = (self.frames * SAMPLES_PER_FRAME) // 200 + 1
        last = self.frames - num_frames
        while last >= 0 and mel_start(last) + mel_columns(num_frames) > columns:
            last -= 1
        return last


def prepare_clip(path: str, folder: str) -> dict:
    """Probe one clip, hash it, compute and store its mel; returns its index entry, or {"path", "problem"}."""
    if not os.path.exists(path):
        return {"path": path, "problem": "missing: no such file"}
    try:
        stat = os.stat(path)
        frames, samples = clip_audio(path)
        sha256 = file_sha256(path)
    except Rejected as exc:
        return {"path": path, "problem": f"{exc.reason}: {exc.detail}"}
    except (OSError, FFmpegError, ValueError) as exc:
        return {"path": path, "problem": f"unreadable: {type(exc).__name__}: {exc}"}
    if abs(len(samples) - frames * SAMPLES_PER_FRAME) > SAMPLES_PER_FRAME:
        return {"path": path, "problem": f"audio_mismatch: {len(samples) / SAMPLE_RATE:.2f} s of audio under "
                                         f"{frames / FPS:.2f} s of frames"}
    key = hashlib.sha256(f"{path}\n{sha256}".encode()).hexdigest()[:32]
    target = Path(folder) / key[:2] / f"{key}.npy"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
        with open(partial, "wb") as handle:
            np.save(handle, melspectrogram(samples))
        os.replace(partial, target)
    usable = min(frames, len(samples) // SAMPLES_PER_FRAME)
    return {"path": path, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256,
            "frames": usable, "mel": str(target)}


def clip_audio(path: str) -> tuple[int, np.ndarray]:
    """(video frames, 16 kHz mono int16 samples on the video's timeline) of an aligned 25 fps clip; raises
    Rejected for a clip that is not one."""
    facts = probe_stage.probe(path, min_duration_s=0.0)
    if abs(facts.fps - FPS) > 0.01:
        raise Rejected("data", "not_25_fps", f"{facts.fps:g} fps; the trainers train on 25 fps clips "
                                             "(curate them first)")
    if facts.width != facts.height:
        raise Rejected("data", "not_aligned", f"{facts.width}x{facts.height}: not a square aligned face clip")
    frames, t0 = count_frames(path, facts.video_index)
    audio = AudioTrack(path, facts.audio_index, SAMPLE_RATE, t0)
    audio.ensure(sys.maxsize)
    samples = audio.take(0, audio.available) if audio.available else np.zeros(0, np.int16)
    audio.close()
    return frames, samples


class FeatureCache:
    """The cache folder and its index."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.index_path = self.folder / "index.jsonl"
        self.entries: dict[str, dict] = {}
        try:
            with open(self.index_path) as handle:
                for line in handle:
                    try:
                        entry = json.loads(line)
                    except ValueError:
                        continue
                    self.entries[entry["path"]] = entry
        except OSError:
            pass

    def lookup(self, path: str) -> dict | None:
        """The entry of `path` if the file is as it was when it was prepared and its mel is still there."""
        entry = self.entries.get(path)
        if entry is None:
            return None
        try:
            stat = os.stat(path)
        except OSError:
            return None
        if (stat.st_size, stat.st_mtime_ns) != (entry["size"], entry["mtime_ns"]) or not os.path.isfile(entry["mel"]):
            return None
        return entry

    def prepare(self, paths: Iterable[str], run: Callable[[list[str], str], list[dict]] | None = None
                ) -> tuple[list[Clip], list[tuple[str, str]]]:
        """Usable clips and (path, problem) for the others, preparing what the index does not hold.

        `run(paths, folder)` prepares a list of clips (a Ray map in `curate train`; in order, here, by default).
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        paths = list(dict.fromkeys(paths))
        todo = [p for p in paths if self.lookup(p) is None]
        if todo:
            fresh = (run or prepare_clips_in)(todo, str(self.folder))
            with open(self.index_path, "a") as handle:
                for entry in fresh:
                    if "problem" not in entry:
                        self.entries[entry["path"]] = entry
                        handle.write(json.dumps(entry) + "\n")
            problems = {entry["path"]: entry["problem"] for entry in fresh if "problem" in entry}
        else:
            problems = {}
        clips, skipped = [], []
        for path in paths:
            entry = self.lookup(path)
            if entry is None:
                skipped.append((path, problems.get(path, "changed while it was prepared")))
            else:
                clips.append(Clip(path, int(entry["frames"]), entry["mel"]))
        return clips, skipped


def prepare_clips_in(paths: list[str], folder: str) -> list[dict]:
    return [prepare_clip(path, folder) for path in paths]


def usable(clips: list[Clip], framing: Framing, min_negative_shift: int, what: str) -> tuple[list[Clip], list[tuple[str, str]]]:
    """Clips long enough for a window and a negative at least `min_negative_shift` away from any start."""
    need = 2 * min_negative_shift - 1
    kept, short = [], []
    for clip in clips:
        if clip.last_start(framing.num_frames) >= need:
            kept.append(clip)
        else:
            short.append((clip.path, f"too_short: {clip.frames} frames, a {what} window needs "
                                     f"{framing.num_frames + need}"))
    return kept, short


def describe_skipped(skipped: list[tuple[str, str]], what: str, shown: int = 20) -> str:
    """A message naming the skipped files (the first `shown` of them) and why."""
    lines = [f"  {path}: {why}" for path, why in skipped[:shown]]
    more = f"\n  ... and {len(skipped) - shown} more" if len(skipped) > shown else ""
    return f"{len(skipped)} {what} clip(s) skipped:\n" + "\n".join(lines) + more
