"""LatentSync's 3D U-Net (bytedance/LatentSync 1.5 and 1.6), ours, in the layout of the official
`latentsync_unet.pt`: `{"state_dict": ..., "global_step": ...}`, keys without a prefix, loaded strictly.

The network is Stable Diffusion 1.5's U-Net made to see video: every 2D convolution runs frame by frame (frames
folded into the batch), every level's spatial transformer attends, per frame, to that frame's audio (Whisper
tiny features, 50 x 384: 10 positions x 5 layers) instead of to text, and AnimateDiff's "Vanilla" motion modules
(self-attention along time at every pixel, with a sinusoidal position table of 24 rows) follow each layer. The
input is 13 channels (noisy latent 4, mouth mask 1, masked latent 4, reference latent 4), the output the noise
prediction (4). Conventions of the reference that matter for its weights:

- `attention_head_dim` (8) is, as in SD's configs, the number of heads; each head is width / 8 wide;
- the ResNet blocks' and the output's GroupNorms are plain `nn.GroupNorm` on (B, C, F, H, W), so their statistics
  span all frames of a window (the reference's `use_inflated_groupnorm` is off); the transformers' and motion
  modules' GroupNorms are per frame;
- `encoder_hidden_states` is (B F, 50, 384), frame-major within each batch item like the folded frames, or
  (B, F, 50, 384); without it the audio cross-attention is skipped, as in the reference;
- the motion modules' GroupNorms have 32 groups whatever `norm_num_groups` is (the reference hard-codes it), and
  their `pos_encoder.pe` tables are persistent buffers, so they are in the file (computed, not learnt);
- fresh weights start as the reference's do before it loads anything: `conv_in`, `conv_out` and the motion
  modules' `proj_out` zero, the rest PyTorch's defaults.

LatentSync 1.5 (256 px faces, 32 x 32 latents) and 1.6 (512 px, 64 x 64) have the same U-Net layout: the
resolution is in no weight, so it cannot be read from a file; the sampler's resolution says it. Likewise the
number of heads is not in the weights (any divisor of the widths gives the same shapes): it comes from the config.

Imports only torch and diffusers (its timestep embedding, attention and feed-forward blocks, whose parameter
names are the reference's).

Over 400 lines on purpose: one network in one file, as diffusers keeps its models; its blocks, its config read
from a file's shapes and its strict loader belong together, and no other network shares them.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn
from torch.utils.checkpoint import checkpoint

from networks.checkpoints import CheckpointError, load_strict, load_tensors

UNET_FILE = "latentsync_unet.pt"

_MOTION_DEFAULTS = {"num_attention_heads": 8, "num_transformer_block": 1,
                    "attention_block_types": ("Temporal_Self", "Temporal_Self"), "cross_frame_attention_mode": None,
                    "temporal_position_encoding": True, "temporal_position_encoding_max_len": 24,
                    "temporal_attention_dim_div": 1, "zero_initialize": True}

# keys the reference's constructor takes that we accept only at its default value (none of its yamls set them)
_FIXED = {"only_cross_attention": False, "dual_cross_attention": False, "use_linear_projection": False,
          "class_embed_type": None, "num_class_embeds": None, "upcast_attention": False,
          "use_inflated_groupnorm": False, "resnet_time_scale_shift": "default", "act_fn": "silu",
          "mid_block_type": "UNetMidBlock3DCrossAttn", "motion_module_type": "Vanilla"}


@dataclass(frozen=True)
class UNetConfig:
    """The model section of LatentSync's configs/unet/stage2.yaml (the defaults are its values; 1.6's
    stage2_512.yaml has the same), less the keys that can only take one value here."""
    in_channels: int = 13
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    attention_head_dim: int | tuple[int, ...] = 8          # the number of heads, per level or for all
    cross_attention_dim: int = 384
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",)
    up_block_types: tuple[str, ...] = ("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    center_input_sample: bool = False
    add_audio_layer: bool = True
    use_motion_module: bool = True
    motion_module_resolutions: tuple[int, ...] = (1, 2, 4, 8)
    motion_module_mid_block: bool = False
    motion_module_decoder_only: bool = False
    motion_module_kwargs: dict = field(default_factory=lambda: dict(_MOTION_DEFAULTS))
    sample_size: int = 64                    # the yaml's; not in the weights, and unused here
    motion_norm_num_groups: int = 32         # not a yaml key: the reference hard-codes 32

    def __post_init__(self):
        for name in ("block_out_channels", "down_block_types", "up_block_types", "motion_module_resolutions"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not isinstance(self.attention_head_dim, int):
            object.__setattr__(self, "attention_head_dim", tuple(self.attention_head_dim))
        unknown = set(self.motion_module_kwargs) - set(_MOTION_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown motion_module_kwargs {sorted(unknown)}")
        kwargs = {**_MOTION_DEFAULTS, **self.motion_module_kwargs}
        kwargs["attention_block_types"] = tuple(kwargs["attention_block_types"])
        object.__setattr__(self, "motion_module_kwargs", kwargs)
        levels = len(self.block_out_channels)
        if len(self.down_block_types) != levels or len(self.up_block_types) != levels:
            raise ValueError(f"{levels} widths need {levels} down and up block types")
        if set(self.down_block_types) - {"CrossAttnDownBlock3D", "DownBlock3D"} or \
                set(self.up_block_types) - {"CrossAttnUpBlock3D", "UpBlock3D"}:
            raise ValueError(f"unknown block types in {self.down_block_types} / {self.up_block_types}")
        if any(name != "Temporal_Self" for name in kwargs["attention_block_types"]):
            raise ValueError(f"only Temporal_Self motion attention is supported, not {kwargs['attention_block_types']}")
        if kwargs["cross_frame_attention_mode"] is not None:
            raise ValueError("cross_frame_attention_mode is not supported (the reference ignores it too)")
        if not isinstance(self.attention_head_dim, int) and len(self.attention_head_dim) != levels:
            raise ValueError(f"{levels} widths need {levels} attention_head_dim entries")
        for level, width in enumerate(self.block_out_channels):
            heads = self.heads(level)
            if width % heads or width % self.norm_num_groups:
                raise ValueError(f"width {width} is not divisible by {heads} heads and {self.norm_num_groups} groups")
            if self.use_motion_module and (width % self.motion_norm_num_groups
                                           or width % (kwargs["num_attention_heads"]
                                                       * kwargs["temporal_attention_dim_div"])):
                raise ValueError(f"width {width} does not suit the motion modules' {self.motion_norm_num_groups} "
                                 f"groups and {kwargs['num_attention_heads']} heads")

    def heads(self, level: int) -> int:
        if isinstance(self.attention_head_dim, int):
            return self.attention_head_dim
        return self.attention_head_dim[level]

    @classmethod
    def from_config_dict(cls, config: dict) -> UNetConfig:
        """The yaml's model section (a dict) as a config; keys we cannot honour are an error, not ignored."""
        config = dict(config)
        for key, value in _FIXED.items():
            if key in config and config.pop(key) != value:
                raise ValueError(f"{key}={value!r} is the only value supported")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(config) - names
        if unknown:
            raise ValueError(f"unknown U-Net config keys {sorted(unknown)}")
        return cls(**config)

    def replace(self, **changes) -> UNetConfig:
        return dataclasses.replace(self, **changes)


