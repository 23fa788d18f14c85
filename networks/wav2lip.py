"""Wav2Lip's generator and its visual-quality discriminator (Prajwal et al., ACM MM 2020), in the layouts of the
official `wav2lip.pth` / `wav2lip_gan.pth` (the same generator, trained without and with the discriminator) and
of the discriminator the GAN training saves, plus our 256 x 256 variant of both for the project's aligned faces.

The generator is a U-Net driven by sound. An identity encoder takes 6 channels, the target frame with its lower
half zeroed (the pose to keep) and a reference frame of the same person (the look of the mouth), down to 1 x 1,
keeping each level's output; an audio encoder takes the frame's 16 mel columns (1 x 80 x 16, about 0.2 s) to a
512 x 1 x 1 embedding. The decoder starts from that embedding and, level by level, upsamples and concatenates the
identity encoder's output of the same resolution, ending in a sigmoid: a whole face, BGR in [0, 1] like its
input (the official data path reads frames with OpenCV and never converts). The discriminator sees only the
lower half of a face and gives the probability that it is a real one.

Module names follow the official ones (`face_encoder_blocks.i.j.conv_block.{0,1}`, `audio_encoder.k...`,
`face_decoder_blocks...`, `output_block...`, `binary_pred.0`), so the official files load with strict key
matching once DataParallel's `module.` prefix is removed. Files are `{"state_dict", "optimizer",
"global_step", "global_epoch"}` as the official trainers write them; ours add `"size"` when it is not 96, since
the reference code cannot build anything else anyway. A bare state_dict loads too.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from networks.checkpoints import CheckpointError, load_strict, load_tensors
from networks.syncnet.wav2lip_expert import ConvBlock

GENERATOR_FILE = "wav2lip.pth"
GAN_FILE = "wav2lip_gan.pth"
DISC_FILE = "wav2lip_disc.pth"
OFFICIAL_SIZE = 96
MEL_WINDOW = (1, 80, 16)      # one frame's mel: 16 columns of 80 bands

# The official widths and residual depths by level (level 0: full resolution); deeper levels, which only our
# larger sizes have, repeat the last entry.
_ENCODER_WIDTHS = (16, 32, 64, 128, 256, 512)
_ENCODER_RESIDUALS = (0, 2, 3, 2, 2, 1)
_DECODER_WIDTHS = (64, 128, 256, 384, 512)
_DISC_WIDTHS = (128, 256, 512)            # the discriminator's stride-2 levels, from the first
_MIN_LEVELS = 5                            # fewer and the widths above would be cut short


def _at(table: tuple[int, ...], level: int) -> int:
    return table[min(level, len(table) - 1)]


def _halvings(side: int) -> tuple[int, int]:
    """(number of stride-2 levels, bottom side) for a square map of `side`: halved down to 3 (96 -> 3, as the
    official) or to 2 (256 -> 2), the bottom then taken to 1 x 1 by a convolution of its own size."""
    bottom = 3 if side % 3 == 0 else 2
    levels = max(side // bottom, 1).bit_length() - 1
    if side < bottom or bottom << levels != side:
        raise ValueError(f"a side of {side} does not halve down to 3 or 2; use 3 * 2^k or 2^k")
    return levels, bottom


def _residuals(width: int, count: int) -> list[nn.Module]:
    return [ConvBlock(width, width, 3, 1, 1, residual=True) for _ in range(count)]


class UpBlock(nn.Module):
    """ConvTranspose2d + BatchNorm2d (`conv_block.0`, `conv_block.1`), ReLU: the official Conv2dTranspose."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, padding: int, output_padding: int = 0):
        super().__init__()
        self.conv_block = nn.Sequential(nn.ConvTranspose2d(cin, cout, kernel, stride, padding, output_padding),
                                        nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv_block(x))


class LeakyConv(nn.Module):
    """Conv2d (`conv_block.0`) and LeakyReLU(0.01), no norm: the official discriminator's nonorm_Conv2d."""

    def __init__(self, cin: int, cout: int, kernel: int, stride, padding: int):
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.conv_block(x), 0.01)


