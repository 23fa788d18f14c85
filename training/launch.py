"""Running a trainer's worker function on Ray Train, and showing its progress from the run's metrics file.

`launch(worker, job, ...)` starts `workers` copies of `worker(job, placement)` with Ray Train's TorchTrainer:
the process group is set up by Ray (gloo on CPUs, NCCL on GPUs), each worker gets its rank and device, and
a worker that dies (killed, out of memory, a lost node) makes Ray Train restart the group, up to
`max_failures` times; the loop then continues from the run folder's last checkpoint, so the restarted run
ends where the uninterrupted one would have. Ray's own bookkeeping goes to `RUN/.ray`; the run's results
(checkpoints, metrics) are written by the loop itself, under the run folder, which on a cluster must be on
storage every node sees.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Callable

from training.checkpoints import latest_checkpoint
from training.loop import Placement
from training.metrics import METRICS


class TrainingFailed(RuntimeError):
    """Training stopped on an error in a worker; the message is the worker's."""


def launch(worker: Callable[[Any, Placement], Any], job: Any, run_dir: Path, workers: int = 1,
           gpus_per_worker: float = 0, cpus_per_worker: float = 1, max_failures: int = 3,
           progress: "Callable[[], MetricsProgress] | None" = None) -> None:
    from ray.train import FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchConfig, TorchTrainer

    use_gpu = gpus_per_worker > 0
    resources = {"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if use_gpu else {})}
    trainer = TorchTrainer(
        _entry, train_loop_config={"worker": worker, "job": job},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(name="train", storage_path=str(Path(run_dir).resolve() / ".ray"),
                             failure_config=FailureConfig(max_failures=max_failures)),
    )
    watcher = progress() if progress else None
    try:
        trainer.fit()
    except TrainingFailedError as exc:
        raise TrainingFailed(_worker_message(exc)) from None
    finally:
        if watcher is not None:
            watcher.close()


def _entry(config: dict) -> None:
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    device = ray.train.torch.get_device()
    config["worker"](config["job"], Placement(context.get_world_rank(), context.get_world_size(), str(device)))


def _worker_message(exc: Exception) -> str:
    failures = getattr(exc, "worker_failures", None) or {}
    for rank, failure in sorted(failures.items()):
        text = [line for line in str(failure).strip().splitlines() if line.strip()]
        if text:
            return f"worker {rank}: {text[-1].strip()}"
    return str(exc).strip().splitlines()[-1]


class MetricsProgress:
    """A progress bar fed by the run's metrics.jsonl as the loop appends to it: step of total, loss, accuracy,
    samples per second, the last validation, and tqdm's ETA. Where stderr is no terminal, a line per validation."""

    def __init__(self, run_dir: Path, total: int, enabled: bool | None = None, interval_s: float = 0.5):
        import sys

        from tqdm import tqdm

        self.path = Path(run_dir) / METRICS
        self.interval_s = interval_s
        # a resumed run starts at its last checkpoint, so that the rate and the ETA are this session's
        latest = latest_checkpoint(run_dir)
        done = int(latest.name.removeprefix("step-")) if latest is not None else 0
        self.bar = tqdm(total=total, initial=min(done, total), desc="train", unit="step", file=sys.stderr,
                        dynamic_ncols=True,
                        disable=not (sys.stderr.isatty() if enabled is None else enabled))
        self.since = time.time()
        self._printed = -1          # without a bar (not a terminal): a plain line per validation instead
        self._offset = 0
        self._last_step: dict | None = None
        self._last_val: dict | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.refresh()

    def _new_lines(self) -> list[dict]:
        """The lines appended since the last look (the file is read from where it was left, not again whole;
        a file that shrank was rewritten by a resuming loop, and is read from the start)."""
        try:
            size = self.path.stat().st_size
        except OSError:
            return []
        if size < self._offset:
            self._offset = 0
        with open(self.path, "rb") as handle:
            handle.seek(self._offset)
            data = handle.read()
        complete = data[:data.rfind(b"\n") + 1]     # a line still being written waits for the next look
        self._offset += len(complete)
        lines = []
        for text in complete.splitlines():
            try:
                line = json.loads(text)
            except ValueError:
                continue
            if line.get("time", 0) >= self.since:
                lines.append(line)
        return lines

    def refresh(self) -> None:
        for line in self._new_lines():
            if "loss" in line:
                self._last_step = line
            if "val_loss" in line:
                self._last_val = line
        steps = [self._last_step] if self._last_step else []
        vals = [self._last_val] if self._last_val else []
        if not steps and not vals:
            return
        step = max([line.get("step", 0) for line in steps + vals])
        if step > self.bar.n and step <= self.bar.total:
            self.bar.update(step - self.bar.n)
        shown = {}
        if steps:
            last = steps[-1]
            shown["loss"] = f"{last['loss']:.3f}"
            if "accuracy" in last:
                shown["acc"] = f"{last['accuracy']:.2f}"
            rate = last["samples_per_s"]
            shown["samples/s"] = f"{rate:.0f}" if rate >= 10 else f"{rate:.2g}"
        if vals:
            last = vals[-1]
            if "val_copy_l1" in last:   # a generator: its lower halves' L1, and copying the reference's
                shown["val"] = f"{last['val_l1']:.3f}/{last['val_copy_l1']:.3f}"
            elif "val_zero_recon" in last:   # LatentSync: the noise MSE, and predicting no noise's
                shown["val"] = f"{last['val_recon']:.3f}/{last['val_zero_recon']:.3f}"
            else:
                shown["val"] = "/".join(f"{last[k]:.2f}" for k in ("val_loss", "val_accuracy", "val_offset_accuracy")
                                        if k in last)
            if self.bar.disable and last["step"] > self._printed:
                import sys

                self._printed = last["step"]
                print(f"train: step {last['step']}/{self.bar.total}, " + ", ".join(f"{k} {v}" for k, v in shown.items()),
                      file=sys.stderr, flush=True)
        self.bar.set_postfix(shown, refresh=True)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.refresh()
        self.bar.close()
