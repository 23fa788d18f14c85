"""Speech stage: how much of a clip span's audio is voice, by Silero VAD, and the span dropped when too little is.

It runs in the source pass on the 16 kHz mono samples the resample stage holds, as soon as a span is settled:
after the face stage's verdict and before the writer, so a silent span costs no encode and never reaches
SyncNet (a span without a face is dropped for that first: the reason a user can see).
Silero VAD (the `silero-vad` wheel, MIT) is a small recurrent network shipped inside the wheel as TorchScript:
offline, no download, torch only (the wheel's own dependencies are torch and packaging; torchaudio only for its
file readers, which are not used). It gives each 32 ms window (512 samples at 16 kHz, 256 at 8 kHz, the two
rates it takes) a speech probability, carrying its state from window to window; the state is reset at every
clip. The clip's `speech_fraction` is the share of its windows at or above `threshold`; the per-frame value
kept beside the clip (`speech_prob` in its .npz) is the probability at each video frame's centre, interpolated
between the windows' centres.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from manifests.rejected import Rejected
from stages.settings import SpeechParams

STAGE = "speech"
WINDOW = {16000: 512, 8000: 256}   # samples per window: the only rates and sizes the model takes


@functools.lru_cache(maxsize=1)
def _model():
    """The TorchScript model from inside the wheel, loaded once per worker process."""
    from silero_vad import load_silero_vad

    return load_silero_vad()


@dataclass(frozen=True)
class SpeechResult:
    fraction: float
    per_frame: np.ndarray          # float32 (n_frames,): speech probability at each frame's centre
    rejected: Rejected | None

    @property
    def columns(self) -> dict:
        return {"speech_fraction": round(self.fraction, 4)}


class SpeechStage:
    def __init__(self, params: SpeechParams, sample_rate: int, fps: int, threads: int = 1):
        if sample_rate not in WINDOW:
            raise ValueError(f"the speech stage needs audio at {' or '.join(map(str, WINDOW))} Hz, not {sample_rate}")
        self.params, self.sample_rate, self.fps = params, sample_rate, fps
        self.window = WINDOW[sample_rate]
        import torch   # here, not at import: a worker that never judges speech never loads torch

        torch.set_num_threads(threads)   # in the calling thread, as the pass's other stages, by default
        self.model = _model()

    def probabilities(self, audio: np.ndarray) -> np.ndarray:
        """Speech probability of each whole window of `audio` (int16 samples); a last partial window is left out."""
        import torch

        n = audio.size // self.window
        if n == 0:
            return np.zeros(0, np.float32)
        windows = torch.from_numpy(audio[:n * self.window].astype(np.float32) / 32768.0).view(n, self.window)
        self.model.reset_states()
        with torch.inference_mode():
            return np.array([float(self.model(w, self.sample_rate)) for w in windows], np.float32)

    def judge(self, audio: np.ndarray, n_frames: int) -> SpeechResult:
        probs = self.probabilities(audio)
        fraction = float(np.mean(probs >= self.params.threshold)) if probs.size else 0.0
        if probs.size:
            centres = (np.arange(probs.size) + 0.5) * self.window
            frame_centres = (np.arange(n_frames) + 0.5) * (audio.size / max(n_frames, 1))
            per_frame = np.interp(frame_centres, centres, probs).astype(np.float32)
        else:
            per_frame = np.zeros(n_frames, np.float32)
        rejected = None
        if fraction < self.params.min_fraction:
            rejected = Rejected(
                STAGE, "too_little_speech",
                f"speech in {fraction:.0%} of the clip's audio, under the minimum {self.params.min_fraction:.0%}",
            )
        return SpeechResult(fraction, per_frame, rejected)
