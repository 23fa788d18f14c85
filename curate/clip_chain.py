"""Where a clip stands in the chain of clip stages (sync, then quality): the work a stage gets for each clip the
source pass kept, a stage's recorded result for a clip, and the next stage a clip still owes. Shared by the
plan, the execution and the manifests of `curate run`."""

from __future__ import annotations

from pathlib import Path

from curate.config import Config


def clip_work(record: dict, output_dir: Path) -> list:
    """What a clip stage gets for each clip the source pass kept."""
    from curate.pools import ClipWork

    root = output_dir.resolve()
    return [ClipWork(record["source_id"], clip["clip_id"], record.get("generation", ""), str(root / clip["path"]),
                     str(root / clip["landmarks_path"]) if clip.get("landmarks_path") else None,
                     clip.get("duration_s") or 0.0)
            for clip in record["clips"] if clip["status"] == "kept" and clip.get("path")]


def next_clip_stage(stage_records: dict, work, config: Config) -> str | None:
    """The first clip stage this clip still needs; None when it is settled: every stage has a valid result,
    or one of them rejected it."""
    fingerprints = config.stage_fingerprints()
    for stage in config.clip_stages():
        result = stage_result(stage_records, work, stage, fingerprints[stage])
        if result is None:
            return stage
        if result["row"].get("status") == "rejected":
            return None
    return None


def stage_result(stage_records: dict, work, stage: str, fingerprint: str) -> dict | None:
    """The recorded result of `stage` for this clip (a ClipWork), if it belongs to the clip's generation and
    to these settings."""
    record = stage_records.get((work.clip_id, stage))
    if record is None or record["generation"] != work.generation or record["fingerprint"] != fingerprint:
        return None
    return record
