"""Where a clip stands in the chain of clip stages (sync, then quality): the work a stage gets for each clip the
source pass kept, the stage that comes after one, and a clip row made ready to be scored again from a stage
on. Shared by the plan and the execution of `curate run`."""

from __future__ import annotations

from pathlib import Path

from curate.config import CLIP_STAGES, Config
from manifests import schema


def clip_work(record: dict, output_dir: Path) -> list:
    """What a clip stage gets for each clip the source pass kept."""
    from curate.pools import ClipWork

    root = output_dir.resolve()
    return [ClipWork(record["source_id"], clip["clip_id"], record.get("generation", ""), str(root / clip["path"]),
                     str(root / clip["landmarks_path"]) if clip.get("landmarks_path") else None,
                     clip.get("duration_s") or 0.0, clip.get("speaker_group"), clip.get("speaker_cue"))
            for clip in record["clips"] if passed_source_pass(clip) and clip.get("path")]


def passed_source_pass(clip: dict) -> bool:
    """The source pass kept the clip (a clip stage may have rejected it since)."""
    return clip["status"] == "kept" or clip.get("reject_stage") in CLIP_STAGES


def following_stage(stage: str, row: dict, config: Config) -> str | None:
    """The clip stage a clip goes to after `stage` found `row`; None when the chain is over for it."""
    if row.get("status") == "rejected":
        return None
    chain = config.clip_stages()
    later = chain[chain.index(stage) + 1:]
    return later[0] if later else None


def reset_from(row: dict, stage: str, config: Config) -> dict:
    """A clip row as it stood before `stage` and the stages after it scored it: their columns emptied, and
    their rejection undone. The row the stages start over from."""
    chain = config.clip_stages()
    again = chain[chain.index(stage):]
    out = dict(row)
    for name in schema.columns(schema.CLIPS):
        if any(name.startswith(f"{later}_") for later in again):
            out[name] = None
    if out.get("reject_stage") in again:
        out.update(status="kept", reject_stage=None, reject_reason=None, reject_detail=None)
    return out
