"""Execute a planned run on Ray. One Ray task per source runs the fused source pass (curate.source_pass) and
streams its events back: a clip moves on the moment it is written, and there is no barrier between stages or
sources. The clip-stage pools (curate.pools) take the clips kept. Here too: stalled source tasks are killed,
failures that outlast the retries become the source's reject row, an output error stops the run, and each
finished source is settled (its stale clip files removed) and appended to the journal. The driver is the only
writer of the journal; workers write only clip files, each atomically."""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from curate.clip_chain import clip_work, following_stage
from curate.cluster import connect_ray
from curate.config import CLIP_STAGES, DRIVER_STAGES
from curate.errors import RunError
from curate.progress import Progress
from curate.run_checks import check_pools_placeable, pools_fit
from curate.run_plan import tasks
from curate.run_types import Plan, RunOptions, State
from curate.source_entry import source_pass
from curate.source_task import SourceTask, TransientSourceError
from manifests import io as mio
from manifests.dataset import PartWriter, rows_of
from manifests.files import OutputError


class Books:
    """The driver's record of a run as it goes. A finished source is appended to the journal at once (fsync'd);
    once its clips are settled too (every clip stage scored them, or one rejected them) its rows go to the
    manifests' next part. When a part is written the journal is cut back to the sources still unsettled, so
    neither grows with the run: memory holds the sources in flight and one part's rows."""

    def __init__(self, options: RunOptions, state: State):
        self.config = options.config
        self.output_dir = options.output_dir
        self.state = state
        self.journal = mio.Journal(options.output_dir)
        run = options.config.run
        self.writer = PartWriter(options.output_dir, run.part_sources, run.part_seconds)
        self.unsettled: dict[str, _Unsettled] = {}

    def source(self, record: dict, owed: int) -> None:
        """A source's pass finished (or its clips are to be scored again): `owed` of its clips go down the chain."""
        self.journal.append(record)
        self.unsettled[record["source_id"]] = _Unsettled(record, owed)
        if not owed:
            self._settle(record["source_id"])

    def stage(self, record: dict, chain_over: bool) -> None:
        """A clip stage's result for one clip; `chain_over` when no stage follows for it."""
        self.journal.append(record)
        entry = self.unsettled[record["source_id"]]
        entry.stage_records[(record["clip_id"], record["stage"])] = record
        if chain_over:
            entry.owed -= 1
            if not entry.owed:
                self._settle(record["source_id"])

    def clip_row(self, work) -> dict:
        """The row of the clip a ClipWork of an unsettled source stands for."""
        return next(clip for clip in self.unsettled[work.source_id].record["clips"] if clip["clip_id"] == work.clip_id)

    def _settle(self, source_id: str) -> None:
        entry = self.unsettled.pop(source_id)
        self.writer.add(*rows_of(entry.record, entry.stage_records, self.config.clip_stages()))
        if self.writer.due():
            self.flush()

    def flush(self) -> None:
        if self.writer.flush():
            self.state.parts_written += 1
            self.journal.rewrite(r for entry in self.unsettled.values()
                                 for r in (entry.record, *entry.stage_records.values()))

    def close(self) -> None:
        self.journal.close()


@dataclass
class _Unsettled:
    record: dict
    owed: int                                   # its clips still in the chain of clip stages
    stage_records: dict = field(default_factory=dict)


