"""LatentSync's data: 16-frame windows of whole aligned faces, a reference window of the same clip, the expert's
mel window and the Whisper features under every frame. Built on the generators' data path (training.face_windows,
itself the experts' training.windows): the same clip lists, the same deterministic stream (global micro-batch j
a function of the seed and j alone; each rank decodes its share of a batch's clips; a decoded clip serves
`batches_per_clip` batches), the same handling of clips that fail mid-run.

A sample (`NUM_FRAMES` = 16, LatentSync's num_frames):

- `faces`: frames t .. t + 15 of the aligned face at the model's resolution (INTER_AREA from the clip's
  256 x 256 when they differ), RGB, uint8: the target. The recipe scales them to [-1, 1], applies the mouth
  mask and encodes them with the frozen VAE on the device, as LatentSync's trainer does: the VAE is a GPU's
  work, and its posterior is sampled afresh for every step;
- `references`: 16 frames of the same clip whose window does not overlap the target's (at least 16 frames
  away), drawn uniformly from those, as LatentSync's dataset does;
- `mel`: the expert's (1, 80, 52) mel window from column int(80 t / 25) (StableSyncNet's);
- `audio`: (16, 50, 384), each frame's Whisper chunk (networks.whisper.chunk_rows: the 10 feature rows
  around the frame, the clip's edges repeated), as LatentSync's `crop_overlap_audio_window`;
- where it is from: `clip`, `target_start`, `reference_start`, `index` (the global micro-batch) and `sample`
  (the sample's place in that micro-batch, all ranks together): the recipe seeds each sample's noise, timestep
  and VAE sample from (seed, index, sample), so that a batch is the same however many ranks share it.

**Whisper features, once per clip.** `AudioFeatureCache` runs the Whisper encoder over each clip's audio once
and stores its features ((rows, 5, 384) float16: half the disk, and the U-Net runs in half precision on GPUs)
under a key of the clip's absolute path, the sha256 of its bytes (the mel cache's) and the sha256 of the
encoder's file, so a changed clip or another encoder gets new features. The training step only reads them
(LatentSync's trainer runs Whisper on the main process inside the loop, once per clip, its cache keyed by
basename). Imports PyAV through the data path; not the model code.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from manifests.rejected import Rejected
from media.mel import mel_columns, mel_start
from networks.syncnet.experts import Framing
from training.clips import Clip, ClipData, clip_audio, read_clip
from training.face_windows import FaceStream, FaceWindowSettings, decode_faces, references_for, target_reference_plan
from training.windows import ClipUnreadable, in_batches

NUM_FRAMES = 16                          # LatentSync's num_frames
EXPERT_COLUMNS = mel_columns(NUM_FRAMES)  # 52: StableSyncNet's mel window


@dataclass(frozen=True, slots=True)
class LatentClip(Clip):
    whisper: str = ""                    # the cached Whisper features (.npy, rows x 5 x 384 float16)


def usable_latent(clips: list[Clip], what: str) -> tuple[list[Clip], list[tuple[str, str]]]:
    """Clips in which every 16-frame window has a reference window that does not overlap it."""
    need = 2 * NUM_FRAMES - 1
    kept, short = [], []
    for clip in clips:
        if clip.last_start(NUM_FRAMES) >= need:
            kept.append(clip)
        else:
            short.append((clip.path, f"too_short: {clip.frames} frames with audio; a {what} window of {NUM_FRAMES} "
                                     f"frames and a reference that does not overlap it need {need + NUM_FRAMES}"))
    return kept, short


def audio_chunks(features: np.ndarray, start: int) -> np.ndarray:
    """(16, 10 x layers, width) float32 Whisper chunks of frames start .. start + 15 of a clip's features."""
    from networks.whisper import chunk_rows

    rows = len(features)
    index = np.stack([chunk_rows(k, rows).numpy() for k in range(start, start + NUM_FRAMES)])
    return np.asarray(features[index], np.float32).reshape(NUM_FRAMES, -1, features.shape[-1])


# -- Whisper features, once per clip ------------------------------------------------------------------------------

