"""Sync stage: SyncNet on each aligned clip; the audio is shifted by the measured offset, or the clip dropped.

It works on clips the source pass wrote, in a Ray actor pool (SyncNet loaded once per actor, windows of
several clips batched together, on a GPU when the pool is given one). The lip crops come from the face
stage's landmarks stored beside the clip, so nothing is detected twice and no frame or sound goes through a
lossy round trip: frames are decoded from the clip once, and the audio is the clip's lossless samples.

Sign convention: offset k > 0 means the sound comes k frames (40 ms each at 25 fps) before the lips.
The corrected clip plays sample j of its audio at the time the source played sample j - k * 640, i.e. the
audio is delayed by k frames; k < 0 advances it. The samples come from the audio context the source pass
stored around the clip, so the clip keeps its length and no silence is invented. The shift is always made
from that stored original, never from the clip's current audio, so scoring a clip again (new settings, a
rerun after a crash) cannot shift it twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from manifests.files import write_arrays, write_atomically
from manifests.rejected import Rejected
from media.encode import remux_with_audio
from media.frames import FFmpegError, all_frames
from stages.settings import SyncParams
from stages.sync_crops import boxes_from_landmarks, crops
from stages.sync_score import SAMPLES_PER_FRAME, SyncResult, SyncScorer

STAGE = "sync"
# Several faces of one span (stages.face.several_faces: speaker) come as clips of one speaker group, scored
# together as syncnet_python scores each face track: the face with the best confidence is the speaker (the
# speaking cue breaks near ties), and the others are dropped as not_the_speaker before any audio is shifted.


@dataclass(frozen=True)
class SyncJob:
    clip_id: str
    video: str          # absolute paths of the clip and its landmarks
    landmarks: str
    speaker_group: str | None = None   # the clips of one span's faces share it: the face that speaks is kept
    speaker_cue: float | None = None   # the weight-free speaking cue (faces.speaking), the tie-breaker


def shifted_audio(context: np.ndarray, offset: int, samples: int, margin: int) -> np.ndarray:
    """The clip's audio delayed by `offset` frames, from the stored context (margin samples each side)."""
    start = margin - offset * SAMPLES_PER_FRAME
    if not 0 <= start <= len(context) - samples:
        raise ValueError(f"an offset of {offset} frames reaches beyond the stored audio context")
    return context[start:start + samples]


def rewrite_audio(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """Replace a clip's audio, keeping its video packets untouched (no re-encode), atomically."""
    write_atomically(path, lambda target: remux_with_audio(path, target, audio, sample_rate))


class SyncStage:
    def __init__(self, params: SyncParams, scorer: SyncScorer):
        self.params = params
        self.scorer = scorer

    def process(self, jobs: list[SyncJob]) -> list[dict]:
        """Score `jobs` together; shift or reject each; returns one row of sync columns per job, in order."""
        rows: dict[int, dict] = {}
        inputs, stored, scored = [], [], []
        for number, job in enumerate(jobs):
            try:
                arrays = dict(np.load(job.landmarks))
                frames = all_frames(job.video)
                boxes = boxes_from_landmarks(arrays["landmarks_aligned"], arrays["present"])
                margin = int(arrays["audio_margin"])
                original = arrays["audio_context"][margin:margin + len(frames) * SAMPLES_PER_FRAME]
                inputs.append((crops(frames, boxes, self.params.crop_scale), original))
            except (OSError, KeyError, ValueError, FFmpegError) as exc:
                rows[number] = _failed(job, f"cannot read the clip or its landmarks: {type(exc).__name__}: {exc}")
                continue
            stored.append(arrays)
            scored.append(number)
        results = self.scorer.score_many(inputs) if inputs else []
        speakers = self._speakers([(jobs[number], result) for number, result in zip(scored, results)])
        for number, arrays, result in zip(scored, stored, results):
            rows[number] = self._settle(jobs[number], arrays, result, *speakers.get(jobs[number].clip_id, (None, None)))
        return [rows[number] for number in range(len(jobs))]

    def _speakers(self, scored: list[tuple[SyncJob, SyncResult]]) -> dict[str, tuple[str | None, Rejected | None]]:
        """Among the clips of each speaker group (one span's faces), the one that speaks: the best confidence,
        and among those within speaker_tie_conf of it, the best speaking cue. clip_id -> (how the kept one was
        chosen, None) or (None, the rejection of another)."""
        groups: dict[str, list[tuple[SyncJob, SyncResult]]] = {}
        for job, result in scored:
            if job.speaker_group is not None:
                groups.setdefault(job.speaker_group, []).append((job, result))
        out = {}
        for members in groups.values():
            if len(members) < 2:
                continue
            best_conf = max(result.conf for _, result in members)
            close = [(job, result) for job, result in members if result.conf >= best_conf - self.params.speaker_tie_conf]
            kept, kept_result = max(close, key=lambda m: (m[0].speaker_cue if m[0].speaker_cue is not None else -1.0,
                                                          m[1].conf))
            out[kept.clip_id] = ("syncnet+cue" if len(close) > 1 else "syncnet", None)
            for job, result in members:
                if job is not kept:
                    out[job.clip_id] = (None, Rejected(
                        STAGE, "not_the_speaker", f"another face of the span speaks: {kept.clip_id} (SyncNet "
                        f"confidence {kept_result.conf:.2f}, cue {_cue(kept)}; this face {result.conf:.2f}, cue "
                        f"{_cue(job)})"))
        return out

    def _settle(self, job: SyncJob, arrays: dict, result: SyncResult, choice: str | None = None,
                not_the_speaker: Rejected | None = None) -> dict:
        params = self.params
        row = {"clip_id": job.clip_id, "sync_offset": result.offset, "sync_min_dist": round(result.min_dist, 4),
               "sync_conf": round(result.conf, 4), "sync_status": "done"}
        if job.speaker_group is not None:   # set or cleared: a clip scored again may change sides
            row["speaker_choice"] = choice
        rejected = not_the_speaker
        if rejected is None and result.conf < params.min_confidence:
            rejected = Rejected(STAGE, "low_sync_confidence",
                                f"SyncNet confidence {result.conf:.2f} is below {params.min_confidence:g}")
        elif rejected is None and abs(result.offset) > params.max_offset:
            rejected = Rejected(STAGE, "large_av_offset",
                                f"audio is {result.offset:+d} frames off the video, more than {params.max_offset}")
        arrays["sync_frame_conf"] = result.frame_conf.astype(np.float32)
        write_arrays(Path(job.landmarks), arrays)
        if rejected is not None:
            return {**row, "sync_status": "rejected", "status": "rejected", "reject_stage": rejected.stage,
                    "reject_reason": rejected.reason, "reject_detail": rejected.detail}
        margin = int(arrays["audio_margin"])
        samples = len(arrays["present"]) * SAMPLES_PER_FRAME
        audio = shifted_audio(arrays["audio_context"], result.offset, samples, margin)
        rewrite_audio(Path(job.video), audio, int(arrays["sample_rate"]))
        return row


def _cue(job: SyncJob) -> str:
    return "none" if job.speaker_cue is None else f"{job.speaker_cue:.2f}"


def _failed(job: SyncJob, detail: str) -> dict:
    return {"clip_id": job.clip_id, "sync_status": "rejected", "status": "rejected", "reject_stage": STAGE,
            "reject_reason": "sync_error", "reject_detail": detail[:500]}