# --- building blocks: 2D layers over (B, C, F, H, W) --------------------------------------------------------------


def _fold(x: torch.Tensor) -> torch.Tensor:
    """(B, C, F, H, W) -> (B F, C, H, W), frame-major within each batch item."""
    b, c, f, h, w = x.shape
    return x.transpose(1, 2).reshape(b * f, c, h, w)


def _unfold(x: torch.Tensor, frames: int) -> torch.Tensor:
    bf, c, h, w = x.shape
    return x.reshape(bf // frames, frames, c, h, w).transpose(1, 2)


class FrameConv(nn.Conv2d):
    """A 2D convolution applied to each frame (the reference's InflatedConv3d): its weights are Conv2d's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _unfold(super().forward(_fold(x)), x.shape[2])


class ResnetBlock3D(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int, groups: int, eps: float, output_scale_factor: float = 1.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=eps)          # over all frames: see the module docstring
        self.conv1 = FrameConv(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb, cout)
        self.norm2 = nn.GroupNorm(groups, cout, eps=eps)
        self.conv2 = FrameConv(cout, cout, 3, padding=1)
        self.conv_shortcut = FrameConv(cin, cout, 1) if cin != cout else None
        self.output_scale_factor = output_scale_factor

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return (skip + h) / self.output_scale_factor


class Downsample3D(nn.Module):
    def __init__(self, channels: int, padding: int):
        super().__init__()
        self.conv = FrameConv(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample3D(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = FrameConv(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size=None) -> torch.Tensor:
        dtype = x.dtype
        x = x.float() if dtype == torch.bfloat16 else x       # nearest upsampling lacks bfloat16 on some builds
        if size is None:
            x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")
        else:
            x = F.interpolate(x, size=tuple(size), mode="nearest")
        return self.conv(x.to(dtype))


# --- the spatial transformer with the audio cross-attention -------------------------------------------------------


class AudioTransformerBlock(nn.Module):
    """Self-attention over a frame's pixels, cross-attention to that frame's audio, GEGLU feed-forward."""

    def __init__(self, dim: int, heads: int, cross_attention_dim: int, audio: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(query_dim=dim, heads=heads, dim_head=dim // heads, bias=False)
        if audio:
            self.norm2 = nn.LayerNorm(dim)
            self.attn2 = Attention(query_dim=dim, cross_attention_dim=cross_attention_dim, heads=heads,
                                   dim_head=dim // heads, bias=False)
        else:
            self.attn2 = None
        self.ff = FeedForward(dim, activation_fn="geglu")
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, audio: torch.Tensor | None) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        if self.attn2 is not None and audio is not None:
            x = self.attn2(self.norm2(x), encoder_hidden_states=audio) + x
        return self.ff(self.norm3(x)) + x


class Transformer3D(nn.Module):
    """Per frame: GroupNorm, 1 x 1 conv in, the block over H W tokens, 1 x 1 conv out, residual."""

    def __init__(self, channels: int, heads: int, groups: int, cross_attention_dim: int, audio: bool):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList([AudioTransformerBlock(channels, heads, cross_attention_dim, audio)])
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, audio: torch.Tensor | None) -> torch.Tensor:
        frames = x.shape[2]
        x = _fold(x)
        bf, c, h, w = x.shape
        tokens = self.proj_in(self.norm(x)).permute(0, 2, 3, 1).reshape(bf, h * w, c)
        for block in self.transformer_blocks:
            tokens = block(tokens, audio)
        out = self.proj_out(tokens.reshape(bf, h, w, c).permute(0, 3, 1, 2))
        return _unfold(out + x, frames)


# --- AnimateDiff's "Vanilla" motion module --------------------------------------------------------------------------


def sinusoid_table(max_len: int, dim: int) -> torch.Tensor:
    """(1, max_len, dim): sin on even channels, cos on odd ones, wavelengths up to 10000 (Vaswani et al.)."""
    position = torch.arange(max_len, dtype=torch.float32)[:, None]
    rates = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(1, max_len, dim)
    table[0, :, 0::2] = torch.sin(position * rates)
    table[0, :, 1::2] = torch.cos(position * rates)
    return table


class SinusoidPositions(nn.Module):
    def __init__(self, dim: int, max_len: int):
        super().__init__()
        self.register_buffer("pe", sinusoid_table(max_len, dim))   # persistent: the official file holds it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pe[:, : x.shape[1]]


class TemporalSelfAttention(Attention):
    """Attention along time at each pixel: tokens (B F, S, C) regrouped to (B S, F, C), positions added."""

    def __init__(self, dim: int, heads: int, dim_head: int, max_len: int, positions: bool):
        super().__init__(query_dim=dim, heads=heads, dim_head=dim_head, bias=False)
        self.pos_encoder = SinusoidPositions(dim, max_len) if positions else None

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        bf, s, c = x.shape
        b = bf // frames
        x = x.reshape(b, frames, s, c).transpose(1, 2).reshape(b * s, frames, c)
        if self.pos_encoder is not None:
            x = self.pos_encoder(x)
        x = super().forward(x)
        return x.reshape(b, s, frames, c).transpose(1, 2).reshape(bf, s, c)


class TemporalTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, kinds: tuple[str, ...], max_len: int, positions: bool):
        super().__init__()
        self.attention_blocks = nn.ModuleList([TemporalSelfAttention(dim, heads, dim_head, max_len, positions)
                                               for _ in kinds])
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in kinds])
        self.ff = FeedForward(dim, activation_fn="geglu")
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        for attention, norm in zip(self.attention_blocks, self.norms):
            x = attention(norm(x), frames) + x
        return self.ff(self.ff_norm(x)) + x


class TemporalTransformer3D(nn.Module):
    def __init__(self, channels: int, groups: int, kwargs: dict):
        super().__init__()
        heads = kwargs["num_attention_heads"]
        dim_head = channels // heads // kwargs["temporal_attention_dim_div"]
        inner = heads * dim_head
        self.max_len = kwargs["temporal_position_encoding_max_len"]
        self.positions = kwargs["temporal_position_encoding"]
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList([
            TemporalTransformerBlock(inner, heads, dim_head, kwargs["attention_block_types"], self.max_len,
                                     self.positions)
            for _ in range(kwargs["num_transformer_block"])])
        self.proj_out = nn.Linear(inner, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.shape[2]
        if self.positions and frames > self.max_len:
            raise ValueError(f"{frames} frames exceed the motion modules' position table of {self.max_len}")
        x = _fold(x)
        bf, c, h, w = x.shape
        tokens = self.proj_in(self.norm(x).permute(0, 2, 3, 1).reshape(bf, h * w, c))
        for block in self.transformer_blocks:
            tokens = block(tokens, frames)
        out = self.proj_out(tokens).reshape(bf, h, w, c).permute(0, 3, 1, 2)
        return _unfold(out + x, frames)


class MotionModule(nn.Module):
    """The reference's VanillaTemporalModule: a residual temporal transformer whose output projection starts at
    zero, so a fresh module is the identity."""

    def __init__(self, channels: int, groups: int, kwargs: dict):
        super().__init__()
        self.temporal_transformer = TemporalTransformer3D(channels, groups, kwargs)
        if kwargs["zero_initialize"]:
            nn.init.zeros_(self.temporal_transformer.proj_out.weight)
            nn.init.zeros_(self.temporal_transformer.proj_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.temporal_transformer(x)


# --- levels -----------------------------------------------------------------------------------------------------


class _Level(nn.Module):
    """What down, mid and up levels share: running a layer, through activation checkpointing when training."""
    gradient_checkpointing = False

    def _run(self, module: nn.Module, *args):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(module, *args, use_reentrant=False)
        return module(*args)

    def _layer(self, j: int, x, temb, audio):
        """resnets[j], then attentions[j] and motion_modules[j] where this level has them."""
        x = self._run(self.resnets[j], x, temb)
        if self.attentions is not None:
            x = self._run(self.attentions[j], x, audio)
        if self.motion_modules[j] is not None:
            x = self._run(self.motion_modules[j], x)
        return x


def _motion_list(count: int, channels: int, config: UNetConfig, present: bool) -> nn.ModuleList:
    # None entries keep the indices of the reference's keys
    return nn.ModuleList([MotionModule(channels, config.motion_norm_num_groups, config.motion_module_kwargs)
                          if present else None for _ in range(count)])


class DownBlock3D(_Level):
    def __init__(self, cin: int, cout: int, temb: int, config: UNetConfig, level: int, attention: bool,
                 motion: bool, downsample: bool):
        super().__init__()
        n, groups, eps = config.layers_per_block, config.norm_num_groups, config.norm_eps
        self.resnets = nn.ModuleList([ResnetBlock3D(cin if j == 0 else cout, cout, temb, groups, eps)
                                      for j in range(n)])
        self.attentions = nn.ModuleList([
            Transformer3D(cout, config.heads(level), groups, config.cross_attention_dim, config.add_audio_layer)
            for _ in range(n)]) if attention else None
        self.motion_modules = _motion_list(n, cout, config, motion)
        self.downsamplers = nn.ModuleList([Downsample3D(cout, config.downsample_padding)]) if downsample else None

    def forward(self, x, temb, audio):
        skips = []
        for j in range(len(self.resnets)):
            x = self._layer(j, x, temb, audio)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class MidBlock3D(_Level):
    def __init__(self, channels: int, temb: int, config: UNetConfig):
        super().__init__()
        groups, eps, scale = config.norm_num_groups, config.norm_eps, config.mid_block_scale_factor
        self.resnets = nn.ModuleList([ResnetBlock3D(channels, channels, temb, groups, eps, scale) for _ in range(2)])
        self.attentions = nn.ModuleList([Transformer3D(channels, config.heads(len(config.block_out_channels) - 1),
                                                       groups, config.cross_attention_dim, config.add_audio_layer)])
        self.motion_modules = _motion_list(1, channels, config,
                                           config.use_motion_module and config.motion_module_mid_block)

    def forward(self, x, temb, audio):
        x = self._run(self.resnets[0], x, temb)
        x = self._run(self.attentions[0], x, audio)
        if self.motion_modules[0] is not None:
            x = self._run(self.motion_modules[0], x)
        return self._run(self.resnets[1], x, temb)


class UpBlock3D(_Level):
    def __init__(self, cin: int, prev: int, cout: int, temb: int, config: UNetConfig, level: int, attention: bool,
                 motion: bool, upsample: bool):
        super().__init__()
        n, groups, eps = config.layers_per_block + 1, config.norm_num_groups, config.norm_eps
        self.resnets = nn.ModuleList([
            ResnetBlock3D((prev if j == 0 else cout) + (cin if j == n - 1 else cout), cout, temb, groups, eps)
            for j in range(n)])
        self.attentions = nn.ModuleList([
            Transformer3D(cout, config.heads(level), groups, config.cross_attention_dim, config.add_audio_layer)
            for _ in range(n)]) if attention else None
        self.motion_modules = _motion_list(n, cout, config, motion)
        self.upsamplers = nn.ModuleList([Upsample3D(cout)]) if upsample else None

    def forward(self, x, skips: list, temb, audio, size=None):
        for j in range(len(self.resnets)):
            # layer j takes the previous output and the last skip left, from the matching down level
            x = self._layer(j, torch.cat([x, skips[-1 - j]], dim=1), temb, audio)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, size)
        return x


# --- the U-Net ------------------------------------------------------------------------------------------------------


class LatentSyncUNet(nn.Module):
    """`forward(sample (B, 13, F, H, W), timestep (scalar or (B,)), encoder_hidden_states (B F, 50, 384) or
    (B, F, 50, 384) or None) -> noise prediction (B, 4, F, H, W)`. See the module docstring for the layout."""

    def __init__(self, config: UNetConfig | dict | None = None):
        super().__init__()
        if config is None:
            config = UNetConfig()
        elif isinstance(config, dict):
            config = UNetConfig.from_config_dict(config)
        self.config = config
        widths = config.block_out_channels
        levels = len(widths)
        temb = widths[0] * 4
        motion = config.use_motion_module

        self.conv_in = FrameConv(config.in_channels, widths[0], 3, padding=1)
        self.time_proj = Timesteps(widths[0], config.flip_sin_to_cos, config.freq_shift)
        self.time_embedding = TimestepEmbedding(widths[0], temb)

        self.down_blocks = nn.ModuleList()
        for i, kind in enumerate(config.down_block_types):
            self.down_blocks.append(DownBlock3D(
                widths[max(i - 1, 0)], widths[i], temb, config, i, attention=kind.startswith("CrossAttn"),
                motion=motion and 2 ** i in config.motion_module_resolutions and not config.motion_module_decoder_only,
                downsample=i < levels - 1))
        self.mid_block = MidBlock3D(widths[-1], temb, config)
        self.up_blocks = nn.ModuleList()
        reversed_widths = widths[::-1]
        for i, kind in enumerate(config.up_block_types):
            self.up_blocks.append(UpBlock3D(
                reversed_widths[min(i + 1, levels - 1)], reversed_widths[max(i - 1, 0)], reversed_widths[i], temb,
                config, levels - 1 - i, attention=kind.startswith("CrossAttn"),
                motion=motion and 2 ** (levels - 1 - i) in config.motion_module_resolutions,
                upsample=i < levels - 1))
        self.conv_norm_out = nn.GroupNorm(config.norm_num_groups, widths[0], eps=config.norm_eps)
        self.conv_out = FrameConv(widths[0], config.out_channels, 3, padding=1)
        for conv in (self.conv_in, self.conv_out):       # as the reference initialises them
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    @classmethod
    def from_config_dict(cls, config: dict) -> LatentSyncUNet:
        return cls(UNetConfig.from_config_dict(config))

    def enable_gradient_checkpointing(self, on: bool = True) -> None:
        """Recompute each layer's activations in the backward pass instead of keeping them (training memory)."""
        for block in [*self.down_blocks, self.mid_block, *self.up_blocks]:
            block.gradient_checkpointing = on

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """What training.loop.fit calls for `train.gradient_checkpointing` (the experts' name for it). Without it
        the loop never switched the U-Net's checkpointing on (bench/bench_memory.py found it)."""
        self.enable_gradient_checkpointing(enabled)

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor | None = None
                ) -> torch.Tensor:
        config = self.config
        if sample.dim() != 5 or sample.shape[1] != config.in_channels:
            raise ValueError(f"sample must be (B, {config.in_channels}, F, H, W), not {tuple(sample.shape)}")
        batch, _, frames, height, width = sample.shape
        audio = encoder_hidden_states
        if audio is not None:
            if audio.dim() == 4:                                  # (B, F, S, D): fold like the frames
                audio = audio.reshape(-1, *audio.shape[2:])
            if audio.dim() != 3 or audio.shape[0] != batch * frames:
                raise ValueError(f"encoder_hidden_states must be (B F = {batch * frames}, S, D) or "
                                 f"({batch}, {frames}, S, D), not {tuple(encoder_hidden_states.shape)}")
        if config.center_input_sample:
            sample = 2 * sample - 1.0

        t = timestep if torch.is_tensor(timestep) else torch.tensor(
            [timestep], dtype=torch.float64 if isinstance(timestep, float) else torch.int64)
        t = t.to(sample.device).reshape(-1).expand(batch)
        emb = self.time_embedding(self.time_proj(t).to(sample.dtype))

        x = self.conv_in(sample)
        skips = [x]
        for block in self.down_blocks:
            x, level_skips = block(x, emb, audio)
            skips += level_skips
        x = self.mid_block(x, emb, audio)

        # sizes not divisible by 2^levels: each upsampling goes to its skip's size instead of doubling
        factor = 2 ** (len(self.up_blocks) - 1)
        odd = height % factor or width % factor
        for i, block in enumerate(self.up_blocks):
            count = len(block.resnets)
            level_skips, skips = skips[-count:], skips[:-count]
            size = skips[-1].shape[2:] if odd and i < len(self.up_blocks) - 1 else None
            x = block(x, level_skips, emb, audio, size)

        return self.conv_out(F.silu(self.conv_norm_out(x)))


