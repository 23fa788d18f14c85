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
from dataclasses import dataclass, field
from pathlib import Path

from curate.clip_chain import clip_work, next_clip_stage
from curate.cluster import connect_ray
from curate.config import Config
from curate.errors import RunError
from curate.progress import Progress
from curate.run_checks import check_pools_placeable, pools_fit
from curate.run_types import Plan, RunOptions, State
from curate.source_entry import source_pass
from curate.source_task import SourceTask, TransientSourceError
from manifests import io as mio
from manifests.files import OutputError


def execute(options: RunOptions, plan: Plan, models: dict) -> State:
    """Run the planned sources on Ray, and the clip stages on what they (and earlier runs) kept."""
    state = State(records=dict(plan.reused), stage_records=dict(plan.stage_records))
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


def _stalled(running: dict, limit_s: float) -> list:
    """The source tasks that started and then went silent for `limit_s` (a task still queued is not watched)."""
    now = time.monotonic()
    return [generator for generator, flight in running.items()
            if flight.last_seen is not None and now - flight.last_seen > limit_s]


def _source_event(generator, running: dict, plan: Plan, state: State, journal: mio.Journal,
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


def _stage_results(pool, ref, pools: dict, config: Config, state: State, journal: mio.Journal,
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


def _complete(flight: _InFlight, plan: Plan, state: State, journal: mio.Journal, progress: Progress,
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
