"""Whisper tiny's audio encoder (Radford et al. 2022) and the audio features LatentSync conditions its U-Net on.

Front end, as openai-whisper's `log_mel_spectrogram`: 16 kHz mono, STFT 400 / 160 with a periodic Hann window,
centred frames (the signal reflected by 200 samples at both ends) of which the last is dropped, so `n` samples
give `n // 160` frames, 100 a second; power spectrum, 80 Slaney mel bands 0-8 kHz (librosa's
`filters.mel(sr=16000, n_fft=400, n_mels=80)`, computed here), log10 clamped at 1e-10, floored at the audio's
peak - 8 (one peak for the whole audio), then (x + 4) / 4.

Encoder, key for key the `encoder.*` part of the official `tiny.pt` ({"dims", "model_state_dict"}): conv1
(80 -> 384, k3) and conv2 (k3, stride 2), each followed by GELU, so 3000 mel frames (30 s) become 1500 positions,
50 a second; plus the sinusoidal `positional_embedding`; 4 pre-LN residual blocks (6 heads, `attn.key` without
bias, MLP 4x); `ln_post`. Its positions are absolute and it attends over the whole window, so it only ever takes
exactly 3000 frames, zero-padded (after the scaling, as whisper pads).

LatentSync's features (`latentsync/whisper/audio2feature.py`): the encoder on consecutive 30 s windows, keeping
the input to the first block and the output of each block, before `ln_post`: (L, 5, 384) with L = frames // 2,
50 rows a second. A video frame i (25 fps) then takes rows int(2i) - 4 ... int(2i) + 5, clamped to the rows
there are, position-major: a (50, 384) chunk. `feature2chunks` yields L // 2 + 2 of them (it stops one frame
past the first whose centre passes the end).

LatentSync restarts the encoder every 30 s, so the features jump at 30 s, 60 s, ...: a row just before a
boundary sees no future, one just after sees no past, and both sit at the edge of the positional table.
`whisper_features(..., seamless=True)` (the default) avoids that; `seamless=False` is LatentSync's procedure
exactly. The seamless rule:

- Audio up to 30 s is one window, as LatentSync: the same features.
- Longer audio: windows of 30 s every 15 s (starts 0, 15, 30, ... s, the last one zero-padded past the end);
  each gives the rows of its middle 15 s (7.5 s to 22.5 s into it), the first window also its first 7.5 s and
  the last one everything to the end. Every row is thus computed with at least 7.5 s of audio on either side
  (the audio's own ends aside) and never in a window's outer quarter.
- The windows at 0, 30, 60 s are LatentSync's own, so rows more than 7.5 s from a multiple of 30 s equal
  LatentSync's; rows within 7.5 s of a boundary come from the window centred on it (15 s before to 15 s after),
  i.e. exactly what the encoder gives when it sees the boundary's context, instead of two cut-off halves.
- What no tiling of windows removes: the positions are absolute, so where the kept rows pass from one window to
  the next (22.5 s, 37.5 s, 52.5 s, ...) a row's position in its window steps back by 750 (at LatentSync's
  seams by 1500), and the positional part of the features steps with it. Both sides of such a switch are full
  -context rows; at LatentSync's seams neither side is.

Computing it costs twice LatentSync's encoder time. It streams: `iter_feature_blocks` and `iter_chunks` read the
audio array one window at a time (after a first, cheap pass for the peak the log floor needs) and hold one
window's mel and features at a time.

Only torch and numpy here: whisper's filterbank comes from librosa, which the project does not depend on.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from networks.checkpoints import CheckpointError, load_strict, load_tensors

WHISPER_FILE = "tiny.pt"
SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160                         # samples per mel frame: 100 frames a second
N_MELS = 80
WINDOW_FRAMES = 3000              # 30 s: what the encoder takes, and LatentSync's window
ROWS_PER_SECOND = 50              # encoder positions: conv2 halves the mel frames
TINY_DIMS = {"n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 384, "n_audio_head": 6, "n_audio_layer": 4}
HEAD_WIDTH = 64                   # every Whisper size has 64-wide heads: how a bare state_dict gives its heads
CHUNK_BEFORE, CHUNK_AFTER = 4, 6  # a frame's rows: centre - 4 ... centre + 5 (audio_feat_length [2, 2])

_ENCODER_DIMS = ("n_mels", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer")


# ---------------------------------------------------------------------------------------------- front end

def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default, htk=False): linear, 200/3 Hz a mel, up to 1 kHz, then logarithmic
    with 27 mels per factor 6.4."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / (200.0 / 3)
    logarithmic = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27)
    return np.where(hz >= 1000.0, logarithmic, linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27) * (mel - 15.0)), mel * (200.0 / 3))


@lru_cache(maxsize=None)
def mel_filters(n_mels: int = N_MELS, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT) -> np.ndarray:
    """(n_mels, 1 + n_fft // 2) float32: triangles between mel-spaced edges from 0 Hz to Nyquist, each scaled
    by 2 / its width in Hz (norm="slaney", equal area): whisper's `mel_filters` asset."""
    bins = np.arange(1 + n_fft // 2) * (sample_rate / n_fft)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins - lower) / (centre - lower)
    falling = (upper - bins) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (upper - lower))
    return weights.astype(np.float32)


def _check_audio(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ValueError(f"audio must be one 16 kHz mono channel, not an array of shape {audio.shape}")
    if not (audio.dtype == np.int16 or np.issubdtype(audio.dtype, np.floating)):
        raise ValueError(f"audio must be int16 or float samples, not {audio.dtype}")
    if len(audio) < 2 * HOP:
        raise ValueError(f"{len(audio)} samples is shorter than one Whisper feature row (320 samples, 20 ms)")
    return audio


def num_frames(num_samples: int) -> int:
    """Mel frames of `num_samples`: whisper computes 1 + n // 160 centred frames and drops the last."""
    return num_samples // HOP


def _log10_mel(audio: np.ndarray, start: int, stop: int) -> torch.Tensor:
    """log10 of the mel power of frames [start, stop), clamped at 1e-10, before the floor and the scaling.
    Frame t covers samples 160 t - 200 ... 160 t + 199, reflected at the audio's ends as torch.stft(center=True)
    pads them, so any range of frames comes out as the whole audio's STFT would give it."""
    positions = np.arange(start * HOP - N_FFT // 2, (stop - 1) * HOP + N_FFT // 2)
    positions = np.abs(positions)                                            # reflect at the start
    positions = np.where(positions >= len(audio), 2 * (len(audio) - 1) - positions, positions)  # and the end
    samples = audio[positions]
    # int16 as whisper's load_audio reads it; floats taken as they are (-1 ... 1)
    samples = samples.astype(np.float32) / 32768.0 if samples.dtype == np.int16 else samples.astype(np.float32)
    spectrum = torch.stft(torch.from_numpy(samples), N_FFT, HOP, window=torch.hann_window(N_FFT), center=False,
                          return_complex=True)
    power = spectrum.abs() ** 2
    return torch.clamp(torch.from_numpy(mel_filters()) @ power, min=1e-10).log10()


def _scale(log10_mel: torch.Tensor, peak: float) -> torch.Tensor:
    return (torch.clamp(log10_mel, min=peak - 8.0) + 4.0) / 4.0


def _peak(audio: np.ndarray) -> float:
    """The largest log10 mel value of the whole audio, a window at a time (the floor is relative to it)."""
    frames = num_frames(len(audio))
    return max(float(_log10_mel(audio, start, min(start + WINDOW_FRAMES, frames)).max())
               for start in range(0, frames, WINDOW_FRAMES))


def log_mel_spectrogram(audio: np.ndarray) -> torch.Tensor:
    """(80, len(audio) // 160) float32: whisper's log-mel of 16 kHz audio (int16, or float in -1 ... 1)."""
    audio = _check_audio(audio)
    log10_mel = _log10_mel(audio, 0, num_frames(len(audio)))
    return _scale(log10_mel, float(log10_mel.max()))


# ---------------------------------------------------------------------------------------------- encoder

def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """(length, channels): sin then cos of position x geometric timescales 1 ... 1 / max_timescale. Computed in
    float32 as whisper does: at positions up to 1500 the argument's rounding shows in the 5th decimal, and the
    official files hold these float32 values (a file's own table replaces them on loading anyway)."""
    half = channels // 2
    rates = torch.exp(-float(np.log(max_timescale) / (half - 1)) * torch.arange(half, dtype=torch.float32))
    angles = torch.arange(length, dtype=torch.float32)[:, None] * rates[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class MultiHeadAttention(nn.Module):
    """Self-attention with whisper's parameter names; `key` has no bias (a bias on the keys adds the same
    amount to every score of a query, which softmax ignores)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width, bias=False)
        self.value = nn.Linear(width, width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, width = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.heads, width // self.heads).transpose(1, 2)

        mixed = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)), split(self.value(x)))
        return self.out(mixed.transpose(1, 2).reshape(b, t, width))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN: x + attn(attn_ln(x)), then + mlp(mlp_ln(x)) with a 4x GELU MLP (`mlp.0`, `mlp.2`)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = MultiHeadAttention(width, heads)
        self.attn_ln = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.mlp_ln = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_ln(x))
        return x + self.mlp(self.mlp_ln(x))


class WhisperEncoder(nn.Module):
    """Whisper's audio encoder; the defaults are tiny's. Its state_dict is the official file's `encoder.*`
    without the prefix. Input (B, n_mels, 2 * n_ctx) log-mel, exactly that long (the positions are absolute)."""

    def __init__(self, n_mels: int = 80, n_ctx: int = 1500, n_state: int = 384, n_head: int = 6,
                 n_layer: int = 4):
        super().__init__()
        self.dims = {"n_mels": n_mels, "n_audio_ctx": n_ctx, "n_audio_state": n_state, "n_audio_head": n_head,
                     "n_audio_layer": n_layer}
        self.conv1 = nn.Conv1d(n_mels, n_state, 3, padding=1)
        self.conv2 = nn.Conv1d(n_state, n_state, 3, stride=2, padding=1)
        self.register_buffer("positional_embedding", sinusoids(n_ctx, n_state))
        self.blocks = nn.ModuleList(ResidualAttentionBlock(n_state, n_head) for _ in range(n_layer))
        self.ln_post = nn.LayerNorm(n_state)

    @classmethod
    def from_dims(cls, dims: dict) -> "WhisperEncoder":
        return cls(*(int(dims[name]) for name in _ENCODER_DIMS))

    def _embed(self, mel: torch.Tensor) -> torch.Tensor:
        expected = (self.dims["n_mels"], 2 * self.dims["n_audio_ctx"])
        if mel.dim() != 3 or tuple(mel.shape[1:]) != expected:
            raise ValueError(f"the encoder takes (B, {expected[0]}, {expected[1]}) log-mel windows, not "
                             f"{tuple(mel.shape)}; pad shorter audio")
        x = F.gelu(self.conv2(F.gelu(self.conv1(mel))))
        return x.transpose(1, 2) + self.positional_embedding

    def layers(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, n_ctx, n_layer + 1, n_state): the first block's input and every block's output, without
        `ln_post` (LatentSync's features)."""
        x = self._embed(mel)
        outputs = [x]
        for block in self.blocks:
            x = block(x)
            outputs.append(x)
        return torch.stack(outputs, dim=2)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, n_ctx, n_state): the encoder's output, after `ln_post` (what whisper's decoder reads)."""
        x = self._embed(mel)
        for block in self.blocks:
            x = block(x)
        return self.ln_post(x)


# ---------------------------------------------------------------------------------------------- loading

class WhisperFileError(CheckpointError):
    """A file that is not a Whisper encoder. The message is one line: the file and what it holds."""


def _dims_from_keys(state: dict) -> dict:
    """A bare state_dict has no dims: widths from the shapes, heads from Whisper's 64-wide heads."""
    conv1, table = state.get("conv1.weight"), state.get("positional_embedding")
    if conv1 is None or conv1.dim() != 3 or table is None or table.dim() != 2:
        return dict(TINY_DIMS)                   # the key check says what is wrong
    blocks = {int(match.group(1)) for key in state if (match := re.match(r"blocks\.(\d+)\.", key))}
    return {"n_mels": conv1.shape[1], "n_audio_ctx": table.shape[0], "n_audio_state": conv1.shape[0],
            "n_audio_head": max(conv1.shape[0] // HEAD_WIDTH, 1), "n_audio_layer": len(blocks)}


def read_whisper_encoder_state(path: str | Path) -> tuple[dict, dict]:
    """(dims, encoder state_dict without the `encoder.` prefix) of an openai-whisper file ({"dims",
    "model_state_dict"}; the decoder is ignored) or of a bare state_dict of the encoder's keys, with or
    without the prefix. Checks the layout, not the keys."""
    path = Path(path)
    blob = load_tensors(path, WhisperFileError)
    if not isinstance(blob, dict):
        raise WhisperFileError(f"{path} holds a {type(blob).__name__}, not a Whisper model")
    official = "model_state_dict" in blob
    state = blob["model_state_dict"] if official else blob
    if not isinstance(state, dict) or not state or not all(
            isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()):
        found = ", ".join(repr(key) for key in list(blob)[:4])
        raise WhisperFileError(f"{path} is not a Whisper model: it holds neither openai-whisper's {{dims, "
                               f"model_state_dict}} nor a state_dict of tensors (its entries: {found})")
    prefixed = any(key.startswith("encoder.") for key in state)
    encoder = {key.removeprefix("encoder."): value for key, value in state.items()
               if not key.startswith("decoder.") and (key.startswith("encoder.") or not prefixed)}
    if not encoder:
        raise WhisperFileError(f"{path} holds no Whisper encoder: {len(state)} tensors, none under encoder. "
                               f"(the first is {next(iter(state))!r})")
    if official:
        dims = blob.get("dims")
        if not isinstance(dims, dict) or any(not isinstance(dims.get(name), int) for name in _ENCODER_DIMS):
            raise WhisperFileError(f"{path} has a model_state_dict but no dims with {', '.join(_ENCODER_DIMS)}")
        dims = {name: dims[name] for name in _ENCODER_DIMS}
    else:
        dims = _dims_from_keys(encoder)
    return dims, encoder


def load_whisper_encoder(path: str | Path, device: str | torch.device = "cpu") -> WhisperEncoder:
    """The encoder of `path` (openai-whisper's `tiny.pt`, or a bare encoder state_dict), float32, keys and
    shapes matched strictly, in eval mode. Raises WhisperFileError for anything else."""
    path = Path(path)
    dims, state = read_whisper_encoder_state(path)
    if dims["n_mels"] != N_MELS:
        raise WhisperFileError(f"{path} is a Whisper encoder of {dims['n_mels']} mel bands; the front end here "
                               f"gives {N_MELS} (tiny to large-v2)")
    try:
        with torch.device("meta"):               # the weights come from the file: no time spent initialising
            model = WhisperEncoder.from_dims(dims)
    except (ValueError, RuntimeError) as exc:
        raise WhisperFileError(f"{path} has dims no encoder can be built from ({dims}: {exc})") from None
    # the official files are float16; the features are computed in float32 as whisper does on the CPU (the keys
    # named are the encoder's, without its `encoder.` prefix)
    load_strict(model, state, f"{path} is not a Whisper encoder of {dims}", WhisperFileError, dtype=torch.float32,
                assign=True)
    return model.to(device).eval()


# ---------------------------------------------------------------------------------------------- features

def num_feature_rows(num_samples: int) -> int:
    """Rows of features for `num_samples`: one per two mel frames, as LatentSync keeps them."""
    return num_frames(num_samples) // 2


def window_plan(frames: int, seamless: bool = True) -> list[tuple[int, int, int]]:
    """(first mel frame, first row kept, end of rows kept) of each encoder window over `frames` mel frames,
    rows counted within the window; what is kept tiles rows 0 ... frames // 2 in order. seamless=False is
    LatentSync's (windows every 30 s, each kept whole); seamless=True the rule of the module's docstring
    (windows every 15 s, each kept from 7.5 s to 22.5 s, the first from 0 and the last to the end)."""
    rows, window_rows = frames // 2, WINDOW_FRAMES // 2
    if not seamless or frames <= WINDOW_FRAMES:
        # a last window of a single frame gives LatentSync no row: not run at all
        return [(start, 0, min(window_rows, rows - start // 2)) for start in range(0, frames, WINDOW_FRAMES)
                if rows > start // 2]
    step, margin = WINDOW_FRAMES // 2, window_rows // 4
    last = -(-(frames - WINDOW_FRAMES) // step)        # the first window that reaches the end
    plan = []
    for k in range(last + 1):
        offset = k * step // 2                         # the window's first row, in the audio's rows
        plan.append((k * step, 0 if k == 0 else margin, rows - offset if k == last else window_rows - margin))
    return plan


def iter_feature_blocks(encoder: WhisperEncoder, audio: np.ndarray, seamless: bool = True) -> Iterator[torch.Tensor]:
    """LatentSync's features of `audio` (16 kHz mono, int16 or float in -1 ... 1) as consecutive blocks of rows
    (rows, n_layer + 1, n_state), float32 on the CPU, one encoder window at a time; concatenated they are
    `whisper_features`. The audio is read a window at a time, after one pass for its log-mel peak."""
    audio = _check_audio(audio)
    frames = num_frames(len(audio))
    peak = _peak(audio) if frames > WINDOW_FRAMES else None
    parameter = next(encoder.parameters())
    with torch.inference_mode():
        for start, first, end in window_plan(frames, seamless):
            stop = min(start + WINDOW_FRAMES, frames)
            log10_mel = _log10_mel(audio, start, stop)
            mel = _scale(log10_mel, float(log10_mel.max()) if peak is None else peak)
            mel = F.pad(mel, (0, WINDOW_FRAMES - (stop - start)))        # zeros after the scaling, as whisper
            rows = encoder.layers(mel[None].to(parameter.device, parameter.dtype))[0]
            yield rows[first:end].float().cpu()


def whisper_features(encoder: WhisperEncoder, audio: np.ndarray, seamless: bool = True) -> torch.Tensor:
    """(num_feature_rows, n_layer + 1, n_state): LatentSync's `audio2feat` of `audio`; with seamless=False its
    very procedure, with seamless=True (the default) the same up to 30 s and without its seams beyond."""
    return torch.cat(list(iter_feature_blocks(encoder, audio, seamless)))


def num_chunks(rows: int, fps: float = 25) -> int:
    """How many chunks `feature2chunks` yields for `rows` feature rows: one per video frame until the first
    frame whose centre row int(i * 50 / fps) is past the last row, that one included (rows // 2 + 2 at 25 fps)."""
    i = 0
    while int(i * (ROWS_PER_SECOND / fps)) <= rows:
        i += 1
    return i + 1


def chunk_rows(frame: int, rows: int, fps: float = 25) -> torch.Tensor:
    """The 10 rows video frame `frame` takes: its centre int(frame * 50 / fps) - 4 ... + 5, clamped to 0 ...
    rows - 1 (so the first and last frames repeat the edge rows)."""
    centre = int(frame * ROWS_PER_SECOND / fps)
    return torch.arange(centre - CHUNK_BEFORE, centre + CHUNK_AFTER).clamp(0, rows - 1)


def feature_chunks(features: torch.Tensor, fps: float = 25) -> torch.Tensor:
    """(num_chunks, 10 * (n_layer + 1), n_state): `feature2chunks` of (rows, n_layer + 1, n_state) features,
    row-major as LatentSync concatenates them (row 0's layers, then row 1's, ...): (N, 50, 384) for tiny."""
    rows, layers, width = features.shape
    index = torch.stack([chunk_rows(i, rows, fps) for i in range(num_chunks(rows, fps))])
    return features[index].reshape(len(index), -1, width)


def iter_chunks(encoder: WhisperEncoder, audio: np.ndarray, fps: float = 25,
                seamless: bool = True) -> Iterator[torch.Tensor]:
    """`feature_chunks(whisper_features(encoder, audio, seamless), fps)` one (50, 384) chunk at a time, holding
    only the rows that chunks still to come need (about a window's)."""
    rows = num_feature_rows(len(_check_audio(audio)))
    total, frame = num_chunks(rows, fps), 0
    held, base = None, 0                           # rows base ... base + len(held) - 1
    for block in iter_feature_blocks(encoder, audio, seamless):
        held = block if held is None else torch.cat([held, block])
        while frame < total and int(chunk_rows(frame, rows, fps).max()) < base + len(held):
            yield held[chunk_rows(frame, rows, fps) - base].reshape(-1, held.shape[-1])
            frame += 1
        if frame < total:                          # later frames never go back before this one's first row
            keep = min(int(chunk_rows(frame, rows, fps).min()), base + len(held))
            held, base = held[keep - base:], keep
