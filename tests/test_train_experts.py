"""Training the experts: they learn lip sync from data, a resumed run is the uninterrupted one, checkpoints are
kept as promised, and (on Ray Train) two workers make the update one makes, a killed worker is recovered."""

import dataclasses
import json
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from curate.training_config import load_training_config
from footage import talking_clip
from networks.syncnet.experts import load_expert
from training.expert import ExpertJob, train_expert
from training.metrics import read_metrics
from training.checkpoints import best_checkpoint, checkpoint_dirs
from training.clips import FeatureCache

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def talking(tmp_path_factory):
    """Eight 6 s clips whose mouth opens with their voice (each its own rhythm, pitch and skin): six to train
    on, two to validate on. A lip-sync expert can learn them; chance is what it knows before."""
    folder = tmp_path_factory.mktemp("talking")
    paths = []
    for seed in range(8):
        talking_clip(folder / f"clip{seed}.mp4", 6, seed=seed)
        paths.append(str(folder / f"clip{seed}.mp4"))
    cache = FeatureCache(folder / "features")
    train, _ = cache.prepare(paths[:6])
    val, _ = cache.prepare(paths[6:])
    return train, val


def job_for(arch: str, clips, run_dir: Path, data: dict | None = None, **train) -> ExpertJob:
    """The shipped small config of `arch` (configs/syncnet-ARCH-small.yaml) with `data` and `train` changes."""
    config = load_training_config(arch, ROOT / "configs" / f"syncnet-{arch}-small.yaml")
    loop = dataclasses.replace(config.train, **train)
    model = config.model.model_dump(mode="json") if config.model is not None else None
    return ExpertJob(arch, model, dataclasses.replace(config.data, **(data or {})), loop, clips[0], clips[1],
                     str(run_dir))


def metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    lines = read_metrics(run_dir / "metrics.jsonl")
    return [l for l in lines if "loss" in l], [l for l in lines if "val_loss" in l]


@pytest.mark.parametrize("arch, steps", [("stable", 100), ("wav2lip", 60)])
def test_the_expert_learns_lip_sync(talking, tmp_path, arch, steps):
    """Trained on six clips, judged on two it never saw: better than chance (BCE ln 2 = 0.693, accuracy 0.5,
    offset accuracy 3/31), and better than before training."""
    train_expert(job_for(arch, talking, tmp_path, data={"val_windows_per_clip": 16}, max_steps=steps,
                         validate_every=steps, checkpoint_every=steps))
    steps_seen, vals = metrics(tmp_path)
    before, after = vals[0], vals[-1]
    print(arch, before, after)
    assert (before["step"], after["step"]) == (0, steps)
    assert after["val_loss"] < 0.62 and after["val_loss"] < before["val_loss"] - 0.08
    assert after["val_accuracy"] >= 0.6
    assert after["val_offset_accuracy"] > 0.2
    assert steps_seen[-1]["loss"] < steps_seen[0]["loss"]


def test_a_resumed_run_gives_the_uninterrupted_runs_losses(talking, tmp_path):
    """With gradient accumulation and validation, stopped at a checkpoint and rerun, or cut short after one (the
    metrics written past it are dropped): the same losses, bit for bit, and the same weights."""
    settings = dict(batch_size=8, grad_accum=2, log_every=1, validate_every=3, checkpoint_every=3,
                    data={"val_clips": 1, "val_windows_per_clip": 2})
    whole = tmp_path / "whole"
    train_expert(job_for("stable", talking, whole, max_steps=8, **settings))
    parts = tmp_path / "parts"
    train_expert(job_for("stable", talking, parts, max_steps=3, **settings))
    train_expert(job_for("stable", talking, parts, max_steps=6, **settings))
    # a crash after step 6's checkpoint was written, before the end: the checkpoint is lost, the metrics are not
    (parts / "checkpoints" / "step-000000006" / "train_state.pt").unlink()
    train_expert(job_for("stable", talking, parts, max_steps=8, **settings))
    _same_numbers(metrics(parts), metrics(whole))
    ours, theirs = (load_expert(run / "checkpoints" / "step-000000008" / "stable_syncnet.pt")[1].state_dict()
                    for run in (parts, whole))
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def _same_numbers(a, b) -> bool:
    """The lines equal but for what measures time."""
    strip = lambda lines: [{k: v for k, v in l.items() if k not in ("time", "samples_per_s", "data_wait_share")}
                           for l in lines]
    assert strip(a[0]) == strip(b[0]) and strip(a[1]) == strip(b[1])
    return True


