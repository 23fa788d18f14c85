"""The driver of `curate run`: scan, plan against the journal, stream sources through Ray, write manifests.

One Ray task per source runs the fused source pass (curate.source_pass) and streams its events back: a clip
moves on the moment it is written, and there is no barrier between stages or sources. The driver is the only
writer of the journal and the manifests; workers write only clip files, each atomically.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from curate.cluster import connect_ray
from curate.config import CLIP_STAGES, Config
from curate.errors import RunError
from curate.lock import OutputLock
from curate.progress import Progress
from curate.scan import ScanResult, ScannedSource, scan_inputs
from curate.source_entry import source_pass
from curate.source_task import SourceTask, TransientSourceError
from manifests import io as mio
from manifests import schema
from manifests.files import OutputError


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


def check_input(input_dir: Path, output_dir: Path) -> None:
    """Fail early, with the reason, on an input folder that cannot be read."""
    if not input_dir.exists():
        raise RunError(f"input folder {input_dir} does not exist")
    if not input_dir.is_dir():
        raise RunError(f"input {input_dir} is not a folder")
    if not os.access(input_dir, os.R_OK | os.X_OK):
        raise RunError(f"input folder {input_dir} cannot be read")
    if input_dir.resolve() == output_dir.resolve():
        raise RunError("the output folder must not be the input folder")


def check_output(output_dir: Path, create: bool = True) -> None:
    """Fail early on an output folder that cannot be written; make it when `create`."""
    if output_dir.exists() and not output_dir.is_dir():
        raise RunError(f"output {output_dir} is a file, not a folder")
    if not create:
        existing = next((p for p in [output_dir, *output_dir.parents] if p.exists()), None)
        if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise RunError(f"cannot write to output folder {output_dir}")
        return
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / f".curate-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise RunError(f"cannot write to output folder {output_dir}: {exc.strerror or exc}") from None


def check_models(config: Config, fetch: bool = True) -> dict[str, list[str]]:
    """Every enabled stage's code and weights must be here, verified, before any work starts. Files with a
    public location are fetched on first use (unless `fetch` is off, as in a dry run); what is still missing
    then stops the run with one message naming every file, the folder it belongs in, the command that gets
    it, and the one --skip that does without all of them. Returns the weight paths the workers load, per
    model."""
    from curate.models import MODELS, ModelError, download_model, require
    from faces.landmarks import BackendUnavailable, check_backend

    problems: list[tuple[str, str]] = []   # (stage, what is wrong)
    needed = []
    if not config.skipped("face"):
        try:
            check_backend(config.stages.face.backend)  # the code; the weights are checked next
            needed.append((config.stages.face.backend, "face"))
        except BackendUnavailable as exc:
            if config.stages.face.backend != "fan":
                problems.append(("face", str(exc)))
            else:   # FAN's files are models too: require() names what is missing of them
                needed.append((config.stages.face.backend, "face"))
    if not config.skipped("sync"):
        needed.append(("syncnet", "sync"))
    if not config.skipped("quality"):
        needed.append(("hyperiqa", "quality"))
    paths = {}
    for model, stage in needed:
        try:
            paths[model] = [str(p) for p in require(model, config.models)]
            continue
        except ModelError as exc:
            problem = exc
        if fetch and any(file.url for file in MODELS[model][1]):
            try:
                download_model(model, config.models, progress=lambda line: print(line, file=sys.stderr), timeout=20)
                paths[model] = [str(p) for p in require(model, config.models)]
                continue
            except ModelError as exc:
                print(f"curate: {exc}", file=sys.stderr)
        problems.append((stage, str(problem)))
    if problems:
        stages = [stage for stage, _ in problems]
        # without the face stage there are no clip stages either, so --skip face alone gets past everything
        skip = "face" if "face" in stages else ",".join(stages)
        label = "stage" if "," not in skip else "stages"
        raise RunError("; ".join(text for _, text in problems) + f"; or run without the {skip.replace(',', ' and ')} "
                       f"{label}: --skip {skip}")
    return paths


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


def clip_work(record: dict, output_dir: Path) -> list:
    """What a clip stage gets for each clip the source pass kept."""
    from curate.pools import ClipWork

    root = output_dir.resolve()
    return [ClipWork(record["source_id"], clip["clip_id"], record.get("generation", ""), str(root / clip["path"]),
                     str(root / clip["landmarks_path"]) if clip.get("landmarks_path") else None,
                     clip.get("duration_s") or 0.0)
            for clip in record["clips"] if clip["status"] == "kept" and clip.get("path")]


def next_clip_stage(stage_records: dict, work, config: Config) -> str | None:
    """The first clip stage this clip still needs; None when it is settled: every stage has a valid result,
    or one of them rejected it."""
    fingerprints = config.stage_fingerprints()
    for stage in config.clip_stages():
        result = _stage_result(stage_records, work, stage, fingerprints[stage])
        if result is None:
            return stage
        if result["row"].get("status") == "rejected":
            return None
    return None


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
                result = _stage_result(plan.stage_records, work, stage, fingerprints[stage])
                if result is None:
                    # the stages before it hold valid results, so a stale one means its own settings changed
                    recorded = plan.stage_records.get((work.clip_id, stage))
                    stale = recorded is not None and recorded["generation"] == work.generation
                    owed[stage][f"stages.{stage} settings changed" if stale else f"no {stage} result yet"] += 1
                    first = stage
                elif result["row"].get("status") == "rejected":
                    break
    return owed


def _stage_result(stage_records: dict, work, stage: str, fingerprint: str) -> dict | None:
    """The recorded result of `stage` for this clip (a ClipWork), if it belongs to the clip's generation and
    to these settings."""
    record = stage_records.get((work.clip_id, stage))
    if record is None or record["generation"] != work.generation or record["fingerprint"] != fingerprint:
        return None
    return record


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


def run(options: RunOptions) -> RunSummary:
    started_at = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    check_input(options.input_dir, options.output_dir)
    if options.dry_run:
        check_output(options.output_dir, create=False)
        plan = make_plan(options)
        summary = _dry_summary(plan)
        summary.planned_clips = clip_stage_plan(plan, options.config, options.output_dir)
        try:
            check_models(options.config, fetch=False)
        except RunError as exc:
            summary.warnings.append(str(exc))
        return summary
    check_output(options.output_dir, create=False)
    models = check_models(options.config)
    check_output(options.output_dir)
    with OutputLock(options.output_dir):
        plan = make_plan(options)
        state = _execute(options, plan, models)
        summary = _finish(options, plan, state, started_at, time.perf_counter() - t0)
    return summary


# -- execution ------------------------------------------------------------------------------------

@dataclass
class _State:
    """What a run has found so far: the current source records and clip-stage records, what ran now."""

    records: dict                      # source_id -> source record
    stage_records: dict                # (clip_id, stage) -> clip-stage record
    processed: set = field(default_factory=set)       # sources whose pass ran in this run
    staged: Counter = field(default_factory=Counter)  # stage -> clips it ran for in this run
    stage_cost: defaultdict = field(default_factory=lambda: defaultdict(_Cost))  # clip stage -> what it cost
    cluster_cpus: float | None = None


@dataclass
class _Cost:
    """What a clip stage's batches took, summed: CPU and wall seconds of its actors, seconds of clips."""

    cpu_s: float = 0.0
    wall_s: float = 0.0
    clip_s: float = 0.0

    def add(self, cpu_s: float, wall_s: float, clip_s: float) -> None:
        self.cpu_s += cpu_s
        self.wall_s += wall_s
        self.clip_s += clip_s


