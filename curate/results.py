"""Reading an output folder: the current view of its manifests streamed part by part, the thresholds its newest
run used, the rejects table and the training file lists (`curate rejects`, `curate filelist`; the HTML report
is in curate.report).

Nothing here holds every row at once: the view is read a part at a time with only the columns asked for, so
the memory does not grow with the sources beyond the view's index (manifests.dataset) and what is kept (the
speakers, for the file lists; the rejected rows, for the rejects table)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate import layouts
from curate.config import CLIP_STAGES, STAGE_ORDER, Config
from curate.errors import RunError, writable_folder
from manifests import dataset, io as mio, schema


@dataclass
class View:
    """An output folder's current view: its parts and what its journal holds since the last one (so a run
    still going or killed shows every finished source), and its runs."""
    output_dir: Path
    journal: tuple[list[dict], list[dict]]
    runs: pd.DataFrame

    def batches(self, name: str, columns: Sequence[str] | None = None) -> Iterator[pa.Table]:
        """The current rows of 'sources' or 'clips', a part at a time, with only `columns`."""
        return dataset.iter_current(self.output_dir, name, columns, self.journal)

    @cached_property
    def config(self) -> Config:
        """The config of the newest run (its thresholds decided what is kept)."""
        if self.runs.empty:
            return Config()
        return Config.model_validate(json.loads(self.runs.iloc[-1]["config_json"]))


def open_view(output_dir: Path) -> View:
    if not output_dir.exists():
        raise RunError(f"output folder {output_dir} does not exist")
    if not output_dir.is_dir():
        raise RunError(f"{output_dir} is a file, not an output folder")
    journal = dataset.fold_journal(mio.Journal(output_dir).records(), CLIP_STAGES)
    runs = mio.manifest_path(output_dir, "runs")
    if not runs.is_file() and not dataset.has_manifests(output_dir) and not journal[0]:
        raise RunError(f"{output_dir} has no finished run to read ({runs} missing); "
                       "run `curate run --output` on it first")
    return View(output_dir, journal,
                pd.read_parquet(runs) if runs.is_file() else pd.DataFrame(columns=schema.columns(schema.RUNS)))


# -- rejects --------------------------------------------------------------------------------------

REJECT_COLUMNS = ["kind", "source_id", "clip_id", "start_s", "end_s", "reject_stage", "reject_reason",
                  "reject_detail", "face_size_px", "face_detection_rate", "face_yaw_deg", "face_off_pose_share",
                  "face_mouth_sharpness", "speech_fraction", "speaker_cue", "sync_offset", "sync_conf",
                  "quality_score", "duplicates_of", "path"]


# where a row's reject_stage comes from: the scan, a source task that failed as a whole, or a stage
REJECT_STAGES = ("scan", "worker", *STAGE_ORDER)


def rejects(view: View, stage: str | None = None, reason: str | None = None) -> pd.DataFrame:
    """Every rejected source (kind 'source') and clip span (kind 'clip'), optionally of one stage or reason;
    only the rejected rows are ever held."""
    if stage is not None and stage not in REJECT_STAGES:
        raise RunError(f"--stage {stage}: no such stage; the stages that reject are {', '.join(REJECT_STAGES)}")
    tables = []
    for kind, name in (("source", "sources"), ("clip", "clips")):
        present = [c for c in REJECT_COLUMNS if c in schema.columns(dataset.SCHEMAS[name]) and c != "path"]
        columns = [*present, "status", "path"]
        for batch in view.batches(name, columns):
            wanted = pc.equal(batch["status"], "rejected")
            if stage is not None:
                wanted = pc.and_(wanted, pc.equal(batch["reject_stage"], stage))
            if reason is not None:
                wanted = pc.and_(wanted, pc.equal(batch["reject_reason"], reason))
            rows = batch.filter(pc.fill_null(wanted, False)).to_pandas()
            if kind == "source":
                rows = rows.drop(columns=["path"])   # a source's path is its input file, not a clip
            tables.append(rows.assign(kind=kind).reindex(columns=REJECT_COLUMNS))
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=REJECT_COLUMNS)
    order = pd.Categorical(table.kind, ["source", "clip"], ordered=True)
    return table.assign(_order=order).sort_values(["_order", "source_id", "start_s"], kind="stable") \
        .drop(columns="_order").reset_index(drop=True)


# -- file lists -----------------------------------------------------------------------------------

def speaker_of(source_id: str, pattern: re.Pattern | None = None, layout: str = "folder") -> str:
    """The speaker of a source: the first group of `pattern` where it matches the source id; else, with the
    hdtf layout, the file's name without its clip number (`WDA_BarackObama_000.mp4`: WDA_BarackObama); else
    VoxCeleb2's speaker folder (`id00012/<video>/00001.mp4`, at any depth); else the source file itself."""
    if pattern is not None:
        match = pattern.search(source_id)
        if match:
            return match.group(1) if pattern.groups else match.group(0)
    if layout == "hdtf":
        return layouts.hdtf_speaker(source_id)
    return layouts.voxceleb_speaker(source_id) or source_id


