"""`curate train syncnet|wav2lip|latentsync` and `curate eval-syncnet`: the command-line side of training.

Training: the config (the defaults, the file, the flags), the run folder (one run at a time, the same settings
as before unless --reconfigure), the clips' features prepared once (Ray tasks over the cluster), then the
trainer's worker function (training.expert.train_expert, training.wav2lip.train_wav2lip,
training.latentsync.train_latentsync) on each Ray Train worker, with a progress bar fed by the run's
metrics. Every trainer goes through `_run_training`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import numpy as np

from curate.errors import RunError, writable_folder

RUN_FILE = "run.json"


def train_syncnet(args) -> int:
    from curate.training_config import load_training_config
    from networks.syncnet.experts import framing_of
    from training.expert import ExpertJob, train_expert

    config = load_training_config(args.arch, args.config, _overrides(args))
    model_config = config.model.model_dump(mode="json") if config.model is not None else None
    init = _checked_init(args.init, args.arch) if args.init else None
    lists = _lists(args)
    framing = framing_of(args.arch, model_config, config.data.resolution)
    identity = {"trainer": "syncnet", "arch": args.arch, **_list_identity(args), "init": init,
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
    from training.wav2lip import Wav2LipJob, train_wav2lip as worker
    from training.face_windows import face_framing, usable_faces

    config = load_wav2lip_config(args.config, _overrides(args))
    size = config.model.size
    expert = None if args.prepare else _checked_expert(args.syncnet)
    init = _checked_generator(args.init, size) if args.init else None
    lists = _lists(args)
    loop = dataclasses.replace(config.train, betas=config.gan.generator_betas) if args.gan else config.train
    identity = {"trainer": "wav2lip", **_list_identity(args), "syncnet": expert, "gan": bool(args.gan),
                "init": init, "config": config.run_identity()}

    def job(train, val, run_dir):
        samples = None
        if config.samples.clips and val:
            samples = SampleVideos(str(run_dir), tuple(sorted(c.path for c in val))[:config.samples.clips], size,
                                   config.samples.seconds, _syncnet_weights())
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
    from training.latentsync import STAGES, LatentSyncJob, train_latentsync as worker, unet_config
    from training.face_windows import face_framing
    from training.latent_windows import usable_latent

    config = load_latentsync_config(args.stage, args.config, _overrides(args))
    stage = STAGES[args.stage]
    try:
        unet = unet_config(config.model.unet, stage)
    except ValueError as exc:
        raise RunError(f"model.unet: {exc}") from None
    weights = _latentsync_weights(args, config)
    init = None if args.prepare else (_checked_unet_init(args.init, unet, stage) if args.init else None)
    lists = _lists(args)
    resolution = config.model.resolution
    identity = {"trainer": "latentsync", "stage": args.stage, **_list_identity(args), "init": init,
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
            samples = SampleVideos(str(run_dir), tuple(sorted(c.path for c in val))[:config.samples.clips],
                                   resolution, config.samples.seconds, _syncnet_weights(), renderer,
                                   mouth_region(resolution))
        return LatentSyncJob(args.stage, unet, resolution, config.data, config.train, config.loss, weights["vae"],
                             train, val, str(run_dir), weights.get("expert"), weights.get("lpips"),
                             weights.get("trepa"), weights.get("trepa_config"), init, on_validate=samples)

    return _run_training(args, config, lists, identity, prepare=prepare, job=job, worker=worker)


def _latentsync_weights(args, config) -> dict:
    """The files `curate train latentsync` needs, verified: the VAE and Whisper (the `latentsync` models), and
    for the pixel losses the stage uses, the expert (--syncnet, else `stable-syncnet`), LPIPS and TREPA. All the
    missing ones are named in one error, each with its folder and the command that fetches it."""
    from curate.config import load_config
    from curate.models import LATENTSYNC_UNET_FILE, ModelError, require

    settings = load_config(None).models
    terms = () if args.prepare else config.loss.pixel_terms
    needs = [("latentsync", (LATENTSYNC_UNET_FILE, "config.json", "diffusion_pytorch_model.safetensors")
              if args.prepare else (LATENTSYNC_UNET_FILE,))]
    needs += [(name, ()) for name in ("lpips", "trepa") if name in terms]
    if "sync" in terms and args.syncnet is None:
        needs.append(("stable-syncnet", ()))
    found, problems = {}, []
    for name, skip in needs:
        try:
            found[name] = require(name, settings, skip=skip)
        except ModelError as exc:
            problems.append(str(exc))
    if problems:
        raise RunError("; ".join(problems) + (" (or --syncnet EXPERT)" if any("stable_syncnet" in p for p in problems)
                                              else ""))
    weights = {"whisper": str(found["latentsync"][0])}
    if not args.prepare:
        weights["vae"] = str(found["latentsync"][-1])
    if "lpips" in found:
        weights["lpips"] = tuple(str(path) for path in found["lpips"])
    if "trepa" in found:
        from networks.trepa import TrepaFileError, config_of, read_videomae_file

        weights["trepa"] = str(found["trepa"][0])
        try:
            weights["trepa_config"] = config_of(read_videomae_file(weights["trepa"]), config.trepa.num_heads,
                                                config.trepa.img_size)
        except (TrepaFileError, ValueError) as exc:
            raise RunError(f"trepa: {exc}") from None
    if "sync" in terms:
        weights["expert"] = _checked_stable_expert(args.syncnet or found["stable-syncnet"][0])
    return weights


def _checked_stable_expert(path: Path) -> str:
    """--syncnet: a 16-frame StableSyncNet (stable_syncnet.pt, or ours: a file, checkpoint or run folder)."""
    from networks.syncnet.experts import framing_of, load_expert, read_checkpoint

    if not Path(path).exists():
        raise RunError(f"--syncnet: {path} does not exist (the official expert is fetched with `curate models "
                       "download stable-syncnet`)")
    path = expert_file(path)
    try:
        load_expert(path, arch="stable")
        frames = framing_of("stable", read_checkpoint(path).config).num_frames
    except Exception as exc:  # noqa: BLE001 - whatever stops it loading, it is not the expert this needs
        raise RunError(f"--syncnet: cannot load {path} as a StableSyncNet: {str(exc).splitlines()[0]}") from None
    if frames != 16:
        raise RunError(f"--syncnet: {path} looks at {frames} frames; LatentSync's sync loss takes 16")
    return str(Path(path).resolve())


def _checked_unet_init(init: Path, unet, stage) -> str:
    """--init: a U-Net file (or a checkpoint or run folder of ours) that fits the stage's U-Net, checked on the
    meta device before any work; what the stage drops or starts afresh is said."""
    import torch

    from training.latentsync import starting_weights
    from networks.latentsync_unet import LatentSyncUNet, UNetFileError

    if not Path(init).exists():
        raise RunError(f"--init: {init} does not exist (the official U-Net is fetched with `curate models download "
                       "latentsync`)")
    path = expert_file(init)
    with torch.device("meta"):
        model = LatentSyncUNet(unet)
    try:
        _, dropped, fresh = starting_weights(path, model)
    except UNetFileError as exc:
        raise RunError(f"--init: {exc}") from None
    if dropped:
        print(f"--init: {len(dropped)} motion-module tensors of {path.name} are not used: stage {stage.name} builds "
              f"{'none' if not stage.motion_modules else 'them in the decoder only'}")
    if fresh:
        print(f"--init: {len(fresh)} motion-module tensors are not in {path.name}: they start afresh (their output "
              "at zero, so the U-Net starts as the file's)")
    return str(path.resolve())


def _trainable_line(unet, stage) -> str:
    import torch

    from training.latentsync import mark_trainable
    from networks.latentsync_unet import LatentSyncUNet

    with torch.device("meta"):
        model = LatentSyncUNet(unet)
    mark_trainable(model, stage)
    total = sum(p.numel() for p in model.parameters())
    learns = sum(p.numel() for p in model.parameters() if p.requires_grad)
    which = "all of it" if stage.trainable is None else "weights named " + " or ".join(
        repr(part.rstrip(".")) for part in stage.trainable)
    return (f"stage {stage.name}: {learns / 1e6:.2f} M of the U-Net's {total / 1e6:.2f} M parameters train "
            f"({which})")


def attach_whisper(train: list, val: list, settings, whisper: str, run=None) -> tuple[list, list]:
    """The clips with their Whisper features, computed once per clip (by `run`, a Ray map, when given); clips
    whose audio fails are skipped with the reason."""
    from curate.models import sha256_of
    from training.latent_windows import AudioFeatureCache, whisper_features_in
    from training.windows import FeatureCache, cache_dir, describe_skipped

    folder = cache_dir(settings)
    entries = FeatureCache(folder).entries
    cache = AudioFeatureCache(folder, whisper, sha256_of(Path(whisper)))
    mapped = None
    if run is not None:
        mapped = lambda items, encoder: run(items, encoder, work=whisper_features_in, desc="whisper")  # noqa: E731
    out = []
    for what, clips in (("training", train), ("validation", val)):
        kept, skipped = cache.attach(clips, {c.path: entries[c.path]["sha256"] for c in clips}, mapped)
        if skipped:
            print(f"curate: warning: {describe_skipped(skipped, what)}", file=sys.stderr)
        out.append(kept)
    if train and not out[0]:
        raise RunError("no usable training clips: the Whisper features of all of them failed")
    return out[0], out[1]


@dataclasses.dataclass(frozen=True)
class LatentSyncRenderer:
    """SampleVideos' renderer for a U-Net in training: LatentSync's sampler over it (a copy on a GPU, where the
    sampler runs it in fp16), with the VAE and Whisper loaded from their files."""
    vae: str
    whisper: str
    resolution: int
    steps: int
    guidance: float
    seed: int

    def __call__(self, model, device):
        import copy

        from networks.latentsync import load_vae
        from networks.whisper import load_whisper_encoder
        from lipsync.models import LatentSyncModel

        unet = copy.deepcopy(model) if device.type == "cuda" else model
        return LatentSyncModel(unet, load_vae(self.vae), load_whisper_encoder(self.whisper), self.resolution, device,
                               steps=self.steps, guidance=self.guidance, seed=self.seed)


@dataclasses.dataclass(frozen=True)
class SampleVideos:
    """`curate train wav2lip`'s on_validate (rank 0, after each validation): self-reenactment videos of the
    first validation clips, each clip's face made to say its own first `seconds` by the generator as it is
    (through lipsync.pipeline, as `curate lipsync` renders), in RUN/samples/step-N/; with syncnet_v2.model in
    the models folder, their LSE-D and LSE-C (`curate eval-sync`'s). A sample that fails is a warning: it never
    stops the training."""
    run_dir: str
    clips: tuple[str, ...]
    size: int
    seconds: float
    syncnet: str | None = None       # syncnet_v2.model, verified
    renderer: object = None          # (model, device) -> a lipsync.models renderer (None: Wav2Lip's)
    region: tuple[float, float, float, float] = (0.5, 1.0, 0.0, 1.0)   # what the model remakes: top, bottom,
                                                                     # left, right, as fractions of the clip

    def __call__(self, model, step: int) -> dict:
        import warnings

        from lipsync.framing import TemplateFraming
        from lipsync.models import Wav2LipModel
        from lipsync.pipeline import Options, lipsync

        folder = Path(self.run_dir) / "samples" / f"step-{step:09d}"
        folder.mkdir(parents=True, exist_ok=True)
        device = next(model.parameters()).device
        renderer = (self.renderer(model, device) if self.renderer is not None else
                    Wav2LipModel(model, TemplateFraming(self.size), device, batch_size=16))
        written, scores = [], []
        for number, clip in enumerate(self.clips):
            name = f"{number:02d}_{Path(clip).parent.name}_{Path(clip).stem}"
            speech = folder / f"{name}.wav"
            try:
                _write_speech(Path(clip), speech, self.seconds)
                lipsync(Path(clip), speech, folder / f"{name}.mp4", renderer, Options())
                written.append(str(folder / f"{name}.mp4"))
                scores.append(region_scores(folder / f"{name}.mp4", Path(clip), self.region))
            except Exception as exc:  # noqa: BLE001 - a sample is a look at the model, never worth the run
                warnings.warn(f"no sample of {clip} at step {step}: {type(exc).__name__}: {exc}")
            finally:
                speech.unlink(missing_ok=True)
        numbers: dict = {"samples": len(written)}
        if scores:
            numbers["mouth_psnr"] = sum(psnr for psnr, _ in scores) / len(scores)
            numbers["mouth_ssim"] = sum(value for _, value in scores) / len(scores)
        if self.syncnet and written:
            try:
                numbers.update(_lse(written, self.syncnet, device))
            except Exception as exc:  # noqa: BLE001 - as above
                warnings.warn(f"no LSE of the samples at step {step}: {type(exc).__name__}: {exc}")
        return numbers


def region_scores(made: Path, truth: Path, region: tuple[float, float, float, float]) -> tuple[float, float]:
    """PSNR (dB) and SSIM of `region` (fractions of the frame: top, bottom, left, right) of a self-reenactment
    sample against the clip it remade, over the sample's frames (each against the clip's frame of that time)."""
    import av
    import torch

    from training.wav2lip import ssim

    def frames(path: Path):
        with av.open(str(path)) as container:
            for frame in container.decode(container.streams.video[0]):
                yield frame.to_ndarray(format="rgb24")

    psnrs, ssims = [], []
    for ours, theirs in zip(frames(made), frames(truth)):
        h, w = theirs.shape[:2]
        top, bottom, left, right = int(region[0] * h), int(region[1] * h), int(region[2] * w), int(region[3] * w)
        a, b = (torch.from_numpy(np.ascontiguousarray(x[top:bottom, left:right])).permute(2, 0, 1)[None].float() / 255
                for x in (ours, theirs))
        psnrs.append(float(-10 * torch.log10((a - b).pow(2).mean().clamp_min(1e-10))))
        ssims.append(float(ssim(a, b)[0]))
    if not psnrs:
        raise ValueError(f"{made} has no frames")
    return sum(psnrs) / len(psnrs), sum(ssims) / len(ssims)


def _write_speech(clip: Path, target: Path, seconds: float) -> None:
    """The first `seconds` of the clip's own audio, as a 16 kHz mono WAV."""
    import wave

    from lipsync.media import SAMPLE_RATE, read_speech

    samples = read_speech(clip)[:int(seconds * SAMPLE_RATE)]
    with wave.open(str(target), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(SAMPLE_RATE)
        handle.writeframes(samples.astype("<i2").tobytes())


def _lse(videos: list[str], weights: str, device) -> dict:
    """Mean LSE-D and LSE-C of the videos, as `curate eval-sync` measures them."""
    from faces.settings import FaceParams
    from stages.sync_eval import evaluate
    from networks.syncnet.syncnet_v2 import load_syncnet
    from stages.sync_score import SyncScorer

    scorer = SyncScorer(load_syncnet(weights, str(device)), str(device))
    results = [found.result for found in evaluate(videos, scorer, precropped=False, face=FaceParams())]
    return {"lse_d": sum(r.min_dist for r in results) / len(results),
            "lse_c": sum(r.conf for r in results) / len(results)}


def _syncnet_weights() -> str | None:
    """syncnet_v2.model when the models folder has it (verified), else None: the samples go without LSE."""
    from curate.config import load_config
    from curate.models import ModelError, require, state

    settings = load_config(None).models
    if any(status == "missing" for _, _, status in state("syncnet", settings)):
        return None
    try:
        return str(require("syncnet", settings)[0])
    except ModelError:
        return None


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
    from training.windows import DataError, read_lists

    try:
        return read_lists(args.lists, args.val_list)
    except DataError as exc:
        raise RunError(str(exc)) from None


def _list_identity(args) -> dict:
    return {"lists": str(Path(args.lists).resolve()),
            "val_list": str(Path(args.val_list).resolve()) if args.val_list else None}


def _run_training(args, config, lists, identity: dict, prepare, job, worker) -> int:
    """What every trainer does: --prepare alone, or claim the run folder (refusing other settings unless
    --reconfigure), prepare the features on Ray, launch `worker(job(train clips, val clips, run folder))` on
    Ray Train with a progress bar, and print the summary. `prepare(run)` gives (train clips, val clips)."""
    from curate.cluster import connect_ray
    from curate.lock import OutputLock
    from training.launch import MetricsProgress, TrainingFailed, launch
    from training.loop import latest_checkpoint

    run_dir = args.out.resolve()
    if args.prepare:   # the features alone: no run folder is made or claimed
        started = connect_ray(config.resources.address)
        try:
            train_clips, val_clips = prepare(ray_map)
        finally:
            _shutdown(started)
        print(f"prepared: {len(train_clips)} training and {len(val_clips)} validation clips; "
              f"features in {_cache(config.data)}")
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


def eval_syncnet(args) -> int:
    import torch

    from curate.training_config import load_training_config
    from networks.syncnet.experts import CLASSES, framing_of, load_expert, read_checkpoint
    from training.expert import evaluate_expert
    from training.windows import DataError, Lists, ValWindows, read_lists

    path = expert_file(args.checkpoint)
    try:
        expert = read_checkpoint(path)
    except Exception as exc:  # noqa: BLE001 - whatever stops it loading, it is not an expert
        raise RunError(f"cannot read {path}: {exc}") from None
    settings = load_training_config(expert.arch, args.config).data
    if args.max_clips is not None:
        settings = dataclasses.replace(settings, val_clips=args.max_clips)
    try:
        lists = read_lists(args.lists)
    except DataError as exc:
        raise RunError(str(exc)) from None
    paths = {"val": lists.val, "train": lists.train, "all": lists.train + lists.val}[args.split]
    if not paths:
        raise RunError(f"{lists.source} has no {args.split} clips")
    framing = framing_of(expert.arch, expert.config, settings.resolution or expert.resolution)
    _, clips = prepare_clips(Lists([], paths, lists.source), settings, framing)
    windows = ValWindows(clips, framing, settings, seed=0)
    if not len(windows):
        raise RunError(f"none of the {len(paths)} {args.split} clips is long enough to evaluate (it takes "
                       f"{framing.num_frames + 30} frames with audio)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        _, model = load_expert(path, device)
        numbers = evaluate_expert(model, CLASSES[expert.arch].frames_input, windows.batches(), torch.device(device))
    except (RuntimeError, ValueError) as exc:
        raise RunError(f"cannot evaluate {path} on {framing.height}x{framing.width} frames: "
                       f"{str(exc).splitlines()[0]}") from None
    arch, step = expert.arch, expert.global_step
    row = {"checkpoint": str(path), "arch": arch, "global_step": step, "split": args.split,
           "clips": len(windows.clips), **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in numbers.items()}}
    if args.json:
        print(json.dumps(row, indent=1))
    else:
        print(f"{'loss':>7} {'accuracy':>8} {'offset acc':>10} {'best shift':>10} {'windows':>7} {'clips':>5}  checkpoint")
        print(f"{row['loss']:7.4f} {row['accuracy']:8.4f} {row['offset_accuracy']:10.4f} {row['best_shift']:10.1f} "
              f"{row['windows']:7d} {row['clips']:5d}  {path} ({arch}, step {step})")
    return 0


# -- pieces ---------------------------------------------------------------------------------------------------

def prepare_clips(lists, settings, framing, run=None, keep=None) -> tuple[list, list]:
    """Usable training and validation clips, features prepared; what is skipped is printed with the reason.
    `keep(clips, what)` splits the prepared clips into (long enough, [(path, why not)]) (default: the experts'
    windows of `framing` and their negatives). Raises RunError when no training clip is usable."""
    from training.windows import FeatureCache, cache_dir, describe_skipped, usable

    keep = keep or (lambda clips, what: usable(clips, framing, settings.min_negative_shift, what))
    cache = FeatureCache(cache_dir(settings))
    out = []
    for what, paths in (("training", lists.train), ("validation", lists.val)):
        if not paths:
            out.append([])
            continue
        clips, skipped = cache.prepare(paths, run)
        clips, short = keep(clips, what)
        if skipped or short:
            print(f"curate: warning: {describe_skipped(skipped + short, what)}", file=sys.stderr)
        out.append(clips)
    if lists.train and not out[0]:
        raise RunError(f"no usable training clips in {lists.source}: all {len(lists.train)} listed were skipped")
    if lists.train and lists.val and not out[1]:
        print("curate: warning: no usable validation clips: no validation numbers and no best checkpoint",
              file=sys.stderr)
    return out[0], out[1]


def ray_map(paths: list, folder: str, chunk: int = 16, work=None, desc: str = "features") -> list:
    """`work(items, folder)` (default prepare_clips_in: the mel features) over `paths` as Ray tasks of `chunk`
    items each, in order, with a progress bar."""
    import ray
    from tqdm import tqdm

    from training.windows import prepare_clips_in

    task = ray.remote(num_cpus=1, max_retries=2)(work or prepare_clips_in)
    refs = [task.remote(paths[i:i + chunk], folder) for i in range(0, len(paths), chunk)]
    results: dict = {}
    with tqdm(total=len(paths), desc=desc, unit="clip", file=sys.stderr, disable=not sys.stderr.isatty()) as bar:
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            results[done[0]] = ray.get(done[0])
            bar.update(len(results[done[0]]))
    return [entry for ref in refs for entry in results[ref]]


def expert_file(checkpoint: Path) -> Path:
    """The expert weights a CKPT argument names: a file; a checkpoint folder; or a run folder (its best
    checkpoint, else its last)."""
    from training.loop import best_checkpoint, latest_checkpoint

    checkpoint = Path(checkpoint)
    if checkpoint.is_file():
        return checkpoint
    if not checkpoint.is_dir():
        raise RunError(f"{checkpoint} does not exist")
    folder = checkpoint
    if (checkpoint / "checkpoints").is_dir():
        folder = best_checkpoint(checkpoint) or latest_checkpoint(checkpoint)
        if folder is None:
            raise RunError(f"{checkpoint} has no checkpoint yet")
    found = sorted(p for p in folder.iterdir() if p.suffix in (".pt", ".pth") and p.name != "train_state.pt")
    if not found:
        raise RunError(f"{folder} holds no expert checkpoint (.pt / .pth)")
    return found[0]


def summary(run_dir: Path) -> str:
    from training.loop import METRICS, PLOT, best_checkpoint, latest_checkpoint, read_metrics

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
                       f"reference: {last['val_copy_l1']:.4f}), PSNR {last['val_psnr']:.2f} dB, SSIM "
                       f"{last['val_ssim']:.3f}; expert's sync loss {last['val_sync']:.3f} (real frames: "
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


def _checked_init(init: Path, arch: str) -> str:
    """--init: an expert file of this arch that loads strictly, checked before any work."""
    from networks.syncnet.experts import load_expert

    if not Path(init).is_file():
        hint = {"stable": "stable-syncnet", "wav2lip": "wav2lip-expert"}[arch]
        raise RunError(f"--init: {init} does not exist (the official {arch} expert is fetched with "
                       f"`curate models download {hint}`)")
    try:
        load_expert(init, arch=arch)
    except Exception as exc:  # noqa: BLE001 - whatever stops it loading, it is not this expert
        raise RunError(f"--init: cannot load {init} as a {arch} expert: {str(exc).splitlines()[0]}") from None
    return str(Path(init).resolve())


def _checked_expert(path: Path | None) -> str:
    """--syncnet: Wav2Lip's lip-sync expert (its 5-frame SyncNet_color), loaded strictly before any work: a
    file, a checkpoint folder, or a run folder (its best checkpoint, else its last)."""
    from networks.syncnet.experts import load_expert

    if path is None:
        raise RunError("--syncnet EXPERT is required: the lip-sync expert the generator learns sync from (Wav2Lip's "
                       "lipsync_expert.pth: `curate models download wav2lip-expert`, or train one with `curate train "
                       "syncnet --arch wav2lip`)")
    if not Path(path).exists():
        raise RunError(f"--syncnet: {path} does not exist (the official expert is fetched with `curate models "
                       "download wav2lip-expert`)")
    path = expert_file(path)    # a run folder of `curate train syncnet --arch wav2lip`: its best checkpoint
    try:
        load_expert(path, arch="wav2lip")
    except Exception as exc:  # noqa: BLE001 - whatever stops it loading, it is not the expert this needs
        raise RunError(f"--syncnet: cannot load {path} as Wav2Lip's lip-sync expert (5 frames, 96 x 96 faces, the "
                       f"layout of lipsync_expert.pth): {str(exc).splitlines()[0]}") from None
    return str(Path(path).resolve())


def _checked_generator(path: Path, size: int) -> str:
    """--init: a Wav2Lip generator of the configured size that loads strictly, checked before any work."""
    from networks.wav2lip import load_generator

    if not Path(path).is_file():
        raise RunError(f"--init: {path} does not exist")
    try:
        generator = load_generator(path)
    except Exception as exc:  # noqa: BLE001 - whatever stops it loading, it is not a generator
        raise RunError(f"--init: cannot load {path} as a Wav2Lip generator: {str(exc).splitlines()[0]}") from None
    if generator.size != size:
        raise RunError(f"--init: {path} is a generator of size {generator.size}, not model.size {size}")
    return str(Path(path).resolve())


def _cache(settings) -> Path:
    from training.windows import cache_dir

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
