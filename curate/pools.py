"""Actor pools for the stages that work on written clips (sync, quality): weights loaded once per actor, clips
handed over in small batches, results streamed back to the driver as they come. A clip the sync stage keeps
moves on to the quality pool at once.

A source's clips join the queue once its source pass has finished, so a source rejected partway (a decode
error late in the file) never has its clips scored or their audio rewritten, and a source task that Ray
retries cannot rewrite a clip another stage has already finished. There is no barrier between sources.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from curate.config import Config


@dataclass(frozen=True)
class ClipWork:
    """One clip waiting for a clip stage, and what its result must be filed under."""

    source_id: str
    clip_id: str
    generation: str      # the source record the clip belongs to; a result for another one is stale
    video: str           # absolute paths
    landmarks: str | None  # None for a clip written without the face stage
    duration_s: float = 0.0
    speaker_group: str | None = None   # the clips of one span's faces: the sync stage keeps the one that speaks
    speaker_cue: float | None = None


def timed(process):
    """A worker's batch method that also returns its CPU seconds (the actor's process: every torch thread)
    and wall seconds, so that a run can report what each clip stage cost."""
    def run(self, work: list[ClipWork]) -> tuple[list[dict], float, float]:
        cpu, wall = time.process_time(), time.perf_counter()
        rows = process(self, work)
        return rows, time.process_time() - cpu, time.perf_counter() - wall
    return run


class SyncWorker:
    """The body of one Ray actor of the sync pool."""

    def __init__(self, config: Config, weights: str, threads: int):
        import torch

        from networks.syncnet.syncnet_v2 import load_syncnet
        from stages.sync import SyncStage
        from stages.sync_score import SyncScorer

        torch.set_num_threads(max(1, threads))
        device = "cuda" if torch.cuda.is_available() else "cpu"
        batch = config.resources.sync.batch_windows
        self.device = device
        self.stage = SyncStage(config.stages.sync, SyncScorer(load_syncnet(weights, device), device, batch))

    @timed
    def process(self, work: list[ClipWork]) -> list[dict]:
        from stages.sync import SyncJob

        jobs = [SyncJob(w.clip_id, w.video, w.landmarks, w.speaker_group, w.speaker_cue) for w in work]
        return self.stage.process(jobs)


class QualityWorker:
    """The body of one Ray actor of the quality pool."""

    def __init__(self, config: Config, weights: str, threads: int):
        import torch

        from networks.hyperiqa import load_hyperiqa
        from stages.quality import QualityStage
        from stages.quality_score import QualityScorer

        torch.set_num_threads(max(1, threads))
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        batch = config.resources.quality.batch_frames
        self.stage = QualityStage(config.stages.quality, QualityScorer(load_hyperiqa(weights, device), device, batch))

    @timed
    def process(self, work: list[ClipWork]) -> list[dict]:
        return self.stage.process([(w.clip_id, w.video) for w in work])


def _same_group(a: ClipWork, b: ClipWork) -> bool:
    return a.speaker_group is not None and a.speaker_group == b.speaker_group


WORKERS = {"sync": SyncWorker, "quality": QualityWorker}


class ClipStagePool:
    """A few actors of one clip stage and the queue that feeds them."""

    def __init__(self, stage: str, config: Config, weights: str, reserve_cpus: bool = True):
        """`reserve_cpus` off: the actors hold no CPU in Ray's books (see run_checks.pools_fit)."""
        import ray

        resources = getattr(config.resources, stage)
        actor = ray.remote(WORKERS[stage]).options(
            num_cpus=resources.num_cpus if reserve_cpus else 0, num_gpus=resources.num_gpus,
            memory=resources.memory_mb * 1024 * 1024, max_restarts=config.run.max_retries,
            max_task_retries=config.run.max_retries,
        )
        threads = max(1, round(resources.num_cpus))
        self.stage = stage
        self.batch = resources.batch_clips
        self._new_actor = lambda: actor.remote(config, weights, threads)
        self.idle = [self._new_actor() for _ in range(resources.workers)]
        self.queue: list[ClipWork] = []
        self.in_flight: dict = {}          # ObjectRef -> (actor, [ClipWork])
        self._last_dispatch = time.monotonic()

    def add(self, work: list[ClipWork]) -> None:
        self.queue.extend(work)

    def dispatch(self, upstream_running: bool) -> None:
        """Hand out full batches; partial ones too when nothing more can arrive or the queue has waited."""
        waited = time.monotonic() - self._last_dispatch > 2.0
        while self.idle and self.queue and (len(self.queue) >= self.batch or not upstream_running or waited):
            end = min(self.batch, len(self.queue))
            while end < len(self.queue) and _same_group(self.queue[end - 1], self.queue[end]):
                end += 1   # one span's faces go together: the stage chooses among them
            batch, self.queue = self.queue[:end], self.queue[end:]
            actor = self.idle.pop()
            self.in_flight[actor.process.remote(batch)] = (actor, batch)
            self._last_dispatch = time.monotonic()

    @property
    def queued(self) -> int:
        return len(self.queue)

    @property
    def busy(self) -> bool:
        return bool(self.queue or self.in_flight)

    def refs(self) -> list:
        return list(self.in_flight)

    def collect(self, ref) -> tuple[list[ClipWork], tuple[list[dict], float, float] | Exception]:
        """The batch behind `ref` and its (rows, CPU seconds, wall seconds), or the exception it ended with."""
        import ray

        actor, batch = self.in_flight.pop(ref)
        try:
            result = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            # Ray restarted the actor and retried the batch as often as allowed, and it died every time: the
            # batch fails, and a fresh actor takes its place so that the clips after it are not lost too
            self.idle.append(self._new_actor())
            return batch, exc
        except Exception as exc:  # noqa: BLE001 - the caller decides what a failed batch means
            self.idle.append(actor)
            return batch, exc
        self.idle.append(actor)
        return batch, result

    def close(self) -> None:
        import ray

        # killed, busy or not: an actor left alive would keep its CPUs and GPU in a cluster that outlives the run
        for actor, _ in self.in_flight.values():
            ray.kill(actor)
        for actor in self.idle:
            ray.kill(actor)
        self.in_flight.clear()
        self.idle.clear()
