"""StableSyncNet, LatentSync's lip-sync expert (`stable_syncnet.pt`, LatentSync 1.5 / 1.6): two convolutional
encoders, one for 16 frames of the lower half of the aligned face and one for their 52 mel columns, each
ending in a D x 1 x 1 map; the two L2-normalised vectors are close when lips and sound agree.

Each encoder is a stem convolution, then one residual block per entry of `block_out_channels` (GroupNorm,
SiLU, two 3x3 convolutions, a 1x1 shortcut where the width changes, then a strided 3x3 convolution after
asymmetric zero padding when the block downsamples), a self-attention block after the blocks marked in
`attn_blocks`, and GroupNorm + ReLU at the end. The architecture is the `model:` section of LatentSync's
`configs/syncnet/*.yaml`; `LATENTSYNC_16_PIXEL_ATTN` is the one the official checkpoint was trained with.
Module names follow the checkpoint's keys, so the official file loads strictly.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

# configs/syncnet/syncnet_16_pixel_attn.yaml: audio (1, 80, 52), frames (16 x 3, 128, 256) -> 2048
LATENTSYNC_16_PIXEL_ATTN = {
    "audio_encoder": {"in_channels": 1, "block_out_channels": [32, 64, 128, 256, 512, 1024, 2048],
                      "downsample_factors": [[2, 1], 2, 2, 1, 2, 2, [2, 3]], "attn_blocks": [0, 0, 0, 1, 1, 0, 0],
                      "dropout": 0.0},
    "visual_encoder": {"in_channels": 48, "block_out_channels": [64, 128, 256, 256, 512, 1024, 2048, 2048],
                       "downsample_factors": [[1, 2], 2, 2, 2, 2, 2, 2, 2], "attn_blocks": [0, 0, 0, 0, 1, 1, 0, 0],
                       "dropout": 0.0},
}
GROUPS = 32


def _pair(factor) -> tuple[int, int]:
    return (factor, factor) if isinstance(factor, int) else (int(factor[0]), int(factor[1]))


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, downsample, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(GROUPS, cin, eps=1e-6)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(GROUPS, cout, eps=1e-6)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None
        stride = _pair(downsample)
        self.downsample_conv = nn.Conv2d(cout, cout, 3, stride=stride) if stride != (1, 1) else None
        # pad (left, right, top, bottom) so that a stride-2 3x3 halves a side exactly; a side kept at stride 1
        # is padded on both ends so that it keeps its length
        self.pad = (1 if stride[1] == 1 else 0, 1, 1 if stride[0] == 1 else 0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        h = h + (self.conv_shortcut(x) if self.conv_shortcut is not None else x)
        if self.downsample_conv is not None:
            h = self.downsample_conv(F.pad(h, self.pad))
        return h


class SelfAttention(nn.Module):
    """Multi-head attention with biased projections (`to_q`, `to_k`, `to_v`, `to_out.0`)."""

    def __init__(self, dim: int, heads: int = 8, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(dropout)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = (proj(x).reshape(b, n, self.heads, d // self.heads).transpose(1, 2)
                   for proj in (self.to_q, self.to_k, self.to_v))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        return self.to_out[1](self.to_out[0](out))


class GEGLU(nn.Module):
    """Linear to twice the width; the first half gated by GELU of the second."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU to 4 x dim, dropout, linear back (`net.0.proj`, `net.2`)."""

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, 4 * dim), nn.Dropout(dropout), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class AttentionBlock(nn.Module):
    """GroupNorm, 1x1 in, pre-norm self-attention and feed-forward over the h x w positions, 1x1 out, residual."""

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(GROUPS, dim, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, dropout)
        self.conv_in = nn.Conv2d(dim, dim, 1)
        self.conv_out = nn.Conv2d(dim, dim, 1)
        self.attn = SelfAttention(dim, dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.conv_in(self.norm1(x)).flatten(2).transpose(1, 2)   # (b, h*w, c)
        tokens = self.attn(self.norm2(tokens)) + tokens
        tokens = self.ff(self.norm3(tokens)) + tokens
        return self.conv_out(tokens.transpose(1, 2).reshape(b, c, h, w)) + x


class Encoder(nn.Module):
    def __init__(self, in_channels: int, block_out_channels: list[int], downsample_factors: list,
                 attn_blocks: list[int], dropout: float = 0.0):
        super().__init__()
        if not len(block_out_channels) == len(downsample_factors) == len(attn_blocks):
            raise ValueError("block_out_channels, downsample_factors and attn_blocks need one entry per block")
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        width = block_out_channels[0]
        for cout, factor, attend in zip(block_out_channels, downsample_factors, attn_blocks):
            self.down_blocks.append(ResnetBlock(width, cout, factor, dropout))
            if attend:
                self.down_blocks.append(AttentionBlock(cout, dropout))
            width = cout
        self.norm_out = nn.GroupNorm(GROUPS, width, eps=1e-6)
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for block in self.down_blocks:
            if self.gradient_checkpointing and self.training:
                h = checkpoint(block, h, use_reentrant=False)
            else:
                h = block(h)
        return F.relu(self.norm_out(h))


class StableSyncNet(nn.Module):
    # what the data path feeds it: frames of the aligned face's lower half, RGB in [-1, 1]
    channel_order = "rgb"

    def __init__(self, config: dict | None = None):
        super().__init__()
        self.config = copy.deepcopy(config or LATENTSYNC_16_PIXEL_ATTN)
        self.audio_encoder = Encoder(**self.config["audio_encoder"])
        self.visual_encoder = Encoder(**self.config["visual_encoder"])
        self.num_frames = self.config["visual_encoder"]["in_channels"] // 3

    def forward(self, frames: torch.Tensor, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3F, H, W) frames and (B, 1, 80, C) mel -> unit vision and audio embeddings (B, D)."""
        return self.embed_frames(frames), self.embed_audio(mel)

    def embed_frames(self, frames: torch.Tensor) -> torch.Tensor:
        return _unit(self.visual_encoder(frames))

    def embed_audio(self, mel: torch.Tensor) -> torch.Tensor:
        return _unit(self.audio_encoder(mel))

    @staticmethod
    def frames_input(frames: torch.Tensor) -> torch.Tensor:
        """(B, F, H, W, 3) uint8 RGB lower halves -> (B, 3F, H, W) in [-1, 1], frame-major as LatentSync stacks them."""
        b, f, h, w, c = frames.shape
        scaled = frames.float().div(127.5).sub(1.0)
        return scaled.permute(0, 1, 4, 2, 3).reshape(b, f * c, h, w)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        self.audio_encoder.gradient_checkpointing = enabled
        self.visual_encoder.gradient_checkpointing = enabled


def _unit(features: torch.Tensor) -> torch.Tensor:
    if features.shape[-2:] != (1, 1):
        raise ValueError(f"an encoder ends at {tuple(features.shape[-2:])}, not 1 x 1: its downsample_factors "
                         "do not fit the input size")
    return F.normalize(features.flatten(1), dim=1)
