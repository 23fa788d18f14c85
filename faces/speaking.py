"""Who is speaking, without any learnt weights: how closely a face's mouth follows the speech.

The cue is the classic active-speaker baseline: how open the mouth is, frame by frame, is correlated with the
loudness of the speech band (300-3000 Hz) of the audio, in windows of a few seconds, at the best lag within the
sync stage's offset range. The opening is measured twice and the two added (each as z-scores): the lips' gap
from the 68 landmarks, and how dark the inside of the aligned mouth is (an open mouth shows its dark interior).
Both signals lose what is slower than about 3 Hz first (a 9-frame moving mean taken off): syllables come at 3-8
per second, and a nod or a voice growing louder does not count. Curation uses it to choose the speaking face
among several when SyncNet's weights are absent, and as SyncNet's tie-breaker otherwise; `curate eval-sync`'s
weight-free measure is the same signal.

How it was chosen, and how well it does, is measured in docs/configuration.md ("The speaking face"): a cue for
choosing between faces over a whole clip, not a verdict on one window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

INNER_TOP, INNER_BOTTOM = [61, 62, 63], [67, 66, 65]
OUTER_TOP, OUTER_BOTTOM = [50, 51, 52], [58, 57, 56]
SPEECH_BAND_HZ = (300.0, 3000.0)


def mouth_opening(landmarks: np.ndarray) -> np.ndarray:
    """(T, 68, 2) landmarks -> (T,) lip gap (inner and outer, mean of three pairs each) over the distance
    between the eyes' centres, so that the face's size and distance do not matter; NaN where a frame has no
    face."""
    top = landmarks[:, INNER_TOP + OUTER_TOP]
    bottom = landmarks[:, INNER_BOTTOM + OUTER_BOTTOM]
    gap = np.linalg.norm(top - bottom, axis=2).mean(1)
    eyes = np.linalg.norm(landmarks[:, 36:42].mean(1) - landmarks[:, 42:48].mean(1), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return gap / eyes


def mouth_darkness(luma: np.ndarray, mouth: np.ndarray) -> float:
    """Minus the mean luma of the middle of the mouth (a box 0.6 x 0.4 of the mouth's width around the centre of
    its 20 landmarks, `mouth` in the aligned picture's pixels): higher when the mouth is open."""
    centre, width = mouth.mean(0), float(np.ptp(mouth[:, 0]))
    height, span = luma.shape
    x0, x1 = int(max(0, centre[0] - 0.3 * width)), int(min(span, centre[0] + 0.3 * width) + 1)
    y0, y1 = int(max(0, centre[1] - 0.2 * width)), int(min(height, centre[1] + 0.2 * width) + 1)
    if x1 <= x0 or y1 <= y0:
        return float("nan")
    return -float(luma[y0:y1, x0:x1].mean())


def speech_envelope(audio: np.ndarray, n_frames: int, samples_per_frame: int, sample_rate: int) -> np.ndarray:
    """(n_frames,) amplitude of the speech band in each video frame's samples (Hann-windowed spectrum)."""
    n = min(n_frames, audio.size // samples_per_frame)
    frames = audio[:n * samples_per_frame].astype(np.float32).reshape(n, samples_per_frame)
    spectrum = np.abs(np.fft.rfft(frames * np.hanning(samples_per_frame), axis=1)) ** 2
    hz = np.fft.rfftfreq(samples_per_frame, 1.0 / sample_rate)
    band = (hz >= SPEECH_BAND_HZ[0]) & (hz <= SPEECH_BAND_HZ[1])
    envelope = np.sqrt(spectrum[:, band].sum(1))
    return np.pad(envelope, (0, n_frames - n))


def _detrend(values: np.ndarray, width: int) -> np.ndarray:
    """`values` less their centred moving mean over `width` frames (edges padded with the end values)."""
    if values.size == 0:
        return values
    padded = np.pad(values, (width // 2, width - 1 - width // 2), mode="edge")
    return values - np.convolve(padded, np.ones(width) / width, mode="valid")


def _filled(values: np.ndarray) -> np.ndarray | None:
    """NaNs (frames without the face) filled by linear interpolation; None when nothing is left."""
    known = ~np.isnan(values)
    if known.sum() < 2:
        return None
    index = np.arange(values.size)
    return np.interp(index, index[known], values[known])


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    scale = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / scale) if scale > 0 else 0.0


@dataclass(frozen=True)
class SpeakingCue:
    score: float               # mean window correlation at the best lag (-1..1; 0 when nothing to compare)
    lag: int                   # frames; > 0: the sound comes before the lips (the sync stage's sign)
    windows: np.ndarray        # (W,) float32: each window's correlation at that lag


def speaking_cue(openings: list[np.ndarray], envelope: np.ndarray, max_lag: int, window: int = 75,
                 detrend: int = 9) -> SpeakingCue:
    """How well the mouth's opening follows the speech. `openings` are measures of it per frame (NaN where
    unknown; `mouth_opening`, `mouth_darkness`), each detrended and z-scored, then added. Windows of `window`
    frames, hop half a window; the lag (within +-max_lag) with the best mean correlation over them is reported."""
    n = min(min(len(values) for values in openings), envelope.size)
    parts = []
    for values in openings:
        filled = _filled(np.asarray(values[:n], np.float64))
        if filled is not None:
            flat = _detrend(filled, detrend)
            if flat.std() > 0:
                parts.append((flat - flat.mean()) / flat.std())
    if not parts or n < 2 * max_lag + 8:
        return SpeakingCue(0.0, 0, np.zeros(0, np.float32))
    motion = np.sum(parts, axis=0)
    sound = _detrend(envelope[:n].astype(np.float64), detrend)
    width = min(window, n - max_lag)
    best: SpeakingCue | None = None
    for lag in range(-max_lag, max_lag + 1):
        # lag > 0: the lips at frame t go with the sound at t - lag
        lips = motion[max(lag, 0):n + min(lag, 0)]
        heard = sound[max(-lag, 0):n - max(lag, 0)]
        starts = range(0, lips.size - width + 1, max(1, width // 2))
        values = np.array([_correlation(lips[s:s + width], heard[s:s + width]) for s in starts], np.float32)
        cue = SpeakingCue(float(values.mean()) if values.size else 0.0, lag, values)
        if best is None or cue.score > best.score:
            best = cue
    return best
