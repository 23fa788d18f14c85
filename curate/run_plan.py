"""Plan a run against the manifests: scan the input and sort each source into unchanged (its rows stand) or to
be processed, with why (new, file changed, input moved, a stage's settings changed); find the clips of the
unchanged sources that a clip stage still owes a score; and say what a dry run would do.

The comparison is columnar (pyarrow), over the manifests' current view, so planning a resume over a million
sources holds a few columns per source, never a Python object per source; the SourceTasks are made one by
one as the run hands them out (`tasks`)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.clip_chain import clip_work, reset_from
from curate.config import CLIP_STAGES, Config
from curate.run_types import Plan, RunOptions, RunSummary
from curate.scan import scan_inputs
from curate.source_task import SourceTask
from manifests import dataset, io as mio

# what decides whether a source is unchanged, read for every source (part by part, and cut at once to the
# columns below); the rest only for those that changed
PREVIOUS = ["source_id", "path", "size_bytes", "mtime_ns", "fingerprint", "reject_stage"]
CHANGED = ["source_id", "sha256", "fingerprints", "status", "shot_cuts"]


def recover(output_dir: Path) -> None:
    """Fold what the journal holds (the sources a killed run finished after its last part) into a part, and
    empty it. Also turns an output folder of the single-file manifests and whole journal of old into parts."""
    journal = mio.Journal(output_dir)
    rows = dataset.fold_journal(journal.records(), CLIP_STAGES)
    if rows[0]:
        dataset.write_part(output_dir, dataset.new_tag(), *rows)
    if journal.path.exists():
        journal.rewrite([])
    for name in ("sources", "clips"):
        old = output_dir / mio.MANIFESTS_DIR / f"{name}.parquet"
        if old.is_file() and dataset.has_manifests(output_dir):
            old.unlink()


def make_plan(options: RunOptions) -> Plan:
    config, out = options.config, options.output_dir
    exclude = out if _inside(out, options.input_dir) else None
    scan = scan_inputs(options.input_dir, config.inputs, exclude=exclude, fps=config.stages.resample.fps)
    journal = dataset.fold_journal(mio.Journal(out).records(), CLIP_STAGES)   # empty unless a dry run after a kill
    fingerprints = config.stage_fingerprints()
    found = scan.sources.table                 # source_id, size_bytes, mtime_ns, suffixed
    previous = _previous(out, scan, fingerprints["write"], journal)
    previous_ids = previous["source_id"].combine_chunks()
    at = pc.index_in(found["source_id"], value_set=previous_ids)
    # the previous row of each found source (nulls where new), without its id: it is the found one's
    before = previous.drop_columns(["source_id"]).take(at)
    known = pc.is_valid(at).to_numpy(zero_copy_only=False)
    same_stat = _true(pc.and_(pc.equal(found["size_bytes"], before["size_bytes"]),
                              pc.equal(found["mtime_ns"], before["mtime_ns"])))
    same_path = _true(before["same_path"])
    same_write = _true(before["same_write"])
    same_intervals = _same_intervals(scan, found, before)
    reuse = known & same_stat & same_path & same_write & same_intervals
    # the sources that are not unchanged, of those the manifests hold (what the clip stages look past)
    reused_rows = np.zeros(len(previous), dtype=bool)
    reused_rows[pc.fill_null(at, 0).to_numpy(zero_copy_only=False)[reuse]] = True
    others = previous_ids.filter(pa.array(~reused_rows))
    del before, previous, previous_ids, reused_rows

    # why, and what an earlier pass still lends (content hash, shot cuts), for the sources to process alone
    rows = np.flatnonzero(~reuse)
    known, same_stat, same_path, same_intervals = (mask[rows] for mask in (known, same_stat, same_path,
                                                                          same_intervals))
    todo = found.take(pa.array(rows, pa.int64()))
    ids = todo["source_id"]
    changed = ids.filter(pa.array(known))
    detail = dataset.empty_table("sources", CHANGED)
    if len(changed):
        detail = pa.concat_tables([detail] + [table.filter(pc.is_in(table["source_id"], value_set=changed))
                                              for table in dataset.iter_current(out, "sources", CHANGED, journal)])
    before = detail.take(pc.index_in(ids, value_set=detail["source_id"]))
    why = np.full(len(todo), "settings changed", dtype=object)
    for stage in reversed(list(fingerprints)):   # the first stage whose settings changed names the reason
        differs = ~_true(pc.equal(pc.map_lookup(before["fingerprints"], stage, "first"), fingerprints[stage]))
        why[differs] = f"stages.{stage} settings changed"
    why[~same_intervals] = "annotated intervals changed"
    why[~same_path] = "input moved"
    why[~same_stat] = "file changed"
    why[~known] = "new"
    shots_same = _true(pc.equal(pc.map_lookup(before["fingerprints"], "shots", "first"), fingerprints["shots"]))
    cuts_known = same_stat & shots_same & _true(pc.equal(before["status"], "ok"))
    todo = pa.table({
        "source_id": ids, "path": scan.sources.paths(ids), "out_key": scan.sources.out_keys(ids, todo["suffixed"]),
        "size_bytes": todo["size_bytes"], "mtime_ns": todo["mtime_ns"], "why": pa.array(why, pa.string()),
        "sha256": before["sha256"].take(_where(same_stat, len(todo))),
        "known_cuts": before["shot_cuts"].take(_where(cuts_known, len(todo))),
    })
    todo = todo.take(pc.sort_indices(todo, [("size_bytes", "descending"), ("source_id", "ascending")]))
    plan = Plan(scan, todo, int(reuse.sum()))
    if config.clip_stages():
        # the clips to look at are those of the unchanged sources: every current source but the few others
        _owed_clips(plan, others, out, config, journal)
    return plan


def _previous(out: Path, scan, write_fingerprint: str, journal) -> pa.Table:
    """The current rows of the sources the scan did not reject, cut as each part is read to what decides
    whether a source is unchanged: source_id, size_bytes, mtime_ns, same_path (recorded at the path the scan
    finds it at, <input>/<source_id>), same_write (processed with these settings of the write stage), and
    annotated_intervals where the scan found some (HDTF's)."""
    prefix = os.path.join(scan.sources.root, "")
    columns = PREVIOUS + (["annotated_intervals"] if scan.intervals else [])
    tables = []
    for table in dataset.iter_current(out, "sources", columns, journal):
        table = table.filter(pc.fill_null(pc.not_equal(table["reject_stage"], "scan"), True))
        cut = table.select(["source_id", "size_bytes", "mtime_ns"])
        cut = cut.append_column("same_path", pc.equal(table["path"], pc.binary_join_element_wise(
            prefix, table["source_id"], "")))
        cut = cut.append_column("same_write", pc.equal(table["fingerprint"], write_fingerprint))
        if scan.intervals:
            cut = cut.append_column("annotated_intervals", table["annotated_intervals"])
        tables.append(cut)
    if not tables:
        empty = dataset.empty_table("sources", ["source_id", "size_bytes", "mtime_ns"])
        empty = empty.append_column("same_path", pa.array([], pa.bool_()))
        empty = empty.append_column("same_write", pa.array([], pa.bool_()))
        if scan.intervals:
            empty = empty.append_column("annotated_intervals",
                                        dataset.empty_table("sources", ["annotated_intervals"])[0])
        return empty
    return pa.concat_tables(tables)


def tasks(plan: Plan, options: RunOptions) -> Iterator[SourceTask]:
    """The SourceTasks of the plan, longest source first, made as they are taken."""
    fingerprints = options.config.stage_fingerprints()
    output_dir = str(options.output_dir.resolve())
    for batch in plan.todo.to_batches(max_chunksize=4096):
        for row in batch.to_pylist():
            yield SourceTask(source_id=row["source_id"], path=row["path"], out_key=row["out_key"],
                             output_dir=output_dir, size_bytes=row["size_bytes"], mtime_ns=row["mtime_ns"],
                             fingerprints=fingerprints, sha256=row["sha256"], known_cuts=row["known_cuts"],
                             intervals=list(plan.scan.intervals.get(row["source_id"], ())) or None)


def _owed_clips(plan: Plan, others: pa.Array, out: Path, config: Config, journal) -> None:
    """The clips of unchanged sources that a clip stage owes a score (none yet, or its settings changed), part
    by part; then, for their sources alone, the record each continues from."""
    chain = config.clip_stages()
    fingerprints = config.stage_fingerprints()
    columns = ["source_id", "clip_id", "status", "reject_stage", "path"]
    columns += [f"{stage}_{what}" for stage in chain for what in ("fingerprint", "status")]
    owed_stage: dict[str, str] = {}           # clip_id -> the first stage it owes
    owed_sources: set[str] = set()
    plan.owed_why = {stage: Counter() for stage in chain}
    for table in dataset.iter_current(out, "clips", columns, journal):
        if len(others):   # a set of the few, not of the million: it is built once per part
            table = table.filter(pc.invert(pc.is_in(table["source_id"], value_set=others)))
        if not len(table):
            continue
        left = _true(pc.is_valid(table["path"])) & (
            _true(pc.equal(table["status"], "kept")) | _true(pc.is_in(table["reject_stage"], pa.array(list(chain)))))
        first = np.full(len(table), None, dtype=object)
        for stage in chain:
            scored = pc.is_valid(table[f"{stage}_fingerprint"]).to_numpy(zero_copy_only=False)
            valid = _true(pc.equal(table[f"{stage}_fingerprint"], fingerprints[stage]))
            owes = left & ~valid
            first[owes] = stage
            plan.owed_why[stage][f"no {stage} result yet"] += int((owes & ~scored).sum())
            plan.owed_why[stage][f"stages.{stage} settings changed"] += int((owes & scored).sum())
            left = left & valid & ~_true(pc.equal(table[f"{stage}_status"], "rejected"))
        for later, stage in enumerate(chain):
            for earlier in chain[:later]:
                plan.owed_why[stage][f"if {earlier} keeps them"] += int((first == earlier).sum())
        for clip_id, source_id, stage in zip(table["clip_id"].to_pylist(), table["source_id"].to_pylist(), first):
            if stage is not None:
                owed_stage[clip_id] = stage
                owed_sources.add(source_id)
    for stage in chain:
        plan.owed_why[stage] = Counter({why: n for why, n in plan.owed_why[stage].items() if n})
    if not owed_stage:
        return
    records = _records(out, pa.array(sorted(owed_sources), pa.string()), journal)
    for source_id, record in records.items():
        record["clips"] = [reset_from(clip, owed_stage[clip["clip_id"]], config) if clip["clip_id"] in owed_stage
                           else clip for clip in record["clips"]]
        plan.owed[source_id] = record
        for work in clip_work(record, out):
            if work.clip_id in owed_stage:
                plan.clip_todo.setdefault(owed_stage[work.clip_id], []).append(work)


def _records(out: Path, sources: pa.Array, journal) -> dict[str, dict]:
    """The current rows of these sources as the records the clip stages continue from."""
    records = {}
    for table in dataset.iter_current(out, "sources", None, journal):
        for row in table.filter(pc.is_in(table["source_id"], value_set=sources)).to_pylist():
            fingerprints = dict(row.pop("fingerprints") or [])
            records[row["source_id"]] = {
                "source_id": row["source_id"], "size_bytes": row["size_bytes"], "mtime_ns": row["mtime_ns"],
                "sha256": row["sha256"], "fingerprint": row["fingerprint"], "fingerprints": fingerprints,
                "generation": row.pop("generation"), "source": row, "clips": []}
    for table in dataset.iter_current(out, "clips", None, journal):
        for row in table.filter(pc.is_in(table["source_id"], value_set=sources)).to_pylist():
            row.pop("generation")
            records[row["source_id"]]["clips"].append(row)
    for record in records.values():
        record["clips"].sort(key=lambda clip: clip["start_frame"])
    return records


def dry_summary(plan: Plan) -> RunSummary:
    why = plan.todo["why"]
    planned = Counter({row["values"]: row["counts"] for row in pc.value_counts(why).to_pylist()})
    return RunSummary(sources_found=len(plan.scan.sources), sources_processed=0, sources_reused=plan.reused,
                      skipped_paths=list(plan.scan.skipped), planned=planned,
                      planned_sample=list(zip(plan.todo["source_id"].slice(0, 20).to_pylist(),
                                              why.slice(0, 20).to_pylist())),
                      planned_clips=plan.owed_why, seconds_in=0.0)


def _same_intervals(scan, found: pa.Table, before: pa.Table) -> np.ndarray:
    """Per found source, whether its annotated intervals (HDTF's) are those it was processed with."""
    if not scan.intervals:
        return np.ones(len(found), dtype=bool)
    recorded = before["annotated_intervals"].to_pylist()   # HDTF's sources are a few hundred
    return np.array([tuple(map(tuple, scan.intervals.get(source_id, ()))) == tuple(map(tuple, old or ()))
                     for source_id, old in zip(found["source_id"].to_pylist(), recorded)], dtype=bool)


def _true(values) -> np.ndarray:
    """A boolean array with nulls (a comparison with a missing value) as False."""
    return pc.fill_null(values, False).to_numpy(zero_copy_only=False).astype(bool)


def _where(mask: np.ndarray, n: int) -> pa.Array:
    """Indices 0..n-1, null where `mask` is False: take() with it leaves those rows null."""
    return pa.array(np.arange(n), mask=~mask)


def _inside(child: Path, parent: Path) -> bool:
    child, parent = child.resolve(), parent.resolve()
    return child == parent or parent in child.parents