def _frames(x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(B, C, T, H, W) -> (T * B, C, H, W) time-major, as the official concatenates the frames; and (B, T)."""
    b, c, t, h, w = x.shape
    return x.permute(2, 0, 1, 3, 4).reshape(t * b, c, h, w), b, t


class Wav2Lip(nn.Module):
    """The generator, at `size` 96 the official network (key for key, shape for shape).

    Other sizes are the same family grown to reach 1 x 1: the encoder halves the face with stride-2 levels
    until the map is 3 x 3 (96, 192, 384) or 2 x 2 (128, 256, 512) and takes that bottom to 1 x 1 with a
    convolution as large as it (the official's 3 x 3 one without padding); the decoder mirrors it, a
    transposed convolution of the bottom's size back from 1 x 1, then one stride-2 transposed level per encoder
    level, each followed by its skip connection. Widths and residual blocks per level from the full resolution
    down are the official's (encoder 16, 32, 64, 128, 256, 512; decoder 64, 128, 256, 384, 512), the extra
    deep levels repeating the 512-wide ones. At 256 that is 7 stride-2 levels (256 -> 2) instead of 5
    (96 -> 3): two more 512-wide levels at 4 x 4 and 2 x 2, each encoder level with one residual block and
    each decoder level with two, and a 2 x 2 bottom convolution. The audio encoder is unchanged: a 512 x 1 x 1
    embedding of 1 x 80 x 16 mel columns, which is where the decoder starts.
    """

    def __init__(self, size: int = OFFICIAL_SIZE):
        super().__init__()
        levels, bottom = _halvings(size)
        if levels < _MIN_LEVELS:
            raise ValueError(f"a {size} x {size} face is too small for Wav2Lip's levels; use 64 or more")
        self.size = size
        width = [_at(_ENCODER_WIDTHS, level) for level in range(levels + 1)]
        encoder = [nn.Sequential(ConvBlock(6, width[0], 7, 1, 3))]
        for level in range(1, levels + 1):
            encoder.append(nn.Sequential(ConvBlock(width[level - 1], width[level], 3, 2, 1),
                                         *_residuals(width[level], _at(_ENCODER_RESIDUALS, level))))
        encoder.append(nn.Sequential(ConvBlock(width[levels], 512, bottom, 1, 0), ConvBlock(512, 512, 1, 1, 0)))
        self.face_encoder_blocks = nn.ModuleList(encoder)

        # 1 x 80 x 16 -> 512 x 1 x 1: heights / 3, 3, 3, widths / 2, then two convolutions without padding
        self.audio_encoder = nn.Sequential(
            ConvBlock(1, 32, 3, 1, 1), *_residuals(32, 2),
            ConvBlock(32, 64, 3, (3, 1), 1), *_residuals(64, 2),
            ConvBlock(64, 128, 3, 3, 1), *_residuals(128, 2),
            ConvBlock(128, 256, 3, (3, 2), 1), *_residuals(256, 1),
            ConvBlock(256, 512, 3, 1, 0), ConvBlock(512, 512, 1, 1, 0),
        )

        # each decoder block's output is concatenated with the encoder output of the same resolution
        out = _at(_DECODER_WIDTHS, levels)
        decoder = [nn.Sequential(ConvBlock(512, 512, 1, 1, 0)),
                   nn.Sequential(UpBlock(512 + 512, out, bottom, 1, 0), *_residuals(out, 1))]
        channels = out + width[levels]
        for level in range(levels - 1, -1, -1):
            out = _at(_DECODER_WIDTHS, level)
            decoder.append(nn.Sequential(UpBlock(channels, out, 3, 2, 1, output_padding=1), *_residuals(out, 2)))
            channels = out + width[level]
        self.face_decoder_blocks = nn.ModuleList(decoder)
        self.output_block = nn.Sequential(ConvBlock(channels, 32, 3, 1, 1), nn.Conv2d(32, 3, 1), nn.Sigmoid())

    def forward(self, audio: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
        """Frames: audio (B, 1, 80, 16), faces (B, 6, size, size) -> (B, 3, size, size).
        Sequences, as the official training feeds them: audio (B, T, 1, 80, 16), faces (B, 6, T, size, size)
        -> (B, 3, T, size, size). Faces in [0, 1], channels 0-2 the masked target, 3-5 the reference."""
        sequence = faces.dim() == 5
        if sequence:
            if audio.dim() != 5 or audio.shape[:2] != (faces.shape[0], faces.shape[2]):
                raise ValueError(f"faces {tuple(faces.shape)} are (B, 6, T, H, W) sequences, so audio must be "
                                 f"(B, T, 1, 80, 16), not {tuple(audio.shape)}")
            faces, b, t = _frames(faces)
            audio = audio.transpose(0, 1).reshape(t * b, *audio.shape[2:])
        if tuple(faces.shape[1:]) != (6, self.size, self.size) or faces.dim() != 4:
            raise ValueError(f"faces must be (B, 6, {self.size}, {self.size}) or (B, 6, T, {self.size}, "
                             f"{self.size}), not {tuple(faces.shape)}")
        if tuple(audio.shape[1:]) != MEL_WINDOW or len(audio) != len(faces):
            raise ValueError(f"audio must be one (1, 80, 16) mel window per face, not {tuple(audio.shape)} for "
                             f"{len(faces)} faces")
        skips = []
        x = faces
        for block in self.face_encoder_blocks:
            x = block(x)
            skips.append(x)
        x = self.audio_encoder(audio)
        for block in self.face_decoder_blocks:
            x = torch.cat((block(x), skips.pop()), dim=1)
        x = self.output_block(x)
        if sequence:
            x = x.reshape(t, b, *x.shape[1:]).permute(1, 2, 0, 3, 4)
        return x


class Wav2LipDiscriminator(nn.Module):
    """The visual-quality discriminator, at `size` 96 the official `Wav2Lip_disc_qual`.

    It looks at the lower half of the face (48 x 96 at 96): a 7 x 7 convolution, one level that halves only
    the width to make the map square, stride-2 levels down to 3 x 3 (2 x 2 at 256, whose lower half is
    128 x 256: two more 512-wide levels than the official's four), a convolution of the bottom's size to 1 x 1
    and a 1 x 1 convolution with a sigmoid. No normalisation, LeakyReLU(0.01), as the official.
    """

    def __init__(self, size: int = OFFICIAL_SIZE):
        super().__init__()
        if size % 2:
            raise ValueError(f"the discriminator takes even face sizes, not {size}")
        levels, bottom = _halvings(size // 2)
        if levels < _MIN_LEVELS - 1:               # the lower half is one halving less
            raise ValueError(f"a {size} x {size} face is too small for the discriminator; use 64 or more")
        self.size = size
        blocks = [nn.Sequential(LeakyConv(3, 32, 7, 1, 3)),
                  nn.Sequential(LeakyConv(32, 64, 5, (1, 2), 2), LeakyConv(64, 64, 5, 1, 2))]
        channels = 64
        for level in range(1, levels + 1):
            out = _at(_DISC_WIDTHS, level - 1)
            kernel = 5 if out < 512 else 3
            blocks.append(nn.Sequential(LeakyConv(channels, out, kernel, 2, kernel // 2),
                                        LeakyConv(out, out, kernel, 1, kernel // 2)))
            channels = out
        blocks.append(nn.Sequential(LeakyConv(channels, 512, bottom, 1, 0), LeakyConv(512, 512, 1, 1, 0)))
        self.face_encoder_blocks = nn.ModuleList(blocks)
        self.binary_pred = nn.Sequential(nn.Conv2d(512, 1, 1), nn.Sigmoid())

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        """(B, 3, size, size) or (B, 3, T, size, size) whole faces in [0, 1] -> (N, 1) probabilities that each
        is real, N = B or T * B (time-major, as the official orders them)."""
        if faces.dim() == 5:
            faces = _frames(faces)[0]
        if faces.dim() != 4 or tuple(faces.shape[1:]) != (3, self.size, self.size):
            raise ValueError(f"faces must be (B, 3, {self.size}, {self.size}) or (B, 3, T, {self.size}, "
                             f"{self.size}), not {tuple(faces.shape)}")
        x = faces[:, :, self.size // 2:]
        for block in self.face_encoder_blocks:
            x = block(x)
        return self.binary_pred(x).view(len(x), -1)

    def perceptual_loss(self, fake: torch.Tensor) -> torch.Tensor:
        """The generator's GAN loss: BCE of D(fake) against "real" (the official `perceptual_forward`)."""
        prediction = self(fake)
        return F.binary_cross_entropy(prediction, torch.ones_like(prediction))


# -- files --------------------------------------------------------------------------------------------

class GeneratorFileError(CheckpointError):
    """A file that is not the Wav2Lip network asked for. The message is one line: the file and what it holds."""


def read_checkpoint(path: str | Path) -> dict:
    """`path` in the official layout, whatever it was written as: {"state_dict" (keys without `module.`),
    "optimizer", "global_step", "global_epoch", "size" (None unless the file says)}. Checks that it holds a
    state_dict, not which network's."""
    path = Path(path)
    blob = load_tensors(path, GeneratorFileError)
    if not isinstance(blob, dict):
        raise GeneratorFileError(f"{path} holds a {type(blob).__name__}, not a checkpoint")
    if "model_state_dict" in blob and "dims" in blob:
        raise GeneratorFileError(f"{path} is not a Wav2Lip network: it holds an openai-whisper model (dims, "
                                 f"model_state_dict)")
    wrapped = isinstance(blob.get("state_dict"), dict)
    state = blob["state_dict"] if wrapped else blob
    if not state or not all(isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()):
        raise GeneratorFileError(f"{path} holds no state_dict (a dict of {len(state)} entries that are not all "
                                 f"named tensors)")
    size = blob.get("size") if wrapped else None
    return {"state_dict": {key.removeprefix("module."): value for key, value in state.items()},
            "optimizer": blob.get("optimizer") if wrapped else None,
            "global_step": int(blob.get("global_step") or 0) if wrapped else 0,
            "global_epoch": int(blob.get("global_epoch") or 0) if wrapped else 0,
            "size": int(size) if size else None}


def _kind_of(state: dict) -> str:
    """"generator", "discriminator", or what the weights seem to be, as a phrase for a message."""
    def has(prefix: str) -> bool:
        return any(key.startswith(prefix) for key in state)

    if has("face_encoder_blocks.") and (has("face_decoder_blocks.") or has("audio_encoder.")):
        return "generator"
    if has("face_encoder_blocks.") and has("binary_pred."):
        return "discriminator"
    from networks.syncnet.experts import arch_of

    try:
        arch = arch_of(state)
    except ValueError:
        arch = None
    if arch == "wav2lip":
        return "the weights of Wav2Lip's lip-sync expert SyncNet_color (lipsync_expert.pth)"
    if arch == "stable":
        return "the weights of LatentSync's StableSyncNet expert (stable_syncnet.pt)"
    if has("netcnnlip.") or has("netcnnaud."):
        return "the weights of Chung & Zisserman's SyncNet (syncnet_v2.model)"
    if has("conv_in.") and has("down_blocks.") and has("up_blocks."):
        return "the weights of a diffusion U-Net (LatentSync's latentsync_unet.pt has this layout)"
    if has("encoder.down_blocks.") and has("decoder.up_blocks."):
        return "the weights of a VAE (sd-vae-ft-mse has this layout)"
    if has("res.") and has("fc1w_conv."):
        return "the weights of HyperIQA (koniq_pretrained.pkl)"
    return f"{len(state)} tensors of no Wav2Lip network (the first is {next(iter(state))!r})"


_BLOCK = re.compile(r"face_encoder_blocks\.(\d+)\.")


def _size_from_keys(state: dict, kind: str) -> int:
    """The face size the weights were built for: the number of encoder blocks gives the stride-2 levels and the
    last block's kernel the bottom side (96 for the official files)."""
    last = max((int(match.group(1)) for key in state if (match := _BLOCK.match(key))), default=-1)
    weight = state.get(f"face_encoder_blocks.{last}.0.conv_block.0.weight")
    if weight is None or weight.dim() != 4:
        return OFFICIAL_SIZE                     # the strict load says what is wrong
    bottom = weight.shape[-1]
    return bottom << (last - 1) if kind == "generator" else 2 * (bottom << (last - 2))


def _load(path: str | Path, kind: str, device: str) -> nn.Module:
    path = Path(path)
    name = {"generator": "Wav2Lip generator", "discriminator": "Wav2Lip discriminator"}[kind]
    found = read_checkpoint(path)
    state = found["state_dict"]
    seems = _kind_of(state)
    if seems != kind:
        other = {"generator": "the Wav2Lip generator", "discriminator": "the Wav2Lip discriminator"}.get(seems, seems)
        raise GeneratorFileError(f"{path} is not a {name}: it holds {other}")
    size = found["size"] or _size_from_keys(state, kind)
    try:
        with torch.device("meta"):               # the weights come from the file: no time spent initialising
            model = (Wav2Lip if kind == "generator" else Wav2LipDiscriminator)(size)
    except ValueError as exc:
        raise GeneratorFileError(f"{path} is not a {name}: its layers fit no size ({exc})") from None
    load_strict(model, state, f"{path} is not a {name} of size {size}", GeneratorFileError, assign=True)
    return model.to(device).eval()


def load_generator(path: str | Path, device: str = "cpu") -> Wav2Lip:
    """The generator of `path` (`wav2lip.pth`, `wav2lip_gan.pth` or ours), keys matched strictly, in eval mode.
    Raises GeneratorFileError for anything else."""
    return _load(path, "generator", device)


def load_discriminator(path: str | Path, device: str = "cpu") -> Wav2LipDiscriminator:
    """The visual-quality discriminator of `path`, keys matched strictly, in eval mode."""
    return _load(path, "discriminator", device)


def official_layout(model: Wav2Lip | Wav2LipDiscriminator, global_step: int, global_epoch: int,
                    optimizer_state: dict | None = None) -> dict:
    """What `torch.save` writes for the generator or the discriminator: hq_wav2lip_train.py's load_checkpoint
    reads it (it restores the optimizer only when one is given), and "size" is added for sizes it cannot build,
    so that our loaders can."""
    layout = {"state_dict": {key: value.detach().cpu() for key, value in model.state_dict().items()},
              "optimizer": optimizer_state, "global_step": int(global_step), "global_epoch": int(global_epoch)}
    if model.size != OFFICIAL_SIZE:
        layout["size"] = model.size
    return layout
