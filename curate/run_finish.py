"""Finish a run: write the sources and clips manifests from the records, compact the journal to what is
current, append the run's row to the runs manifest, and return the RunSummary the CLI prints (what was
processed, kept and rejected, and what each stage cost). A run that changes nothing leaves every file as it
was."""

from __future__ import annotations

import json
import os
import platform
import uuid
from collections import Counter
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from curate.clip_chain import clip_work, stage_result
from curate.config import CLIP_STAGES, Config
from curate.errors import RunError
from curate.run_types import Cost, Plan, RunOptions, RunSummary, State
from curate.scan import ScanResult
from manifests import io as mio, schema


def finish(options: RunOptions, plan: Plan, state: State, started_at: datetime, wall_s: float) -> RunSummary:
    config = options.config
    source_rows, clip_rows, kept_records = [], [], []
    for scanned in plan.scan.sources:
        record = state.records.get(scanned.source_id)
        if record is None:
            continue
        kept_records.append(record)
        work = {w.clip_id: w for w in clip_work(record, options.output_dir)}
        rows = [_with_stages(clip, work.get(clip["clip_id"]), state, config) for clip in record["clips"]]
        source = dict(record["source"])
        source["n_clips_kept"] = sum(1 for row in rows if row["status"] == "kept")
        source_rows.append(source)
        clip_rows.extend(rows)
    source_rows.extend(_scan_rows(options.input_dir, plan.scan))
    source_rows.sort(key=lambda row: row["source_id"])
    clip_rows.sort(key=lambda row: (row["source_id"], row["start_frame"]))

    summary = _summarise(plan, source_rows, clip_rows, state.processed)
    summary.wall_s, summary.cluster_cpus = wall_s, state.cluster_cpus
    summary.clips_staged = dict(state.staged)
    summary.stage_timings = _stage_timings(state, config)
    out = options.output_dir
    fingerprints = config.stage_fingerprints()
    try:
        # a run that changes nothing (a rerun after a complete one) leaves every file as it was, runs included
        changed = mio.write_table(mio.manifest_path(out, "sources"), mio.source_rows_for_parquet(source_rows),
                                  schema.SOURCES)
        changed = mio.write_table(mio.manifest_path(out, "clips"), clip_rows, schema.CLIPS) or changed
        if not (changed or state.processed or state.staged):
            return summary
        if state.processed or state.staged:
            current = []
            for record in kept_records:
                current.append(record)
                for work in clip_work(record, out):
                    for stage in config.clip_stages():
                        result = stage_result(state.stage_records, work, stage, fingerprints[stage])
                        if result is not None:
                            current.append(result)
            mio.Journal(out).rewrite(current)
        _append_run(options, summary, started_at)
    except OSError as exc:
        raise RunError(f"cannot write manifests in {out}: {exc.strerror or exc}. Rerun to retry; "
                       "finished sources are kept in the journal.") from None
    return summary


def _scan_rows(input_dir: Path, scan: ScanResult) -> list[dict]:
    """A row for each path the scan could not look at (a symlink loop, a pipe named .mp4, a folder it may not
    list), so that it is in the manifest with its reason like every other input dropped."""
    return [{"source_id": relative, "path": str(input_dir.resolve() / relative), "status": "rejected",
             "reject_stage": "scan", "reject_reason": scan.reasons.get(relative, "not_looked_at"),
             "reject_detail": why} for relative, why in scan.skipped]


def _with_stages(clip: dict, work, state: State, config: Config) -> dict:
    """A clip's row: what the source pass found, and what the clip stages found since (`work` is the clip's
    ClipWork when the source pass kept it). A stage not reached (an earlier one rejected the clip, or the run
    stopped first) leaves its columns null."""
    row = dict(clip)
    if clip["status"] != "kept":
        return row
    fingerprints = config.stage_fingerprints()
    for stage in CLIP_STAGES:
        if config.skipped(stage):
            row[f"{stage}_status"] = "skipped"
    for stage in config.clip_stages():
        result = stage_result(state.stage_records, work, stage, fingerprints[stage]) if work is not None else None
        if result is None:
            break
        row.update(result["row"])
        if row["status"] == "rejected":
            break
    return row


