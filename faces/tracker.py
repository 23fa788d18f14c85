"""Following one face through a shot: the tracker curation and inference share.

A detector runs on a scaled-down picture at the start of a shot, every `detect_every` frames, and whenever the
tracked landmarks jump or lose their shape; in between, the landmark model is run on a box predicted from the
previous frame's landmarks, which costs a fraction of a detection. `FrameView` gives the upright pictures of
one decoded frame that the models need, and warps its planes onto the aligned template.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import av
import cv2
import numpy as np

from faces import align as face_align
from faces.landmarks import FaceBox, LandmarkBackend
from faces.settings import FaceParams
from media.frames import reformat, to_ndarray

GREY_Y, GREY_UV = 125, 128  # RGB (127, 127, 127) in limited-range YUV, LatentSync's border colour
_FULL_RANGE = np.clip((np.arange(256) - 16) * 255.0 / 219.0, 0, 255).astype(np.uint8)


class FrameView:
    """Upright pictures of one decoded frame, made on demand and kept while the frame is."""

    def __init__(self, frame: av.VideoFrame, rotation: int):
        self.frame = frame
        self.rotation = rotation % 360
        self.turns = self.rotation // 90
        stored = (frame.width, frame.height)
        self.size = stored[::-1] if self.turns % 2 else stored  # upright (w, h)
        self._cache: dict = {}

    def full(self, channels: int) -> np.ndarray:
        """The whole picture at full resolution: luma as stored (a view, no copy) or RGB."""
        key = ("full", channels)
        if key not in self._cache:
            if channels == 1:
                plane = self.frame.planes[0]
                picture = np.frombuffer(plane, np.uint8).reshape(self.frame.height, plane.line_size)[:, :self.frame.width]
            else:
                picture = to_ndarray(self.frame, "rgb24")
            self._cache[key] = np.rot90(picture, self.turns) if self.turns else picture
        return self._cache[key]

    def around(self, channels: int, box: FaceBox) -> tuple[np.ndarray, np.ndarray]:
        """The neighbourhood of `box` (a face size of margin), full resolution, ready for a landmark
        model (grey in full range), and the offset of its top-left corner."""
        picture = self.full(channels)
        height, width = picture.shape[:2]
        pad = box.size
        x0, y0 = int(max(0, box.x0 - pad)), int(max(0, box.y0 - pad))
        x1, y1 = int(min(width, box.x1 + pad)), int(min(height, box.y1 + pad))
        crop = np.ascontiguousarray(picture[y0:y1, x0:x1])
        if channels == 1 and self.frame.color_range != 2:  # limited-range luma: stretch as the models expect
            crop = cv2.LUT(crop, _FULL_RANGE)
        return crop, np.array([x0, y0], dtype=np.float32)

    def scaled(self, channels: int, scale: float) -> np.ndarray:
        """The picture scaled by `scale` (<= 1), grey or RGB, for a detector."""
        if scale >= 1:
            return self.full(channels)
        key = ("scaled", channels, round(scale, 4))
        if key not in self._cache:
            width = max(16, round(self.frame.width * scale / 2) * 2)
            height = max(16, round(self.frame.height * scale / 2) * 2)
            picture = reformat(self.frame, width=width, height=height, format="gray" if channels == 1 else "rgb24",
                               interpolation="AREA").to_ndarray()
            self._cache[key] = np.ascontiguousarray(np.rot90(picture, self.turns)) if self.turns else picture
        return self._cache[key]

    def faces(self, backend: LandmarkBackend, scale: float) -> list[FaceBox]:
        """The detector's boxes (largest first, in upright full-resolution pixels) at `scale`, found once per
        frame and scale: every tracker following a face in this frame shares them."""
        key = ("boxes", scale)
        if key not in self._cache:
            picture = self.scaled(backend.channels, scale)
            factor = self.size[0] / picture.shape[1]
            self._cache[key] = [box.scaled(factor) for box in backend.detect(picture)]
            self._cache["found"] = self._cache[key] if self._cache[key] else self._cache.get("found")
        return self._cache[key]

    def found(self) -> list[FaceBox] | None:
        """The boxes of a detection already run on this frame that found faces (None if none has)."""
        return self._cache.get("found")

    def warp(self, matrix_upright: np.ndarray, size: int) -> av.VideoFrame:
        """The aligned picture: `matrix_upright` maps upright pixels to the size x size output."""
        stored_to_upright = face_align.rotation_matrix(self.rotation, self.frame.width, self.frame.height)
        matrix = (np.vstack([matrix_upright, [0, 0, 1]]) @ stored_to_upright)[:2]
        planes = []
        for index, plane in enumerate(self.frame.planes[:3]):
            pixels = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, :plane.width]
            if index == 0:
                planes.append(face_align.warp_plane(pixels, matrix, (size, size), GREY_Y))
            else:  # chroma at half resolution, samples centred between luma samples
                linear = matrix[:, :2]
                offset = (linear @ np.array([0.5, 0.5]) + matrix[:, 2] - 0.5) / 2
                chroma = np.hstack([linear, offset[:, None]])
                planes.append(face_align.warp_plane(pixels, chroma, (size // 2, size // 2), GREY_UV))
        stacked = np.concatenate([p.reshape(-1) for p in planes]).reshape(size * 3 // 2, size)
        return av.VideoFrame.from_ndarray(stacked, format="yuv420p")


@dataclass
class FaceFrame:
    """What tracking found in one frame."""

    landmarks: np.ndarray | None = None   # (68, 2) upright source pixels
    box: FaceBox | None = None            # the box the landmark model was given
    detected: bool = False                # a detection pass ran on this frame
    faces: int = 0                        # prominent faces that pass found
    switched: bool = False                # the tracked face was replaced by another one here

    anchors: np.ndarray | None = None     # the three alignment points, from the landmarks

    def __post_init__(self):
        if self.landmarks is not None and self.anchors is None:
            self.anchors = face_align.anchors(self.landmarks)

    @property
    def present(self) -> bool:
        return self.landmarks is not None

    @property
    def size(self) -> float:
        """Face width in source pixels: the horizontal extent of the 68 points."""
        return float(np.ptp(self.landmarks[:, 0])) if self.landmarks is not None else float("nan")


def _shape_change(a: np.ndarray, b: np.ndarray) -> float:
    """RMS distance between two shapes after the best similarity fit, relative to the face's size."""
    matrix = face_align.fit_similarity(a, b)
    moved = a @ matrix[:, :2].T + matrix[:, 2]
    return float(np.sqrt(((moved - b) ** 2).sum(1).mean()) / max(np.ptp(b[:, 0]), 1.0))