def _execute(options: RunOptions, plan: Plan, models: dict) -> _State:
    """Run the planned sources on Ray, and the clip stages on what they (and earlier runs) kept."""
    state = _State(records=dict(plan.reused), stage_records=dict(plan.stage_records))
    if not plan.todo and not any(plan.clip_todo.values()):
        return state
    import ray

    config = options.config
    started_ray = _connect_ray(options)
    journal = mio.Journal(options.output_dir)
    progress = Progress(total=len(plan.scan.sources), enabled=options.progress, clip_stages=config.clip_stages())
    progress.reused(len(plan.reused))
    pools: dict = {}                       # clip stage -> ClipStagePool, in chain order
    try:
        resources = config.resources.source_pass
        remote = _remote_source_pass().options(
            num_cpus=resources.num_cpus, num_gpus=resources.num_gpus,
            memory=resources.memory_mb * 1024 * 1024, max_retries=config.run.max_retries,
            retry_exceptions=[TransientSourceError],
        )
        state.cluster_cpus = ray.cluster_resources().get("CPU", 1)
        limit = config.run.max_in_flight or max(2, int(2 * state.cluster_cpus / resources.num_cpus))
        if config.clip_stages():
            from curate.pools import ClipStagePool

            weights = {"sync": "syncnet", "quality": "hyperiqa"}
            check_pools_placeable(config)
            reserve = pools_fit(config, state.cluster_cpus)
            for stage in config.clip_stages():
                pools[stage] = ClipStagePool(stage, config, models[weights[stage]][0], reserve_cpus=reserve)
                pools[stage].add(plan.clip_todo.get(stage, []))
        pending = list(reversed(plan.todo))
        running: dict = {}                 # generator -> _InFlight
        while pending or running or any(pool.busy for pool in pools.values()):
            while pending and len(running) < limit:
                task = pending.pop()
                running[remote.remote(task, config)] = _InFlight(task)
            upstream = bool(pending or running)
            for pool in pools.values():    # in chain order: a pool waits while the ones before it still work
                pool.dispatch(upstream_running=upstream)
                upstream = upstream or pool.busy
            owner = {ref: pool for pool in pools.values() for ref in pool.refs()}
            ready, _ = ray.wait(list(running) + list(owner), num_returns=1, timeout=1.0)
            for ref in ready:
                if ref in running:
                    _source_event(ref, running, plan, state, journal, progress, pools, options.output_dir)
                else:
                    _stage_results(owner[ref], ref, pools, config, state, journal, progress)
            for generator in _stalled(running, config.run.stall_timeout_s):
                ray.cancel(generator, force=True)  # kills the worker: a hung decoder does not come back
                flight = running.pop(generator)
                flight.fail("stalled", f"the source task showed no sign of life for {config.run.stall_timeout_s:g} s "
                                       "and was killed (run.stall_timeout_s)")
                _complete(flight, plan, state, journal, progress, pools, options.output_dir)
        return state
    except OSError as exc:
        raise RunError(f"cannot write to output folder {options.output_dir}: {exc.strerror or exc}; stopping. "
                       "Rerun to continue once it is writable.") from None
    finally:
        journal.close()
        progress.close()
        for pool in pools.values():
            pool.close()
        if started_ray:
            ray.shutdown()


