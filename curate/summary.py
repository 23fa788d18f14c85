"""The text a run prints when it ends."""

from __future__ import annotations

from pathlib import Path

from curate.run_types import RunSummary
from curate.words import counted


def _hours(seconds: float) -> str:
    hours = f"{seconds / 3600:.3f} h"
    return hours if seconds >= 3600 else f"{hours} = {seconds:.1f} s"


def format_summary(summary: RunSummary, output_dir: Path) -> str:
    lines = [
        f"sources in: {summary.sources_found} ({_hours(summary.seconds_in)}), "
        f"{summary.sources_processed} processed now, {summary.sources_reused} unchanged since the last run",
        f"clips out:  {summary.clips_kept} ({_hours(summary.seconds_out)})",
        f"rejected:   {counted(summary.sources_rejected, 'source')}, {counted(summary.clips_rejected, 'clip span')}",
    ]
    if summary.rejects:
        lines.append("rejects by stage and reason:")
        width = max(len(f"{stage}/{reason}") for _, stage, reason in summary.rejects)
        for (kind, stage, reason), count in sorted(summary.rejects.items(), key=lambda item: (item[0][0] != "source", -item[1], item[0])):
            noun = kind if count == 1 else kind + "s"
            lines.append(f"  {f'{stage}/{reason}':<{width}}  {count} {noun}")
    if summary.skipped_paths:
        lines.append(f"not looked at: {len(summary.skipped_paths)} paths")
        for path, why in summary.skipped_paths[:10]:
            lines.append(f"  {path}: {why}")
    if summary.sources_processed and summary.wall_s > 0:
        rate = summary.seconds_processed / summary.wall_s
        per = summary.cpu_s / summary.seconds_processed if summary.seconds_processed else 0.0
        lines.append(
            f"throughput: {_hours(summary.seconds_processed)} of video in {summary.wall_s:.1f} s "
            f"({rate:.1f}x real time), {per:.2f} CPU-s per source-second in the source pass"
        )
    lines.extend(_timings(summary.stage_timings))
    lines.append(f"manifests:  {output_dir / 'manifests'} (sources/ and clips/ in parts, runs.parquet)")
    return "\n".join(lines)


def _timings(timings: list[dict]) -> list[str]:
    """The stages that ran in this run, in run order, as aligned columns: CPU seconds, wall seconds (the clip
    stages'; the source pass's stages run fused in one task), CPU seconds per second of the video they
    worked on, and what that video was."""
    ran = [t for t in timings if t["sources_computed"] or t["clips_computed"]]
    if not ran:
        return []
    lines = ["stage timings in this run:", f"  {'stage':<12}{'CPU s':>9} {'wall s':>9} {'CPU-s/s':>8}  of"]
    for t in ran:
        wall = "-" if t["wall_s"] is None else f"{t['wall_s']:.1f}"
        per = t["cpu_s"] / t["media_s"] if t["media_s"] else 0.0
        what = (counted(t["sources_computed"], "source") if t["clips_computed"] is None
                else counted(t["clips_computed"], "clip"))
        lines.append(f"  {t['stage']:<12}{t['cpu_s']:>9.1f} {wall:>9} {per:>8.3f}  {t['media_s']:.1f} s of {what}")
    return lines


def format_dry_run(summary: RunSummary) -> str:
    lines = [
        f"dry run: {counted(summary.sources_found, 'source')} found, {summary.sources_reused} unchanged, "
        f"{sum(summary.planned.values())} would be processed"
    ]
    for why, count in summary.planned.most_common():
        lines.append(f"  {count:>6}  {why}")
    for source_id, why in summary.planned_sample:
        lines.append(f"  {source_id}  ({why})")
    if sum(summary.planned.values()) > len(summary.planned_sample):
        lines.append(f"  ... and {sum(summary.planned.values()) - len(summary.planned_sample)} more")
    owed = {stage: why for stage, why in summary.planned_clips.items() if why or summary.planned}
    if owed:
        lines.append("clip stages would score:")
    for stage, why in owed.items():
        parts = [f"{counted(sum(why.values()), 'clip'):>10}  ("
                 + ", ".join(f"{reason}: {count}" for reason, count in why.most_common()) + ")"] if why else []
        if summary.planned:   # their clips are not known until the source pass writes them
            parts.append(f"the clips of the {counted(sum(summary.planned.values()), 'source')} processed first")
        lines.append(f"  {stage:<8} " + ", and ".join(parts))
    for path, why in summary.skipped_paths[:10]:
        lines.append(f"not looked at: {path}: {why}")
    for warning in summary.warnings:
        lines.append(f"a run would stop: {warning}")
    return "\n".join(lines)
