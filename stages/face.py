"""Face stage: track one face through each shot and warp every frame onto the LatentSync template.

Per frame, in the single pass:
- detect, then track (faces.tracker): a detector runs on a scaled-down picture at the start of a shot, every
  `detect_every` frames, and whenever the tracked landmarks jump or lose their shape; in between, the
  landmark model is run on a box predicted from the previous frame's landmarks, which costs a fraction of
  a detection;
- the three anchor points (brow centres, nose centre) are smoothed over a centred window that never
  crosses a shot cut, and the frame is warped from its full-resolution planes straight to the aligned
  size, bicubic, grey outside the picture.

The stage holds a few full-resolution frames (the smoothing window and the gap it may fill, plus the shot
detector's lag); it hands back aligned yuv420p frames in order. At the end of a clip it judges the clip: too
few frames with the face, several prominent faces, a track that was lost (the face replaced by another, or
missing for longer than a gap can be filled), a face smaller than the minimum, a mouth outside the picture in
too many frames, a head turned too far (yaw or pitch) in too many frames, a head that turns or moves too fast, or
a blurry mouth reject it, in that order. Per frame it keeps the head pose (faces.pose, from the landmarks), the
aligned mouth's sharpness and its darkness (faces.speaking: how open it looks) beside the landmarks.

One stage follows one face. With several faces in a shot (`several_faces: speaker`), the source pass runs one
stage per face: rank 0 follows the largest, and rank k, started at the first detection that found k + 1
prominent faces, the k-th largest; they share each frame's detections (FrameView.faces).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import av
import numpy as np

from faces import align as face_align, pose as face_pose, speaking
from faces.landmarks import LandmarkBackend
from faces.settings import FaceParams
from faces.tracker import FaceFrame, FaceTracker, FrameView
from manifests.rejected import Rejected

STAGE = "face"


@dataclass
class _Held:
    view: FrameView | None
    record: FaceFrame
    segment: int
    matrix: np.ndarray | None = None
    sharpness: float = float("nan")
    darkness: float = float("nan")


@dataclass
class ClipFaces:
    """The face stage's verdict on one clip and what it stores beside it."""

    rejected: Rejected | None
    columns: dict
    arrays: dict = field(default_factory=dict)
    openings: list = field(default_factory=list)   # the mouth's opening per frame, two ways (faces.speaking)