def pools_fit(config: Config, cluster_cpus: float) -> bool:
    """Whether the clip-stage actors can hold their CPUs and leave room for a source task. They live for the
    whole run, so on a small machine (2 cores: sync 1 + quality 1) they would hold every CPU while they wait
    for clips that no source task can run to make: a deadlock. Then they hold none and share the cores."""
    wanted = sum(getattr(config.resources, stage).num_cpus * getattr(config.resources, stage).workers
                 for stage in config.clip_stages())
    return wanted + config.resources.source_pass.num_cpus <= cluster_cpus


def _stalled(running: dict, limit_s: float) -> list:
    """The source tasks that started and then went silent for `limit_s` (a task still queued is not watched)."""
    now = time.monotonic()
    return [generator for generator, flight in running.items()
            if flight.last_seen is not None and now - flight.last_seen > limit_s]


def _source_event(generator, running: dict, plan: Plan, state: _State, journal: mio.Journal,
                  progress: Progress, pools: dict, output_dir: Path) -> None:
    """Take the next event of a source task; when it is the last, settle the source."""
    import ray

    flight = running[generator]
    try:
        event = ray.get(next(generator))
    except StopIteration:
        del running[generator]
        if not flight.done:
            flight.fail("worker_error", "the source task ended without a result")
            _complete(flight, plan, state, journal, progress, pools, output_dir)
        return
    except Exception as exc:  # noqa: BLE001 - every failure becomes the source's reject row
        cause = getattr(exc, "cause", None) or exc
        if isinstance(cause, OutputError):
            for other in running:
                ray.cancel(other, force=True)
            raise RunError(f"{cause}; stopping. Free space or fix permissions, then rerun to continue.") from None
        del running[generator]
        flight.fail(*_describe_failure(exc))
        _complete(flight, plan, state, journal, progress, pools, output_dir)
        return
    flight.last_seen = time.monotonic()
    flight.take(event, progress)
    if flight.done:
        _complete(flight, plan, state, journal, progress, pools, output_dir)