class AudioFeatureCache:
    """Whisper features of clips, in `folder`/whisper/, keyed by clip path, clip content and encoder file."""

    def __init__(self, folder: Path, encoder_file: str | Path, encoder_sha256: str):
        self.folder = Path(folder) / "whisper"
        self.encoder_file, self.encoder_sha256 = str(encoder_file), encoder_sha256

    def target(self, path: str, clip_sha256: str) -> Path:
        key = hashlib.sha256(f"{path}\n{clip_sha256}\n{self.encoder_sha256}".encode()).hexdigest()[:32]
        return self.folder / key[:2] / f"{key}.npy"

    def attach(self, clips: list[Clip], sha256_of: dict[str, str],
               run: Callable[[list[tuple[str, str]], str], list[str | None]] | None = None
               ) -> tuple[list[LatentClip], list[tuple[str, str]]]:
        """The clips with their features (computing the missing ones with `run(items, encoder_file)`, a Ray map
        in `curate train`, in this process by default), and (path, problem) for clips whose audio failed."""
        targets = {clip.path: self.target(clip.path, sha256_of[clip.path]) for clip in clips}
        todo = [(clip.path, str(targets[clip.path])) for clip in clips if not targets[clip.path].is_file()]
        problems = dict(zip((path for path, _ in todo), (run or whisper_features_in)(todo, self.encoder_file))) \
            if todo else {}
        kept, skipped = [], []
        for clip in clips:
            if problems.get(clip.path):
                skipped.append((clip.path, problems[clip.path]))
            else:
                kept.append(LatentClip(clip.path, clip.frames, clip.mel, whisper=str(targets[clip.path])))
        return kept, skipped


@lru_cache(maxsize=1)
def _encoder(path: str):
    from networks.whisper import load_whisper_encoder

    return load_whisper_encoder(path)


def whisper_features_in(items: list[tuple[str, str]], encoder_file: str) -> list[str | None]:
    """For each (clip, target) the clip's Whisper features written to target (None), or why not."""
    from networks.whisper import whisper_features

    out: list[str | None] = []
    for path, target in items:
        try:
            _, samples = clip_audio(path)
        except Rejected as exc:
            out.append(f"{exc.reason}: {exc.detail}")
            continue
        except Exception as exc:  # noqa: BLE001 - PyAV's and the OS's errors alike: the clip is skipped, named
            out.append(f"unreadable: {type(exc).__name__}: {exc}")
            continue
        if not len(samples):
            out.append("no_audio: the clip has no audio samples")
            continue
        features = whisper_features(_encoder(encoder_file), samples).numpy().astype(np.float16)
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
        with open(partial, "wb") as handle:
            np.save(handle, features)
        os.replace(partial, target)
        out.append(None)
    return out


# -- the training stream ------------------------------------------------------------------------------------------

