"""Wav2Lip's lip-sync expert, `SyncNet_color` (`lipsync_expert.pth`): 5 frames of the lower half of a 96 x 96
face (BGR, /255, stacked on channels: 15 x 48 x 96) and their 16 mel columns (1 x 80 x 16) to two unit
vectors of 512. Both encoders are stacks of conv + batch norm + ReLU blocks, some residual.

Module names follow the official state_dict (`face_encoder.N.conv_block.{0,1}`, `audio_encoder.N...`), so the
official file loads strictly once the `module.` prefix DataParallel adds is removed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBlock(nn.Module):
    """Conv2d + BatchNorm2d (`conv_block.0`, `conv_block.1`), ReLU, with the input added first if residual."""

    def __init__(self, cin: int, cout: int, kernel, stride, padding, residual: bool = False):
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding), nn.BatchNorm2d(cout))
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        return F.relu(out + x if self.residual else out)


def _stack(spec: list[tuple]) -> nn.Sequential:
    """(cin, cout, kernel, stride, padding) is a plain block; a bare int n is n residual 3x3 blocks of the
    current width."""
    layers, width = [], None
    for item in spec:
        if isinstance(item, int):
            layers += [ConvBlock(width, width, 3, 1, 1, residual=True) for _ in range(item)]
        else:
            layers.append(ConvBlock(*item))
            width = item[1]
    return nn.Sequential(*layers)


class Wav2LipExpert(nn.Module):
    channel_order = "bgr"
    num_frames = 5

    def __init__(self, config: dict | None = None):
        super().__init__()
        if config:
            raise ValueError("the Wav2Lip expert's architecture is fixed; it takes no model config")
        self.config: dict = {}
        # 15 x 48 x 96 -> 512 x 1 x 1
        self.face_encoder = _stack([
            (15, 32, 7, 1, 3),
            (32, 64, 5, (1, 2), 1), 2,
            (64, 128, 3, 2, 1), 3,
            (128, 256, 3, 2, 1), 2,
            (256, 512, 3, 2, 1), 2,
            (512, 512, 3, 2, 1), (512, 512, 3, 1, 0), (512, 512, 1, 1, 0),
        ])
        # 1 x 80 x 16 -> 512 x 1 x 1
        self.audio_encoder = _stack([
            (1, 32, 3, 1, 1), 2,
            (32, 64, 3, (3, 1), 1), 2,
            (64, 128, 3, 3, 1), 2,
            (128, 256, 3, (3, 2), 1), 2,
            (256, 512, 3, 1, 0), (512, 512, 1, 1, 0),
        ])

    def forward(self, frames: torch.Tensor, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 15, 48, 96) frames and (B, 1, 80, 16) mel -> unit vision and audio embeddings (B, 512).

        (The reference's forward takes the audio first and returns it first; the order here is the same as
        StableSyncNet's, so that one training step serves both.)"""
        return self.embed_frames(frames), self.embed_audio(mel)

    def embed_frames(self, frames: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.face_encoder(frames).flatten(1), dim=1)

    def embed_audio(self, mel: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.audio_encoder(mel).flatten(1), dim=1)

    @staticmethod
    def frames_input(frames: torch.Tensor) -> torch.Tensor:
        """(B, 5, 48, 96, 3) uint8 BGR lower halves -> (B, 15, 48, 96) in [0, 1], frames stacked on channels."""
        b, f, h, w, c = frames.shape
        return frames.float().div(255.0).permute(0, 1, 4, 2, 3).reshape(b, f * c, h, w)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        pass  # small enough not to need it
