"""The experts' data: windows of N consecutive frames of aligned clips with their mel columns, in sync or not.

Where it comes from: what `curate filelist` writes (a folder with train.txt, val.txt and split.parquet), or a
plain list of clip paths, one a line (LatentSync's fileslist), for clips made elsewhere. Clips must be square
aligned faces at 25 fps with an audio stream.

**Features, once per clip** (`prepare`): the audio is decoded and its mel spectrogram (media.mel) stored in
a cache folder under a key made of the clip's absolute path and the sha256 of its bytes, so clips of the same
name in different folders never collide, and a clip whose audio changes (the sync stage shifts it) gets a
new entry. `index.jsonl` maps (path, size, mtime) to the entry, so a later start only looks at the files.
Training reads the mel from the cache and never decodes audio.

**Frames: decode a clip once, draw many windows from it.** A 10 s 256 x 256 clip is one GOP of 250 frames,
so a random 16-frame seek (LatentSync's loader) decodes half the clip for one sample. Here each batch draws
its windows from `clips_per_batch` clips, and a decoded clip (the lower half only, already in the model's
size and channel order) serves `batches_per_clip` consecutive batches: 16 windows for each decode with the
defaults. The benchmark (bench/bench_train.py) measures both.

**A deterministic stream.** Global micro-batch j is a pure function of (seed, j) and the data settings,
whatever the number of training workers: its clips are a group of the epoch's seeded shuffle, its windows
and labels drawn from generators seeded by (seed, group, clip). Each worker makes only its share (the clips q
with q mod world_size == rank), so ranks decode disjoint clips, and a resumed run continues with exactly the
batches the uninterrupted run would have seen. DataLoader processes take turns by micro-batch (j mod
num_workers), each keeping its own group decoded, which is why `num_workers` is part of the stream's
definition.

**Labels.** Half of every batch in sync (frames and audio from the same start), half not: the frames from a
start at least `min_negative_shift` frames away from the audio's, in the same clip (the references allow a
shift of one frame, which is label noise: 40 ms of a 640 ms window).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import av
import cv2
import numpy as np
import torch

from manifests.files import file_sha256
from media import probe as probe_stage
from manifests.rejected import Rejected
from media.timeline import AudioTrack
from networks.syncnet.experts import Framing
from media.mel import SAMPLE_RATE, mel_columns, mel_start, melspectrogram

FPS = 25
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS
VAL_SHIFT = 15          # offset accuracy looks at shifts -15 .. +15 frames, as SyncNet's evaluation does


@dataclass(frozen=True)
class WindowSettings:
    """The `data:` section of the expert trainers' config."""
    __pydantic_config__ = {"extra": "forbid"}

    cache_dir: str | None = None      # mel cache (null: $CURATE_FEATURES_DIR, else ~/.cache/lipsync-curate/features)
    resolution: int | None = None     # side the aligned face is scaled to before its lower half is taken
                                      # (null: the expert's own, 256 for stable, 96 for wav2lip)
    min_negative_shift: int = 5       # frames between a negative's frames and its audio, at least
    clips_per_batch: int = 32         # a batch draws its windows from this many clips, equally
    batches_per_clip: int = 2         # consecutive batches a decoded clip serves
    num_workers: int = 4              # data-loading processes per training worker
    val_clips: int = 256              # validation clips, at most (sorted by path, the first ones)
    val_windows_per_clip: int = 4     # fixed, seeded windows per validation clip

    def __post_init__(self):
        for name in ("min_negative_shift", "clips_per_batch", "batches_per_clip", "val_windows_per_clip"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.resolution is not None and (self.resolution < 8 or self.resolution % 4):
            raise ValueError(f"resolution must be a multiple of 4 of at least 8, not {self.resolution}")
        if self.num_workers < 0 or self.val_clips < 0:
            raise ValueError("num_workers and val_clips cannot be negative")
        if self.min_negative_shift > VAL_SHIFT:
            raise ValueError(f"min_negative_shift must be at most {VAL_SHIFT}")


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

def cache_dir(settings: WindowSettings) -> Path:
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
    except (OSError, av.error.FFmpegError, ValueError) as exc:
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
    frames, t0 = _count_frames(path, facts.video_index)
    audio = AudioTrack(path, facts.audio_index, SAMPLE_RATE, t0)
    audio.ensure(sys.maxsize)
    samples = audio.take(0, audio.available) if audio.available else np.zeros(0, np.int16)
    audio.close()
    return frames, samples


def _count_frames(path: str, video_index: int) -> tuple[int, float]:
    """Video frames (packets, no decoding) and the first one's time, where the clip's timeline starts."""
    count, first = 0, None
    with av.open(path) as container:
        stream = container.streams[video_index]
        for packet in container.demux(stream):
            if packet.size:
                count += 1
                if packet.pts is not None:
                    t = float(packet.pts * stream.time_base)
                    first = t if first is None else min(first, t)
    return count, first or 0.0


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


# -- frames ---------------------------------------------------------------------------------------------------

class ClipUnreadable(Exception):
    pass


def decode_lower_halves(path: str, framing: Framing, count: int) -> np.ndarray:
    """The first `count` frames of a clip as (count, height, width, 3) uint8: the lower half of the aligned
    face in the framing's size and channel order. Only the lower half is converted from YUV, straight from
    the decoder's planes."""
    out = np.empty((count, framing.height, framing.width, 3), np.uint8)
    code = cv2.COLOR_YUV2RGB_I420 if framing.channel_order == "rgb" else cv2.COLOR_YUV2BGR_I420
    got = 0
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1       # one process per core already
            for frame in container.decode(stream):
                if got == count:
                    break
                if frame.format.name != "yuv420p" or frame.height % 4:
                    frame = frame.reformat(format="yuv420p", height=frame.height // 4 * 4)
                half = cv2.cvtColor(_lower_i420(frame), code)
                if half.shape[:2] != (framing.height, framing.width):
                    half = cv2.resize(half, (framing.width, framing.height), interpolation=cv2.INTER_AREA)
                out[got] = half
                got += 1
    except (OSError, av.error.FFmpegError) as exc:
        raise ClipUnreadable(f"{type(exc).__name__}: {exc}") from None
    if got < count:
        raise ClipUnreadable(f"decoded {got} frames, {count} expected")
    return out


def _lower_i420(frame: av.VideoFrame) -> np.ndarray:
    """The lower half of a yuv420p frame as one I420 buffer (rows of luma, then the two chroma planes)."""
    h, w = frame.height, frame.width
    y, u, v = frame.planes
    luma = np.frombuffer(y, np.uint8).reshape(h, y.line_size)[h // 2:, :w]
    cb = np.frombuffer(u, np.uint8).reshape(h // 2, u.line_size)[h // 4:, :w // 2]
    cr = np.frombuffer(v, np.uint8).reshape(h // 2, v.line_size)[h // 4:, :w // 2]
    return np.concatenate([luma, cb.reshape(-1, w), cr.reshape(-1, w)])


# -- the training stream --------------------------------------------------------------------------------------

class WindowStream(torch.utils.data.IterableDataset):
    """This rank's share of global micro-batches start, start + 1, ... (see the module's docstring).

    A batch: `frames` (n, N, h, w, 3) uint8, `mel` (n, 1, 80, C) float32, `label` (n,) float32 (1: in sync),
    where each sample comes from (`clip`, an index into `clips`, `audio_start` and `frame_start` in frames)
    and `index` (the global micro-batch)."""

    def __init__(self, clips: list[Clip], framing: Framing, settings: WindowSettings, micro_batch: int,
                 seed: int, rank: int = 0, world_size: int = 1, start: int = 0, stop: int | None = None,
                 problems_file: str | None = None):
        if not clips:
            raise DataError("no usable training clips")
        if micro_batch % settings.clips_per_batch:
            raise DataError(f"a micro-batch of {micro_batch} samples does not split evenly over "
                            f"data.clips_per_batch = {settings.clips_per_batch} clips")
        self.clips, self.framing, self.settings = clips, framing, settings
        self._numbers = {clip.path: number for number, clip in enumerate(clips)}
        self.per_clip = micro_batch // settings.clips_per_batch       # windows per clip per batch
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.start, self.stop = start, stop
        self.workers = max(1, settings.num_workers)
        self.skipped: set[str] = set()
        self.problems_file = problems_file   # where clips that fail to decode are noted (path, tab, why)

    # which batch is where
    def locate(self, index: int) -> tuple[int, int]:
        """(group, batch within the group) of global micro-batch `index`."""
        lane, turn = index % self.workers, index // self.workers
        return lane + self.workers * (turn // self.settings.batches_per_clip), turn % self.settings.batches_per_clip

    def epoch_of(self, index: int) -> int:
        group, _ = self.locate(index)
        return group * self.settings.clips_per_batch // len(self.clips)

    def group_clips(self, group: int) -> list[int]:
        """Indices into `clips` of the group's clips: positions group * G .. of the epochs' shuffles, in a row."""
        n, size = len(self.clips), self.settings.clips_per_batch
        out = []
        for position in range(group * size, (group + 1) * size):
            epoch, at = divmod(position, n)
            out.append(int(self._order(epoch)[at]))
        return out

    def _order(self, epoch: int) -> np.ndarray:
        cached = getattr(self, "_cached_order", None)
        if cached is None or cached[0] != epoch:
            cached = (epoch, np.random.default_rng([self.seed, 0, epoch]).permutation(len(self.clips)))
            self._cached_order = cached
        return cached[1]

    def windows(self, group: int, slot: int, clip: Clip) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(audio starts, frame starts, labels) of all the windows clip `slot` of `group` gives, batch by
        batch: batches_per_clip x per_clip of them."""
        count = self.settings.batches_per_clip * self.per_clip
        rng = np.random.default_rng([self.seed, 1, group, slot])
        last = clip.last_start(self.framing.num_frames)
        audio = rng.integers(0, last + 1, count)
        # the in-sync windows: every other sample of the batch, counted over the whole batch
        positions = slot * self.per_clip + np.arange(count) % self.per_clip
        labels = (positions % 2 == 0).astype(np.float32)
        frames = audio.copy()
        shift = self.settings.min_negative_shift
        for i in np.flatnonzero(labels == 0):
            a = audio[i]
            below = max(0, a - shift + 1)               # starts 0 .. a - shift
            above = max(0, last - (a + shift) + 1)      # starts a + shift .. last
            pick = rng.integers(0, below + above)
            frames[i] = pick if pick < below else a + shift + (pick - below)
        return audio, frames, labels

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        turn, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if workers not in (1, self.workers):
            raise DataError(f"the stream was made for {self.workers} loader processes, not {workers}")
        if info is None and self.workers > 1:
            # one process standing in for all of them: take their turns in order
            indices = range(self.start, self.stop if self.stop is not None else sys.maxsize)
        else:
            indices = range(self.start + turn, self.stop if self.stop is not None else sys.maxsize, workers)
        held: dict[int, tuple] = {}          # group -> decoded share, per lane
        for index in indices:
            group, batch = self.locate(index)
            lane = index % self.workers
            if lane not in held or held[lane][0] != group:
                held[lane] = (group, self._decode_share(group))
            yield self._batch(index, batch, held[lane][1])

    def _decode_share(self, group: int) -> list[tuple]:
        """This rank's clips of `group`: [slot, clip, frames, mel, its windows (what `windows` gives)]."""
        share = []
        for slot, clip_index in enumerate(self.group_clips(group)):
            if slot % self.world_size != self.rank:
                continue
            clip = self.clips[clip_index]
            share.append([slot, clip, None, None, self.windows(group, slot, clip)])
        decoded = []
        for item in share:
            clip = item[1]
            try:
                item[2] = self._decode(clip)
                item[3] = np.load(clip.mel, mmap_mode="r")
                decoded.append(item)
            except (ClipUnreadable, OSError, ValueError) as exc:
                if clip.path not in self.skipped:
                    self.skipped.add(clip.path)
                    warnings.warn(f"skipping {clip.path} in training: {exc}")
                    if self.problems_file:
                        with open(self.problems_file, "a") as handle:
                            handle.write(f"{clip.path}\t{exc}\n")
        if share and not decoded:
            raise DataError(f"none of the clips of batch group {group} could be read")
        # a clip that failed is stood in for by the next one that did not (same share, same order), with the
        # windows the failed clip's seeds draw on it, so the batch keeps its size and its balance
        for number, item in enumerate(share):
            if item[2] is None:
                stand_in = decoded[number % len(decoded)]
                item[1:4] = stand_in[1:4]
                item[4] = self.windows(group, item[0], stand_in[1])
        return share

    def _decode(self, clip: Clip) -> np.ndarray:
        # the whole clip: a stand-in for a clip that fails may need any of its frames
        n = self.framing.num_frames
        return decode_lower_halves(clip.path, self.framing, clip.last_start(n) + n)

    def _batch(self, index: int, batch: int, share: list) -> dict:
        n_frames, columns = self.framing.num_frames, mel_columns(self.framing.num_frames)
        count = len(share) * self.per_clip
        frames = np.empty((count, n_frames, self.framing.height, self.framing.width, 3), np.uint8)
        mels = np.empty((count, 1, 80, columns), np.float32)
        labels = np.empty(count, np.float32)
        where = np.empty((count, 3), np.int64)          # clip (index into the list), audio start, frames start
        at = 0
        for _, clip, pictures, mel, (audio, starts, label) in share:
            number = self._numbers[clip.path]
            for i in range(batch * self.per_clip, (batch + 1) * self.per_clip):
                frames[at] = pictures[starts[i]:starts[i] + n_frames]
                column = mel_start(int(audio[i]))
                mels[at, 0] = mel[:, column:column + columns]
                labels[at] = label[i]
                where[at] = number, audio[i], starts[i]
                at += 1
        return {"frames": torch.from_numpy(frames), "mel": torch.from_numpy(mels),
                "label": torch.from_numpy(labels), "clip": torch.from_numpy(where[:, 0]),
                "audio_start": torch.from_numpy(where[:, 1]), "frame_start": torch.from_numpy(where[:, 2]),
                "index": index}


def loader(stream: WindowStream) -> Iterator[dict]:
    """The stream through a DataLoader of `num_workers` processes (in this process for 0), in order."""
    workers = stream.settings.num_workers
    data = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers,
                                       prefetch_factor=2 if workers else None, persistent_workers=False)
    expected = stream.start
    for batch in data:
        if batch["index"] != expected:
            raise RuntimeError(f"data loader gave micro-batch {batch['index']} where {expected} was due")
        expected += 1
        yield batch


# -- validation -----------------------------------------------------------------------------------------------

class ValWindows:
    """The fixed validation set: `val_windows_per_clip` windows of each of the first `val_clips` clips, with
    their frames and the audio windows at shifts -15 .. +15; one of the shifts at least `min_negative_shift`
    away is the window's negative. Starts leave room for every shift."""

    def __init__(self, clips: list[Clip], framing: Framing, settings: WindowSettings, seed: int):
        self.framing, self.settings = framing, settings
        need = 2 * VAL_SHIFT
        self.clips = [c for c in sorted(clips, key=lambda c: c.path) if c.last_start(framing.num_frames) >= need]
        self.clips = self.clips[:settings.val_clips]
        self.plan = []
        shifts = np.arange(-VAL_SHIFT, VAL_SHIFT + 1)
        far = np.flatnonzero(np.abs(shifts) >= settings.min_negative_shift)
        for number, clip in enumerate(self.clips):
            rng = np.random.default_rng([seed, 2, number])
            last = clip.last_start(framing.num_frames)
            starts = np.sort(rng.integers(VAL_SHIFT, last - VAL_SHIFT + 1, settings.val_windows_per_clip))
            negatives = rng.choice(far, settings.val_windows_per_clip)
            self.plan.append((clip, starts, negatives))

    def __len__(self) -> int:
        return len(self.clips) * self.settings.val_windows_per_clip

    def batches(self, batch_size: int = 16) -> Iterator[dict]:
        """`frames` (n, N, h, w, 3) uint8, `mels` (n, 31, 1, 80, C), `negative` (n,) index of the negative shift,
        and where each window is: `clip` (an index into `self.clips`) and `start` (its first frame)."""
        return in_batches(self._windows(), batch_size, _val_batch)

    def _windows(self) -> Iterator[tuple]:
        n_frames, columns = self.framing.num_frames, mel_columns(self.framing.num_frames)
        for number, (clip, starts, negatives) in enumerate(self.plan):
            try:
                pictures = decode_lower_halves(clip.path, self.framing, int(starts.max()) + n_frames)
                mel = np.load(clip.mel, mmap_mode="r")
            except (ClipUnreadable, OSError, ValueError) as exc:
                warnings.warn(f"skipping {clip.path} in validation: {exc}")
                continue
            for start, negative in zip(starts, negatives):
                shifted = np.stack([mel[:, mel_start(int(start + d)):mel_start(int(start + d)) + columns]
                                    for d in range(-VAL_SHIFT, VAL_SHIFT + 1)])
                yield pictures[start:start + n_frames], shifted, negative, number, start


def in_batches(items: Iterable[tuple], batch_size: int, collate: Callable[[list[tuple]], dict]) -> Iterator[dict]:
    """The validation sets' batching: `items` taken `batch_size` at a time (the last batch may be short), each
    batch made by `collate` (itertools.batched, from Python 3.12 only)."""
    items = iter(items)
    while chunk := list(itertools.islice(items, batch_size)):
        yield collate(chunk)


def _val_batch(items: list[tuple]) -> dict:
    frames, mels, negatives, clips, starts = zip(*items)
    return {"frames": torch.from_numpy(np.stack(frames)), "mels": torch.from_numpy(np.stack(mels)[:, :, None]),
            "negative": torch.tensor(negatives, dtype=torch.long), "clip": torch.tensor(clips),
            "start": torch.tensor(starts)}
