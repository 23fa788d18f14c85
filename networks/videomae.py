"""VideoMAE-v2's ViT, the feature extractor of TREPA (LatentSync's temporal representation alignment loss, which
is training.losses.TrepaLoss), ours, in the layout of the official `vit_g_hybrid_pt_1200e_ssv2_ft.pth` (ViT-g/14, 16 frames, tubelet 2, mean
pooling, the 174-class SSv2 head), loaded strictly.

TREPA compares a generated clip with the real one through the frozen video transformer: each frame of the two
(B, 3, F, H, W) clips in [-1, 1] is resized bicubically to 224 (torch's `interpolate`, no antialiasing, corners
not aligned), mapped to [0, 1] by x / 2 + 0.5 and clamped, the network's `forward_features` (the mean of the last
block's tokens through `fc_norm`) is L2-normalised, and the loss is the MSE between the fake and real features.
No mean / std normalisation is applied (the reference feeds [0, 1] pixels). The real clip is LatentSync's
`gt_pixel_values`: uint8 RGB frames / 255, normalised with mean 0.5, std 0.5 (`training.losses.frames_to_clip`).

Conventions of the reference that matter for its weights:

- the patch embedding is a Conv3d of kernel = stride = (tubelet, patch, patch) whose output is flattened
  time-major (t, h, w) into tokens;
- the position embedding is a fixed sinusoid table (2048 x 1408, computed in float64, sin on even and cos on odd
  channels) that is a plain attribute of the reference, so it is not in the file; here a non-persistent buffer,
  computed again after a load. A clip of another number of frames gets it interpolated along time (trilinear,
  with the reference's + 0.1);
- attention has one `qkv` weight without bias; its bias is `q_bias`, zeros, `v_bias` (VideoMAE's), and the
  scores are scaled by head_dim ** -0.5 (as `scaled_dot_product_attention`);
- no layer scale (`gamma_1`/`gamma_2` are absent: init_values 0), LayerNorm eps 1e-6, exact GELU, an MLP of
  6144 = 1408 * 48 / 11; `norm` is the identity under mean pooling, so only `fc_norm` is in the file;
- drop path (0.3 in the reference's constructor) acts only in training mode, and TREPA runs the network in eval
  mode, so it is left out (it has no weights).

The official file is a state_dict, bare or under "model" or "module" (what the reference's loader accepts).
Imports only torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from networks.checkpoints import CheckpointError, load_strict, load_tensors

VIDEOMAE_FILE = "vit_g_hybrid_pt_1200e_ssv2_ft.pth"


@dataclass(frozen=True)
class VideoMAEConfig:
    """The ViT's hyper-parameters; the defaults are the official ViT-g/14 (`vit_giant_patch14_224` with
    num_classes=174, all_frames=16, tubelet_size=2, use_mean_pooling=True). The number of heads, the image size
    and the number of frames are in no weight's shape: they come from here."""
    img_size: int = 224
    patch_size: int = 14
    in_channels: int = 3
    embed_dim: int = 1408
    depth: int = 40
    num_heads: int = 16
    mlp_dim: int = 6144
    num_frames: int = 16
    tubelet_size: int = 2
    num_classes: int = 174
    norm_eps: float = 1e-6

    def __post_init__(self):
        if self.embed_dim % self.num_heads:
            raise ValueError(f"width {self.embed_dim} is not divisible by {self.num_heads} heads")
        if self.img_size % self.patch_size:
            raise ValueError(f"image size {self.img_size} is not a multiple of the patch size {self.patch_size}")
        if self.num_frames % self.tubelet_size:
            raise ValueError(f"{self.num_frames} frames are not a multiple of the tubelet size {self.tubelet_size}")

    @property
    def grid(self) -> tuple[int, int, int]:
        """Tokens along time, height and width."""
        side = self.img_size // self.patch_size
        return self.num_frames // self.tubelet_size, side, side

    @property
    def num_patches(self) -> int:
        t, h, w = self.grid
        return t * h * w

    def replace(self, **changes) -> VideoMAEConfig:
        return dataclasses.replace(self, **changes)