class FaceStage:
    """Streams frames in, hands aligned frames out `lag` frames later, and judges clips."""

    def __init__(self, params: FaceParams, backend: LandmarkBackend, rotation: int, frame_width: int, shot_lag: int,
                 fps: float = 25.0, rank: int = 0, first: int = 0):
        """`rank` 0 follows the largest face of each shot, searching for it; rank k > 0 the k-th largest of the
        shot's first detection that finds it, never running a search of its own (see FaceTracker). Frames
        before `first` are not this stage's (a face followed from the middle of a shot on)."""
        self.params = params
        self.backend = backend
        self.rotation = rotation
        self.size = params.resolution
        self.sigma = params.smooth_sigma_frames
        self.radius = int(round(3 * self.sigma)) if self.sigma > 0 else 0
        self.max_gap = params.max_gap_frames
        self.lookahead = max(self.radius, self.max_gap)
        self.lag = self.lookahead + shot_lag
        self.rank = rank
        self.tracker = FaceTracker(backend, params, frame_width, searches=rank == 0,
                                   pick=(lambda boxes: _nth(boxes, rank, params.prominent_ratio)) if rank else None)
        self.held: dict[int, _Held] = {}
        self.segment = 0
        self.first = first
        self.pushed = first
        self.finalized = first
        self.frame_size: tuple[int, int] | None = None
        self.fps = fps

    def push(self, index: int, frame: av.VideoFrame, view: FrameView | None = None) -> None:
        """Track frame `index`; `view`, when given, is the frame's view that the other faces' stages share."""
        view = view or FrameView(frame, self.rotation)
        self.frame_size = self.frame_size or tuple(view.size)
        self.held[index] = _Held(view, self.tracker.step(view), self.segment)
        self.pushed = index + 1

    def cut(self, at: int) -> list[tuple[int, av.VideoFrame]]:
        """A shot starts at `at`: frames from there were tracked with the old shot's face, so track them again.

        The frames before the cut no longer wait for anything (their window ends at the cut), so they are
        finalized now and returned: the shot that just ended can be cut into clips at once.
        """
        self.segment += 1
        self.tracker.reset()
        for index in range(max(at, self.first), self.pushed):
            held = self.held[index]
            assert held.view is not None, "a cut is reported before the frames after it are finalized"
            held.segment = self.segment
            held.record = self.tracker.step(held.view)
        return [self._finalize(index) for index in range(self.finalized, at)]

    def crowded_since(self, faces: int = 2) -> int | None:
        """The first frame of the current shot, not yet finalized, where a detection found at least `faces`
        prominent faces (None if none did): where another face's stage can start."""
        for index in range(self.finalized, self.pushed):
            held = self.held[index]
            if held.segment == self.segment and held.record.detected and held.record.faces >= faces:
                return index
        return None

    def view(self, index: int) -> FrameView | None:
        held = self.held.get(index)
        return held.view if held is not None else None

    def covers(self, start: int, end: int) -> bool:
        """Frames [start, end) are all this stage's and finalized: it can judge them as a clip."""
        return self.first <= start and end <= self.finalized

    def ready(self, known_upto: int) -> list[tuple[int, av.VideoFrame]]:
        """Aligned frames whose smoothing window is tracked and free of unreported cuts."""
        out = []
        while self.finalized < self.pushed and self.finalized + self.lookahead < known_upto:
            out.append(self._finalize(self.finalized))
        return out

    def finish(self) -> list[tuple[int, av.VideoFrame]]:
        return [self._finalize(index) for index in range(self.finalized, self.pushed)]

    def release(self, before: int) -> None:
        """Forget per-frame records no clip and no smoothing window will ask for again."""
        limit = min(before, self.finalized - self.lookahead - 1)
        for index in [i for i in self.held if i < limit]:
            del self.held[index]

    # -- per frame ------------------------------------------------------------------------------------
    def _finalize(self, index: int) -> tuple[int, av.VideoFrame]:
        held = self.held[index]
        anchors = self._anchors(index)
        if anchors is None:  # no face to go by yet in this shot: centre the picture
            width, height = held.view.size
            scale = self.size / min(width, height)
            matrix = np.array([[scale, 0, (self.size - scale * width) / 2], [0, scale, (self.size - scale * height) / 2]])
        else:
            matrix = face_align.align_matrix(anchors, self.size)
        held.matrix = matrix
        picture = held.view.warp(matrix, self.size)
        if held.record.present:
            mouth = held.record.landmarks[face_pose.MOUTH] @ matrix[:, :2].T + matrix[:, 2]
            plane = picture.planes[0]
            luma = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, :plane.width]
            held.sharpness = face_pose.mouth_sharpness(luma, mouth)
            held.darkness = speaking.mouth_darkness(luma, mouth)
        held.view = None  # the full-resolution frame is no longer needed
        self.finalized = index + 1
        return index, picture

    def _anchors(self, index: int) -> np.ndarray | None:
        """Smoothed anchors of frame `index` (a Gaussian-weighted mean over the frames of its shot within
        the window); for a frame without the face, interpolated from the nearest frames with it within the
        gap a clip may have, else the previous frame's."""
        segment = self.held[index].segment
        nearby = {}
        for i in range(index - self.lookahead, index + self.lookahead + 1):
            held = self.held.get(i)
            if held is not None and held.segment == segment and held.record.present:
                nearby[i] = held.record.anchors
        found = face_align.smoothed(nearby, index, self.sigma, self.max_gap)
        if found is not None:
            return found
        previous = self.held.get(index - 1)
        if previous is not None and previous.segment == segment and previous.record.present:
            return previous.record.anchors
        return None

    # -- per clip -------------------------------------------------------------------------------------
    def judge(self, start: int, end: int) -> ClipFaces:
        """Verdict and stored arrays for frames [start, end), all finalized."""
        params = self.params
        records = [self.held[i].record for i in range(start, end)]
        matrices = np.array([self.held[i].matrix for i in range(start, end)])
        present = np.array([r.present for r in records])
        rate = float(present.mean())
        sizes = np.array([r.size for r in records if r.present])
        size = float(np.median(sizes)) if sizes.size else 0.0
        passes = [r for r in records if r.detected]
        crowded = sum(1 for r in passes if r.faces > 1)
        longest_gap = _longest_run(~present)
        motion = self._motion(start, end, records, present)
        columns = {
            "face_backend": self.backend.name,
            "face_detection_rate": round(rate, 4),
            "face_size_px": round(size, 1),
            "face_jitter_px": round(face_align.jitter_px(matrices, self.size), 4),
            "face_max_faces": max((r.faces for r in passes), default=0),
            "aligned_size": self.size,
            **motion["columns"],
        }
        rejected = None
        if rate < params.min_detection_rate:
            rejected = Rejected(STAGE, "no_face", f"the face is found in {rate:.0%} of the frames, "
                                f"fewer than {params.min_detection_rate:.0%}")
        elif params.several_faces == "reject" and passes and crowded / len(passes) > params.max_multi_face_share:
            rejected = Rejected(STAGE, "several_faces", f"{crowded} of {len(passes)} detection passes found more "
                                f"than one prominent face")
        elif any(r.switched for r in records) or longest_gap > self.max_gap:
            why = "the tracked face was replaced by another" if any(r.switched for r in records) else \
                f"the face is missing for {longest_gap} frames in a row"
            rejected = Rejected(STAGE, "track_lost", why)
        elif size < params.min_face:
            rejected = Rejected(STAGE, "face_too_small", f"the face is {size:.0f} px wide (median), "
                                f"smaller than {params.min_face} px")
        else:
            rejected = self._judge_motion(columns)
        arrays = {}
        source = np.array([r.landmarks if r.present else np.full((68, 2), np.nan) for r in records], np.float32)
        aligned = np.einsum("tij,tkj->tki", matrices[:, :, :2], source) + matrices[:, None, :, 2]
        darkness = np.array([self.held[i].darkness for i in range(start, end)], np.float32)
        openings = [speaking.mouth_opening(aligned), darkness] if present.any() else []
        if rejected is None:
            arrays = {"landmarks_source": source, "landmarks_aligned": aligned.astype(np.float32),
                      "matrices": matrices.astype(np.float32), "present": present,
                      "pose": motion["pose"], "mouth_sharpness": motion["sharpness"],
                      "mouth_darkness": darkness}
        return ClipFaces(rejected, columns, arrays, openings)


    def _motion(self, start: int, end: int, records: list[FaceFrame], present: np.ndarray) -> dict:
        """Per-frame head pose (yaw, pitch, roll, NaN without the face) and mouth sharpness, and the clip's
        figures of them: median |yaw| and |pitch|, the share of frames past the pose limits or with the mouth
        outside the picture, the 95th percentile of the turn (deg/s) and move (face widths/s) speeds."""
        params, count = self.params, len(records)
        width, height = self.frame_size or (1, 1)
        pose = np.full((count, 3), np.nan)
        centres = np.full((count, 2), np.nan)
        widths = np.full(count, np.nan)
        outside = np.zeros(count, bool)
        for k, record in enumerate(records):
            if record.present:
                points = record.landmarks
                pose[k] = face_pose.head_pose(points, (width, height))
                centres[k] = points.mean(0)
                widths[k] = max(float(np.ptp(points[:, 0])), 1.0)
                mouth = points[face_pose.MOUTH]
                outside[k] = bool((mouth < 0).any() or (mouth[:, 0] >= width).any() or (mouth[:, 1] >= height).any())
        sharpness = np.array([self.held[i].sharpness for i in range(start, end)])
        found = present & ~np.isnan(pose[:, 0])
        off = found & ((np.abs(pose[:, 0]) > params.max_yaw_deg) | (np.abs(pose[:, 1]) > params.max_pitch_deg))
        span = 5   # speeds over 0.2 s, which the landmarks' frame-to-frame noise does not dominate
        turn = move = np.array([])
        if count > 2 * span and found.any():   # a moving median over `span` frames first: the landmarks' noise
            steady, middle = _moving_median(pose[:, :2], span), _moving_median(centres, span)
            turn = np.abs(steady[span:] - steady[:-span]).max(1) * self.fps / span
            move = np.linalg.norm(middle[span:] - middle[:-span], axis=1) / np.nanmedian(widths) * self.fps / span
        columns = {
            "face_yaw_deg": _round(np.nanmedian(np.abs(pose[:, 0])) if found.any() else np.nan, 2),
            "face_pitch_deg": _round(np.nanmedian(np.abs(pose[:, 1])) if found.any() else np.nan, 2),
            "face_off_pose_share": round(float(off.sum() / max(found.sum(), 1)), 4),
            "face_mouth_outside_share": round(float(outside.sum() / max(present.sum(), 1)), 4),
            "face_turn_deg_s": _round(_p95(turn), 2),
            "face_move_widths_s": _round(_p95(move), 4),
            "face_mouth_sharpness": _round(np.nanmedian(sharpness) if (~np.isnan(sharpness)).any() else np.nan, 2),
        }
        return {"columns": columns, "pose": pose.astype(np.float32), "sharpness": sharpness.astype(np.float32)}

    def _judge_motion(self, columns: dict) -> Rejected | None:
        params = self.params
        if columns["face_mouth_outside_share"] > params.max_mouth_outside_share:
            return Rejected(STAGE, "mouth_outside", f"the mouth is outside the picture in "
                            f"{columns['face_mouth_outside_share']:.0%} of the frames with the face, more than "
                            f"{params.max_mouth_outside_share:.0%}")
        if columns["face_off_pose_share"] > params.max_off_pose_share:
            return Rejected(STAGE, "off_pose", f"the head is turned past {params.max_yaw_deg:g} deg (yaw) or "
                            f"{params.max_pitch_deg:g} deg (pitch) in {columns['face_off_pose_share']:.0%} of the "
                            f"frames, more than {params.max_off_pose_share:.0%} (median |yaw| "
                            f"{columns['face_yaw_deg']:.0f}, |pitch| {columns['face_pitch_deg']:.0f})")
        if (columns["face_turn_deg_s"] or 0) > params.max_turn_deg_s:
            return Rejected(STAGE, "fast_motion", f"the head turns at {columns['face_turn_deg_s']:.0f} deg/s "
                            f"(95th percentile), faster than {params.max_turn_deg_s:g}")
        if (columns["face_move_widths_s"] or 0) > params.max_move_widths_s:
            return Rejected(STAGE, "fast_motion", f"the head moves {columns['face_move_widths_s']:.2f} face "
                            f"widths/s (95th percentile), faster than {params.max_move_widths_s:g}")
        sharpness = columns.get("face_mouth_sharpness")
        if sharpness is not None and sharpness < params.min_mouth_sharpness:
            return Rejected(STAGE, "blurry_mouth", f"the mouth's sharpness (variance of the Laplacian, median) is "
                            f"{sharpness:.1f}, below {params.min_mouth_sharpness:g}")
        return None


def _nth(boxes: list, rank: int, prominent_ratio: float):
    """The `rank`-th of a detection's prominent boxes (largest first), None when it found fewer of them."""
    prominent = [box for box in boxes if box.size >= prominent_ratio * boxes[0].size]
    return prominent[rank] if rank < len(prominent) else None


def _moving_median(values: np.ndarray, width: int) -> np.ndarray:
    """Median over each run of `width` rows of (n, k) values, NaN rows left out (n - width + 1 rows)."""
    windows = np.lib.stride_tricks.sliding_window_view(values, width, axis=0)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # an all-NaN window is NaN
        return np.nanmedian(windows, axis=-1)


def _p95(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(np.percentile(values, 95)) if values.size else float("nan")


def _round(value: float, digits: int) -> float | None:
    return None if value is None or np.isnan(value) else round(float(value), digits)


def _longest_run(flags: np.ndarray) -> int:
    best = run = 0
    for flag in flags:
        run = run + 1 if flag else 0
        best = max(best, run)
    return best
