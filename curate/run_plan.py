"""Plan a run against the journal: scan the input and sort each source into unchanged (its journal record is
reused) or to be processed, with why (new, file changed, input moved, a stage's settings changed); queue the
clip stages the unchanged sources' clips still owe; and say what a dry run would do."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from curate.clip_chain import clip_work, next_clip_stage, stage_result
from curate.config import Config
from curate.run_types import Plan, RunOptions, RunSummary
from curate.scan import ScannedSource, scan_inputs
from curate.source_task import SourceTask
from manifests import io as mio


def make_plan(options: RunOptions) -> Plan:
    config = options.config
    exclude = options.output_dir if _inside(options.output_dir, options.input_dir) else None
    scan = scan_inputs(options.input_dir, config.inputs, exclude=exclude)
    previous, stage_records = mio.Journal(options.output_dir).latest()
    fingerprints = config.stage_fingerprints()
    todo, reused, why = [], {}, {}
    for source in scan.sources:
        record = previous.get(source.source_id)
        unchanged = record is not None and (record["size_bytes"], record["mtime_ns"]) == (source.size_bytes, source.mtime_ns)
        if unchanged and record["fingerprint"] == fingerprints["write"] and record["source"]["path"] == source.path:
            reused[source.source_id] = record
            continue
        why[source.source_id] = _why(record, unchanged, source, fingerprints)
        known_cuts = None
        if unchanged and record["fingerprints"].get("shots") == fingerprints["shots"] and record["source"].get("status") == "ok":
            known_cuts = record["source"].get("shot_cuts")
        todo.append(SourceTask(
            source_id=source.source_id, path=source.path, out_key=source.out_key,
            output_dir=str(options.output_dir.resolve()), size_bytes=source.size_bytes, mtime_ns=source.mtime_ns,
            fingerprints=fingerprints, sha256=record["sha256"] if unchanged else None, known_cuts=known_cuts,
        ))
    # longest first: a big source started last would leave the other workers idle at the end
    todo.sort(key=lambda task: -task.size_bytes)
    plan = Plan(scan, todo, reused, previous, why, stage_records)
    for record in reused.values():
        for work in clip_work(record, options.output_dir):
            stage = next_clip_stage(plan.stage_records, work, config)
            if stage is not None:
                plan.clip_todo.setdefault(stage, []).append(work)
    return plan


def clip_stage_plan(plan: Plan, config: Config, output_dir: Path) -> dict[str, Counter]:
    """What each clip stage would do, for the dry run: per stage, a Counter of why, over the clips of the
    unchanged sources ("no result yet", "stages.sync settings changed"; a stage after the first one a clip
    owes runs only if that one keeps it: "if sync keeps them"). The clips of the sources the plan processes
    are not known yet; every clip stage runs on them too."""
    fingerprints = config.stage_fingerprints()
    owed = {stage: Counter() for stage in config.clip_stages()}
    for record in plan.reused.values():
        for work in clip_work(record, output_dir):
            first = None
            for stage in config.clip_stages():
                if first is not None:
                    owed[stage][f"if {first} keeps them"] += 1
                    continue
                result = stage_result(plan.stage_records, work, stage, fingerprints[stage])
                if result is None:
                    # the stages before it hold valid results, so a stale one means its own settings changed
                    recorded = plan.stage_records.get((work.clip_id, stage))
                    stale = recorded is not None and recorded["generation"] == work.generation
                    owed[stage][f"stages.{stage} settings changed" if stale else f"no {stage} result yet"] += 1
                    first = stage
                elif result["row"].get("status") == "rejected":
                    break
    return owed


def _why(record: dict | None, unchanged: bool, source: ScannedSource, fingerprints: dict[str, str]) -> str:
    if record is None:
        return "new"
    if not unchanged:
        return "file changed"
    if record["source"]["path"] != source.path:
        return "input moved"
    for stage, fingerprint in fingerprints.items():
        if record["fingerprints"].get(stage) != fingerprint:
            return f"stages.{stage} settings changed"
    return "settings changed"


def dry_summary(plan: Plan) -> RunSummary:
    return RunSummary(sources_found=len(plan.scan.sources), sources_processed=0,
                      sources_reused=len(plan.reused), skipped_paths=list(plan.scan.skipped),
                      planned=dict(plan.why), seconds_in=0.0)


def _inside(child: Path, parent: Path) -> bool:
    child, parent = child.resolve(), parent.resolve()
    return child == parent or parent in child.parents