OFFICIAL = VideoMAEConfig()
# a ViT for tests and CPU training: 16 frames of 112 px give 8 x 8 x 8 = 512 tokens of 64 channels
SMALL = VideoMAEConfig(img_size=112, patch_size=14, embed_dim=64, depth=2, num_heads=4, mlp_dim=256, num_classes=10)


def sinusoid_table(positions: int, dim: int) -> torch.Tensor:
    """(1, positions, dim) float32: angle p / 10000 ** (2 (j // 2) / dim), sin on even j, cos on odd j, computed
    in float64 as the reference's numpy table."""
    pos = torch.arange(positions, dtype=torch.float64)[:, None]
    j = torch.arange(dim, dtype=torch.float64)
    angle = pos / torch.pow(torch.tensor(10000.0, dtype=torch.float64), 2 * torch.div(j, 2, rounding_mode="floor") / dim)
    table = torch.empty_like(angle)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.to(torch.float32)[None]


class PatchEmbed(nn.Module):
    def __init__(self, config: VideoMAEConfig):
        super().__init__()
        kernel = (config.tubelet_size, config.patch_size, config.patch_size)
        self.proj = nn.Conv3d(config.in_channels, config.embed_dim, kernel_size=kernel, stride=kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)          # (B, C, T, H, W) -> (B, T H W, C)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        bias = torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))    # keys have no bias
        qkv = F.linear(x, self.qkv.weight, bias).view(batch, tokens, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)                   # scale head_dim ** -0.5
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, config: VideoMAEConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.embed_dim, eps=config.norm_eps)
        self.attn = Attention(config.embed_dim, config.num_heads)
        self.norm2 = nn.LayerNorm(config.embed_dim, eps=config.norm_eps)
        self.mlp = Mlp(config.embed_dim, config.mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VideoMAEv2(nn.Module):
    """VideoMAE-v2's fine-tuned ViT with mean pooling: `forward_features` (B, 3, F, S, S) pixels -> (B, width),
    `forward` -> (B, num_classes) logits. S is the config's img_size; F any multiple of the tubelet (the
    position table is interpolated along time when F is not the config's)."""

    def __init__(self, config: VideoMAEConfig = OFFICIAL, checkpointing: bool = False):
        super().__init__()
        self.config = config
        self.checkpointing = checkpointing          # recompute each block in the backward pass (training)
        self.patch_embed = PatchEmbed(config)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.fc_norm = nn.LayerNorm(config.embed_dim, eps=config.norm_eps)
        self.head = nn.Linear(config.embed_dim, config.num_classes) if config.num_classes else nn.Identity()
        self.register_buffer("pos_embed", sinusoid_table(config.num_patches, config.embed_dim), persistent=False)

    def reset_positions(self) -> None:
        """Compute the sinusoid table again (after a build on the meta device), on the weights' device."""
        device = self.patch_embed.proj.weight.device
        self.pos_embed = sinusoid_table(self.config.num_patches, self.config.embed_dim).to(device)

    def _positions(self, frames: int) -> torch.Tensor:
        t0, h, w = self.config.grid
        t = frames // self.config.tubelet_size
        if t == t0:
            return self.pos_embed
        grid = self.pos_embed.transpose(1, 2).reshape(1, -1, t0, h, w)
        grid = F.interpolate(grid, scale_factor=((t + 0.1) / t0, 1, 1), mode="trilinear")
        return grid.flatten(2).transpose(1, 2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        config = self.config
        if x.dim() != 5 or x.shape[1] != config.in_channels or x.shape[-2:] != (config.img_size, config.img_size):
            raise ValueError(f"clips must be (B, {config.in_channels}, F, {config.img_size}, {config.img_size}), "
                             f"not {tuple(x.shape)}")
        if x.shape[2] % config.tubelet_size or x.shape[2] == 0:
            raise ValueError(f"{x.shape[2]} frames are not a positive multiple of the tubelet size "
                             f"{config.tubelet_size}")
        positions = self._positions(x.shape[2])
        x = self.patch_embed(x) + positions.to(x.dtype)
        for block in self.blocks:
            if self.checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.fc_norm(x.mean(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


class TrepaFileError(CheckpointError):
    """A file that is not VideoMAE-v2's ViT (of the config asked for). The message names the file and what is
    wrong: what it holds, or the first keys that do not match."""


def read_videomae_file(path: str | Path) -> dict:
    """The state_dict of `path`: bare, or under "model" or "module" (checked in that order, as the reference);
    a `module.` prefix on every key (DataParallel) is dropped. Checks that it holds named tensors, not which."""
    path = Path(path)
    blob = load_tensors(path, TrepaFileError, mmap=True)
    if not isinstance(blob, dict):
        raise TrepaFileError(f"{path} holds a {type(blob).__name__}, not a checkpoint")
    for key in ("model", "module"):
        if isinstance(blob.get(key), dict):
            blob = blob[key]
            break
    if not blob or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in blob.items()):
        raise TrepaFileError(f"{path} holds no state_dict, bare or under 'model' or 'module' (top-level keys "
                             f"{sorted(map(str, blob))[:6]})")
    if all(key.startswith("module.") for key in blob):
        blob = {key.removeprefix("module."): value for key, value in blob.items()}
    return blob


def config_of(state: dict, num_heads: int = OFFICIAL.num_heads, img_size: int = OFFICIAL.img_size,
              num_frames: int = OFFICIAL.num_frames) -> VideoMAEConfig:
    """The config of a ViT's weights: width, depth, patch, tubelet, MLP and head from their shapes; what no shape
    holds (heads, image size, frames) as given. Raises TrepaFileError where the tensors are not such a ViT's."""
    try:
        width, channels, tubelet, patch, _ = state["patch_embed.proj.weight"].shape
        depth = 1 + max(int(key.split(".")[1]) for key in state if key.startswith("blocks."))
        return VideoMAEConfig(img_size=img_size, patch_size=patch, in_channels=channels, embed_dim=width, depth=depth,
                              num_heads=num_heads, mlp_dim=state["blocks.0.mlp.fc1.weight"].shape[0],
                              num_frames=num_frames, tubelet_size=tubelet,
                              num_classes=state["head.weight"].shape[0] if "head.weight" in state else 0)
    except (KeyError, ValueError, IndexError) as exc:
        raise TrepaFileError(f"not VideoMAE-v2's ViT: {type(exc).__name__}: {exc}") from None


def load_videomae(path: str | Path, device: str | torch.device = "cpu", config: VideoMAEConfig = OFFICIAL,
                  dtype: torch.dtype = torch.float32) -> VideoMAEv2:
    """The ViT of `path` (the official `vit_g_hybrid_pt_1200e_ssv2_ft.pth`, or one of ours of `config`), keys
    and shapes matched strictly, built on the meta device and given the file's tensors (no second copy), in eval
    mode. Raises TrepaFileError, naming the file and the first mismatching keys, for anything else."""
    path = Path(path)
    state = read_videomae_file(path)
    with torch.device("meta"):
        model = VideoMAEv2(config)
    load_strict(model, state, f"{path} does not fit VideoMAE-v2's ViT (width {config.embed_dim}, depth {config.depth})",
                TrepaFileError, dtype=dtype, assign=True)
    model.reset_positions()
    return model.to(device=device, dtype=dtype).eval()


def official_layout(model: VideoMAEv2) -> dict:
    """What to `torch.save` for a ViT of ours: the state_dict under "model", which the reference's loader reads."""
    return {"model": {key: value.detach().cpu() for key, value in model.state_dict().items()}}
