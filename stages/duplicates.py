"""Duplicates stage: a clip's fingerprint (what its pictures and its sound look like, in 320 bits) and the index
that finds a clip seen before.

The fingerprint is made in the source pass, from what the writer has in hand just before it encodes a kept clip
(so no clip is decoded again for it):
- `video_phash`: a 64-bit perceptual hash (pHash: the signs of the 8x8 lowest frequencies of the 32x32 DCT of the
  luma, against their median, as the `imagehash` package computes it) of each of 4 frames at 1/8, 3/8, 5/8
  and 7/8 of the clip: the face-aligned frames, or the scaled ones without the face stage;
- `audio_hash`: a 64-bit hash of the 16 kHz audio in the manner of Haitsma and Kalker's audio fingerprint (2002):
  the log energy of 9 log-spaced bands (250-4000 Hz) in 9 equal stretches of the clip, and a bit per (stretch,
  band pair) for whether the difference between neighbouring bands grew from one stretch to the next. A clip whose
  audio is digital silence has no audio hash (every bit would be a tie), and is never called anyone's copy.

Two clips are copies when the summed Hamming distance of their four picture hashes is at most
`max_video_distance` (of 256) and that of their audio hashes at most `max_audio_distance` (of 64). The index
finds the candidates without comparing every pair (locality-sensitive hashing by bit sampling): 20 keys of 16
bits per clip, the audio hash cut in four and 16 cut across the picture hashes (key j: bits j, j+16, j+32, j+48
of each frame's hash); a clip is a candidate only if one of its keys equals the other's exactly, so a copy whose
pictures differ in 15 bits or fewer is always found, and most within many more. Each candidate is then checked
on both distances. The keys are held sorted, with where each of the 65,536 values starts; the newest additions
are in dictionaries, merged in every RECENT clips. A key shared by more than BUCKET_CAP clips (a picture hash
bit pattern many faces have) is not looked up: the clip's other keys still are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from stages.settings import DuplicateParams

STAGE = "duplicates"
FRAMES = 4                       # picture hashes per clip, at (i + 0.5) / FRAMES of its length
BANDS = 9                        # audio bands, and stretches of time
BAND_LOW_HZ, BAND_HIGH_HZ = 250.0, 4000.0
WINDOW = 512                     # audio STFT window (32 ms at 16 kHz), hop WINDOW // 2
SILENT_RMS = 1.0                 # int16 RMS under which audio is taken for digital silence
AUDIO_KEYS, VIDEO_KEYS = 4, 16   # 16-bit keys the index looks candidates up by
KEYS = AUDIO_KEYS + VIDEO_KEYS
BUCKET_CAP = 2048                # a key shared by more clips than this is not looked up

_BYTE_BITS = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def popcount(values: np.ndarray) -> np.ndarray:
    """Set bits of each uint64."""
    values = np.ascontiguousarray(values, np.uint64)
    if hasattr(np, "bitwise_count"):     # numpy 2
        return np.bitwise_count(values).astype(np.int64)
    return _BYTE_BITS[values.view(np.uint8)].reshape(*values.shape, 8).sum(-1, dtype=np.int64)


def phash(luma: np.ndarray) -> int:
    """pHash of a greyscale picture: 64 bits, row-major over the 8x8 lowest DCT frequencies of its 32x32 resize."""
    small = cv2.resize(np.ascontiguousarray(luma), (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8]
    return _pack(low.ravel() > np.median(low))


def audio_hash(audio: np.ndarray, sample_rate: int) -> int | None:
    """64-bit hash of mono int16 audio (None for digital silence or audio shorter than a window per stretch)."""
    samples = np.asarray(audio, np.float32).reshape(-1)
    hop = WINDOW // 2
    frames = (len(samples) - WINDOW) // hop + 1
    if frames < BANDS or float(np.sqrt(np.mean(samples ** 2))) < SILENT_RMS:
        return None
    index = np.arange(WINDOW)[None, :] + hop * np.arange(frames)[:, None]
    power = np.abs(np.fft.rfft(samples[index] * np.hanning(WINDOW).astype(np.float32), axis=1)) ** 2
    freqs = np.fft.rfftfreq(WINDOW, 1.0 / sample_rate)
    edges = np.geomspace(BAND_LOW_HZ, min(BAND_HIGH_HZ, sample_rate / 2), BANDS + 1)
    bands = np.stack([power[:, (freqs >= lo) & (freqs < hi)].sum(1) for lo, hi in zip(edges[:-1], edges[1:])], 1)
    stretches = np.array_split(bands, BANDS, axis=0)
    energy = np.log(np.stack([s.sum(0) for s in stretches]) + 1e-3)       # (stretch, band)
    across = energy[:, :-1] - energy[:, 1:]                                 # (9, 8)
    return _pack((across[1:] - across[:-1]).ravel() > 0)                     # (8, 8)


def fingerprint(pictures: Sequence, audio: np.ndarray, sample_rate: int) -> dict:
    """A kept clip's fingerprint columns, from its pictures (av.VideoFrame in yuv420p or gray, or greyscale arrays)
    and its mono int16 audio."""
    count = len(pictures)
    picked = [pictures[min(count - 1, int((i + 0.5) * count / FRAMES))] for i in range(FRAMES)] if count else []
    return {"video_phash": [phash(_luma(p)) for p in picked] or None, "audio_hash": audio_hash(audio, sample_rate)}


def _luma(picture) -> np.ndarray:
    if isinstance(picture, np.ndarray):
        return picture if picture.ndim == 2 else cv2.cvtColor(picture, cv2.COLOR_BGR2GRAY)
    plane = picture.planes[0]     # an av.VideoFrame: its Y plane, without the line padding
    return np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, :plane.width]


def _pack(bits: np.ndarray) -> int:
    return int.from_bytes(np.packbits(bits.astype(np.uint8)).tobytes(), "big")


@dataclass(frozen=True)
class Match:
    position: int               # of the kept clip in the index
    video_distance: int
    audio_distance: int


class DuplicateIndex:
    """The fingerprints of the kept clips, in the order they were added; `find` gives the first one a new clip
    copies. Memory per clip: 40 bytes of hashes, 40 of keys and 80 of the key index (160 MB at 10^6 clips); the
    newest additions (at most RECENT) are in dictionaries until they are merged into the sorted index."""

    RECENT = 16384

    def __init__(self, params: DuplicateParams, capacity: int = 1024):
        self.params = params
        self.video = np.zeros((capacity, FRAMES), np.uint64)
        self.audio = np.zeros(capacity, np.uint64)
        self.keys = np.zeros((KEYS, capacity), np.uint16)
        self.size = 0
        self._sorted = 0                                   # positions [0, _sorted) are in the sorted index
        self._starts = np.zeros((KEYS, 65537), np.int64)   # per key: where each 16-bit value's positions start
        self._order = np.zeros((KEYS, 0), np.int32)
        self._recent: list[dict[int, list[int]]] = [{} for _ in range(KEYS)]

    def __len__(self) -> int:
        return self.size

    def add(self, video: np.ndarray, audio: np.ndarray) -> None:
        """Add clips: `video` (n, FRAMES) and `audio` (n,) uint64."""
        video, audio = np.asarray(video, np.uint64).reshape(-1, FRAMES), np.asarray(audio, np.uint64).reshape(-1)
        start, end = self.size, self.size + len(audio)
        if end > len(self.audio):
            grown = max(end, 2 * len(self.audio))
            self.video = np.concatenate([self.video[:start], np.zeros((grown - start, FRAMES), np.uint64)])
            self.audio = np.concatenate([self.audio[:start], np.zeros(grown - start, np.uint64)])
            self.keys = np.concatenate([self.keys[:, :start], np.zeros((KEYS, grown - start), np.uint16)], 1)
        keys = _keys(video, audio)
        self.video[start:end], self.audio[start:end], self.keys[:, start:end] = video, audio, keys
        self.size = end
        if end - self._sorted > self.RECENT:
            self._merge()
            return
        for key in range(KEYS):
            recent = self._recent[key]
            for position, value in enumerate(keys[key].tolist(), start):
                recent.setdefault(value, []).append(position)

    def find(self, video: Sequence[int], audio: int) -> Match | None:
        """The earliest clip in the index that `video` and `audio` copy, or None."""
        video = np.asarray(video, np.uint64).reshape(FRAMES)
        audio = np.uint64(audio)
        found = []
        for key, value in enumerate(_keys(video[None, :], np.asarray([audio]))[:, 0].tolist()):
            lo, hi = self._starts[key, value], self._starts[key, value + 1]
            if hi - lo <= BUCKET_CAP:
                found.append(self._order[key, lo:hi])
            recent = self._recent[key].get(value)
            if recent and len(recent) <= BUCKET_CAP:
                found.append(np.array(recent, np.int32))
        candidates = np.unique(np.concatenate(found)) if found else np.zeros(0, np.int32)
        if not len(candidates):
            return None
        audio_distance = popcount(self.audio[candidates] ^ audio)
        video_distance = popcount(self.video[candidates] ^ video[None, :]).sum(1)
        hits = np.flatnonzero((audio_distance <= self.params.max_audio_distance)
                              & (video_distance <= self.params.max_video_distance))
        if not len(hits):
            return None
        first = hits[0]                                     # candidates are sorted: the earliest added
        return Match(int(candidates[first]), int(video_distance[first]), int(audio_distance[first]))

    def _merge(self) -> None:
        keys = self.keys[:, :self.size]
        self._order = np.empty(keys.shape, np.int32)
        for key in range(KEYS):     # a key at a time: argsort's int64 positions for one key, not twenty
            self._order[key] = np.argsort(keys[key], kind="stable")
            self._starts[key, 1:] = np.cumsum(np.bincount(keys[key], minlength=65536))
        self._sorted = self.size
        self._recent = [{} for _ in range(KEYS)]


# the picture keys: key j is made of bits j, j+16, j+32 and j+48 of each frame's hash (bit 0 the first of its 8x8)
_VIDEO_BITS = np.array([[frame * 64 + j + 16 * step for frame in range(FRAMES) for step in range(4)]
                        for j in range(VIDEO_KEYS)])


def _keys(video: np.ndarray, audio: np.ndarray) -> np.ndarray:
    """(KEYS, n) uint16: the audio hashes cut into four 16-bit pieces, then the 16 keys across the picture hashes."""
    n = len(audio)
    audio_keys = np.ascontiguousarray(audio, ">u8").view(">u2").reshape(n, AUDIO_KEYS).astype(np.uint16)
    bits = np.unpackbits(np.ascontiguousarray(video, ">u8").view(np.uint8).reshape(n, FRAMES * 8), axis=1)
    video_keys = np.packbits(bits[:, _VIDEO_BITS], axis=-1).reshape(n, VIDEO_KEYS * 2)
    video_keys = np.ascontiguousarray(video_keys).view(">u2").reshape(n, VIDEO_KEYS).astype(np.uint16)
    return np.concatenate([audio_keys, video_keys], 1).T
