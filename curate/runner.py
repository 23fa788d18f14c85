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
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from curate.config import Config
from curate.errors import RunError
from curate.lock import OutputLock
from curate.progress import Progress
from curate.scan import ScanResult, ScannedSource, scan_inputs
from curate.source_pass import SourceTask, process_source
from manifests import io as mio
from manifests import schema
from stages.write import OutputError


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


def check_models(config: Config, fetch: bool = True) -> None:
    """Every enabled stage's code and weights must be here before any work starts. Weights with a public
    location are fetched on first use (unless `fetch` is off, as in a dry run); if that fails, the run stops
    with the file, the folder it belongs in and the command that gets it."""
    from curate.models import MODELS, DownloadError, download_model
    from stages.face_landmarks import BackendUnavailable, check_backend

    if "face" in config.run.skip:
        return
    backend = config.stages.face.backend
    try:
        check_backend(backend)
        return
    except BackendUnavailable as exc:
        problem = exc
    if fetch and backend in MODELS and MODELS[backend][1][0].url is not None:
        try:
            download_model(backend, progress=lambda line: print(line, file=sys.stderr))
            check_backend(backend)
            return
        except (DownloadError, BackendUnavailable) as exc:
            print(f"curate: {exc}", file=sys.stderr)
    raise RunError(f"{problem}; or run without the face stage: --skip face") from None


def make_plan(options: RunOptions) -> Plan:
    config = options.config
    exclude = options.output_dir if _inside(options.output_dir, options.input_dir) else None
    scan = scan_inputs(options.input_dir, config.inputs, exclude=exclude)
    previous = mio.Journal(options.output_dir).latest()
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
    return Plan(scan, todo, reused, previous, why)


def _why(record: dict | None, unchanged: bool, source: ScannedSource, fingerprints: dict[str, str]) -> str:
    if record is None:
        return "new"
    if not unchanged:
        return "file changed"
    if record["source"]["path"] != source.path:
        return "input moved"
    for stage, fingerprint in fingerprints.items():
        if record["fingerprints"].get(stage) != fingerprint:
            return f"{stage} settings changed"
    return "settings changed"


def run(options: RunOptions) -> RunSummary:
    started_at = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    check_input(options.input_dir, options.output_dir)
    check_models(options.config, fetch=not options.dry_run)
    check_output(options.output_dir, create=not options.dry_run)
    if options.dry_run:
        return _dry_summary(make_plan(options))
    with OutputLock(options.output_dir):
        plan = make_plan(options)
        records, processed, cluster_cpus = _execute(options, plan)
        summary = _finish(options, plan, records, processed, started_at, time.perf_counter() - t0, cluster_cpus)
    return summary


# -- execution ------------------------------------------------------------------------------------

def _execute(options: RunOptions, plan: Plan) -> tuple[dict[str, dict], set[str], float | None]:
    """Run the planned sources on Ray; returns every source's current record, the ids processed now and the
    cluster's CPU count."""
    records = dict(plan.reused)
    if not plan.todo:
        return records, set(), None
    import ray

    config = options.config
    started_ray = _connect_ray(options)
    journal = mio.Journal(options.output_dir)
    progress = Progress(total=len(plan.scan.sources), enabled=options.progress)
    progress.reused(len(plan.reused))
    try:
        resources = config.resources.source_pass
        remote = _remote_source_pass().options(
            num_cpus=resources.num_cpus, num_gpus=resources.num_gpus,
            memory=resources.memory_mb * 1024 * 1024, max_retries=config.run.max_retries,
            retry_exceptions=[TransientSourceError],
        )
        cluster_cpus = ray.cluster_resources().get("CPU", 1)
        limit = config.run.max_in_flight or max(2, int(2 * cluster_cpus / resources.num_cpus))
        pending = list(reversed(plan.todo))
        running: dict = {}                 # generator -> _InFlight
        processed: set[str] = set()
        while pending or running:
            while pending and len(running) < limit:
                task = pending.pop()
                running[remote.remote(task, config)] = _InFlight(task)
            ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            for generator in ready:
                flight = running[generator]
                try:
                    event = ray.get(next(generator))
                except StopIteration:
                    del running[generator]
                    if not flight.done:
                        flight.fail("worker_error", "the source task ended without a result")
                        _complete(flight, plan, records, journal, progress)
                        processed.add(flight.task.source_id)
                    continue
                except Exception as exc:  # noqa: BLE001 - every failure becomes the source's reject row
                    cause = getattr(exc, "cause", None) or exc
                    if isinstance(cause, OutputError):
                        for other in running:
                            ray.cancel(other, force=True)
                        raise RunError(f"{cause}; stopping. Free space or fix permissions, then rerun to continue.") from None
                    del running[generator]
                    flight.fail(*_describe_failure(exc))
                    _complete(flight, plan, records, journal, progress)
                    processed.add(flight.task.source_id)
                    continue
                flight.take(event, progress)
                if flight.done:
                    _complete(flight, plan, records, journal, progress)
                    processed.add(flight.task.source_id)
        return records, processed, cluster_cpus
    except OSError as exc:
        raise RunError(f"cannot write to output folder {options.output_dir}: {exc.strerror or exc}; stopping. "
                       "Rerun to continue once it is writable.") from None
    finally:
        journal.close()
        progress.close()
        if started_ray:
            ray.shutdown()