def _stage_results(pool, ref, pools: dict, config: Config, state: _State, journal: mio.Journal,
                   progress: Progress) -> None:
    """File what a clip stage found for a batch of clips; send the clips it kept on to the next stage."""
    batch, result = pool.collect(ref)
    if isinstance(result, Exception):
        cause = getattr(result, "cause", None) or result
        if isinstance(cause, OutputError):
            raise RunError(f"{cause}; stopping. Free space or fix permissions, then rerun to continue.") from None
        text = (str(cause).strip().splitlines() or [type(cause).__name__])[-1][:500]
        rows = [{"clip_id": work.clip_id, f"{pool.stage}_status": "rejected", "status": "rejected",
                 "reject_stage": pool.stage, "reject_reason": f"{pool.stage}_error",
                 "reject_detail": f"the {pool.stage} worker failed: {text}"}
                for work in batch]
    else:
        rows, cpu_s, wall_s = result
        state.stage_cost[pool.stage].add(cpu_s, wall_s, sum(work.duration_s for work in batch))
    fingerprint = config.stage_fingerprints()[pool.stage]
    for work, row in zip(batch, rows):
        record = {"kind": "stage", "stage": pool.stage, "source_id": work.source_id, "clip_id": work.clip_id,
                  "generation": work.generation, "fingerprint": fingerprint, "row": row}
        journal.append(record)
        state.stage_records[(work.clip_id, pool.stage)] = record
        state.staged[pool.stage] += 1
        progress.staged(pool.stage, row)
        following = next_clip_stage(state.stage_records, work, config)
        if following is not None:
            pools[following].add([work])


_REMOTE = None


def _remote_source_pass():
    """The Ray task: defined on first use so that importing this module does not import Ray."""
    global _REMOTE
    if _REMOTE is None:
        import ray

        _REMOTE = ray.remote(source_pass)
    return _REMOTE


def _connect_ray(options: RunOptions) -> bool:
    """Attach to a cluster when an address is given, else start an embedded one. True if we started it."""
    address = options.address or os.environ.get("RAY_ADDRESS") or options.config.run.address
    return connect_ray(address, options.num_cpus or options.config.run.num_cpus)


def check_pools_placeable(config: Config) -> None:
    """An actor that asks for more CPUs or GPUs than any one node has would never start, and the run would wait
    for it forever: say so instead."""
    import ray

    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    for stage in config.clip_stages():
        wants = getattr(config.resources, stage)
        for kind, amount in (("CPU", wants.num_cpus), ("GPU", wants.num_gpus)):
            most = max((node.get(kind, 0) for node in nodes), default=0)
            if amount > most:
                raise RunError(f"resources.{stage}.num_{kind.lower()}s is {amount:g} but no node of the cluster has "
                               f"more than {most:g} {kind}s: lower it, or add such a node")


@dataclass
class _InFlight:
    task: SourceTask
    clips: list[dict] = field(default_factory=list)
    source: dict | None = None
    duration_s: float = 0.0
    last_seen: float | None = None    # when its last event came (None: not started yet)

    @property
    def done(self) -> bool:
        return self.source is not None

    def take(self, event: dict, progress: Progress) -> None:
        kind = event["event"]
        if kind == "probed":
            self.duration_s = event["duration_s"]
            progress.probed(ok=True)
        elif kind == "clip":
            self.clips.append(event["row"])
            progress.clip(event["row"])
        elif kind == "source":
            self.source = event["row"]
            if self.source["status"] == "rejected" and self.source["reject_stage"] == "probe" and not self.duration_s:
                progress.probed(ok=False)
            progress.source(self.source)

    def fail(self, reason: str, detail: str) -> None:
        task = self.task
        self.source = {
            "source_id": task.source_id, "path": task.path, "size_bytes": task.size_bytes,
            "mtime_ns": task.mtime_ns, "sha256": task.sha256, "fingerprint": task.fingerprints["write"],
            "status": "rejected", "reject_stage": "worker", "reject_reason": reason, "reject_detail": detail,
            "duration_s": self.duration_s or None,
        }


