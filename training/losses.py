"""The recipes' losses beyond a plain MSE or L1: the sync loss (an expert's own, and the generators' against a
frozen expert), and TREPA (LatentSync's: the MSE of a frozen VideoMAE-v2's features of the fake and real clips;
the network is networks.videomae, the description of the loss is in its docstring)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from networks.videomae import VIDEOMAE_FILE, VideoMAEv2, load_videomae


def bce_on_cosine(vision: torch.Tensor, audio: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample losses and cosines, in fp32 whatever the autocast."""
    cosine = F.cosine_similarity(vision.float(), audio.float(), dim=1)
    with torch.autocast(vision.device.type, enabled=False):
        losses = F.binary_cross_entropy(cosine.clamp(0.0, 1.0), labels.float(), reduction="none")
    return losses, cosine


def frames_to_clip(frames: torch.Tensor) -> torch.Tensor:
    """LatentSync's `gt_pixel_values` of (F, H, W, 3) uint8 RGB frames (or (B, F, H, W, 3)): (B, 3, F, H, W) in
    [-1, 1], (x / 255 - 0.5) / 0.5."""
    frames = torch.as_tensor(frames)
    if frames.dim() == 4:
        frames = frames[None]
    if frames.dim() != 5 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (F, H, W, 3) or (B, F, H, W, 3), not {tuple(frames.shape)}")
    return ((frames.to(torch.float32) / 255.0 - 0.5) / 0.5).permute(0, 4, 1, 2, 3).contiguous()


class TrepaLoss:
    """TREPA as LatentSync's `TREPALoss`: `loss(fake, real)` for (B, 3, F, H, W) clips in [-1, 1] is the MSE of
    their L2-normalised features. The network is frozen (no gradients into it, always in eval mode); gradients
    flow to the clips. Not an nn.Module on purpose: a trainer that holds it does not save or optimise the ViT.
    The features are normalised and compared in float32 whatever the network's dtype (the reference runs them in
    float16; in float32 the two agree)."""

    def __init__(self, model: VideoMAEv2, checkpointing: bool = False):
        self.model = model.eval().requires_grad_(False)
        self.model.checkpointing = checkpointing

    @classmethod
    def from_file(cls, path: str | Path = VIDEOMAE_FILE, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32, checkpointing: bool = False) -> TrepaLoss:
        return cls(load_videomae(path, device, dtype=dtype), checkpointing)

    def to(self, *args, **kwargs) -> TrepaLoss:
        self.model.to(*args, **kwargs)
        return self

    def features(self, clips: torch.Tensor) -> torch.Tensor:
        """(B, width) unit-norm float32 features of (B, 3, F, H, W) clips in [-1, 1]."""
        if clips.dim() != 5 or clips.shape[1] != 3:
            raise ValueError(f"clips must be (B, 3, F, H, W), not {tuple(clips.shape)}")
        self.model.eval()
        batch, channels, frames, height, width = clips.shape
        weight = self.model.patch_embed.proj.weight
        size = self.model.config.img_size
        x = clips.to(device=weight.device, dtype=weight.dtype).transpose(1, 2).reshape(-1, channels, height, width)
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
        x = x.view(batch, frames, channels, size, size).transpose(1, 2)
        x = (x / 2 + 0.5).clamp(0, 1)
        return F.normalize(self.model.forward_features(x).float(), p=2, dim=1)

    def __call__(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        if fake.shape != real.shape:
            raise ValueError(f"fake {tuple(fake.shape)} and real {tuple(real.shape)} clips differ in shape")
        feats_fake = self.features(fake)
        with torch.set_grad_enabled(torch.is_grad_enabled() and real.requires_grad):
            feats_real = self.features(real)
        return F.mse_loss(feats_fake, feats_real)