def execute(options: RunOptions, plan: Plan, models: dict) -> State:
    """Run the planned sources on Ray, and the clip stages on what they (and earlier runs) kept."""
    state = State()
    if not len(plan.todo) and not any(plan.clip_todo.values()):
        return state
    import ray

    config = options.config
    started_ray = _connect_ray(options)
    books = Books(options, state)
    progress = Progress(total=len(plan.scan.sources), enabled=options.progress, clip_stages=config.clip_stages())
    progress.reused(plan.reused)
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
            from curate.duplicates import DuplicateStage
            from curate.pools import ClipStagePool

            weights = {"sync": "syncnet", "quality": "hyperiqa"}
            check_pools_placeable(config)
            reserve = pools_fit(config, state.cluster_cpus)
            for stage in config.clip_stages():
                pools[stage] = DuplicateStage(config, options.output_dir, plan, books.clip_row) \
                    if stage in DRIVER_STAGES else \
                    ClipStagePool(stage, config, models[weights[stage]][0], reserve_cpus=reserve)
            owed = Counter(work.source_id for works in plan.clip_todo.values() for work in works)
            for source_id, record in plan.owed.items():
                books.source(record, owed[source_id])
            for stage, pool in pools.items():
                pool.add(plan.clip_todo.get(stage, []))
        pending = tasks(plan, options)
        queued = next(pending, None)
        running: dict = {}                 # generator -> _InFlight
        while queued is not None or running or any(pool.busy for pool in pools.values()):
            # a clip stage that falls behind holds the source tasks back: its queue stays bounded
            backlog = sum(pool.queued for pool in pools.values())
            while queued is not None and len(running) < limit and backlog < config.run.max_queued_clips:
                running[remote.remote(queued, config)] = _InFlight(queued)
                queued = next(pending, None)
            upstream = bool(queued is not None or running)
            for pool in pools.values():    # in chain order: a pool waits while the ones before it still work
                pool.dispatch(upstream_running=upstream)
                upstream = upstream or pool.busy
            for pool in pools.values():    # a stage the driver runs itself (duplicates) judges its queue at once
                while getattr(pool, "local", False) and pool.busy:
                    _stage_results(pool, pool.run(), pools, books, progress)
            owner = {ref: pool for pool in pools.values() for ref in pool.refs()}
            waiting = list(running) + list(owner)
            ready = ray.wait(waiting, num_returns=1, timeout=1.0)[0] if waiting else []
            for ref in ready:
                if ref in running:
                    _source_event(ref, running, books, progress, pools)
                else:
                    _stage_results(owner[ref], ref, pools, books, progress)
            for generator in _stalled(running, config.run.stall_timeout_s):
                ray.cancel(generator, force=True)  # kills the worker: a hung decoder does not come back
                flight = running.pop(generator)
                flight.fail("stalled", f"the source task showed no sign of life for {config.run.stall_timeout_s:g} s "
                                       "and was killed (run.stall_timeout_s)")
                _complete(flight, books, progress, pools)
            if books.writer.due():
                books.flush()
        books.flush()
        return state
    except OSError as exc:
        raise RunError(f"cannot write to output folder {options.output_dir}: {exc.strerror or exc}; stopping. "
                       "Rerun to continue once it is writable.") from None
    finally:
        books.close()
        progress.close()
        for pool in pools.values():
            pool.close()
        if started_ray:
            ray.shutdown()


def _stalled(running: dict, limit_s: float) -> list:
    """The source tasks that started and then went silent for `limit_s` (a task still queued is not watched)."""
    now = time.monotonic()
    return [generator for generator, flight in running.items()
            if flight.last_seen is not None and now - flight.last_seen > limit_s]


def _source_event(generator, running: dict, books: Books, progress: Progress, pools: dict) -> None:
    """Take the next event of a source task; when it is the last, settle the source."""
    import ray

    flight = running[generator]
    try:
        event = ray.get(next(generator))
    except StopIteration:
        del running[generator]
        if not flight.done:
            flight.fail("worker_error", "the source task ended without a result")
            _complete(flight, books, progress, pools)
        return
    except Exception as exc:  # noqa: BLE001 - every failure becomes the source's reject row
        cause = getattr(exc, "cause", None) or exc
        if isinstance(cause, OutputError):
            for other in running:
                ray.cancel(other, force=True)
            raise RunError(f"{cause}; stopping. Free space or fix permissions, then rerun to continue.") from None
        del running[generator]
        flight.fail(*_describe_failure(exc))
        _complete(flight, books, progress, pools)
        return
    flight.last_seen = time.monotonic()
    flight.take(event, progress)
    if flight.done:
        _complete(flight, books, progress, pools)


