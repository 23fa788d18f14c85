"""The experts' data: windows of N consecutive frames of aligned clips with their mel columns, in sync or not.

Where it comes from: what `curate filelist` writes (a folder with train.txt, val.txt and split.parquet), or a
plain list of clip paths, one a line (LatentSync's fileslist), for clips made elsewhere. Clips must be square
aligned faces at 25 fps with an audio stream.

**Features, once per clip**: training.clips.

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

import itertools
import sys
import warnings
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from media.frames import MediaUnreadable, read_pictures
from media.mel import mel_columns, mel_start
from networks.syncnet.experts import Framing
from training.clips import Clip, ClipData, DataError, read_clip

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
    val_clips: int = 256              # validation clips, at most (the first ones of the list)
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


# -- frames ---------------------------------------------------------------------------------------------------

class ClipUnreadable(Exception):
    pass


def decode_lower_halves(path, framing: Framing, count: int) -> np.ndarray:
    """The first `count` frames of a clip as (count, height, width, 3) uint8: the lower half of the aligned
    face in the framing's size and channel order."""
    try:
        return read_pictures(path, count, (framing.height, framing.width), framing.channel_order, lower_half=True)
    except MediaUnreadable as exc:
        raise ClipUnreadable(str(exc)) from None


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
                data = read_clip(clip)
                item[2] = self._decode(clip, data)
                item[3] = data.mel
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

    def _decode(self, clip: Clip, data: ClipData) -> np.ndarray:
        # the whole clip: a stand-in for a clip that fails may need any of its frames
        n = self.framing.num_frames
        return decode_lower_halves(data.video, self.framing, clip.last_start(n) + n)

    def position(self, index: int) -> dict:
        """Where global micro-batch `index` is in the data, for a checkpoint: its epoch, its group's place in
        the epoch's shuffle, and the first clip it draws from (with its shard and key when it is in one)."""
        group, batch = self.locate(index)
        first = self.clips[self.group_clips(group)[0]]
        where = {"micro_batch": index, "epoch": self.epoch_of(index),
                 "position": group * self.settings.clips_per_batch % len(self.clips), "batch_of_group": batch,
                 "clip": first.path}
        if first.sample is not None:
            where["shard"], where["key"] = first.sample.shard, first.path.rpartition("#")[2]
        return where

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


def stream_batches(make_stream: Callable, rank: int, world_size: int, run_dir) -> tuple[Callable, Callable]:
    """What the harness's `fit` takes from a recipe's stream: `batches(start)`, this worker's share from
    micro-batch `start` (through `loader`; unreadable clips listed in the run's skipped_clips.txt), and the
    stream's `position` (the checkpoint's record of where in the data a micro-batch is, its epoch among it).
    `make_stream(rank, world_size, start, problems_file=...)` builds the stream; called with nothing, the whole
    of it."""
    problems = f"{run_dir}/skipped_clips.txt"

    def batches(start: int) -> Iterator[dict]:
        return loader(make_stream(rank, world_size, start, problems_file=problems))

    return batches, make_stream().position


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
    """The fixed validation set: `val_windows_per_clip` windows of each of the first `val_clips` clips (in the
    list's order: clip-id order for a filelist or shards), with
    their frames and the audio windows at shifts -15 .. +15; one of the shifts at least `min_negative_shift`
    away is the window's negative. Starts leave room for every shift."""

    def __init__(self, clips: list[Clip], framing: Framing, settings: WindowSettings, seed: int):
        self.framing, self.settings = framing, settings
        need = 2 * VAL_SHIFT
        self.clips = [c for c in clips if c.last_start(framing.num_frames) >= need]
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
                data = read_clip(clip)
                pictures = decode_lower_halves(data.video, self.framing, int(starts.max()) + n_frames)
                mel = data.mel
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
