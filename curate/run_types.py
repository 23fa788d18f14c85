"""What the steps of `curate run` hand each other: the options of a run, its plan, what it has found so far
(and what its clip stages cost), and the summary it ends with. Plain data; no step's logic lives here."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from curate.config import Config
from curate.scan import ScanResult
from curate.source_task import SourceTask


@dataclass
class RunOptions:
    input_dir: Path
    output_dir: Path
    config: Config
    address: str | None = None
    num_cpus: int | None = None
    dry_run: bool = False
    progress: bool | None = None      # None: bars when stderr is a terminal
    command: str = ""


@dataclass
class Plan:
    scan: ScanResult
    todo: list[SourceTask]
    reused: dict[str, dict]           # source_id -> journal record still valid
    previous: dict[str, dict]         # source_id -> newest journal record, valid or not
    why: dict[str, str]               # source_id -> why it is (re)processed
    stage_records: dict = field(default_factory=dict)   # (clip_id, stage) -> newest clip-stage record
    clip_todo: dict = field(default_factory=dict)       # clip stage -> ClipWork of reused sources it still owes


@dataclass
class RunSummary:
    sources_found: int = 0
    sources_processed: int = 0
    sources_reused: int = 0
    sources_rejected: int = 0
    clips_kept: int = 0
    clips_rejected: int = 0
    seconds_in: float = 0.0
    seconds_out: float = 0.0
    wall_s: float = 0.0
    cluster_cpus: float | None = None
    cpu_s: float = 0.0                # source-pass CPU over the sources processed in this run
    seconds_processed: float = 0.0    # declared duration of the sources processed in this run
    rejects: Counter = field(default_factory=Counter)   # (kind, stage, reason) -> count
    skipped_paths: list = field(default_factory=list)
    clips_staged: dict = field(default_factory=dict)    # clip stage -> clips it ran for in this run
    stage_timings: list = field(default_factory=list)   # per stage, in run order: what it cost in this run
    planned_clips: dict = field(default_factory=dict)   # dry run: clip stage -> Counter of why, for its clips
    warnings: list = field(default_factory=list)        # dry run: what would stop a real run
    planned: dict = field(default_factory=dict)          # dry run: source_id -> why it would be processed


@dataclass
class State:
    """What a run has found so far: the current source records and clip-stage records, what ran now."""

    records: dict                      # source_id -> source record
    stage_records: dict                # (clip_id, stage) -> clip-stage record
    processed: set = field(default_factory=set)       # sources whose pass ran in this run
    staged: Counter = field(default_factory=Counter)  # stage -> clips it ran for in this run
    stage_cost: defaultdict = field(default_factory=lambda: defaultdict(Cost))  # clip stage -> what it cost
    cluster_cpus: float | None = None


@dataclass
class Cost:
    """What a clip stage's batches took, summed: CPU and wall seconds of its actors, seconds of clips."""

    cpu_s: float = 0.0
    wall_s: float = 0.0
    clip_s: float = 0.0

    def add(self, cpu_s: float, wall_s: float, clip_s: float) -> None:
        self.cpu_s += cpu_s
        self.wall_s += wall_s
        self.clip_s += clip_s