# --- files ----------------------------------------------------------------------------------------------------------


class UNetFileError(CheckpointError):
    """A file that is not a LatentSync U-Net (of the config asked for). The message names the file and what is
    wrong: what it holds, or the first keys that do not match."""


def read_unet_file(path: str | Path) -> dict:
    """{"state_dict", "global_step"} of `path` (a bare state_dict reads too, with global_step 0; DataParallel's
    `module.` prefix is dropped). Checks that it holds U-Net weights, not which config's."""
    path = Path(path)
    blob = load_tensors(path, UNetFileError, mmap=True)
    if not isinstance(blob, dict):
        raise UNetFileError(f"{path} holds a {type(blob).__name__}, not a checkpoint")
    wrapped = isinstance(blob.get("state_dict"), dict)
    state = blob["state_dict"] if wrapped else blob
    if not state or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise UNetFileError(f"{path} holds no state_dict (top-level keys {sorted(map(str, blob))[:6]})")
    state = {key.removeprefix("module."): value for key, value in state.items()}
    if "conv_in.weight" not in state or not any(key.startswith("down_blocks.") for key in state):
        raise UNetFileError(f"{path} is not a LatentSync U-Net: its {len(state)} tensors have no conv_in/down_blocks "
                            f"(the first is {next(iter(state))!r})")
    return {"state_dict": state, "global_step": int(blob.get("global_step") or 0) if wrapped else 0}