def split_speakers(speakers: list[str] | set[str], val_fraction: float, seed: int) -> set[str]:
    """The validation speakers: a seeded shuffle of the sorted speakers, the first ceil(fraction * n) of them
    (at least one, and never all, when there are two or more)."""
    unique = sorted(set(speakers))
    if val_fraction <= 0 or len(unique) < 2:
        return set()
    count = min(len(unique) - 1, max(1, math.ceil(val_fraction * len(unique))))
    order = np.random.default_rng(seed).permutation(len(unique))
    return {unique[i] for i in order[:count]}


def split_in_time(clips: pa.Table, val_fraction: float) -> set[str]:
    """The validation clips of a split in time: for each speaker, the clips at the end of their footage (in
    source and start order) that make up `val_fraction` of the speaker's seconds (at least one clip, and never
    all, when the speaker has two or more). Clip spans never overlap, so validation is disjoint in time from
    training: what a personal model (one speaker) is judged on."""
    val: set[str] = set()
    if val_fraction <= 0 or not len(clips):
        return val
    table = clips.sort_by([("speaker", "ascending"), ("source_id", "ascending"), ("start_frame", "ascending")])
    for speaker in pc.unique(table["speaker"]).to_pylist():
        own = table.filter(pc.equal(table["speaker"], speaker))
        if len(own) < 2:
            continue
        seconds = np.nan_to_num(own["duration_s"].to_numpy(zero_copy_only=False).astype(float))
        from_end = np.cumsum(seconds[::-1])
        count = int(np.searchsorted(from_end, val_fraction * seconds.sum() - 1e-9)) + 1
        val.update(own["clip_id"].to_pylist()[len(own) - min(len(own) - 1, max(1, count)):])
    return val


SPLITS = ("train", "val", "test")
SPLIT_COLUMNS = [*schema.columns(schema.CLIPS), "speaker", "split", "abs_path"]


@dataclass
class SplitCount:
    clips: int = 0
    seconds: float = 0.0
    speakers: set[str] = field(default_factory=set)


@dataclass
class FileLists:
    """What `write_file_lists` wrote: the files, and per split its clips, speakers and seconds."""
    written: dict[str, Path]
    splits: dict[str, SplitCount]
    kept: int            # kept clips in the run, before the stricter filters

    @property
    def clips(self) -> int:
        return sum(count.clips for count in self.splits.values())


@dataclass
class _Lister:
    view: View
    min_confidence: float | None
    min_quality: float | None
    pattern: re.Pattern | None

    def kept(self, columns: Sequence[str]) -> Iterator[pa.Table]:
        """The kept clips that pass the stricter filters, a part at a time, each with its `speaker`."""
        needed = [*columns, *(c for c in ("source_id", "status", "sync_conf", "quality_score") if c not in columns)]
        layout = self.view.config.inputs.layout
        for batch in self.view.batches("clips", needed):
            wanted = pc.equal(batch["status"], "kept")
            for threshold, column in ((self.min_confidence, "sync_conf"), (self.min_quality, "quality_score")):
                if threshold is not None:
                    wanted = pc.and_(wanted, pc.greater_equal(batch[column], threshold))
            batch = batch.filter(pc.fill_null(wanted, False))
            ids = pc.unique(batch["source_id"])
            speakers = pa.array([speaker_of(s, self.pattern, layout) for s in ids.to_pylist()], pa.string())
            batch = batch.select(list(columns))
            yield batch.append_column("speaker", speakers.take(pc.index_in(batch["source_id"], value_set=ids)))

    def check_scores(self) -> int:
        """The run's kept clips; a stricter filter on a score the run never computed would leave nothing,
        silently, so that is an error instead."""
        kept = scored_conf = scored_quality = 0
        for batch in self.view.batches("clips", ["status", "sync_conf", "quality_score"]):
            batch = batch.filter(pc.equal(batch["status"], "kept"))
            kept += len(batch)
            scored_conf += len(batch) - batch["sync_conf"].null_count
            scored_quality += len(batch) - batch["quality_score"].null_count
        for flag, threshold, scored, stage in (("--min-confidence", self.min_confidence, scored_conf, "sync"),
                                               ("--min-quality", self.min_quality, scored_quality, "quality")):
            if threshold is not None and kept and not scored:
                raise RunError(f"{flag}: none of the {kept} kept clips has a {stage} score (the run left out the "
                               f"{stage} stage); run `curate run` with it first, or drop {flag}")
        return kept