def _stage_results(pool, ref, pools: dict, books: Books, progress: Progress) -> None:
    """File what a clip stage found for a batch of clips; send the clips it kept on to the next stage."""
    config, state = books.config, books.state
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
        following = following_stage(pool.stage, row, config)
        books.stage({"kind": "stage", "stage": pool.stage, "source_id": work.source_id, "clip_id": work.clip_id,
                     "generation": work.generation, "fingerprint": fingerprint, "row": row},
                    chain_over=following is None)
        state.staged[pool.stage] += 1
        progress.staged(pool.stage, row)
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


def _complete(flight: _InFlight, books: Books, progress: Progress, pools: dict) -> None:
    """A source is finished: settle its clips, remove outputs it no longer has, record it, and send its kept
    clips on to the clip stages."""
    task, source = flight.task, dict(flight.source)
    clips, output_dir, config = flight.clips, books.output_dir, books.config
    if source["status"] == "rejected":
        # a source rejected partway (decode error, truncation, crash): none of its clips are kept
        for clip in clips:
            if clip["status"] == "kept":
                clip.update(status="rejected", reject_stage=source["reject_stage"],
                            reject_reason=source["reject_reason"],
                            reject_detail=f"source rejected: {source['reject_detail']}",
                            path=None, bytes=None, width=None, height=None, write_status=None, landmarks_path=None)
    for clip in clips:
        if clip["status"] == "kept":
            clip.update({f"{stage}_status": "skipped" for stage in CLIP_STAGES if config.skipped(stage)})
    source["n_clips"] = len(clips)
    # what an earlier processing (or a killed attempt) left in the source's folder and it no longer has
    _remove_source_outputs(output_dir, task.out_key,
                           keep={p for clip in clips for p in (clip.get("path"), clip.get("landmarks_path")) if p})
    record = {
        "source_id": task.source_id, "size_bytes": task.size_bytes, "mtime_ns": task.mtime_ns,
        "sha256": source.get("sha256"), "fingerprint": task.fingerprints["write"],
        "fingerprints": task.fingerprints, "generation": uuid.uuid4().hex, "source": source, "clips": clips,
    }
    _count(books.state, source)
    work = clip_work(record, output_dir) if pools else []
    books.source(record, len(work))
    progress.done()
    if work:  # a new generation has no clip-stage results yet: its clips start at the first clip stage
        next(iter(pools.values())).add(work)


def _count(state: State, source: dict) -> None:
    """What the source pass cost, per stage (shots replayed from an earlier run do not count as computed)."""
    state.processed += 1
    state.seconds_processed += source.get("duration_s") or 0.0
    for stage, spent in (source.get("cpu_s") or {}).items():
        state.source_cpu[stage] += spent
        state.source_media[stage] += source.get("duration_s") or 0.0
        if not (stage == "shots" and source.get("shots_reused")):
            state.source_computed[stage] += 1


def _remove_source_outputs(output_dir: Path, out_key: str, keep: set[str]) -> None:
    """Remove the files in a source's clip folder that are not among `keep` (paths relative to the output)."""
    folder = output_dir / "clips" / out_key
    if folder.is_dir():
        for path in folder.iterdir():
            relative = path.relative_to(output_dir).as_posix()
            if path.is_file() and relative not in keep:
                _remove_output(output_dir, relative)


def _remove_output(output_dir: Path, relative: str | None) -> None:
    """Delete one of our own clip files (never anything outside <output>/clips)."""
    if not relative:
        return
    target = (output_dir / relative).resolve()
    clips_root = (output_dir / "clips").resolve()
    if clips_root in target.parents:
        target.unlink(missing_ok=True)