def test_checkpoints_keep_the_last_ones_and_the_best(talking, tmp_path):
    train_expert(job_for("wav2lip", talking, tmp_path, data={"val_clips": 1, "val_windows_per_clip": 2},
                         max_steps=6, batch_size=8, validate_every=1, checkpoint_every=1, keep_checkpoints=2,
                         log_every=1))
    _, vals = metrics(tmp_path)
    best_step = min(vals, key=lambda l: l["val_loss"])["step"]
    kept = {int(p.name[5:]) for p in checkpoint_dirs(tmp_path)}
    assert kept == {5, 6} | ({best_step} if best_step else set())
    best = best_checkpoint(tmp_path)
    record = json.loads((tmp_path / "checkpoints" / "best.json").read_text())
    assert record["step"] == best_step and best.name == f"step-{best_step:09d}"
    # Wav2Lip's own load_checkpoint: state_dict into SyncNet_color, optimizer skipped when None, the counters
    blob = torch.load(tmp_path / "checkpoints" / "step-000000006" / "lipsync_expert.pth", weights_only=True)
    assert (blob["global_step"], blob["optimizer"]) == (6, None) and "global_epoch" in blob
    assert (tmp_path / "metrics.png").stat().st_size > 10_000


# -- on Ray Train ---------------------------------------------------------------------------------------------

def launch_job(job: ExpertJob, workers: int, kill_after_checkpoint: int | None = None):
    from training.launch import launch

    killer = KillAtCheckpoint(Path(job.run_dir), kill_after_checkpoint) if kill_after_checkpoint else None
    if killer:
        killer.start()
    try:
        launch(train_expert, job, Path(job.run_dir), workers=workers, cpus_per_worker=1, max_failures=2)
    finally:
        if killer:
            killer.stop()
    return killer


class KillAtCheckpoint(threading.Thread):
    """SIGKILL to this session's Ray Train worker of rank 0 once checkpoint `step` is on disk."""

    def __init__(self, run_dir: Path, step: int):
        super().__init__(daemon=True)
        self.run_dir, self.step, self.killed = run_dir, step, []
        self._done = threading.Event()

    def run(self):
        from ray_workers import processes_named

        marker = self.run_dir / "checkpoints" / f"step-{self.step:09d}" / "train_state.pt"
        while not self._done.is_set() and not self.killed:
            if marker.exists():
                for pid in processes_named(b"ray::RayTrainWorker"):
                    import os

                    os.kill(pid, signal.SIGKILL)
                    self.killed.append(pid)
                    break
            time.sleep(0.05)

    def stop(self):
        self._done.set()
        self.join()


@pytest.fixture(scope="module")
def one_worker_run(talking, tmp_path_factory, ray_cluster):
    run = tmp_path_factory.mktemp("one_worker")
    job = job_for("stable", talking, run, data={"num_workers": 0, "val_clips": 1, "val_windows_per_clip": 2},
                  max_steps=8, batch_size=8, log_every=1, validate_every=8, checkpoint_every=2)
    launch_job(job, workers=1)
    return job


@pytest.mark.timeout(600)
def test_two_workers_make_the_update_one_worker_makes(one_worker_run, tmp_path):
    """DDP on two CPU workers (gloo), each with half of every batch: the losses and the weights of one worker
    with the whole batch."""
    two = dataclasses.replace(one_worker_run, run_dir=str(tmp_path))
    launch_job(two, workers=2)
    (one_steps, one_vals), (two_steps, two_vals) = metrics(Path(one_worker_run.run_dir)), metrics(tmp_path)
    assert [l["step"] for l in two_steps] == list(range(1, 9))
    for a, b in zip(one_steps + one_vals, two_steps + two_vals):
        assert abs(a.get("loss", a.get("val_loss")) - b.get("loss", b.get("val_loss"))) < 1e-4
    start = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert start["world_size"] == 2
    ours, theirs = (load_expert(Path(run) / "checkpoints" / "step-000000008" / "stable_syncnet.pt")[1].state_dict()
                    for run in (one_worker_run.run_dir, tmp_path))
    # the gradients agree to float rounding; Adam's step is lr x g / |g|, so where a gradient is ~0 that
    # rounding can turn a step around: a few weights in 100,000 may differ, by at most 2 lr a step
    diffs = torch.cat([(ours[k].float() - theirs[k].float()).abs().flatten() for k in ours])
    assert float((diffs > 1e-6).float().mean()) < 1e-4
    assert float(diffs.max()) <= 2 * one_worker_run.loop.lr * 8


@pytest.mark.timeout(600)
def test_a_killed_worker_is_restarted_from_the_last_checkpoint(one_worker_run, tmp_path):
    job = dataclasses.replace(one_worker_run, run_dir=str(tmp_path))
    killer = launch_job(job, workers=1, kill_after_checkpoint=4)
    assert killer.killed, "the worker was never seen"
    # Ray Train started it again; it went on from step 4 to the end, with the uninterrupted run's numbers
    assert metrics(tmp_path)[0][-1]["step"] == 8
    _same_numbers(metrics(tmp_path), metrics(Path(one_worker_run.run_dir)))
