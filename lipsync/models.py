"""The one small interface every lip-sync model has for the pipeline, and the Wav2Lip model behind it.

A model says how it frames the face (`framing`), turns the whole 16 kHz speech into its audio features once
(`prepare_audio`), and maps a batch of crops of consecutive output frames, with those frames' indices on the
audio, to the same crops with a new lower half (`generate`). Crops are RGB uint8, size x size; the model does
its own masking and reference frames. Nothing here knows about video files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from lipsync.framing import BoxFraming, Framing, TemplateFraming
from lipsync.media import LipsyncError


WINDOW = 16   # mel columns a Wav2Lip frame hears (0.2 s)


class LipsyncModel(Protocol):
    name: str
    framing: Framing
    batch_size: int            # crops per `generate` call

    def prepare_audio(self, samples: np.ndarray) -> Any:
        """Features of the whole speech (16 kHz mono int16), computed once."""

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
    """Wav2Lip (ours, `generators.wav2lip`): a frame's crop with its lower half blanked, the same crop as the
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
        from generators import wav2lip

        try:
            generator = wav2lip.load_generator(path)
        except wav2lip.GeneratorFileError as exc:
            raise LipsyncError(str(exc)) from None
        written = _stored_framing(path)
        chosen = framing or written or ("box" if generator.size == 96 else "template")
        return cls(generator, framing_named(chosen, generator.size), device, batch_size)

    def prepare_audio(self, samples: np.ndarray) -> np.ndarray:
        from syncnet.mel import melspectrogram

        mel = melspectrogram(samples.astype(np.float32) / 32768.0).astype(np.float32)
        if mel.shape[1] < WINDOW:   # under 0.2 s of speech: silence after it fills the one window
            mel = np.pad(mel, ((0, 0), (0, WINDOW - mel.shape[1])), constant_values=-4.0)
        return mel

    @torch.no_grad()
    def generate(self, crops: np.ndarray, frames: list[int], audio: np.ndarray) -> np.ndarray:
        from syncnet.mel import mel_start

        # the official inference's windows: 16 columns from the frame's start, the last ones ending at the end
        last = audio.shape[1] - WINDOW
        mel = np.stack([audio[:, min(mel_start(k), last):min(mel_start(k), last) + WINDOW] for k in frames])[:, None]
        bgr = torch.from_numpy(np.ascontiguousarray(crops[..., ::-1])).to(self.device)
        faces = bgr.permute(0, 3, 1, 2).float() / 255.0
        masked = faces.clone()
        masked[:, :, self.size // 2:] = 0
        inputs = torch.cat([masked, faces], dim=1)
        out = self.generator(torch.from_numpy(mel).to(self.device), inputs)
        picture = (out.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        return np.ascontiguousarray(picture[..., ::-1])


def framing_named(name: str, size: int) -> Framing:
    if name == "box":
        return BoxFraming(size)
    if name == "template":
        return TemplateFraming(size)
    raise LipsyncError(f"unknown framing {name!r} (box or template)")


def _stored_framing(path: Path) -> str | None:
    """The framing a checkpoint written here records (official files record none)."""
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - the loader above already judged the file; nothing more to say here
        return None
    return data.get("framing") if isinstance(data, dict) else None


MODELS = {"wav2lip": Wav2LipModel}