def _describe_failure(exc: Exception) -> tuple[str, str]:
    import ray

    if isinstance(exc, ray.exceptions.WorkerCrashedError):
        return "worker_crashed", "the worker process died on every attempt"
    if isinstance(exc, ray.exceptions.OutOfMemoryError):
        return "out_of_memory", "the worker ran out of memory on every attempt"
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip().splitlines()
    return "worker_error", (text[-1] if text else type(cause).__name__)[:500]


def _complete(flight: _InFlight, plan: Plan, state: _State, journal: mio.Journal, progress: Progress,
              pools: dict, output_dir: Path) -> None:
    """A source is finished: settle its clips, remove outputs it no longer has, record it in the journal, and
    send its kept clips on to the clip stages."""
    task, source = flight.task, dict(flight.source)
    clips = flight.clips
    if source["status"] == "rejected":
        # a source rejected partway (decode error, truncation, crash): none of its clips are kept, and
        # anything an attempt wrote in its folder goes, reported to us or not
        _remove_source_outputs(output_dir, task.out_key)
        for clip in clips:
            if clip["status"] == "kept":
                clip.update(status="rejected", reject_stage=source["reject_stage"],
                            reject_reason=source["reject_reason"],
                            reject_detail=f"source rejected: {source['reject_detail']}",
                            path=None, bytes=None, width=None, height=None, write_status=None, landmarks_path=None)
    source["n_clips"] = len(clips)
    previous = plan.previous.get(task.source_id)
    if previous is not None:
        current = {p for clip in clips for p in (clip.get("path"), clip.get("landmarks_path")) if p}
        for old in previous.get("clips", []):
            for path in (old.get("path"), old.get("landmarks_path")):
                if path and path not in current:
                    _remove_output(output_dir, path)
    record = {
        "source_id": task.source_id, "size_bytes": task.size_bytes, "mtime_ns": task.mtime_ns,
        "sha256": source.get("sha256"), "fingerprint": task.fingerprints["write"],
        "fingerprints": task.fingerprints, "generation": uuid.uuid4().hex, "source": source, "clips": clips,
    }
    journal.append(record)
    state.records[task.source_id] = record
    state.processed.add(task.source_id)
    progress.done()
    if pools:  # a new generation has no clip-stage results yet: its clips start at the first clip stage
        next(iter(pools.values())).add(clip_work(record, output_dir))


def _remove_source_outputs(output_dir: Path, out_key: str) -> None:
    folder = output_dir / "clips" / out_key
    if folder.is_dir():
        for path in folder.iterdir():
            if path.is_file():
                _remove_output(output_dir, path.relative_to(output_dir).as_posix())


def _remove_output(output_dir: Path, relative: str | None) -> None:
    """Delete one of our own clip files (never anything outside <output>/clips)."""
    if not relative:
        return
    target = (output_dir / relative).resolve()
    clips_root = (output_dir / "clips").resolve()
    if clips_root in target.parents:
        target.unlink(missing_ok=True)


# -- finishing ------------------------------------------------------------------------------------

def _finish(options: RunOptions, plan: Plan, state: _State, started_at: datetime, wall_s: float) -> RunSummary:
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
                        result = _stage_result(state.stage_records, work, stage, fingerprints[stage])
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


def _with_stages(clip: dict, work, state: _State, config: Config) -> dict:
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
        result = _stage_result(state.stage_records, work, stage, fingerprints[stage]) if work is not None else None
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


def _stage_timings(state: _State, config: Config) -> list[dict]:
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
        cost = state.stage_cost.get(stage, _Cost())
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
        import av

        versions["ffmpeg-libavcodec"] = ".".join(map(str, av.library_versions["libavcodec"]))
    except Exception:  # noqa: BLE001 - versions are informative only
        pass
    return versions


def _ray_address(options: RunOptions) -> str:
    return options.address or os.environ.get("RAY_ADDRESS") or options.config.run.address or "local"


def _dry_summary(plan: Plan) -> RunSummary:
    return RunSummary(sources_found=len(plan.scan.sources), sources_processed=0,
                      sources_reused=len(plan.reused), skipped_paths=list(plan.scan.skipped),
                      planned=dict(plan.why), seconds_in=0.0)


def _inside(child: Path, parent: Path) -> bool:
    child, parent = child.resolve(), parent.resolve()
    return child == parent or parent in child.parents


def command_line() -> str:
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
