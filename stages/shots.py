"""Shot detection stage: PySceneDetect's AdaptiveDetector, fed frame by frame during the single pass.

Frames arrive already resampled to the output rate and downscaled (the detector only needs a small
picture), so shot boundaries are frame indices of the output timeline. The detector reports a cut a few
frames late (`lag`); the clip splitter treats frames as settled only once the detector has looked past them.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
from scenedetect import AdaptiveDetector, FrameTimecode

from stages.settings import ShotParams

STAGE = "shots"


class ShotDetector:
    def __init__(self, params: ShotParams, fps: int):
        self._fps = Fraction(fps)
        self._detector = AdaptiveDetector(
            adaptive_threshold=params.adaptive_threshold,
            min_scene_len=float(params.min_scene_len_s),
            window_width=params.window_width,
            min_content_val=params.min_content_val,
            luma_only=params.luma_only,
        )
        self.lag = self._detector.event_buffer_length
        self.cuts: list[int] = []
        self._last = -1

    def push(self, index: int, bgr: np.ndarray) -> list[int]:
        """Feed output frame `index` (BGR, small); returns the cuts found so far that were not yet reported."""
        self._last = index
        found = self._detector.process_frame(FrameTimecode(index, fps=self._fps), bgr)
        return self._record(found)

    def finish(self) -> list[int]:
        if self._last < 0:
            return []
        return self._record(self._detector.post_process(FrameTimecode(self._last, fps=self._fps)))

    def _record(self, found) -> list[int]:
        new = [tc.frame_num for tc in found]
        new = [c for c in new if c > 0 and (not self.cuts or c > self.cuts[-1])]
        self.cuts.extend(new)
        return new


class KnownShots:
    """Replays cuts recorded by an earlier run with the same settings, instead of detecting them again."""

    lag = 0

    def __init__(self, cuts: list[int]):
        self.cuts = list(cuts)
        self._pending = sorted(cuts)

    def push(self, index: int, bgr: np.ndarray | None) -> list[int]:
        out = []
        while self._pending and self._pending[0] <= index:
            out.append(self._pending.pop(0))
        return out

    def finish(self) -> list[int]:
        out, self._pending = self._pending, []
        return out