class TransientSourceError(RuntimeError):
    """An unexpected error in a source task: Ray retries it; if it persists, the source is rejected with it."""


_REMOTE = None


def _remote_source_pass():
    """The Ray task: defined on first use so that importing this module does not import Ray."""
    global _REMOTE
    if _REMOTE is None:
        import ray

        def source_pass(task: SourceTask, config: Config):
            try:
                yield from process_source(task, config)
            except OutputError:
                raise
            except Exception as exc:  # noqa: BLE001
                raise TransientSourceError(f"{type(exc).__name__}: {exc}") from exc

        _REMOTE = ray.remote(source_pass)
    return _REMOTE


def _connect_ray(options: RunOptions) -> bool:
    """Attach to a cluster when an address is given, else start an embedded one. True if we started it."""
    import logging

    import ray

    if ray.is_initialized():
        return False
    address = options.address or os.environ.get("RAY_ADDRESS") or options.config.run.address
    if address:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        return False
    num_cpus = options.num_cpus or options.config.run.num_cpus or os.cpu_count()
    ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    return True


@dataclass
class _InFlight:
    task: SourceTask
    clips: list[dict] = field(default_factory=list)
    source: dict | None = None
    duration_s: float = 0.0

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


def _complete(flight: _InFlight, plan: Plan, records: dict, journal: mio.Journal, progress: Progress) -> None:
    """A source is finished: settle its clips, remove outputs it no longer has, record it in the journal."""
    task, source = flight.task, dict(flight.source)
    output_dir = Path(task.output_dir)
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
                            path=None, bytes=None, width=None, height=None, write_status=None)
    source["n_clips"] = len(clips)
    source["n_clips_kept"] = sum(1 for clip in clips if clip["status"] == "kept")
    previous = plan.previous.get(task.source_id)
    if previous is not None:
        current = {clip["path"] for clip in clips if clip.get("path")}
        for old in previous.get("clips", []):
            if old.get("path") and old["path"] not in current:
                _remove_output(output_dir, old["path"])
    record = {
        "source_id": task.source_id, "size_bytes": task.size_bytes, "mtime_ns": task.mtime_ns,
        "sha256": source.get("sha256"), "fingerprint": task.fingerprints["write"],
        "fingerprints": task.fingerprints, "source": source, "clips": clips,
    }
    journal.append(record)
    records[task.source_id] = record
    progress.done()


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

def _finish(options: RunOptions, plan: Plan, records: dict[str, dict], processed: set[str],
            started_at: datetime, wall_s: float, cluster_cpus: float | None) -> RunSummary:
    source_rows, clip_rows = [], []
    for scanned in plan.scan.sources:
        record = records.get(scanned.source_id)
        if record is None:
            continue
        source_rows.append(record["source"])
        clip_rows.extend(record["clips"])
    source_rows.sort(key=lambda row: row["source_id"])
    clip_rows.sort(key=lambda row: (row["source_id"], row["start_frame"]))

    summary = _summarise(plan, source_rows, clip_rows, records, processed)
    summary.wall_s, summary.cluster_cpus = wall_s, cluster_cpus
    out = options.output_dir
    try:
        if processed or not mio.manifest_path(out, "sources").exists():
            mio.write_table(mio.manifest_path(out, "sources"), mio.source_rows_for_parquet(source_rows), schema.SOURCES)
            mio.write_table(mio.manifest_path(out, "clips"), clip_rows, schema.CLIPS)
            mio.Journal(out).rewrite(records[s.source_id] for s in plan.scan.sources if s.source_id in records)
        _append_run(options, plan, summary, records, processed, started_at)
    except OSError as exc:
        raise RunError(f"cannot write manifests in {out}: {exc.strerror or exc}. Rerun to retry; "
                       "finished sources are kept in the journal.") from None
    return summary


def _summarise(plan: Plan, source_rows: list[dict], clip_rows: list[dict], records: dict, processed: set[str]) -> RunSummary:
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


def _append_run(options: RunOptions, plan: Plan, summary: RunSummary, records: dict, processed: set[str],
                started_at: datetime) -> None:
    config = options.config
    cpu: Counter = Counter()
    for source_id in processed:
        for stage, seconds in (records[source_id]["source"].get("cpu_s") or {}).items():
            cpu[stage] += seconds
    timings = [{"stage": stage, "cpu_s": round(cpu.get(stage, 0.0), 4), "sources_computed": _computed(stage, processed, records)}
               for stage in schema.TIMED_STAGES]
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
        "stage_timings": timings,
    }
    path = mio.manifest_path(options.output_dir, "runs")
    mio.write_table(path, mio.read_rows(path) + [row], schema.RUNS)


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
