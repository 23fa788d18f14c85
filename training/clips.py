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

**Or shards** (`curate shards`: WebDataset tars and their index.parquet, on a local folder or any fsspec URL):
`read_lists` reads the index, and each clip is a `ShardSample`, the byte range of its sample in its shard.
The features are in the sample (the mel, and LatentSync's Whisper features), so nothing is prepared or
cached, and a clip is read with one ranged read (`read_clip`): the trainers' stream draws clips from a seeded
shuffle of the whole list, so they need any sample at any time, not a shard front to back (which is what the
webdataset package reads, and what a shuffle buffer would make depend on the buffer, the ranks and the loader
processes). Both give their clips in clip-id order, so the same clips give the same batches.
"""

from __future__ import annotations

import hashlib
import io
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
    shards: "tuple[list[Clip], list[Clip]] | None" = None   # read from shards: the clips, features in them
    fingerprint: str = ""                                   # of the shards' index: which samples, where


def is_shards(lists: str | Path) -> bool:
    """Whether LISTS names shards (an fsspec URL, an index.parquet, or a folder holding one)."""
    text = str(lists)
    return "://" in text or text.endswith(SHARD_INDEX) or (Path(text) / SHARD_INDEX).is_file()


def read_lists(lists: str | Path, val_list: Path | None = None) -> Lists:
    """Clip paths for training and validation from a `curate filelist` folder or a plain list file, or the
    clips of `curate shards`' shards (a folder or URL holding index.parquet)."""
    if is_shards(lists):
        if val_list is not None:
            raise DataError("--val-list goes with clip lists; shards carry their own split")
        return read_shard_index(str(lists))
    lists = Path(lists)
    if lists.is_dir():
        split = lists / "split.parquet"
        if split.is_file():
            import pyarrow.parquet as pq

            table = pq.read_table(split, columns=["clip_id", "abs_path", "split"]).sort_by("clip_id").to_pydict()
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


@dataclass(frozen=True, slots=True)
class ShardSample:
    """Where a clip's sample lies: its shard's URL, the offset and length of its bytes there, its members'
    suffixes and their (start within those bytes, size) pairs, packed as int64 (a million of these are what
    every training worker holds: benchmark 16)."""
    shard: str
    offset: int
    length: int
    suffixes: tuple[str, ...]
    spans: bytes
    whisper_sha256: str | None = None     # the encoder file its Whisper features come from (None: it has none)

    @classmethod
    def of(cls, shard: str, offset: int, length: int, members, whisper_sha256: str | None = None) -> "ShardSample":
        """From (suffix, start, size) triples."""
        members = list(members)
        spans = np.array([(start, size) for _, start, size in members], np.int64).tobytes()
        return cls(shard, offset, length, tuple(suffix for suffix, _, _ in members), spans, whisper_sha256)

    def members(self) -> list[tuple[str, int, int]]:
        spans = np.frombuffer(self.spans, np.int64).reshape(-1, 2)
        return [(suffix, int(start), int(size)) for suffix, (start, size) in zip(self.suffixes, spans)]


@dataclass(frozen=True, slots=True)
class Clip:
    path: str            # the clip's file; for a clip in a shard, "SHARD#KEY" (its name in messages)
    frames: int          # frames with audio under them
    mel: str = ""        # the cached mel (.npy); "" for a clip in a shard, whose sample holds it
    sample: ShardSample | None = None

    def last_start(self, num_frames: int) -> int:
        """The last start of a window of `num_frames` frames whose mel columns are all there."""
        columns = (self.frames * SAMPLES_PER_FRAME) // 200 + 1
        last = self.frames - num_frames
        while last >= 0 and mel_start(last) + mel_columns(num_frames) > columns:
            last -= 1
        return last


@dataclass(frozen=True)
class ClipData:
    video: "str | io.BytesIO"         # what PyAV opens
    mel: np.ndarray                   # 80 x columns
    whisper: np.ndarray | None        # rows x 5 x 384 float16 (LatentSync's clips)


def read_clip(clip: Clip) -> ClipData:
    """A clip's video, mel and (for LatentSync's clips) Whisper features: from its files and the cache, or from
    its shard with one ranged read. Raises OSError or ValueError saying what failed."""
    whisper = getattr(clip, "whisper", "")
    if clip.sample is None:
        video = clip.path
        if "://" in video:        # a clip on an fsspec filesystem (its features still in the local cache)
            import fsspec

            with fsspec.open(video, "rb") as handle:
                video = io.BytesIO(handle.read())
        return ClipData(video, np.load(clip.mel, mmap_mode="r"), np.load(whisper, mmap_mode="r") if whisper else None)
    members = read_sample(clip.sample, ("mp4", "mel.npy", "whisper.npy"))
    try:
        mel = np.load(io.BytesIO(members["mel.npy"]))
        features = np.load(io.BytesIO(members["whisper.npy"])) if "whisper.npy" in members else None
    except KeyError as exc:
        raise ValueError(f"its sample has no {exc.args[0]} member") from None
    return ClipData(io.BytesIO(members["mp4"]), mel, features)


def read_sample(sample: ShardSample, wanted: tuple[str, ...] | None = None) -> dict[str, bytes]:
    """A sample's members by suffix (mp4, mel.npy, npz, ...), read with one ranged read of its shard: all of
    them, or those of `wanted` it has (the read stops at the last of them: `curate shards` writes the
    trainers' members first)."""
    import fsspec

    members = [m for m in sample.members() if wanted is None or m[0] in wanted]
    length = max(start + size for _, start, size in members) if wanted is not None and members else sample.length
    fs, path = fsspec.core.url_to_fs(sample.shard)
    data = fs.cat_file(path, start=sample.offset, end=sample.offset + length)
    if len(data) != length:
        raise ValueError(f"{sample.shard} holds {len(data)} bytes at {sample.offset}, not the {length} its index "
                         "says: the shard changed since it was indexed")
    return {suffix: data[start:start + size] for suffix, start, size in members}


SHARD_INDEX = "index.parquet"


def read_shard_index(where: str) -> Lists:
    """The train and val clips of `curate shards`' shards: `where` is their folder or URL, or its index.parquet.
    Clips are in clip-id order, as `read_lists` gives a filelist's."""
    import fsspec
    import pyarrow.parquet as pq

    root = where.removesuffix(SHARD_INDEX).rstrip("/")
    if "://" not in root:
        root = str(Path(root).resolve())      # the training workers may start elsewhere
    try:
        fs, path = fsspec.core.url_to_fs(f"{root}/{SHARD_INDEX}")
        with fs.open(path, "rb") as handle:
            table = pq.read_table(handle)
    except (ImportError, ValueError, OSError) as exc:
        raise DataError(f"cannot read the shards' index {root}/{SHARD_INDEX}: {type(exc).__name__}: {exc}") from None
    needed = {"shard", "split", "key", "clip_id", "frames", "offset", "length", "members", "whisper_sha256"}
    if needed - set(table.column_names):
        raise DataError(f"{root}/{SHARD_INDEX} lacks {', '.join(sorted(needed - set(table.column_names)))}: "
                        "written by an older `curate shards`; write the shards again to a new folder")
    table = table.sort_by("clip_id")
    # column by column: a million rows become a million small objects, and nothing else is kept per row
    clip_ids, names = table["clip_id"].to_pylist(), table["shard"].to_pylist()
    offsets, lengths = table["offset"].to_numpy(), table["length"].to_numpy()
    digest = hashlib.sha256("\n".join(clip_ids).encode())
    for part in ("\n".join(names).encode(), offsets.tobytes(), lengths.tobytes()):
        digest.update(part)
    members = table["members"].combine_chunks()
    bounds = members.offsets.to_numpy()
    flat = members.flatten()
    suffix_of = flat.field("suffix").to_pylist()
    pairs = np.stack([flat.field("start").to_numpy(), flat.field("size").to_numpy()], axis=1).astype(np.int64)
    shards: dict[str, str] = {}        # one URL string per shard, one tuple per member layout
    layouts: dict[tuple, tuple] = {}
    out: dict[str, list[Clip]] = {"train": [], "val": []}
    for row, (split, key, frames, whisper) in enumerate(zip(
            table["split"].to_pylist(), table["key"].to_pylist(), table["frames"].to_pylist(),
            table["whisper_sha256"].to_pylist())):
        if split not in out:
            continue
        low, high = bounds[row], bounds[row + 1]
        layout = tuple(suffix_of[low:high])
        sample = ShardSample(shards.setdefault(names[row], f"{root}/{names[row]}"), int(offsets[row]),
                             int(lengths[row]), layouts.setdefault(layout, layout), pairs[low:high].tobytes(), whisper)
        out[split].append(Clip(f"{sample.shard}#{key}", frames, "", sample))
    if not out["train"]:
        raise DataError(f"{root}/{SHARD_INDEX} lists no training clips")
    return Lists([c.path for c in out["train"]], [c.path for c in out["val"]], root, (out["train"], out["val"]),
                 digest.hexdigest())


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
    if (problem := audio_mismatch(frames, samples)) is not None:
        return {"path": path, "problem": problem}
    key = hashlib.sha256(f"{path}\n{sha256}".encode()).hexdigest()[:32]
    target = Path(folder) / key[:2] / f"{key}.npy"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
        with open(partial, "wb") as handle:
            np.save(handle, melspectrogram(samples))
        os.replace(partial, target)
    return {"path": path, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256,
            "frames": usable_frames(frames, samples), "mel": str(target)}


def audio_mismatch(frames: int, samples: np.ndarray) -> str | None:
    """Why a clip's audio and frames disagree too much to train on (more than a frame apart), or None."""
    if abs(len(samples) - frames * SAMPLES_PER_FRAME) > SAMPLES_PER_FRAME:
        return f"audio_mismatch: {len(samples) / SAMPLE_RATE:.2f} s of audio under {frames / FPS:.2f} s of frames"
    return None


def usable_frames(frames: int, samples: np.ndarray) -> int:
    """The frames of a clip with audio under them."""
    return min(frames, len(samples) // SAMPLES_PER_FRAME)


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
