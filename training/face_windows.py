"""The generators' data: windows of whole aligned faces, a reference window of the same clip, and the audio under
every frame. Built on the experts' data path (training.windows): the same clip lists, the same feature cache
(mel spectrograms prepared once per clip, keyed by path and sha256), the same deterministic stream (global
micro-batch j a function of the seed and j alone, each rank decoding its share of a batch's clips, a decoded
clip serving `batches_per_clip` batches) and the same handling of clips that fail to decode mid-run.

A sample, for Wav2Lip (`NUM_FRAMES` = 5, its `syncnet_T`):

- `faces`: 5 consecutive frames t .. t + 4 of the aligned face, resized from the clip's 256 x 256 to the model's
  size (INTER_AREA), BGR, uint8 (the recipe scales them to [0, 1] on the device): the target;
- `references`: 5 frames of another window of the same clip, which does not overlap the target (its start is at
  least 5 frames away), drawn uniformly from those;
- `mels`: one (1, 80, 16) mel window per target frame, the generator's audio input;
- `mel`: the (1, 80, 16) window of the 5 frames, the expert's audio input for the sync loss.

**The audio-window convention.** Frame k's window is the 16 mel columns from column int(80 k / 25)
(`media.mel.mel_start(k)`), in training as in inference. The reference trains on frames k - 1 .. k + 3
(hq_wav2lip_train.py's get_segmented_mels starts one frame early) but infers with k .. k + 4 (inference.py's
mel chunks), which is a one-frame (40 ms) shift between what its generator learns and what it is given; here
both are the latter. A consequence: the 5 frames' expert window is the first frame's own window, so `mel`
equals `mels[:, 0]`; both are given, so that neither the recipe nor a test has to know it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from media.frames import MediaUnreadable, read_pictures
from media.mel import mel_start
from networks.syncnet.experts import Framing
from training.clips import SAMPLES_PER_FRAME, Clip, ClipData, read_clip
from training.windows import ClipUnreadable, WindowStream, in_batches

NUM_FRAMES = 5          # frames of a window (Wav2Lip's syncnet_T)
MEL_COLUMNS = 16        # mel columns of one frame's window, and of the expert's 5-frame window


@dataclass(frozen=True)
class FaceWindowSettings:
    """The `data:` section of the generator trainers' config."""
    __pydantic_config__ = {"extra": "forbid"}

    cache_dir: str | None = None      # mel cache (null: $CURATE_FEATURES_DIR, else ~/.cache/lipsync-curate/features)
    clips_per_batch: int = 16         # a batch draws its windows from this many clips, equally
    batches_per_clip: int = 16        # consecutive batches a decoded clip serves
    num_workers: int = 4              # data-loading processes per training worker
    val_clips: int = 256              # validation clips, at most (the first ones of the list)
    val_windows_per_clip: int = 4     # fixed, seeded windows per validation clip

    def __post_init__(self):
        for name in ("clips_per_batch", "batches_per_clip", "val_windows_per_clip"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.num_workers < 0 or self.val_clips < 0:
            raise ValueError("num_workers and val_clips cannot be negative")


def face_framing(size: int) -> Framing:
    """What the generator looks at: 5 whole faces of size x size, BGR (as the official reads frames)."""
    return Framing(NUM_FRAMES, size, size, "bgr")


def last_start(clip: Clip) -> int:
    """The last start of a window whose every frame has its full mel window (frame t + 4's reaches 16 columns
    past int(80 (t + 4) / 25))."""
    columns = (clip.frames * SAMPLES_PER_FRAME) // 200 + 1
    last = clip.frames - NUM_FRAMES
    while last >= 0 and mel_start(last + NUM_FRAMES - 1) + MEL_COLUMNS > columns:
        last -= 1
    return last


def usable_faces(clips: list[Clip], what: str) -> tuple[list[Clip], list[tuple[str, str]]]:
    """Clips in which every window has a reference window that does not overlap it."""
    need = 2 * NUM_FRAMES - 1
    kept, short = [], []
    for clip in clips:
        if last_start(clip) >= need:
            kept.append(clip)
        else:
            short.append((clip.path, f"too_short: {clip.frames} frames with audio, a {what} window and its "
                                     f"reference need {need + NUM_FRAMES + 3}"))
    return kept, short


def references_for(rng: np.random.Generator, targets: np.ndarray, last: int, frames: int = NUM_FRAMES) -> np.ndarray:
    """For each target start, a reference start drawn uniformly from those whose window of `frames` frames does
    not overlap it."""
    out = np.empty_like(targets)
    for i, t in enumerate(targets):
        below = max(0, t - frames + 1)              # starts 0 .. t - frames
        above = max(0, last - (t + frames) + 1)     # starts t + frames .. last
        pick = rng.integers(0, below + above)
        out[i] = pick if pick < below else t + frames + (pick - below)
    return out


def decode_faces(path, size: int, count: int, channel_order: str = "bgr") -> np.ndarray:
    """The first `count` frames of a clip as (count, size, size, 3) uint8 whole faces, BGR (Wav2Lip's) or RGB
    (LatentSync's)."""
    try:
        return read_pictures(path, count, (size, size), channel_order)
    except MediaUnreadable as exc:
        raise ClipUnreadable(str(exc)) from None


def _mels(mel: np.ndarray, start: int) -> tuple[np.ndarray, np.ndarray]:
    """(5, 1, 80, 16) per-frame windows of frames start .. start + 4, and the (1, 80, 16) window of the five."""
    per_frame = np.stack([mel[:, mel_start(k):mel_start(k) + MEL_COLUMNS] for k in range(start, start + NUM_FRAMES)])
    column = mel_start(start)
    return per_frame[:, None], mel[None, :, column:column + MEL_COLUMNS]


class FaceStream(WindowStream):
    """This rank's share of global micro-batches start, start + 1, ... of generator samples (the module's
    docstring): `faces` and `references` (n, 5, size, size, 3) uint8, `mels` (n, 5, 1, 80, 16) and `mel`
    (n, 1, 80, 16) float32, and where each sample is from: `clip` (an index into `clips`), `target_start`,
    `reference_start`; and `index` (the global micro-batch)."""

    def __init__(self, clips: list[Clip], size: int, settings: FaceWindowSettings, micro_batch: int, seed: int,
                 rank: int = 0, world_size: int = 1, start: int = 0, stop: int | None = None,
                 problems_file: str | None = None):
        super().__init__(clips, face_framing(size), settings, micro_batch, seed, rank, world_size, start, stop,
                         problems_file)

    def windows(self, group: int, slot: int, clip: Clip) -> tuple[np.ndarray, np.ndarray]:
        """(target starts, reference starts) of the windows clip `slot` of `group` gives, batch by batch."""
        count = self.settings.batches_per_clip * self.per_clip
        rng = np.random.default_rng([self.seed, 1, group, slot])
        last = last_start(clip)
        targets = rng.integers(0, last + 1, count)
        return targets, references_for(rng, targets, last)

    def _decode(self, clip: Clip, data: ClipData) -> np.ndarray:
        return decode_faces(data.video, self.framing.width, last_start(clip) + NUM_FRAMES)

    def _batch(self, index: int, batch: int, share: list) -> dict:
        size, count = self.framing.width, len(share) * self.per_clip
        faces = np.empty((count, NUM_FRAMES, size, size, 3), np.uint8)
        references = np.empty_like(faces)
        mels = np.empty((count, NUM_FRAMES, 1, 80, MEL_COLUMNS), np.float32)
        mel = np.empty((count, 1, 80, MEL_COLUMNS), np.float32)
        where = np.empty((count, 3), np.int64)          # clip (index into the list), target start, reference start
        at = 0
        for _, clip, pictures, spectrogram, (targets, refs) in share:
            number = self._numbers[clip.path]
            for i in range(batch * self.per_clip, (batch + 1) * self.per_clip):
                t, r = int(targets[i]), int(refs[i])
                faces[at] = pictures[t:t + NUM_FRAMES]
                references[at] = pictures[r:r + NUM_FRAMES]
                mels[at], mel[at] = _mels(spectrogram, t)
                where[at] = number, t, r
                at += 1
        return {"faces": torch.from_numpy(faces), "references": torch.from_numpy(references),
                "mels": torch.from_numpy(mels), "mel": torch.from_numpy(mel), "clip": torch.from_numpy(where[:, 0]),
                "target_start": torch.from_numpy(where[:, 1]), "reference_start": torch.from_numpy(where[:, 2]),
                "index": index}


def target_reference_plan(clips: list, last_start_of: Callable, frames: int, settings: FaceWindowSettings,
                          seed: int) -> tuple[list, list[tuple]]:
    """The generators' fixed validation windows: the first `val_clips` clips (in the list's order) with room for a window of
    `frames` frames and a reference that does not overlap it, and for each `(clip, targets, references)`:
    `val_windows_per_clip` seeded target starts and their references' starts."""
    usable = [c for c in clips if last_start_of(c) >= 2 * frames - 1]
    usable = usable[:settings.val_clips]
    plan = []
    for number, clip in enumerate(usable):
        rng = np.random.default_rng([seed, 3, number])
        last = last_start_of(clip)
        targets = np.sort(rng.integers(0, last + 1, settings.val_windows_per_clip))
        plan.append((clip, targets, references_for(rng, targets, last, frames)))
    return usable, plan


class FaceValWindows:
    """The fixed validation set: `val_windows_per_clip` seeded (target, reference) windows of each of the first
    `val_clips` clips (in the list's order), for self-reenactment: the generator remakes the target's lower half from its
    upper half, the reference and the clip's own audio, so the truth is known."""

    def __init__(self, clips: list[Clip], size: int, settings: FaceWindowSettings, seed: int):
        self.size, self.settings = size, settings
        self.clips, self.plan = target_reference_plan(clips, last_start, NUM_FRAMES, settings, seed)

    def __len__(self) -> int:
        return len(self.clips) * self.settings.val_windows_per_clip

    def batches(self, batch_size: int = 16) -> Iterator[dict]:
        """Batches as FaceStream's (without `index`); `clip` is an index into `self.clips`."""
        return in_batches(self._windows(), batch_size, _val_batch)

    def _windows(self) -> Iterator[tuple]:
        for number, (clip, targets, refs) in enumerate(self.plan):
            try:
                data = read_clip(clip)
                pictures = decode_faces(data.video, self.size, int(max(targets.max(), refs.max())) + NUM_FRAMES)
                spectrogram = data.mel
            except (ClipUnreadable, OSError, ValueError) as exc:
                warnings.warn(f"skipping {clip.path} in validation: {exc}")
                continue
            for t, r in zip(targets.tolist(), refs.tolist()):
                yield pictures[t:t + NUM_FRAMES], pictures[r:r + NUM_FRAMES], *_mels(spectrogram, t), number, t, r


def _val_batch(items: list[tuple]) -> dict:
    faces, references, mels, mel, clips, targets, refs = zip(*items)
    return {"faces": torch.from_numpy(np.stack(faces)), "references": torch.from_numpy(np.stack(references)),
            "mels": torch.from_numpy(np.stack(mels)), "mel": torch.from_numpy(np.stack(mel)),
            "clip": torch.tensor(clips), "target_start": torch.tensor(targets), "reference_start": torch.tensor(refs)}