def _summarise(plan: Plan, source_rows: list[dict], clip_rows: list[dict], processed: set[str]) -> RunSummary:
    summary = RunSummary(sources_found=len(plan.scan.sources), sources_processed=len(processed),
                         sources_reused=len(plan.reused), skipped_paths=list(plan.scan.skipped))
    for row in source_rows:
        summary.seconds_in += row.get("duration_s") or 0.0
        if row["status"] == "rejected":
            summary.sources_rejected += 1
            summary.rejects[("source", row["reject_stage"], row["reject_reason"])] += 1
        if row["source_id"] in processed:
            summary.cpu_s += sum((row.get("cpu_s") or {}).values())
            summary.seconds_processed += row.get("duration_s") or 0.0
    for row in clip_rows:
        if row["status"] == "kept":
            summary.clips_kept += 1
            summary.seconds_out += row["duration_s"]
        else:
            summary.clips_rejected += 1
            summary.rejects[("clip", row["reject_stage"], row["reject_reason"])] += 1
    return summary


def _append_run(options: RunOptions, summary: RunSummary, started_at: datetime) -> None:
    config = options.config
    row = {
        "run_id": uuid.uuid4().hex, "started_at": started_at, "finished_at": datetime.now(timezone.utc),
        "wall_s": round(summary.wall_s, 3), "command": options.command,
        "input_dir": str(options.input_dir.resolve()), "output_dir": str(options.output_dir.resolve()),
        "config_hash": config.config_hash(), "fingerprint": config.fingerprint(),
        "config_json": json.dumps(config.model_dump(mode="json"), sort_keys=True),
        "versions": _versions(), "ray_address": _ray_address(options),
        "cluster_cpus": summary.cluster_cpus,
        "sources_found": summary.sources_found, "sources_processed": summary.sources_processed,
        "sources_reused": summary.sources_reused, "sources_rejected": summary.sources_rejected,
        "clips_kept": summary.clips_kept, "clips_rejected": summary.clips_rejected,
        "hours_in": summary.seconds_in / 3600, "hours_out": summary.seconds_out / 3600,
        "stage_timings": summary.stage_timings, "clips_synced": summary.clips_staged.get("sync", 0),
        "clips_quality_scored": summary.clips_staged.get("quality", 0),
    }
    path = mio.manifest_path(options.output_dir, "runs")
    mio.write_table(path, mio.read_rows(path) + [row], schema.RUNS)


def _stage_timings(state: State, config: Config) -> list[dict]:
    """What each stage cost in this run, in run order: the source pass's stages (CPU seconds summed over the
    sources processed; they run fused in one pass, so wall seconds are the pass's, not a stage's) and the clip
    stages (CPU and wall seconds of their actors' batches), each with the seconds of video it worked on."""
    cpu: Counter = Counter()
    seconds: Counter = Counter()
    for source_id in state.processed:
        source = state.records[source_id]["source"]
        for stage, spent in (source.get("cpu_s") or {}).items():
            cpu[stage] += spent
            seconds[stage] += source.get("duration_s") or 0.0
    rows = [{"stage": stage, "cpu_s": round(cpu.get(stage, 0.0), 4), "wall_s": None,
             "sources_computed": _computed(stage, state.processed, state.records), "clips_computed": None,
             "media_s": round(seconds.get(stage, 0.0), 3)}
            for stage in schema.TIMED_STAGES]
    for stage in config.clip_stages():
        cost = state.stage_cost.get(stage, Cost())
        rows.append({"stage": stage, "cpu_s": round(cost.cpu_s, 4), "wall_s": round(cost.wall_s, 4),
                     "sources_computed": None, "clips_computed": state.staged.get(stage, 0),
                     "media_s": round(cost.clip_s, 3)})
    return rows


def _computed(stage: str, processed: set[str], records: dict) -> int:
    """Sources for which `stage` really ran in this run (shots replayed from an earlier run do not count)."""
    count = 0
    for source_id in processed:
        source = records[source_id]["source"]
        if stage in (source.get("cpu_s") or {}) and not (stage == "shots" and source.get("shots_reused")):
            count += 1
    return count


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("lipsync-curate", "av", "scenedetect", "ray", "pyarrow", "numpy", "opencv-python", "pydantic"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    try:
        from media.frames import ffmpeg_version

        versions["ffmpeg-libavcodec"] = ffmpeg_version()
    except Exception:  # noqa: BLE001 - versions are informative only
        pass
    return versions


def _ray_address(options: RunOptions) -> str:
    return options.address or os.environ.get("RAY_ADDRESS") or options.config.run.address or "local"
