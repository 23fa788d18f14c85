"""Reading a finished output folder: its manifests, the thresholds it ran with, the rejects table and the
training file lists (`curate rejects`, `curate filelist`; the HTML report is in curate.report)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from curate import layouts
from curate.config import CLIP_STAGES, STAGE_ORDER, Config
from curate.errors import RunError, writable_folder
from manifests import dataset, io as mio, schema


@dataclass
class Results:
    output_dir: Path
    sources: pd.DataFrame
    clips: pd.DataFrame
    runs: pd.DataFrame

    @cached_property
    def source_paths(self) -> dict[str, str]:
        """source_id -> the input file's absolute path."""
        return dict(zip(self.sources.source_id, self.sources.path))

    @cached_property
    def config(self) -> Config:
        """The config of the newest run (its thresholds decided what is kept)."""
        if self.runs.empty:
            return Config()
        return Config.model_validate(json.loads(self.runs.iloc[-1]["config_json"]))


def load_results(output_dir: Path) -> Results:
    """The output folder's manifests: the current view of its sources and clips (with what its journal holds
    since the last part, so a run still going or killed shows every finished source) and its runs."""
    if not output_dir.exists():
        raise RunError(f"output folder {output_dir} does not exist")
    if not output_dir.is_dir():
        raise RunError(f"{output_dir} is a file, not an output folder")
    journal = dataset.fold_journal(mio.Journal(output_dir).records(), CLIP_STAGES)
    runs = mio.manifest_path(output_dir, "runs")
    if not runs.is_file() and not dataset.has_manifests(output_dir) and not journal[0]:
        raise RunError(f"{output_dir} has no finished run to read ({runs} missing); "
                       "run `curate run --output` on it first")
    return Results(output_dir,
                   dataset.current_table(output_dir, "sources", journal=journal).to_pandas(),
                   dataset.current_table(output_dir, "clips", journal=journal).to_pandas(),
                   pd.read_parquet(runs) if runs.is_file() else pd.DataFrame(columns=schema.columns(schema.RUNS)))


# -- rejects --------------------------------------------------------------------------------------

REJECT_COLUMNS = ["kind", "source_id", "clip_id", "start_s", "end_s", "reject_stage", "reject_reason",
                  "reject_detail", "face_size_px", "face_detection_rate", "sync_offset", "sync_conf",
                  "quality_score", "path"]


# where a row's reject_stage comes from: the scan, a source task that failed as a whole, or a stage
REJECT_STAGES = ("scan", "worker", *STAGE_ORDER)


def rejects(results: Results, stage: str | None = None, reason: str | None = None) -> pd.DataFrame:
    """Every rejected source (kind 'source') and clip span (kind 'clip'), optionally of one stage or reason."""
    if stage is not None and stage not in REJECT_STAGES:
        raise RunError(f"--stage {stage}: no such stage; the stages that reject are {', '.join(REJECT_STAGES)}")
    sources = results.sources[results.sources.status == "rejected"].assign(kind="source", clip_id=None)
    sources = sources.rename(columns={"path": "source_path"})
    clips = results.clips[results.clips.status == "rejected"].assign(kind="clip")
    table = pd.concat([sources.reindex(columns=REJECT_COLUMNS), clips.reindex(columns=REJECT_COLUMNS)],
                      ignore_index=True)
    if stage is not None:
        table = table[table.reject_stage == stage]
    if reason is not None:
        table = table[table.reject_reason == reason]
    return table.reset_index(drop=True)


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


def split_speakers(speakers: list[str], val_fraction: float, seed: int) -> set[str]:
    """The validation speakers: a seeded shuffle of the sorted speakers, the first ceil(fraction * n) of them
    (at least one, and never all, when there are two or more)."""
    unique = sorted(set(speakers))
    if val_fraction <= 0 or len(unique) < 2:
        return set()
    count = min(len(unique) - 1, max(1, math.ceil(val_fraction * len(unique))))
    order = np.random.default_rng(seed).permutation(len(unique))
    return {unique[i] for i in order[:count]}


def file_lists(results: Results, val_fraction: float = 0.05, seed: int = 0, min_confidence: float | None = None,
               min_quality: float | None = None, speaker_pattern: str | None = None,
               hold_out: set[str] | None = None) -> pd.DataFrame:
    """The kept clips that pass the optional stricter filters, with `speaker`, `split` and `abs_path`. The
    speaker follows the run's `inputs.layout` unless `speaker_pattern` says; the `hold_out` speakers' clips
    are split `test`, the others `train` or `val`."""
    kept = results.clips[results.clips.status == "kept"].copy()
    # a stricter filter on a score the run never computed would leave nothing, silently: say so instead
    for flag, threshold, column, stage in (("--min-confidence", min_confidence, "sync_conf", "sync"),
                                           ("--min-quality", min_quality, "quality_score", "quality")):
        if threshold is None:
            continue
        if len(kept) and kept[column].isna().all():
            raise RunError(f"{flag}: none of the {len(kept)} kept clips has a {stage} score (the run left out the "
                           f"{stage} stage); run `curate run` with it first, or drop {flag}")
        kept = kept[kept[column].notna() & (kept[column] >= threshold)]
    pattern = re.compile(speaker_pattern) if speaker_pattern else None
    layout = results.config.inputs.layout
    kept["speaker"] = [speaker_of(source_id, pattern, layout) for source_id in kept.source_id]
    held = kept.speaker.isin(hold_out or set())
    val = split_speakers(list(kept.speaker[~held]), val_fraction, seed)
    kept["split"] = np.where(held, "test", np.where(kept.speaker.isin(val), "val", "train"))
    root = results.output_dir.resolve()
    kept["abs_path"] = [str(root / path) for path in kept.path]
    return kept.sort_values("clip_id").reset_index(drop=True)


def write_file_lists(table: pd.DataFrame, out_dir: Path, test: bool = False) -> dict[str, Path]:
    """train.txt and val.txt (one absolute path a line, as LatentSync's trainers read them), with `test` also
    test.txt (else an earlier one is removed: it would disagree with the rest), and split.parquet."""
    writable_folder(out_dir, "--out")
    written = {}
    if not test:
        (out_dir / "test.txt").unlink(missing_ok=True)
    for split in ("train", "val", "test")[:3 if test else 2]:
        path = out_dir / f"{split}.txt"
        lines = table.abs_path[table.split == split]
        partial = path.with_name(path.name + ".partial")
        partial.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        partial.replace(path)
        written[split] = path
    written["split"] = out_dir / "split.parquet"
    partial = written["split"].with_name("split.parquet.partial")
    table.to_parquet(partial, index=False)
    partial.replace(written["split"])
    return written
