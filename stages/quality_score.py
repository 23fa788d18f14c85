"""Quality scores as LatentSync's filter takes them: the first, middle and last frame of a clip, RGB / 255,
centre crop 224 (zero-padded first where a side is shorter, as torchvision's CenterCrop does), ImageNet
normalisation; the clip's score is the mean of the three frames' scores (0..100 with the KonIQ weights).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from media.frames import key_frames
from networks.hyperiqa import INPUT_SIZE, HyperIQA

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def centre_crop(frame: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """The centre size x size of an H x W x C picture, zero-padded around first where it is smaller."""
    h, w = frame.shape[:2]
    if h < size or w < size:
        top, left = max(0, (size - h) // 2), max(0, (size - w) // 2)
        frame = np.pad(frame, ((top, max(0, size - h - top)), (left, max(0, size - w - left)), (0, 0)))
        h, w = frame.shape[:2]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return frame[top:top + size, left:left + size]


def prepare(frames_rgb) -> torch.Tensor:
    """N pictures (H x W x 3 uint8 RGB, any size) -> (N, 3, 224, 224) normalised float32."""
    crops = np.stack([centre_crop(frame) for frame in frames_rgb]).astype(np.float32) / 255.0
    return torch.from_numpy(((crops - MEAN) / STD).transpose(0, 3, 1, 2).copy())


@dataclass
class QualityResult:
    score: float                 # mean over the frames
    frame_scores: np.ndarray


class QualityScorer:
    """HyperIQA on batches of frames; several clips' frames go through the network together."""

    def __init__(self, model: HyperIQA, device: str = "cpu", batch_size: int = 24):
        self.model = model.to(device).eval()
        self.device = device
        self.batch_size = batch_size

    @torch.inference_mode()
    def frame_scores(self, frames_rgb) -> np.ndarray:
        """A score per picture; `frames_rgb` is a sequence of H x W x 3 uint8 RGB pictures of any size."""
        out = []
        for start in range(0, len(frames_rgb), self.batch_size):
            batch = prepare(frames_rgb[start:start + self.batch_size]).to(self.device)
            out.append(self.model(batch).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

    def score_many(self, clips: list[np.ndarray]) -> list[QualityResult]:
        """One result per clip, from its key frames ((n, H, W, 3) each); all clips' frames batched together."""
        frames = [frame for clip in clips for frame in clip]
        scores = self.frame_scores(frames)
        results, start = [], 0
        for clip in clips:
            mine = scores[start:start + len(clip)]
            start += len(clip)
            results.append(QualityResult(float(mine.mean()), mine))
        return results

    def score_video(self, path: str) -> QualityResult:
        return self.score_many([key_frames(path)])[0]
