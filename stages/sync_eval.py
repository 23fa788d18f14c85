"""`curate eval-sync`: LSE-D, LSE-C and the offset of any video, the way lip-sync papers evaluate samples.

The video is read at 25 fps (nearest frame) with its audio at 16 kHz mono, as the reference evaluator expects
it. Without --precropped, one face is tracked through the video with the face stage's tracker (dlib
landmarks) and cropped as the reference crops; with it, the frames are taken as the crops themselves (resized
to 224 x 224 if they are not), as the reference's own evaluator does for videos that are already face crops.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from faces.landmarks import get_backend
from faces.settings import FaceParams
from faces.tracker import FaceTracker, FrameView
from media import probe as probe_stage
from media.frames import to_ndarray
from media.timeline import AudioTrack, DecodedTimeline
from stages.sync_crops import SIZE, boxes_from_landmarks, crops
from stages.sync_score import SAMPLES_PER_FRAME, SyncResult, SyncScorer

FPS = 25
SAMPLE_RATE = 16000


@dataclass
class Evaluation:
    path: str
    frames: int
    result: SyncResult

    def as_dict(self) -> dict:
        return {"video": self.path, "frames": self.frames, "av_offset": self.result.offset,
                "lse_d": round(self.result.min_dist, 4), "lse_c": round(self.result.conf, 4),
                "windows": self.result.windows}


def _frames_at_25(path: str, video_index: int):
    """Yield (av frame) for each 25 fps slot of the video, nearest source frame, with its start time."""
    with av.open(path) as container:
        timeline = DecodedTimeline(container, container.streams[video_index], FPS, 1.0 / FPS)
        for _, frame in timeline.at_rate(FPS):
            yield frame, timeline.t0


def load(path: str, precropped: bool, face: FaceParams) -> tuple[np.ndarray, np.ndarray]:
    """224 x 224 BGR crops at 25 fps and the 16 kHz mono samples of a video."""
    facts = probe_stage.probe(path, min_duration_s=0.25)
    t0 = None
    if precropped:
        frames = []
        for frame, t0 in _frames_at_25(path, facts.video_index):
            bgr = to_ndarray(frame, "bgr24")
            frames.append(bgr if bgr.shape[:2] == (SIZE, SIZE) else cv2.resize(bgr, (SIZE, SIZE)))
        pictures = np.stack(frames)
    else:
        # first pass: follow the face; second pass: crop around its smoothed box (a video evaluated here is
        # short, and decoding it twice keeps memory to the crops)
        tracker = None
        landmarks = []
        for frame, t0 in _frames_at_25(path, facts.video_index):
            view = FrameView(frame, frame.rotation or 0)
            tracker = tracker or FaceTracker(get_backend(face.backend), face, view.size[0])
            record = tracker.step(view)
            landmarks.append(record.landmarks if record.present else np.full((68, 2), np.nan))
        landmarks = np.array(landmarks)
        present = ~np.isnan(landmarks[:, 0, 0])
        if present.mean() < 0.5:
            raise ValueError(f"a face is found in only {present.mean():.0%} of the frames")
        boxes = boxes_from_landmarks(landmarks, present)
        upright = (np.rot90(to_ndarray(f, "bgr24"), (f.rotation or 0) // 90) for f, _ in _frames_at_25(path, facts.video_index))
        pictures = crops([np.ascontiguousarray(p) for p in upright], boxes)
    audio = AudioTrack(path, facts.audio_index, SAMPLE_RATE, t0 or 0.0)
    audio.ensure(len(pictures) * SAMPLES_PER_FRAME)
    samples = audio.take_padded(0, min(audio.available, len(pictures) * SAMPLES_PER_FRAME))
    audio.close()
    return pictures, samples


def evaluate(paths: list[str], scorer: SyncScorer, precropped: bool, face: FaceParams) -> list[Evaluation]:
    out = []
    for path in paths:
        pictures, samples = load(path, precropped, face)
        out.append(Evaluation(str(Path(path)), len(pictures), scorer.score(pictures, samples)))
    return out
