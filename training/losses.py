"""Losses more than one recipe uses: the sync loss (an expert's own, and the generators' against a frozen
expert)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bce_on_cosine(vision: torch.Tensor, audio: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample losses and cosines, in fp32 whatever the autocast."""
    cosine = F.cosine_similarity(vision.float(), audio.float(), dim=1)
    with torch.autocast(vision.device.type, enabled=False):
        losses = F.binary_cross_entropy(cosine.clamp(0.0, 1.0), labels.float(), reduction="none")
    return losses, cosine
