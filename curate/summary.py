"""The text a run prints when it ends."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from curate.runner import RunSummary


def _hours(seconds: float) -> str:
    hours = f"{seconds / 3600:.3f} h"
    return hours if seconds >= 3600 else f"{hours} = {seconds:.1f} s"


def format_summary(summary: RunSummary, output_dir: Path) -> str:
    lines = [
        f"sources in: {summary.sources_found} ({_hours(summary.seconds_in)}), "
        f"{summary.sources_processed} processed now, {summary.sources_reused} unchanged since the last run",
        f"clips out:  {summary.clips_kept} ({_hours(summary.seconds_out)})",
        f"rejected:   {summary.sources_rejected} sources, {summary.clips_rejected} clip spans",
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
    for stage, count in sorted(summary.clips_staged.items()):
        lines.append(f"{stage}:       {count} clips scored in this run")
    lines.append(f"manifests:  {output_dir / 'manifests'} (sources, clips, runs .parquet)")
    return "\n".join(lines)


def format_dry_run(summary: RunSummary) -> str:
    lines = [
        f"dry run: {summary.sources_found} sources found, {summary.sources_reused} unchanged, "
        f"{len(summary.planned)} would be processed"
    ]
    for why, count in Counter(summary.planned.values()).most_common():
        lines.append(f"  {count:>6}  {why}")
    for source_id, why in list(summary.planned.items())[:20]:
        lines.append(f"  {source_id}  ({why})")
    if len(summary.planned) > 20:
        lines.append(f"  ... and {len(summary.planned) - 20} more")
    for path, why in summary.skipped_paths[:10]:
        lines.append(f"not looked at: {path}: {why}")
    for warning in summary.warnings:
        lines.append(f"a run would stop: {warning}")
    return "\n".join(lines)
