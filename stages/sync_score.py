"""SyncNet scoring as the reference evaluator does it, batched: offset, LSE-D (min distance), LSE-C (confidence).

For a clip of T frames at 25 fps with 16 kHz audio: window i holds frames i..i+4 and MFCC columns 4i..4i+19
(100 columns a second); windows i = 0 .. min(T, samples // 640) - 6, as the reference counts them. Each lip
window is compared with the audio windows shifted by -15..+15 frames (zeros past either end); the mean
distance per shift gives the offset (15 - argmin), the minimum distance (LSE-D) and the confidence (median -
minimum, LSE-C). Sign: a positive offset means the sound comes that many frames before the lips; delaying
the audio by the offset brings them together.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import python_speech_features
import torch
from scipy.signal import medfilt

from networks.syncnet.syncnet_v2 import SyncNet

VSHIFT = 15
WINDOW = 5                # frames per window
COLUMNS_PER_FRAME = 4     # MFCC columns per video frame (100 per second at 25 fps)
SAMPLES_PER_FRAME = 640   # 16 kHz at 25 fps


def mfcc(samples: np.ndarray, sample_rate: int = 16000) -> np.ndarray:
    """13 x C MFCC of int16 samples with python_speech_features' defaults, as the reference computes them."""
    return python_speech_features.mfcc(samples, sample_rate).T


@dataclass
class SyncResult:
    offset: int               # frames; > 0: the audio leads the video
    min_dist: float           # LSE-D
    conf: float               # LSE-C
    mean_dists: np.ndarray    # (31,) mean distance per shift, -15..+15
    frame_conf: np.ndarray    # (windows,) per-window confidence at the best shift, median-filtered (9)
    windows: int


def window_count(frames: int, samples: int) -> int:
    return min(frames, samples // SAMPLES_PER_FRAME) - WINDOW


class SyncScorer:
    """Embeds lip and audio windows with one network, in batches that may span several clips."""

    def __init__(self, model: SyncNet, device: str = "cpu", batch_size: int = 64):
        self.model = model.to(device).eval()
        self.device = device
        self.batch_size = batch_size

    @torch.no_grad()
    def score_many(self, clips: list[tuple[np.ndarray, np.ndarray]]) -> list[SyncResult]:
        """Score clips given as (BGR uint8 frames (T, 224, 224, 3), int16 samples); windows of all of them
        share batches, so a short clip does not leave the network half idle."""
        jobs = []   # (clip, window start) for every window of every clip
        audio = []
        for number, (frames, samples) in enumerate(clips):
            count = window_count(len(frames), len(samples))
            if count < 1:
                raise ValueError(f"clip {number} is too short for a SyncNet window ({len(frames)} frames)")
            jobs += [(number, start) for start in range(count)]
            audio.append(torch.from_numpy(mfcc(samples).astype(np.float32)))
        lips = self._embed_lips(clips, jobs)
        sounds = self._embed_audio(audio, jobs)
        results, at = [], 0
        for number in range(len(clips)):
            count = sum(1 for clip, _ in jobs if clip == number)
            results.append(offsets(lips[at:at + count], sounds[at:at + count]))
            at += count
        return results

    def score(self, frames: np.ndarray, samples: np.ndarray) -> SyncResult:
        return self.score_many([(frames, samples)])[0]

    def embeddings(self, frames: np.ndarray, samples: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Lip and audio embeddings of one clip's windows (for inspection and tests)."""
        count = window_count(len(frames), len(samples))
        jobs = [(0, start) for start in range(count)]
        with torch.no_grad():
            lips = self._embed_lips([(frames, samples)], jobs)
            sounds = self._embed_audio([torch.from_numpy(mfcc(samples).astype(np.float32))], jobs)
        return lips, sounds

    def _embed_lips(self, clips, jobs) -> torch.Tensor:
        out = []
        for at in range(0, len(jobs), self.batch_size):
            batch = [torch.from_numpy(clips[clip][0][start:start + WINDOW]) for clip, start in jobs[at:at + self.batch_size]]
            # (N, 5, H, W, 3) uint8 -> (N, 3, 5, H, W) float 0..255, as the network was trained
            windows = torch.stack(batch).to(self.device).permute(0, 4, 1, 2, 3).float()
            out.append(self.model.forward_lips(windows).float().cpu())
        return torch.cat(out)

    def _embed_audio(self, audio: list[torch.Tensor], jobs) -> torch.Tensor:
        out = []
        span = WINDOW * COLUMNS_PER_FRAME
        for at in range(0, len(jobs), self.batch_size):
            batch = [audio[clip][:, start * COLUMNS_PER_FRAME:start * COLUMNS_PER_FRAME + span]
                     for clip, start in jobs[at:at + self.batch_size]]
            windows = torch.stack(batch).unsqueeze(1).to(self.device)
            out.append(self.model.forward_audio(windows).float().cpu())
        return torch.cat(out)


def offsets(lips: torch.Tensor, sounds: torch.Tensor, vshift: int = VSHIFT) -> SyncResult:
    """Distances of each lip window to the audio windows shifted by -vshift..+vshift, and what they say."""
    count = len(lips)
    padded = torch.nn.functional.pad(sounds, (0, 0, vshift, vshift))
    shifted = padded.unfold(0, 2 * vshift + 1, 1).permute(0, 2, 1)            # (W, 31, 1024)
    dists = torch.linalg.vector_norm(lips[:, None, :] - shifted + 1e-6, dim=2)  # as pairwise_distance
    mean_dists = dists.mean(0)
    best = int(torch.argmin(mean_dists))
    median = float(torch.median(mean_dists))
    frame_conf = median - dists[:, best].numpy()
    return SyncResult(
        offset=vshift - best,
        min_dist=float(mean_dists[best]),
        conf=median - float(mean_dists[best]),
        mean_dists=mean_dists.numpy(),
        frame_conf=medfilt(frame_conf, kernel_size=9) if count >= 9 else frame_conf,
        windows=count,
    )
