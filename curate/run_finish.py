"""Finish a run: record in the manifests the paths the scan could not look at and the sources that left the
input folder, append the run's row to the runs manifest, and return the RunSummary the CLI prints (what was
processed, kept and rejected, over the whole output, and what each stage cost in this run). The counts are
taken over the manifests' current view, a few columns at a time. A run that changes nothing leaves every file
as it was."""

from __future__ import annotations

import json
import os
import platform
import uuid
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from curate.config import Config
from curate.errors import RunError
from curate.run_types import Cost, Plan, RunOptions, RunSummary, State
from curate.scan import ScanResult
from manifests import dataset, io as mio, schema


def finish(options: RunOptions, plan: Plan, state: State, started_at: datetime, wall_s: float) -> RunSummary:
    config, out = options.config, options.output_dir
    try:
        changes = _scan_changes(out, options.input_dir, plan.scan)
        if changes:
            dataset.write_part(out, dataset.new_tag(), changes, [])
        summary = _summarise(out, plan, state)
        summary.wall_s, summary.cluster_cpus = wall_s, state.cluster_cpus
        summary.clips_staged = dict(state.staged)
        summary.stage_timings = _stage_timings(state, config)
        # a rerun that changes nothing (after a complete one) leaves every file as it was, runs included
        first = not mio.manifest_path(out, "runs").exists()
        if first or changes or state.parts_written or state.processed or state.staged:
            _append_run(options, summary, started_at)
    except OSError as exc:
        raise RunError(f"cannot write manifests in {out}: {exc.strerror or exc}. Rerun to retry; "
                       "finished sources are kept in the journal.") from None
    return summary


def _scan_changes(out: Path, input_dir: Path, scan: ScanResult) -> list[dict]:
    """Source rows the manifests lack: a row for each path the scan could not look at (a symlink loop, a pipe
    named .mp4, a folder it may not list) unless the same row stands, and a 'removed' row for each source
    that is no longer in the input folder."""
    columns = ["source_id", "reject_stage", "reject_reason", "reject_detail"]
    current, standing = [], {}   # every current source's id; the rows of those the scan rejected (a few)
    for table in dataset.iter_current(out, "sources", columns):
        current.append(table["source_id"].combine_chunks())
        for row in table.filter(pc.equal(table["reject_stage"], "scan")).to_pylist():
            standing[row["source_id"]] = row
    rows = []
    for relative, why in scan.skipped:
        row = {"source_id": relative, "path": str(input_dir.resolve() / relative), "status": "rejected",
               "reject_stage": "scan", "reject_reason": scan.reasons.get(relative, "not_looked_at"),
               "reject_detail": why}
        same = standing.get(relative)
        if same is None or (same["reject_reason"], same["reject_detail"]) != (row["reject_reason"], why):
            rows.append(row)
    there = pa.concat_arrays(scan.sources.source_ids.chunks + [pa.array([r for r, _ in scan.skipped], pa.string())])
    current = pa.chunked_array(current, pa.string())
    gone = current.filter(pc.invert(pc.is_in(current, value_set=there))).to_pylist()
    rows.extend({"source_id": source_id, "status": dataset.REMOVED, "reject_stage": "scan",
                 "reject_reason": "removed", "reject_detail": "no longer in the input folder"}
                for source_id in sorted(gone))
    return rows


def _summarise(out: Path, plan: Plan, state: State) -> RunSummary:
    """The run's summary; the counts of what is kept and rejected are over the whole output folder, summed
    part by part."""
    summary = RunSummary(sources_found=len(plan.scan.sources), sources_processed=state.processed,
                         sources_reused=plan.reused, skipped_paths=list(plan.scan.skipped),
                         cpu_s=sum(state.source_cpu.values()), seconds_processed=state.seconds_processed)
    columns = ["status", "reject_stage", "reject_reason", "duration_s"]
    for kind, name in (("source", "sources"), ("clip", "clips")):
        seconds, kept_s, kept_n, rejected_n = 0.0, 0.0, 0, 0
        for table in dataset.iter_current(out, name, columns):
            durations = pc.fill_null(table["duration_s"], 0.0)
            kept = pc.equal(table["status"], "kept")
            rejected = table.filter(pc.equal(table["status"], "rejected"))
            counts = rejected.group_by(["reject_stage", "reject_reason"]).aggregate([("status", "count")])
            for row in counts.to_pylist():
                summary.rejects[(kind, row["reject_stage"], row["reject_reason"])] += row["status_count"]
            seconds += pc.sum(durations).as_py() or 0.0
            kept_n += pc.sum(kept).as_py() or 0
            kept_s += pc.sum(pc.if_else(kept, durations, 0.0)).as_py() or 0.0
            rejected_n += len(rejected)
        if kind == "source":
            summary.seconds_in, summary.sources_rejected = seconds, rejected_n
        else:
            summary.clips_kept, summary.seconds_out, summary.clips_rejected = kept_n, kept_s, rejected_n
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
    rows = [{"stage": stage, "cpu_s": round(state.source_cpu.get(stage, 0.0), 4), "wall_s": None,
             "sources_computed": state.source_computed.get(stage, 0), "clips_computed": None,
             "media_s": round(state.source_media.get(stage, 0.0), 3)}
            for stage in schema.TIMED_STAGES]
    for stage in config.clip_stages():
        cost = state.stage_cost.get(stage, Cost())
        rows.append({"stage": stage, "cpu_s": round(cost.cpu_s, 4), "wall_s": round(cost.wall_s, 4),
                     "sources_computed": None, "clips_computed": state.staged.get(stage, 0),
                     "media_s": round(cost.clip_s, 3)})
    return rows


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