_DOWN_RESNET = re.compile(r"down_blocks\.(\d+)\.resnets\.(\d+)\.conv1\.weight")


def infer_config(state: dict) -> dict:
    """What the weights say about the config: channels, widths, depth, block kinds, audio and motion layers.
    Not the number of heads (not in any shape) nor the resolution (1.5 and 1.6 have the same weights' shapes)."""
    found: dict = {"in_channels": state["conv_in.weight"].shape[1]}
    if "conv_out.weight" in state:
        found["out_channels"] = state["conv_out.weight"].shape[0]
    layers: dict[int, int] = {}
    widths: dict[int, int] = {}
    for key, value in state.items():
        if match := _DOWN_RESNET.fullmatch(key):
            level, layer = int(match.group(1)), int(match.group(2))
            layers[level] = max(layers.get(level, 0), layer + 1)
            if layer == 0:
                widths[level] = value.shape[0]
    if widths and sorted(widths) == list(range(len(widths))):
        levels = len(widths)
        found["block_out_channels"] = tuple(widths[i] for i in range(levels))
        found["layers_per_block"] = layers[0]
        found["down_block_types"] = tuple("CrossAttnDownBlock3D" if any(k.startswith(f"down_blocks.{i}.attentions.")
                                                                       for k in state) else "DownBlock3D"
                                          for i in range(levels))
        found["up_block_types"] = tuple("CrossAttnUpBlock3D" if any(k.startswith(f"up_blocks.{i}.attentions.")
                                                                   for k in state) else "UpBlock3D"
                                        for i in range(levels))
    cross = next((v for k, v in state.items() if k.endswith("attn2.to_k.weight")), None)
    found["add_audio_layer"] = cross is not None
    if cross is not None:
        found["cross_attention_dim"] = cross.shape[1]
    down_motion = any(".motion_modules." in k and k.startswith("down_blocks.") for k in state)
    up_motion = any(".motion_modules." in k and k.startswith("up_blocks.") for k in state)
    found["use_motion_module"] = down_motion or up_motion
    if found["use_motion_module"]:
        found["motion_module_decoder_only"] = up_motion and not down_motion
        found["motion_module_mid_block"] = any(k.startswith("mid_block.motion_modules.") for k in state)
        pe = next((v for k, v in state.items() if k.endswith("pos_encoder.pe")), None)
        if pe is not None and pe.dim() == 3:
            found["temporal_position_encoding_max_len"] = pe.shape[1]
    return found