class FaceTracker:
    """Detect, then follow one face from frame to frame through a shot."""

    def __init__(self, backend: LandmarkBackend, params: FaceParams, frame_width: int,
                 pick: Callable[[list[FaceBox]], FaceBox | None] | None = None, searches: bool = True):
        """`pick` chooses the face to follow among a first detection's boxes (largest first); by default the
        largest. A tracker that `searches` runs the detector itself to find a face it does not have; one that
        does not (a second face's tracker) waits for a frame another tracker has run it on, and costs nothing
        until then."""
        self.backend = backend
        self.params = params
        self.frame_width = frame_width
        self.pick = pick
        self.searches = searches
        self.detections = 0
        self.reset()

    def reset(self) -> None:
        """Forget the face: the next frame starts with a detection (a new shot)."""
        self.previous: FaceFrame | None = None
        self.last_seen: FaceFrame | None = None  # the face as last found in this shot, kept across gaps
        self.since_detect = 0
        self.since_search = 0
        self._box_offset = np.zeros(2)   # detector box centre - landmark centre, in face widths
        self._box_ratio = 1.0            # detector box size / face width

    def step(self, view: FrameView) -> FaceFrame:
        params, previous = self.params, self.previous
        tracking = previous is not None and previous.present
        if not tracking and not self.searches:
            boxes = view.found()
            found = self._follow(view, boxes, None) if boxes else FaceFrame()
        elif not tracking:
            self.since_search += 1
            if self.previous is not None and self.since_search < params.search_every:
                self.previous = FaceFrame()
                return self.previous
            found = self._detect(view, None)
        elif not params.track or self.since_detect + 1 >= params.detect_every:
            found = self._detect(view, previous)
        else:
            self.since_detect += 1
            box = self._box_from(previous.landmarks)
            landmarks = self._landmarks(view, box)
            if landmarks is not None and self._plausible(previous.landmarks, landmarks):
                found = FaceFrame(landmarks=landmarks, box=box)
            else:
                found = self._detect(view, previous)
        self.previous = found
        if found.present:
            self.last_seen = found
        return found

    # -- detection ------------------------------------------------------------------------------------
    def _detect(self, view: FrameView, previous: FaceFrame | None) -> FaceFrame:
        self.detections += 1
        self.since_detect = 0
        self.since_search = 0
        boxes = []
        for scale in self._scales(previous):
            boxes = view.faces(self.backend, scale)
            if boxes:
                break
        return self._follow(view, boxes, previous)

    def _follow(self, view: FrameView, boxes: list[FaceBox], previous: FaceFrame | None) -> FaceFrame:
        """The face to follow among a detection's `boxes`, and its landmarks."""
        if not boxes:
            return FaceFrame(detected=True)
        largest = boxes[0].size
        prominent = [box for box in boxes if box.size >= self.params.prominent_ratio * largest]
        chosen, switched = prominent[0], False
        known = previous if previous is not None and previous.box is not None else self.last_seen
        if known is None and self.pick is not None:
            chosen = self.pick(boxes)
            if chosen is None:
                return FaceFrame(detected=True, faces=len(prominent))
        if known is not None and known.box is not None:
            # keep following the same face when it is still there; a face found elsewhere after the
            # tracked one was lost is another face: the track is lost
            nearest = min(boxes, key=lambda box: np.linalg.norm(box.centre - known.box.centre))
            if np.linalg.norm(nearest.centre - known.box.centre) < 0.5 * known.box.size:
                chosen = nearest
            else:
                switched = True
        landmarks = self._landmarks(view, chosen)
        if landmarks is not None:
            width = max(float(np.ptp(landmarks[:, 0])), 1.0)
            self._box_offset = (chosen.centre - landmarks.mean(0)) / width
            self._box_ratio = chosen.size / width
        return FaceFrame(landmarks=landmarks, box=chosen, detected=True, faces=len(prominent), switched=switched)

    def _landmarks(self, view: FrameView, box: FaceBox) -> np.ndarray | None:
        crop, offset = view.around(self.backend.channels, box)
        if min(crop.shape[:2]) < 8:
            return None
        local = FaceBox(box.x0 - offset[0], box.y0 - offset[1], box.x1 - offset[0], box.y1 - offset[1])
        points = self.backend.landmarks(crop, local)
        return None if points is None else points + offset

    def _scales(self, previous: FaceFrame | None) -> list[float]:
        """Detector picture scales to try, smallest (cheapest) first."""
        if previous is not None and previous.box is not None:
            # the tracked face at about 140 px: a second face half its size is still found
            return [min(1.0, 140.0 / max(previous.box.size, 1.0))]
        search = [min(1.0, 384.0 / self.frame_width), min(1.0, 80.0 / self.params.min_face)]
        return sorted(set(search))

    # -- tracking -------------------------------------------------------------------------------------
    def _box_from(self, landmarks: np.ndarray) -> FaceBox:
        """The box a detector would give for this face, from its landmarks (relation learnt at detection)."""
        width = max(float(np.ptp(landmarks[:, 0])), 1.0)
        centre = landmarks.mean(0) + self._box_offset * width
        half = self._box_ratio * width / 2
        return FaceBox(centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half)

    def _plausible(self, before: np.ndarray, after: np.ndarray) -> bool:
        """False when the new landmarks jumped or lost the face's shape: time to detect again."""
        size_before, size_after = np.ptp(before[:, 0]), np.ptp(after[:, 0])
        if size_before <= 0 or not 0.8 <= size_after / size_before <= 1.25:
            return False
        if np.linalg.norm(after.mean(0) - before.mean(0)) > 0.3 * size_before:
            return False
        return _shape_change(after, before) <= self.params.shape_tolerance
