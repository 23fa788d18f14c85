"""One face followed through the video with the face stage's tracker, and its landmarks smoothed the same way.

Frames go in as they are decoded and come out `lag` frames later (the smoothing window's reach), each with its
smoothed 68 landmarks, or None where the tracker did not find the face in that frame: such a frame is written
unchanged. Only the window's frames are held.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from faces import align as face_align
from faces.landmarks import FaceBox, LandmarkBackend
from faces.settings import FaceParams
from faces.tracker import FaceFrame, FaceTracker, FrameView
from lipsync.media import LipsyncError


@dataclass
class Tracked:
    index: int
    view: FrameView
    landmarks: np.ndarray | None    # smoothed, upright frame pixels; None: the face is not in this frame
    found: FaceFrame                # the tracker's own: unsmoothed landmarks, the box its landmark model was given


class FacePicker:
    """Which face to follow, chosen at the first detection that finds any: the largest, or the N-th from the
    left (`--face N`, from 1)."""

    def __init__(self, number: int | None):
        self.number = number
        self.found: list[FaceBox] = []   # the faces of that first detection, left to right

    def __call__(self, boxes: list[FaceBox]) -> FaceBox:
        self.found = sorted(boxes, key=lambda box: box.centre[0])
        if self.number is None:
            return boxes[0]
        if self.number > len(self.found):
            raise LipsyncError(f"--face {self.number}: the first frame with faces has {len(self.found)} "
                               f"(numbered 1 to {len(self.found)} from the left)")
        return self.found[self.number - 1]


class FaceFollower:
    def __init__(self, params: FaceParams, backend: LandmarkBackend, frame_width: int, face: int | None = None):
        self.params = params
        self.picker = FacePicker(face)
        self.tracker = FaceTracker(backend, params, frame_width, pick=self.picker)
        sigma = params.smooth_sigma_frames
        self.lag = int(round(3 * sigma)) if sigma > 0 else 0
        self.held: dict[int, tuple[FrameView, FaceFrame]] = {}
        self.pushed = 0
        self.out = 0
        self.found = 0

    def push(self, index: int, view: FrameView) -> list[Tracked]:
        record = self.tracker.step(view)
        self.found += record.present
        self.held[index] = (view, record)
        self.pushed = index + 1
        return self._ready(self.pushed - self.lag)

    def finish(self) -> list[Tracked]:
        return self._ready(self.pushed)

    def _ready(self, upto: int) -> list[Tracked]:
        out = []
        while self.out < upto:
            index = self.out
            view, record = self.held[index]
            landmarks = None
            if record.present:
                nearby = {i: self.held[i][1].landmarks for i in range(index - self.lag, index + self.lag + 1)
                          if i in self.held and self.held[i][1].present}
                landmarks = face_align.smoothed(nearby, index, self.params.smooth_sigma_frames, 0)
            out.append(Tracked(index, view, landmarks, record))
            self.out += 1
            self.held.pop(index - self.lag, None)   # its last use was as the oldest neighbour of this frame
        return out