def write_file_lists(view: View, out_dir: Path, val_fraction: float = 0.05, seed: int = 0,
                     min_confidence: float | None = None, min_quality: float | None = None,
                     speaker_pattern: str | None = None, hold_out: set[str] | None = None,
                     split: str = "speaker") -> FileLists:
    """train.txt and val.txt (one absolute path a line, as LatentSync's trainers read them) of the kept clips
    that pass the optional stricter filters, split by speaker, with `hold_out` also test.txt (else an earlier
    one is removed: it would disagree with the rest), and split.parquet (the clips' manifest columns with
    `speaker`, `split` and `abs_path`). The speaker follows the run's `inputs.layout` unless `speaker_pattern`
    says. Two passes over the view: the speakers first, then the rows, written as they are read. `split`
    "time" splits each speaker's own footage instead (split_in_time; the first pass then holds the kept
    clips' ids, sources, starts and lengths: meant for one speaker's or a few speakers' clips)."""
    if split not in ("speaker", "time"):
        raise ValueError(f"split must be 'speaker' or 'time', not {split!r}")
    writable_folder(out_dir, "--out")
    lister = _Lister(view, min_confidence, min_quality, re.compile(speaker_pattern) if speaker_pattern else None)
    kept = lister.check_scores()
    held = hold_out or set()
    speakers: set[str] = set()
    timed = []
    for batch in lister.kept(["clip_id", "source_id", "start_frame", "duration_s"] if split == "time" else ["source_id"]):
        speakers.update(batch["speaker"].unique().to_pylist())
        if split == "time":
            timed.append(batch.filter(pc.invert(pc.is_in(batch["speaker"], value_set=pa.array(sorted(held),
                                                                                               pa.string())))))
    if split == "time":
        val = set()
        val_clips = pa.array(sorted(split_in_time(pa.concat_tables(timed), val_fraction)) if timed else [],
                             pa.string())
    else:
        val = split_speakers(speakers - held, val_fraction, seed)
        val_clips = None
    splits = SPLITS if hold_out is not None else SPLITS[:2]
    if hold_out is None:
        (out_dir / "test.txt").unlink(missing_ok=True)
    written = {split: out_dir / f"{split}.txt" for split in splits} | {"split": out_dir / "split.parquet"}
    counts = {split: SplitCount() for split in splits}
    root = view.output_dir.resolve()
    held_array, val_array = pa.array(sorted(held), pa.string()), pa.array(sorted(val), pa.string())
    lines = {split: written[split].with_name(written[split].name + ".partial").open("w", encoding="utf-8")
             for split in splits}
    table_schema = schema.CLIPS.append(pa.field("speaker", pa.string())).append(pa.field("split", pa.string())) \
        .append(pa.field("abs_path", pa.string()))
    parquet_partial = written["split"].with_name("split.parquet.partial")
    try:
        with pq.ParquetWriter(parquet_partial, table_schema) as parquet:
            for batch in lister.kept(schema.columns(schema.CLIPS)):
                batch = batch.take(pc.sort_indices(batch, [("clip_id", "ascending")]))
                in_val = pc.is_in(batch["clip_id"] if val_clips is not None else batch["speaker"],
                                  value_set=val_clips if val_clips is not None else val_array)
                chosen = pc.if_else(pc.is_in(batch["speaker"], value_set=held_array), "test",
                                    pc.if_else(in_val, "val", "train"))
                paths = pa.array([str(root / p) for p in batch["path"].to_pylist()], pa.string())
                batch = batch.append_column("split", chosen).append_column("abs_path", paths)
                parquet.write_table(batch.cast(table_schema))
                for name, path, speaker, seconds in zip(chosen.to_pylist(), paths.to_pylist(),
                                                        batch["speaker"].to_pylist(), batch["duration_s"].to_pylist()):
                    lines[name].write(path + "\n")
                    count = counts[name]
                    count.clips += 1
                    count.seconds += seconds or 0.0
                    count.speakers.add(speaker)
        for split, handle in lines.items():
            handle.close()
            Path(handle.name).replace(written[split])
        parquet_partial.replace(written["split"])
    finally:
        for handle in lines.values():
            handle.close()
            Path(handle.name).unlink(missing_ok=True)
        parquet_partial.unlink(missing_ok=True)
    return FileLists(written, counts, kept)
