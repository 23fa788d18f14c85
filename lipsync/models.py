"""The one small interface every lip-sync model has for the pipeline, and the Wav2Lip model behind it.

A model says how it frames the face (`framing`), turns the 16 kHz speech into its audio features
(`prepare_audio`: a reader of them, computed as the frames ask, a block at a time, so that their memory does not
grow with the speech's length), and maps a batch of crops of consecutive output frames, with those frames'
indices on the audio, to the same crops with a new lower half (`generate`). Crops are RGB uint8, size x size;
the model does its own masking and reference frames. Nothing here knows about video files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from lipsync.framing import BoxFraming, Framing, TemplateFraming
from lipsync.media import LipsyncError
from networks.checkpoints import load_tensors

WINDOW = 16   # mel columns a Wav2Lip frame hears (0.2 s)


class LipsyncModel(Protocol):
    name: str
    framing: Framing
    batch_size: int            # crops per `generate` call

    def prepare_audio(self, samples: np.ndarray) -> Any:
        """The speech's features (16 kHz mono int16), read by `generate` in the output's order; held a block at a
        time, not whole."""

    def generate(self, crops: np.ndarray, frames: list[int], audio: Any) -> np.ndarray:
        """New crops (B, S, S, 3) uint8 RGB for `crops` of output frames `frames`."""


def pick_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise LipsyncError(f"--device {name}: not a torch device (cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LipsyncError(f"--device {name}: this machine has no CUDA GPU torch can use")
    return device


class Wav2LipModel:
    """Wav2Lip (ours, `networks.wav2lip`): a frame's crop with its lower half blanked, the same crop as the
    reference, and the 16 mel columns that start at the frame's time, as the official inference feeds it.

    The official checkpoints see BGR box crops at 96; a model trained here records its framing in its file
    (the template, at its size). Audio windows: frame k's window starts at mel column int(k * 80 / 25), the
    official inference's rule, which the trainer here uses too.
    """

    name = "wav2lip"

    def __init__(self, generator: torch.nn.Module, framing: Framing, device: torch.device, batch_size: int = 128):
        self.generator = generator.to(device).eval()
        self.framing = framing
        self.device = device
        self.batch_size = batch_size
        self.size = generator.size

    @classmethod
    def from_file(cls, path: Path, device: torch.device, batch_size: int = 128,
                  framing: str | None = None) -> "Wav2LipModel":
        from networks import wav2lip

        try:
            generator = wav2lip.load_generator(path)
        except wav2lip.GeneratorFileError as exc:
            raise LipsyncError(str(exc)) from None
        written = _stored_framing(path)
        chosen = framing or written or ("box" if generator.size == 96 else "template")
        return cls(generator, framing_named(chosen, generator.size), device, batch_size)

    def prepare_audio(self, samples: np.ndarray) -> "MelWindows":
        return MelWindows(samples)

    @torch.no_grad()
    def generate(self, crops: np.ndarray, frames: list[int], audio: "MelWindows") -> np.ndarray:
        mel = np.stack([audio.window(k) for k in frames])[:, None]
        bgr = torch.from_numpy(np.ascontiguousarray(crops[..., ::-1])).to(self.device)
        faces = bgr.permute(0, 3, 1, 2).float() / 255.0
        masked = faces.clone()
        masked[:, :, self.size // 2:] = 0
        inputs = torch.cat([masked, faces], dim=1)
        out = self.generator(torch.from_numpy(mel).to(self.device), inputs)
        picture = (out.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        return np.ascontiguousarray(picture[..., ::-1])


class MelWindows:
    """Wav2Lip's 16-column mel windows of the speech, frame k's as the official inference cuts them (16 columns
    from int(80 k / 25), the last ones ending at the mel's end; under 0.2 s of speech, silence (-4) after it fills
    the one window), computed a block of `BLOCK` columns at a time as the frames ask for them: the same values as
    the whole speech's mel (`media.mel.mel_column_range`), with only a block held, whatever the speech's length.
    Frames in increasing order (the output's) compute each column about once; any order works."""

    BLOCK = 400   # columns (5 s): about 3 MB of the STFT's float64 temporaries

    def __init__(self, samples: np.ndarray):
        from media.mel import column_count

        self.samples = samples
        self.real = column_count(len(samples))
        self.columns = max(self.real, WINDOW)
        self.computed = 0                          # columns computed so far (a test reads it)
        self._lo, self._block = 0, np.zeros((80, 0), np.float32)

    def window(self, frame: int) -> np.ndarray:
        from media.mel import mel_column_range, mel_start

        start = min(mel_start(frame), self.columns - WINDOW)
        if not self._lo <= start <= self._lo + self._block.shape[1] - WINDOW:
            stop = min(start + self.BLOCK, self.columns)
            block = mel_column_range(self.samples, start, stop)
            if block.shape[1] < stop - start:      # past the speech's end (under 16 columns in all)
                block = np.pad(block, ((0, 0), (0, stop - start - block.shape[1])), constant_values=-4.0)
            self._lo, self._block = start, block
            self.computed += block.shape[1]
        return self._block[:, start - self._lo:start - self._lo + WINDOW]


def framing_named(name: str, size: int) -> Framing:
    if name == "box":
        return BoxFraming(size)
    if name == "template":
        return TemplateFraming(size)
    raise LipsyncError(f"unknown framing {name!r} (box or template)")


def _stored_framing(path: Path) -> str | None:
    """The framing a checkpoint written here records (official files record none)."""
    try:
        data = load_tensors(path, mmap=True)
    except Exception:  # noqa: BLE001 - the loader above already judged the file; nothing more to say here
        return None
    return data.get("framing") if isinstance(data, dict) else None


class _Chunks:
    """LatentSync's per-frame Whisper chunks of the speech, read as the pipeline asks for them: frames in
    increasing order (the output's), so only about one encoder window of features is held, whatever the
    speech's length; a frame before the last one read starts the stream again."""

    def __init__(self, encoder: torch.nn.Module, samples: np.ndarray):
        from networks.whisper import iter_chunks

        self._open = lambda: iter_chunks(encoder, samples)
        self._stream, self._next, self._last = self._open(), 0, None

    def get(self, frames: list[int]) -> torch.Tensor:
        out = []
        for k in frames:
            if k < self._next - 1:
                self._stream, self._next, self._last = self._open(), 0, None
            while self._next <= k:
                chunk = next(self._stream, None)
                if chunk is None:        # past the speech's last chunk (its end rounded up): the last one again
                    break
                self._last, self._next = chunk, self._next + 1
            out.append(self._last)
        return torch.stack(out)


class LatentSyncModel:
    """LatentSync (ours: `networks.latentsync_unet`, `networks.whisper`, `networks.latentsync`): windows of
    up to 16 aligned faces (the curation's template at the checkpoint's resolution, 256 for 1.5, 512 for 1.6)
    and their Whisper chunks through 20 DDIM steps with guidance 1.5; the mouth region of LatentSync's mask is
    remade, the rest of the crop kept. fp16 on a GPU, as the reference runs it; fp32 on the CPU."""

    name = "latentsync"

    def __init__(self, unet: torch.nn.Module, vae: torch.nn.Module, encoder: torch.nn.Module, resolution: int,
                 device: torch.device, batch_size: int = 16, steps: int = 20, guidance: float = 1.5, seed: int = 1247):
        from networks.latentsync import LatentSyncSampler

        longest = (unet.config.motion_module_kwargs["temporal_position_encoding_max_len"]
                   if unet.config.use_motion_module else 10 ** 6)   # the motion modules' position table
        if not 1 <= batch_size <= longest:
            raise LipsyncError(f"--batch-size {batch_size}: LatentSync takes windows of 1 to {longest} frames "
                               f"(16 as trained)")
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        self.sampler = LatentSyncSampler(unet, vae, resolution, device, dtype, steps, guidance, seed)
        self.encoder = encoder.to(device).eval()
        self.framing = TemplateFraming(resolution)
        self.device, self.batch_size, self.resolution = device, batch_size, resolution

    @classmethod
    def from_files(cls, unet: Path, whisper: Path, vae: Path, device: torch.device, batch_size: int = 16,
                   resolution: int | None = None, **sampling) -> "LatentSyncModel":
        from networks import latentsync, latentsync_unet, whisper as audio

        try:
            network = latentsync_unet.load_unet(unet)     # mapped from the file, not read yet
            stored = stored_resolution(unet)
            if resolution and stored and resolution != stored:
                raise LipsyncError(f"--resolution {resolution}: {unet} is a {stored} px model; a U-Net run at "
                                   f"another resolution than it was trained at makes a broken mouth")
            resolution = resolution or stored
            if resolution is None:
                raise LipsyncError(f"{unet} does not say its resolution: give --resolution 256 (LatentSync 1.5) or "
                                   f"512 (LatentSync 1.6)")
            return cls(network, latentsync.load_vae(vae), audio.load_whisper_encoder(whisper), resolution, device,
                       batch_size, **sampling)
        except (latentsync_unet.UNetFileError, latentsync.LatentSyncFileError, audio.WhisperFileError) as exc:
            raise LipsyncError(str(exc)) from None

    def prepare_audio(self, samples: np.ndarray) -> _Chunks:
        return _Chunks(self.encoder, samples)

    def generate(self, crops: np.ndarray, frames: list[int], audio: _Chunks) -> np.ndarray:
        faces = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float() / 127.5 - 1
        made = self.sampler(faces, audio.get(frames))
        return ((made.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


# where a U-Net says nothing of its resolution, the folder `curate models download` put it in does
RESOLUTION_FOLDERS = {"latentsync-1.5": 256, "latentsync-1.6": 512}


def stored_resolution(path: Path) -> int | None:
    """A U-Net's resolution: the "resolution" our checkpoints record, else that of the models folder it was
    downloaded into (LatentSync 1.5's or 1.6's, whose files are alike), else None."""
    try:
        data = load_tensors(path, mmap=True)
    except Exception:  # noqa: BLE001 - the loader judges the file; here only its record is looked for
        data = None
    if isinstance(data, dict) and isinstance(data.get("resolution"), int):
        return data["resolution"]
    return RESOLUTION_FOLDERS.get(Path(path).resolve().parent.name)


MODELS = {"wav2lip": Wav2LipModel, "latentsync": LatentSyncModel}
