"""The mel spectrogram Wav2Lip and LatentSync feed their networks, without librosa.

Both references compute it the same way (Wav2Lip's `audio.melspectrogram`, copied into LatentSync): samples
in [-1, 1] at 16 kHz, pre-emphasis 0.97, a centred STFT of 800 samples (Hann window, hop 200, zero padding of
400 at either end), magnitudes onto 80 Slaney mel bands from 55 to 7600 Hz (librosa's default filterbank,
area-normalised), 20 log10 with a floor of 1e-5, minus 20 dB, then scaled from [-100, 0] dB to [-4, 4] and
clipped. That is 80 columns a second; frame k of 25 fps video starts at column int(80 k / 25).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.signal import get_window, lfilter

SAMPLE_RATE = 16000
N_FFT = 800
HOP = 200
N_MELS = 80
F_MIN, F_MAX = 55.0, 7600.0
COLUMNS_PER_SECOND = SAMPLE_RATE // HOP   # 80
FPS = 25


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
    hz = np.asarray(hz, np.float64)
    linear = hz / (200.0 / 3)
    log_part = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27)
    return np.where(hz >= 1000.0, log_part, linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, np.float64)
    return np.where(mel >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27) * (mel - 15.0)), mel * (200.0 / 3))


@lru_cache(maxsize=1)
def mel_filterbank() -> np.ndarray:
    """(80, 401) triangular filters on the STFT bins, each scaled by 2 / its width in Hz (Slaney's norm)."""
    bins = np.linspace(0, SAMPLE_RATE / 2, 1 + N_FFT // 2)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(F_MIN), _hz_to_mel(F_MAX), N_MELS + 2))
    widths = np.diff(edges)
    ramps = np.subtract.outer(edges, bins)
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    return weights * (2.0 / (edges[2:] - edges[:-2]))[:, None]


def melspectrogram(samples: np.ndarray) -> np.ndarray:
    """(80, len // 200 + 1) float32 mel of int16 samples (or floats in [-1, 1]) at 16 kHz."""
    wav = samples.astype(np.float64) / 32768.0 if samples.dtype == np.int16 else samples.astype(np.float64)
    emphasised = lfilter([1.0, -0.97], [1.0], wav)
    padded = np.pad(emphasised, N_FFT // 2)
    count = 1 + (len(padded) - N_FFT) // HOP
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP][:count]
    magnitude = np.abs(np.fft.rfft(frames * get_window("hann", N_FFT, fftbins=True), axis=1)).T
    decibels = 20.0 * np.log10(np.maximum(1e-5, mel_filterbank() @ magnitude)) - 20.0
    return np.clip(8.0 * (decibels + 100.0) / 100.0 - 4.0, -4.0, 4.0).astype(np.float32)


def column_count(num_samples: int) -> int:
    """How many columns `melspectrogram` makes of `num_samples` samples: 1 + num_samples // 200."""
    return 1 + num_samples // HOP


def mel_column_range(samples: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Columns [start, stop) of `melspectrogram(samples)`, the same values, computed from only the samples they
    cover (800 around each, and the one before for the pre-emphasis): a long speech's mel a block at a time."""
    stop = min(stop, column_count(len(samples)))
    if stop <= start:
        return np.zeros((N_MELS, 0), np.float32)
    first, last = start * HOP - N_FFT // 2, (stop - 1) * HOP + N_FFT // 2   # emphasised samples [first, last)
    lo, hi = max(first - 1, 0), min(last, len(samples))
    part = samples[lo:hi]
    wav = part.astype(np.float64) / 32768.0 if part.dtype == np.int16 else part.astype(np.float64)
    emphasised = lfilter([1.0, -0.97], [1.0], wav)[first - lo if first > 0 else 0:]   # the sample before: its state
    padded = np.pad(emphasised, (max(-first, 0), last - max(first, 0) - len(emphasised)))
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP][:stop - start]
    magnitude = np.abs(np.fft.rfft(frames * get_window("hann", N_FFT, fftbins=True), axis=1)).T
    decibels = 20.0 * np.log10(np.maximum(1e-5, mel_filterbank() @ magnitude)) - 20.0
    return np.clip(8.0 * (decibels + 100.0) / 100.0 - 4.0, -4.0, 4.0).astype(np.float32)


def mel_columns(num_frames: int) -> int:
    """Mel columns of a window of `num_frames` video frames, as the references cut them: 16 for Wav2Lip's 5
    frames, 52 for LatentSync's 16 (ceil(16 / 5 * 16))."""
    return -(-num_frames * 16 // 5)


def mel_start(frame: int, fps: int = FPS) -> int:
    """The first mel column of video frame `frame`: int(80 * frame / fps)."""
    return int(COLUMNS_PER_SECOND * frame / fps)


def mel_window(mel: np.ndarray, frame: int, num_frames: int) -> np.ndarray:
    """The (80, mel_columns(num_frames)) window that goes with frames frame .. frame + num_frames - 1."""
    start = mel_start(frame)
    window = mel[:, start:start + mel_columns(num_frames)]
    if window.shape[1] != mel_columns(num_frames):
        raise ValueError(f"frames {frame}..{frame + num_frames - 1} reach past the audio ({mel.shape[1]} columns)")
    return window


def mel_window_starts(n_frames: int, mel_columns: int, fps: int = FPS) -> list[int]:
    """The first column of each of `n_frames` frames' 16-column windows (Wav2Lip's generator input), as
    Wav2Lip's inference.py cuts them: int(80 i / fps), moved back to end at the mel's last column where it would
    reach past it. The reference stops at the first such window; here every frame asked for gets one, the
    frames past the audio the last window."""
    window = 16
    if mel_columns < window:
        raise ValueError(f"a mel of {mel_columns} columns is shorter than one {window}-column window")
    return [min(mel_start(frame, fps), mel_columns - window) for frame in range(n_frames)]