class LatentStream(FaceStream):
    """This rank's share of global micro-batches start, start + 1, ... of LatentSync samples (the module's
    docstring): `faces` and `references` (n, 16, S, S, 3) uint8 RGB, `mel` (n, 1, 80, 52) and `audio`
    (n, 16, 50, 384) float32, `clip`, `target_start`, `reference_start`, `sample` and `index`."""

    def __init__(self, clips: list[LatentClip], resolution: int, settings: FaceWindowSettings, micro_batch: int,
                 seed: int, rank: int = 0, world_size: int = 1, start: int = 0, stop: int | None = None,
                 problems_file: str | None = None):
        super(FaceStream, self).__init__(clips, Framing(NUM_FRAMES, resolution, resolution, "rgb"), settings,
                                         micro_batch, seed, rank, world_size, start, stop, problems_file)

    def windows(self, group: int, slot: int, clip: Clip) -> tuple[np.ndarray, np.ndarray]:
        count = self.settings.batches_per_clip * self.per_clip
        rng = np.random.default_rng([self.seed, 1, group, slot])
        last = clip.last_start(NUM_FRAMES)
        targets = rng.integers(0, last + 1, count)
        return targets, references_for(rng, targets, last, NUM_FRAMES)

    def _decode(self, clip: LatentClip, data: ClipData) -> tuple[np.ndarray, np.ndarray]:
        if data.whisper is None:
            raise ClipUnreadable("it has no Whisper features")
        pictures = decode_faces(data.video, self.framing.width, clip.last_start(NUM_FRAMES) + NUM_FRAMES, "rgb")
        return pictures, data.whisper

    def _batch(self, index: int, batch: int, share: list) -> dict:
        size, count = self.framing.width, len(share) * self.per_clip
        faces = np.empty((count, NUM_FRAMES, size, size, 3), np.uint8)
        references = np.empty_like(faces)
        mel = np.empty((count, 1, 80, EXPERT_COLUMNS), np.float32)
        audio, where = [], np.empty((count, 4), np.int64)  # clip, target start, reference start, place in the batch
        at = 0
        for slot, clip, (pictures, features), spectrogram, (targets, refs) in share:
            number = self._numbers[clip.path]
            for j, i in enumerate(range(batch * self.per_clip, (batch + 1) * self.per_clip)):
                t, r = int(targets[i]), int(refs[i])
                faces[at] = pictures[t:t + NUM_FRAMES]
                references[at] = pictures[r:r + NUM_FRAMES]
                column = mel_start(t)
                mel[at, 0] = spectrogram[:, column:column + EXPERT_COLUMNS]
                audio.append(audio_chunks(features, t))
                where[at] = number, t, r, slot * self.per_clip + j
                at += 1
        return {"faces": torch.from_numpy(faces), "references": torch.from_numpy(references),
                "mel": torch.from_numpy(mel), "audio": torch.from_numpy(np.stack(audio)),
                "clip": torch.from_numpy(where[:, 0]), "target_start": torch.from_numpy(where[:, 1]),
                "reference_start": torch.from_numpy(where[:, 2]), "sample": torch.from_numpy(where[:, 3]),
                "index": index}


class LatentValWindows:
    """The fixed validation set: `val_windows_per_clip` seeded (target, reference) windows of each of the first
    `val_clips` clips (in the list's order), with the audio of each clip itself (self-reenactment: the truth is known).
    Batches as LatentStream's, `sample` numbering the windows of the whole set (the recipe fixes each
    window's noise and timestep by it) and `clip` an index into `self.clips`."""

    def __init__(self, clips: list[LatentClip], resolution: int, settings: FaceWindowSettings, seed: int):
        self.resolution, self.settings = resolution, settings
        self.clips, self.plan = target_reference_plan(clips, lambda clip: clip.last_start(NUM_FRAMES), NUM_FRAMES,
                                                      settings, seed)

    def __len__(self) -> int:
        return len(self.clips) * self.settings.val_windows_per_clip

    def batches(self, batch_size: int = 4) -> Iterator[dict]:
        return in_batches(self._windows(), batch_size, _val_batch)

    def _windows(self) -> Iterator[tuple]:
        sample = 0
        for number, (clip, targets, refs) in enumerate(self.plan):
            try:
                data = read_clip(clip)
                if data.whisper is None:
                    raise ClipUnreadable("it has no Whisper features")
                pictures = decode_faces(data.video, self.resolution,
                                        int(max(targets.max(), refs.max())) + NUM_FRAMES, "rgb")
                spectrogram, features = data.mel, data.whisper
            except (ClipUnreadable, OSError, ValueError) as exc:
                warnings.warn(f"skipping {clip.path} in validation: {exc}")
                sample += len(targets)
                continue
            for t, r in zip(targets.tolist(), refs.tolist()):
                column = mel_start(t)
                yield (pictures[t:t + NUM_FRAMES], pictures[r:r + NUM_FRAMES],
                       np.asarray(spectrogram[None, :, column:column + EXPERT_COLUMNS], np.float32),
                       audio_chunks(features, t), number, t, r, sample)
                sample += 1


def _val_batch(items: list[tuple]) -> dict:
    faces, references, mel, audio, clips, targets, refs, samples = zip(*items)
    return {"faces": torch.from_numpy(np.stack(faces)), "references": torch.from_numpy(np.stack(references)),
            "mel": torch.from_numpy(np.stack(mel)), "audio": torch.from_numpy(np.stack(audio)),
            "clip": torch.tensor(clips), "target_start": torch.tensor(targets),
            "reference_start": torch.tensor(refs), "sample": torch.tensor(samples)}