def _config_mismatch(found: dict, config: UNetConfig) -> list[str]:
    wanted = dataclasses.asdict(config)
    wanted["temporal_position_encoding_max_len"] = config.motion_module_kwargs["temporal_position_encoding_max_len"]
    if not config.use_motion_module:       # these say nothing without motion modules
        for key in ("motion_module_decoder_only", "motion_module_mid_block", "temporal_position_encoding_max_len"):
            found.pop(key, None)
    if not config.add_audio_layer:
        found.pop("cross_attention_dim", None)
    return [f"{key}={value!r} (the config says {wanted[key]!r})" for key, value in found.items()
            if wanted[key] != value]


def _config_from(found: dict) -> UNetConfig:
    changes = dict(found)
    max_len = changes.pop("temporal_position_encoding_max_len", None)
    config = UNetConfig().replace(**changes)
    if max_len is not None:
        config = config.replace(motion_module_kwargs={**config.motion_module_kwargs,
                                                      "temporal_position_encoding_max_len": max_len})
    return config


def load_unet(path: str | Path, config: UNetConfig | dict | None = None, device: str | torch.device = "cpu",
              dtype: torch.dtype = torch.float32) -> LatentSyncUNet:
    """The U-Net of `path` (`latentsync_unet.pt` of LatentSync 1.5 or 1.6, or one of ours), keys and shapes matched
    strictly, in eval mode. Without `config`, stage2.yaml's with what the file shows (channels, widths, depth,
    audio and motion layers) put in; with one, a file that disagrees with it is an error naming both. Either way
    the number of heads and the resolution are not in the file (see the module docstring). Raises UNetFileError
    for anything that is not such a U-Net; `read_unet_file` gives the file's global_step."""
    path = Path(path)
    state = read_unet_file(path)["state_dict"]
    try:
        found = infer_config(state)
    except (IndexError, KeyError) as exc:       # tensors of the right names but no U-Net's ranks
        raise UNetFileError(f"{path} is not a LatentSync U-Net: its tensors have the wrong ranks ({exc})") from None
    if config is None:
        try:
            config = _config_from(found)
        except (ValueError, TypeError) as exc:
            raise UNetFileError(f"{path} is not a LatentSync U-Net: its layers fit no config ({exc})") from None
    else:
        config = UNetConfig.from_config_dict(config) if isinstance(config, dict) else config
        mismatch = _config_mismatch(found, config)
        if mismatch:
            raise UNetFileError(f"{path} is a U-Net of another config: it has {', '.join(mismatch[:4])}")
    with torch.device("meta"):               # the weights come from the file: no time or memory spent initialising
        model = LatentSyncUNet(config)
    load_strict(model, state, f"{path} does not fit the LatentSync U-Net", UNetFileError, dtype=dtype, assign=True)
    return model.to(device).eval()


def official_layout(model: LatentSyncUNet, global_step: int) -> dict:
    """What `torch.save` writes for the U-Net, as LatentSync's trainer does: its `from_pretrained` reads it."""
    return {"state_dict": {key: value.detach().cpu() for key, value in model.state_dict().items()},
            "global_step": int(global_step)}
