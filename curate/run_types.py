"""What the steps of `curate run` hand each other: the options of a run, its plan, what it has found so far
(and what its clip stages cost), and the summary it ends with. Plain data; no step's logic lives here."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from curate.config import Config
from curate.scan import ScanResult


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
    todo: pa.Table                    # the sources to process, longest first: SourceTask's fields and `why`
    reused: int                       # sources whose recorded results are still valid
    clip_todo: dict = field(default_factory=dict)       # clip stage -> ClipWork the reused sources still owe it
    owed: dict = field(default_factory=dict)            # source_id -> the record those clip stages continue from
    owed_why: dict = field(default_factory=dict)        # clip stage -> Counter of why its clips are owed


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
    planned: Counter = field(default_factory=Counter)    # dry run: why a source would be processed -> how many
    planned_sample: list = field(default_factory=list)   # dry run: the first (source_id, why) of them


@dataclass
class State:
    """What a run did: the sources it processed and what their source pass cost per stage, the clips each clip
    stage scored and what that cost, and the parts it wrote."""

    processed: int = 0
    seconds_processed: float = 0.0                     # declared duration of the sources processed
    source_cpu: Counter = field(default_factory=Counter)       # source-pass stage -> CPU seconds
    source_media: Counter = field(default_factory=Counter)     # source-pass stage -> seconds of video
    source_computed: Counter = field(default_factory=Counter)  # source-pass stage -> sources it really ran for
    staged: Counter = field(default_factory=Counter)  # clip stage -> clips it ran for in this run
    stage_cost: defaultdict = field(default_factory=lambda: defaultdict(Cost))  # clip stage -> what it cost
    parts_written: int = 0
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
