"""`curate train syncnet|wav2lip|latentsync`: the trainer commands, one recipe each (check the weights, prepare
the data, launch), and what they share.

Each command: the config (the defaults, the file, the flags), the run folder (one run at a time, the same settings
as before unless --reconfigure), the clips' features prepared once (Ray tasks over the cluster), then the
trainer's worker function (training.expert.train_expert, training.wav2lip.train_wav2lip,
training.latentsync.train_latentsync) on each Ray Train worker, with a progress bar fed by the run's
metrics. Every trainer goes through `_run_training`. The weights a trainer needs are checked in
curate.train_weights, the clips prepared in curate.train_data, the validation samples rendered by
curate.validation_render; `curate eval-syncnet` is curate.eval_syncnet.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from curate.errors import RunError, writable_folder
from curate.train_data import attach_whisper, prepare_clips, ray_map, sample_clip_files
from curate.train_weights import (
    checked_expert, checked_generator, checked_init, checked_unet_init, expert_file, latentsync_weights
)
from curate.validation_render import LatentSyncRenderer, SampleVideos, syncnet_weights

RUN_FILE = "run.json"


def train_syncnet(args) -> int:
    from curate.training_config import load_training_config
    from networks.syncnet.experts import framing_of
    from training.expert import ExpertJob, train_expert

    config = load_training_config(args.arch, args.config, _overrides(args))
    model_config = config.model.model_dump(mode="json") if config.model is not None else None
    init = checked_init(args.init, args.arch) if args.init else None
    lists = _lists(args)
    framing = framing_of(args.arch, model_config, config.data.resolution)
    identity = {"trainer": "syncnet", "arch": args.arch, **_list_identity(args, lists), "init": init,
                "config": config.run_identity()}
    return _run_training(
        args, config, lists, identity,
        prepare=lambda run=None: prepare_clips(lists, config.data, framing, run),
        job=lambda train, val, run_dir: ExpertJob(args.arch, model_config, config.data, config.train, train, val,
                                                  str(run_dir), init),
        worker=train_expert)


def train_wav2lip(args) -> int:
    """`curate train wav2lip`: Wav2Lip's generator against a frozen lip-sync expert (--syncnet), with the
    visual-quality discriminator (--gan) or without."""
    import dataclasses

    from curate.training_config import load_wav2lip_config
    from training.face_windows import face_framing, usable_faces
    from training.wav2lip import Wav2LipJob, train_wav2lip as worker

    config = load_wav2lip_config(args.config, _overrides(args))
    size = config.model.size
    expert = None if args.prepare else checked_expert(args.syncnet)
    init = checked_generator(args.init, size) if args.init else None
    lists = _lists(args)
    loop = dataclasses.replace(config.train, betas=config.gan.generator_betas) if args.gan else config.train
    identity = {"trainer": "wav2lip", **_list_identity(args, lists), "syncnet": expert, "gan": bool(args.gan),
                "init": init, "config": config.run_identity()}

    def job(train, val, run_dir):
        samples = None
        if config.samples.clips and val:
            samples = SampleVideos(str(run_dir), sample_clip_files(val, config.samples.clips, run_dir / "sample_clips"), size,
                                   config.samples.seconds, syncnet_weights())
        return Wav2LipJob(size, config.data, loop, config.loss, config.gan if args.gan else None, expert, train,
                          val, str(run_dir), init, on_validate=samples)

    return _run_training(
        args, config, lists, identity,
        prepare=lambda run=None: prepare_clips(lists, config.data, face_framing(size), run, keep=usable_faces),
        job=job, worker=worker)


def train_latentsync(args) -> int:
    """`curate train latentsync`: LatentSync's U-Net, stage 1, 2 or 2-efficient, every file it needs checked
    (and all the missing ones named at once) before any work."""
    from curate.training_config import load_latentsync_config
    from training.face_windows import face_framing
    from training.latent_windows import usable_latent
    from training.latentsync import STAGES, LatentSyncJob, train_latentsync as worker, unet_config

    config = load_latentsync_config(args.stage, args.config, _overrides(args))
    stage = STAGES[args.stage]
    try:
        unet = unet_config(config.model.unet, stage)
    except ValueError as exc:
        raise RunError(f"model.unet: {exc}") from None
    weights = latentsync_weights(args, config)
    init = None if args.prepare else (checked_unet_init(args.init, unet, stage) if args.init else None)
    lists = _lists(args)
    resolution = config.model.resolution
    identity = {"trainer": "latentsync", "stage": args.stage, **_list_identity(args, lists), "init": init,
                "syncnet": weights.get("expert"), "config": config.run_identity()}
    if not args.prepare:
        print(_trainable_line(unet, stage))

    def prepare(run=None):
        train, val = prepare_clips(lists, config.data, face_framing(resolution), run, keep=usable_latent)
        return attach_whisper(train, val, config.data, weights["whisper"], run)

    def job(train, val, run_dir):
        samples = None
        if config.samples.clips and val:
            from networks.latentsync import mouth_region

            renderer = LatentSyncRenderer(weights["vae"], weights["whisper"], resolution, config.samples.steps,
                                          config.samples.guidance, config.train.seed)
            samples = SampleVideos(str(run_dir), sample_clip_files(val, config.samples.clips, run_dir / "sample_clips"),
                                   resolution, config.samples.seconds, syncnet_weights(), renderer,
                                   mouth_region(resolution))
        return LatentSyncJob(args.stage, unet, resolution, config.data, config.train, config.loss, weights["vae"],
                             train, val, str(run_dir), weights.get("expert"), weights.get("lpips"),
                             weights.get("trepa"), weights.get("trepa_config"), init, on_validate=samples)

    return _run_training(args, config, lists, identity, prepare=prepare, job=job, worker=worker)


def _trainable_line(unet, stage) -> str:
    import torch

    from networks.latentsync_unet import LatentSyncUNet
    from training.latentsync import mark_trainable

    with torch.device("meta"):
        model = LatentSyncUNet(unet)
    mark_trainable(model, stage)
    total = sum(p.numel() for p in model.parameters())
    learns = sum(p.numel() for p in model.parameters() if p.requires_grad)
    which = "all of it" if stage.trainable is None else "weights named " + " or ".join(
        repr(part.rstrip(".")) for part in stage.trainable)
    return (f"stage {stage.name}: {learns / 1e6:.2f} M of the U-Net's {total / 1e6:.2f} M parameters train "
            f"({which})")


def _overrides(args) -> dict:
    """The config the flags set: --max-steps, --workers, --gpus-per-worker, --address (or RAY_ADDRESS)."""
    overrides: dict = {}
    if args.max_steps is not None:
        overrides["train"] = {"max_steps": args.max_steps}
    resources = {key: value for key, value in (("workers", args.workers), ("gpus_per_worker", args.gpus_per_worker),
                                               ("address", args.address or os.environ.get("RAY_ADDRESS")))
                 if value is not None}
    if resources:
        overrides["resources"] = resources
    return overrides


def _lists(args):
    from training.clips import DataError, read_lists

    try:
        return read_lists(args.lists, args.val_list)
    except DataError as exc:
        raise RunError(str(exc)) from None


def _list_identity(args, lists) -> dict:
    """What the run's data is: the lists' paths, or the shards' URL and their index's fingerprint (so shards
    appended to since are other data: the run refuses them unless --reconfigure)."""
    if lists.shards is not None:
        return {"lists": lists.source, "shards": lists.fingerprint, "val_list": None}
    return {"lists": str(Path(args.lists).resolve()),
            "val_list": str(Path(args.val_list).resolve()) if args.val_list else None}


def _run_training(args, config, lists, identity: dict, prepare, job, worker) -> int:
    """What every trainer does: --prepare alone, or claim the run folder (refusing other settings unless
    --reconfigure), prepare the features on Ray, launch `worker(job(train clips, val clips, run folder))` on
    Ray Train with a progress bar, and print the summary. `prepare(run)` gives (train clips, val clips)."""
    from curate.cluster import connect_ray
    from curate.lock import OutputLock
    from training.checkpoints import latest_checkpoint
    from training.launch import MetricsProgress, TrainingFailed, launch

    run_dir = args.out.resolve()
    if args.prepare:   # the features alone: no run folder is made or claimed
        started = connect_ray(config.resources.address)
        try:
            train_clips, val_clips = prepare(ray_map)
        finally:
            _shutdown(started)
        where = "in the shards" if lists.shards is not None else f"in {_cache(config.data)}"
        print(f"prepared: {len(train_clips)} training and {len(val_clips)} validation clips; features {where}")
        return 0
    writable_folder(run_dir, "--out")

    with OutputLock(run_dir):
        _claim(run_dir, identity, args.reconfigure)
        (run_dir / "config.json").write_text(json.dumps(config.model_dump(mode="json"), indent=1))
        done = latest_checkpoint(run_dir)
        if done is not None and int(done.name.removeprefix("step-")) >= config.train.max_steps:
            print(f"{run_dir} is at step {done.name.removeprefix('step-').lstrip('0')} already "
                  f"(train.max_steps {config.train.max_steps}); --max-steps N trains it further")
            print(summary(run_dir))
            return 0
        started = connect_ray(config.resources.address)
        try:
            train_clips, val_clips = prepare(ray_map)
            cpus = _cpus_per_worker(config.resources, config.data.num_workers)
            launch(worker, job(train_clips, val_clips, run_dir), run_dir, config.resources.workers,
                   config.resources.gpus_per_worker, cpus, config.resources.max_failures,
                   progress=lambda: MetricsProgress(run_dir, config.train.max_steps, args.progress))
        except TrainingFailed as exc:
            raise RunError(f"training failed: {exc}; rerun the same command to continue from the last "
                           "checkpoint") from None
        finally:
            _shutdown(started)
    print(summary(run_dir))
    return 0


def _shutdown(started: bool) -> None:
    if started:
        import ray

        ray.shutdown()


def summary(run_dir: Path) -> str:
    from training.checkpoints import best_checkpoint, latest_checkpoint
    from training.metrics import METRICS, PLOT, read_metrics

    lines = read_metrics(run_dir / METRICS)
    steps = [line for line in lines if "loss" in line]
    vals = [line for line in lines if "val_loss" in line]
    out = []
    if steps:
        last = steps[-1]
        acc = f", accuracy {last['accuracy']:.3f}" if "accuracy" in last else ""
        parts = "".join(f", {name} {last[key]:.4f}" for key, name in (("l1", "L1"), ("recon", "noise MSE"),
                                                                       ("sync", "sync"), ("lpips", "LPIPS"),
                                                                       ("trepa", "TREPA")) if key in last)
        out.append(f"trained: step {last['step']}, loss {last['loss']:.4f}{acc}{parts}, "
                   f"{last['samples_per_s']:.1f} samples/s")
    if vals:
        last = vals[-1]
        if "val_recon" in last:   # LatentSync's U-Net
            pixel = "".join(f", {name} {last['val_' + key]:.4f}" for key, name in
                            (("lpips", "LPIPS"), ("sync", "sync"), ("trepa", "TREPA")) if "val_" + key in last)
            truth = f" (real frames: {last['val_sync_truth']:.3f})" if "val_sync_truth" in last else ""
            mouth = (f"; samples' mouth: PSNR {last['val_mouth_psnr']:.2f} dB, SSIM {last['val_mouth_ssim']:.3f}"
                     if "val_mouth_psnr" in last else "")
            out.append(f"val:     loss {last['val_loss']:.4f}; noise MSE {last['val_recon']:.4f} (predicting none: "
                       f"{last['val_zero_recon']:.4f}){pixel}{truth}{mouth} (step {last['step']}, "
                       f"{last['val_windows']} windows)")
        elif "val_l1" in last:   # a generator
            out.append(f"val:     loss {last['val_loss']:.4f}; lower half: L1 {last['val_l1']:.4f} (copying the "
                       f"reference: {last['val_copy_l1']:.4f}), PSNR {last['val_psnr']:.2f} dB "
                       f"({last.get('val_copy_psnr', float('nan')):.2f}), SSIM {last['val_ssim']:.3f} "
                       f"({last.get('val_copy_ssim', float('nan')):.3f}); expert's sync loss {last['val_sync']:.3f} (real frames: "
                       f"{last['val_sync_truth']:.3f}; weight {last['val_sync_weight']:g}) "
                       f"(step {last['step']}, {last['val_windows']} windows)")
        else:
            out.append(f"val:     loss {last['val_loss']:.4f}, accuracy {last['val_accuracy']:.3f}, offset accuracy "
                       f"{last['val_offset_accuracy']:.3f}, best shift {last['val_best_shift']:+.0f} "
                       f"(step {last['step']}, {last['val_windows']} windows)")
    latest, best = latest_checkpoint(run_dir), best_checkpoint(run_dir)
    if latest is not None:
        out.append(f"last:    {model_file(latest)}")
    if best is not None:
        out.append(f"best:    {model_file(best)}")
    out.append(f"metrics: {run_dir / METRICS}, {run_dir / PLOT}")
    samples = sorted((run_dir / "samples").glob("step-*")) if (run_dir / "samples").is_dir() else []
    if samples:
        lse = ", ".join(f"{name} {vals[-1][key]:.2f}" for key, name in (("val_lse_d", "LSE-D"), ("val_lse_c", "LSE-C"))
                        if vals and key in vals[-1])
        count = len(list(samples[-1].glob("*.mp4")))
        out.append(f"samples: {samples[-1]} ({count} video{'s' * (count != 1)}{'; ' + lse if lse else ''})")
    problems = run_dir / "skipped_clips.txt"
    if problems.is_file():
        count = len(problems.read_text().splitlines())
        out.append(f"skipped: {count} clip(s) could not be decoded during training: {problems}")
    return "\n".join(out)


def model_file(checkpoint: Path) -> Path:
    """The trained model of a checkpoint folder: the generator where there is one (not its discriminator),
    else the expert."""
    from networks.wav2lip import GENERATOR_FILE

    generator = Path(checkpoint) / GENERATOR_FILE
    return generator if generator.is_file() else expert_file(checkpoint)


def _claim(run_dir: Path, identity: dict, reconfigure: bool) -> None:
    """Refuse a run folder that holds a run with other settings (unless `reconfigure`); record ours."""
    record = run_dir / RUN_FILE
    if record.is_file() and not reconfigure:
        try:
            before = json.loads(record.read_text())
        except ValueError:
            before = None
        if before is not None and before != identity:
            changes = [change.removeprefix("config.") for change in _differences(before, identity)]
            shown = "; ".join(changes[:4]) + (f"; and {len(changes) - 4} more" if len(changes) > 4 else "")
            raise RunError(f"{run_dir} holds a run with other settings ({shown}); continue it with these with "
                           "--reconfigure, or use another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    partial = record.with_name(RUN_FILE + ".partial")
    partial.write_text(json.dumps(identity, indent=1, sort_keys=True))
    os.replace(partial, record)


def _differences(before, after, prefix: str = "") -> list[str]:
    if isinstance(before, dict) and isinstance(after, dict):
        out = []
        for key in sorted(set(before) | set(after)):
            out += _differences(before.get(key), after.get(key), f"{prefix}{key}.")
        return out
    return [] if before == after else [f"{prefix.rstrip('.')}: {before!r} -> {after!r}"]


def _cache(settings) -> Path:
    from training.clips import cache_dir

    return cache_dir(settings)


def _cpus_per_worker(resources, loader_processes: int) -> float:
    """The CPUs each training worker asks for: resources.cpus_per_worker, else one for the loop and one per
    loader process, as far as the largest node has them (the processes then share). An error, not an
    endless wait, when the cluster cannot hold the workers."""
    import ray

    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    largest = max((n.get("CPU", 0) for n in nodes), default=0)
    cpus = resources.cpus_per_worker or max(1, min(loader_processes + 1, largest))
    gpus = resources.gpus_per_worker
    holds = sum(min(n.get("CPU", 0) // cpus, n.get("GPU", 0) // gpus if gpus else float("inf")) for n in nodes)
    if holds < resources.workers:
        most_gpus = max((n.get("GPU", 0) for n in nodes), default=0)
        raise RunError(f"the cluster holds {holds:g} training worker(s) of {cpus:g} CPUs and {gpus:g} GPUs, not the "
                       f"{resources.workers} asked for (its largest node has {largest:g} CPUs, {most_gpus:g} GPUs); "
                       "ask for fewer, or lower resources.cpus_per_worker or data.num_workers")
    return cpus
