"""`curate eval-sync`: LSE-D, LSE-C and the offset of any video, the way lip-sync papers evaluate samples.

The video is read at 25 fps (nearest frame) with its audio at 16 kHz mono, as the reference evaluator expects
it. Without --precropped, one face is tracked through the video with the face stage's tracker (dlib
landmarks) and cropped as the reference crops; with it, the frames are taken as the crops themselves (resized
to 224 x 224 if they are not), as the reference's own evaluator does for videos that are already face crops.

Beside SyncNet's figures, or alone when its weights are not there, it reports the weight-free speaking cue
(faces.speaking): how the tracked mouth's opening follows the speech's loudness, at the best lag within SyncNet's
offset range (`stages.sync.max_offset`), in 3 s windows. It needs the tracked landmarks, so precropped videos do not get it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from faces import speaking
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
    result: SyncResult | None               # None without SyncNet's weights
    cue: speaking.SpeakingCue | None        # None for precropped videos

    def as_dict(self) -> dict:
        out = {"video": self.path, "frames": self.frames}
        if self.result is not None:
            out.update(av_offset=self.result.offset, lse_d=round(self.result.min_dist, 4),
                       lse_c=round(self.result.conf, 4), windows=self.result.windows)
        if self.cue is not None:
            out.update(speaking_cue=round(self.cue.score, 4), speaking_lag=self.cue.lag,
                       speaking_windows=[round(float(v), 4) for v in self.cue.windows])
        return out


@dataclass
class Loaded:
    pictures: np.ndarray          # 224 x 224 BGR crops at 25 fps
    samples: np.ndarray           # 16 kHz mono int16
    openings: list                # the mouth's opening per frame, two ways (faces.speaking); empty when precropped


def _frames_at_25(path: str, video_index: int):
    """Yield (av frame) for each 25 fps slot of the video, nearest source frame, with its start time."""
    with av.open(path) as container:
        timeline = DecodedTimeline(container, container.streams[video_index], FPS, 1.0 / FPS)
        for _, frame in timeline.at_rate(FPS):
            yield frame, timeline.t0


def load(path: str, precropped: bool, face: FaceParams) -> Loaded:
    """224 x 224 BGR crops at 25 fps, the 16 kHz mono samples of a video, and the tracked mouth's opening."""
    facts = probe_stage.probe(path, min_duration_s=0.25)
    t0 = None
    openings = []
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
        landmarks, darkness = [], []
        for frame, t0 in _frames_at_25(path, facts.video_index):
            view = FrameView(frame, frame.rotation or 0)
            tracker = tracker or FaceTracker(get_backend(face.backend), face, view.size[0])
            record = tracker.step(view)
            landmarks.append(record.landmarks if record.present else np.full((68, 2), np.nan))
            darkness.append(speaking.mouth_darkness(view.full(1), record.landmarks[48:68]) if record.present
                            else np.nan)
        landmarks = np.array(landmarks)
        openings = [speaking.mouth_opening(landmarks), np.array(darkness)]
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
    return Loaded(pictures, samples, openings)


def speaking_cue(loaded: Loaded, max_lag: int) -> speaking.SpeakingCue | None:
    """The weight-free cue of a loaded video, at the best lag within +-max_lag frames."""
    if not loaded.openings:
        return None
    envelope = speaking.speech_envelope(loaded.samples, len(loaded.pictures), SAMPLES_PER_FRAME, SAMPLE_RATE)
    return speaking.speaking_cue(loaded.openings, envelope, max_lag)


def evaluate(paths: list[str], scorer: SyncScorer | None, precropped: bool, face: FaceParams,
             max_lag: int = 6) -> list[Evaluation]:
    """Each video's SyncNet figures (with a scorer) and weight-free speaking cue (unless precropped; its lag
    within +-max_lag frames, the sync stage's max_offset)."""
    out = []
    for path in paths:
        loaded = load(path, precropped, face)
        result = scorer.score(loaded.pictures, loaded.samples) if scorer is not None else None
        out.append(Evaluation(str(Path(path)), len(loaded.pictures), result, speaking_cue(loaded, max_lag)))
    return out
