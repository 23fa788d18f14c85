"""Quality stage: HyperIQA on each written clip (first, middle and last frame, as LatentSync's filter does);
clips scoring under the threshold are dropped.

Like the sync stage it runs in a Ray actor pool (weights loaded once per actor, the key frames of several
clips in one batch, on a GPU when the pool is given one). It reads only the clip's picture, after the sync
stage has settled its sound.
"""

from __future__ import annotations

from manifests.rejected import Rejected
from media.frames import FFmpegError, key_frames
from stages.quality_score import QualityScorer
from stages.settings import QualityParams

STAGE = "quality"


class QualityStage:
    def __init__(self, params: QualityParams, scorer: QualityScorer):
        self.params = params
        self.scorer = scorer

    def process(self, jobs: list[tuple[str, str]]) -> list[dict]:
        """Score (clip_id, video path) jobs together; one row of quality columns per job, in order."""
        rows: dict[int, dict] = {}
        frames, scored = [], []
        for number, (clip_id, video) in enumerate(jobs):
            try:
                frames.append(key_frames(video))
                scored.append(number)
            except (OSError, ValueError, FFmpegError) as exc:
                rows[number] = {"clip_id": clip_id, "quality_status": "rejected", "status": "rejected",
                                "reject_stage": STAGE, "reject_reason": "quality_error",
                                "reject_detail": f"cannot read the clip: {type(exc).__name__}: {exc}"[:500]}
        for number, result in zip(scored, self.scorer.score_many(frames) if frames else []):
            rows[number] = self._settle(jobs[number][0], result.score, result.frame_scores)
        return [rows[number] for number in range(len(jobs))]

    def _settle(self, clip_id: str, score: float, frame_scores) -> dict:
        row = {"clip_id": clip_id, "quality_score": round(score, 4), "quality_status": "done",
               "quality_frame_scores": [round(float(s), 4) for s in frame_scores]}
        if score >= self.params.min_score:
            return row
        rejected = Rejected(STAGE, "low_visual_quality",
                            f"HyperIQA score {score:.1f} is below {self.params.min_score:g}")
        return {**row, "quality_status": "rejected", "status": "rejected", "reject_stage": rejected.stage,
                "reject_reason": rejected.reason, "reject_detail": rejected.detail}
