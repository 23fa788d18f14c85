"""Speech stage: how much of a clip span's audio is voice, by Silero VAD, and the span dropped when too little is.

It runs in the source pass on the 16 kHz mono samples the resample stage holds, as soon as a span is settled:
after the face stage's verdict and before the writer, so a silent span costs no encode and never reaches
SyncNet (a span without a face is dropped for that first: the reason a user can see).
Silero VAD (the `silero-vad` wheel, MIT) is a small recurrent network shipped inside the wheel. Its ONNX export
is run here with onnxruntime, one thread, without importing the wheel's Python package (which imports torch):
the same probabilities as its TorchScript model (within 2e-6 on the shared videos), a third of the CPU, and no
torch in the source-pass workers (about 220 MB less each). Each 32 ms window (512 samples at 16 kHz, 256 at
8 kHz, the two rates it takes) is given with the last 64 (32) samples before it, as the wheel's own wrapper
does, and the network's state is carried from window to window and reset at every clip. The clip's
`speech_fraction` is the share of its windows at or above `threshold`; the per-frame value kept beside the clip
(`speech_prob` in its .npz) is the probability at each video frame's centre, interpolated between the windows'
centres.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from manifests.rejected import Rejected
from stages.settings import SpeechParams

STAGE = "speech"
WINDOW = {16000: 512, 8000: 256}    # samples per window: the only rates and sizes the model takes
CONTEXT = {16000: 64, 8000: 32}     # samples of the window before, given with each window


def model_path() -> Path:
    """The ONNX model inside the silero-vad wheel, found without importing its package (which imports torch)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the speech stage needs the silero-vad package: pip install 'silero-vad>=6,<7'")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "silero_vad.onnx"


@functools.lru_cache(maxsize=1)
def _session():
    """The model, loaded once per worker process, run on one thread."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(str(model_path()), sess_options=options, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class SpeechResult:
    fraction: float
    per_frame: np.ndarray          # float32 (n_frames,): speech probability at each frame's centre
    rejected: Rejected | None

    @property
    def columns(self) -> dict:
        return {"speech_fraction": round(self.fraction, 4)}


class SpeechStage:
    def __init__(self, params: SpeechParams, sample_rate: int, fps: int):
        if sample_rate not in WINDOW:
            raise ValueError(f"the speech stage needs audio at {' or '.join(map(str, WINDOW))} Hz, not {sample_rate}")
        self.params, self.sample_rate, self.fps = params, sample_rate, fps
        self.window, self.context = WINDOW[sample_rate], CONTEXT[sample_rate]
        self.session = _session()

    def probabilities(self, audio: np.ndarray) -> np.ndarray:
        """Speech probability of each whole window of `audio` (int16 samples); a last partial window is left out."""
        n = audio.size // self.window
        if n == 0:
            return np.zeros(0, np.float32)
        windows = (audio[:n * self.window].astype(np.float32) / 32768.0).reshape(n, self.window)
        state = np.zeros((2, 1, 128), np.float32)
        before = np.zeros((1, self.context), np.float32)
        rate = np.array(self.sample_rate, np.int64)
        probs = np.empty(n, np.float32)
        for k, window in enumerate(windows):
            given = np.concatenate([before, window[None]], axis=1)
            out, state = self.session.run(None, {"input": given, "state": state, "sr": rate})
            probs[k] = out[0, 0]
            before = given[:, -self.context:]
        return probs

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
