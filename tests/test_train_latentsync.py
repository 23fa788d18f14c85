"""Training LatentSync's U-Net: its data (16-frame windows, a reference that does not overlap them, the expert's
mel window and the Whisper features of every frame, cached once per clip by path and content), each stage
training only its own weights and predicting the noise better than predicting none on held-out windows, a
resumed run equal to the uninterrupted one, two workers equal to one, and `curate train latentsync` as a user
runs it (fine-tuning from a checkpoint, samples in the run folder, then `curate lipsync` with the result).

Every network is small (configs/latentsync-small.yaml: 64 x 64 faces, 8 x 8 latents) with stand-in weights
filled by name (the golden tests check the full-size networks against the references); LPIPS's VGG-16 is the
full-size one, whose cost at 32 x 64 lower halves is small."""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from golden import stand_in_state_dict
from test_lipsync_latentsync import _filled, write_whisper_and_vae

from curate.cli import main
from curate.training_config import load_latentsync_config, load_training_config
from training.latentsync import (STAGES, LatentSyncJob, mark_trainable, train_latentsync,
                                         unet_config)
from networks.latentsync_unet import LatentSyncUNet
from networks.lpips import LPIPS
from networks.videomae import SMALL, VideoMAEv2
from networks.videomae import official_layout as trepa_layout
from networks.whisper import chunk_rows, load_whisper_encoder, whisper_features
from networks.syncnet.experts import official_layout as expert_layout
from media.mel import mel_start
from networks.syncnet.stable import StableSyncNet
from training.latent_windows import (NUM_FRAMES, AudioFeatureCache, LatentStream, LatentValWindows, usable_latent,
                                     whisper_features_in)
from training.metrics import read_metrics
from training.windows import loader
from training.clips import FeatureCache, clip_audio

ROOT = Path(__file__).resolve().parents[1]
SMALL_CONFIG = ROOT / "configs" / "latentsync-small.yaml"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """A models folder as `curate models download latentsync lpips trepa stable-syncnet` leaves it, with small
    networks of the official layouts (stand-in weights): the SD VAE, Whisper tiny, LPIPS (VGG-16 features and
    heads), TREPA's ViT (SMALL) and a StableSyncNet of configs/syncnet-stable-small.yaml (64 x 64 faces)."""
    folder = tmp_path_factory.mktemp("models")
    write_whisper_and_vae(folder)
    (folder / "lpips").mkdir()
    lpips = LPIPS()
    state = stand_in_state_dict(lpips)
    torch.save({k: v for k, v in state.items() if k.startswith("features.")}, folder / "lpips" / "vgg16-397923af.pth")
    torch.save({k: v.abs() for k, v in state.items() if k.startswith("lin")}, folder / "lpips" / "vgg.pth")
    torch.save(trepa_layout(_filled(VideoMAEv2(SMALL))), folder / "vit_g_hybrid_pt_1200e_ssv2_ft.pth")
    expert_config = load_training_config("stable", ROOT / "configs" / "syncnet-stable-small.yaml").model
    torch.manual_seed(0)
    expert = StableSyncNet(expert_config.model_dump(mode="json"))
    torch.save(expert_layout("stable", expert, 0, 0, resolution=64), folder / "stable_syncnet.pt")
    return folder


@pytest.fixture(scope="module")
def clips(readme_run, models, tmp_path_factory):
    """The README's run's clips, prepared as `curate train latentsync` prepares them (mel, then Whisper
    features), split by time: the first clip of each source to train on, the later ones to validate on."""
    by_source: dict[str, list[str]] = {}
    for path in sorted((readme_run["out"] / "clips").glob("*/*.mp4")):
        by_source.setdefault(path.parent.name, []).append(str(path))
    train = [paths[0] for paths in by_source.values()]
    val = [path for paths in by_source.values() for path in paths[1:]]
    folder = tmp_path_factory.mktemp("features")
    cache = FeatureCache(folder)
    (train_clips, _), (val_clips, _) = cache.prepare(train), cache.prepare(val)
    whisper = AudioFeatureCache(folder, models / "whisper" / "tiny.pt", "stand-in")
    sha = {path: entry["sha256"] for path, entry in cache.entries.items()}
    (train_clips, skipped), (val_clips, _) = whisper.attach(train_clips, sha), whisper.attach(val_clips, sha)
    assert not skipped and len(train_clips) == 3 and len(val_clips) == 2
    return {"train": train_clips, "val": val_clips, "folder": folder, "sha": sha}


def job_for(clips, models: Path, run_dir: Path, stage: str = "2", init: str | None = None, data: dict | None = None,
            loss: dict | None = None, **train) -> LatentSyncJob:
    """configs/latentsync-small.yaml over the stage's defaults, with changes, as `curate train latentsync` makes
    the job."""
    config = load_latentsync_config(stage, SMALL_CONFIG)
    loss_settings = dataclasses.replace(config.loss, **(loss or {}))
    from networks.videomae import config_of, read_videomae_file

    trepa = models / "vit_g_hybrid_pt_1200e_ssv2_ft.pth"
    return LatentSyncJob(stage, unet_config(config.model.unet, STAGES[stage]), 64,
                         dataclasses.replace(config.data, **(data or {})), dataclasses.replace(config.train, **train),
                         loss_settings, str(models / "sd-vae-ft-mse" / "diffusion_pytorch_model.safetensors"),
                         clips["train"], clips["val"], str(run_dir), str(models / "stable_syncnet.pt"),
                         (str(models / "lpips" / "vgg16-397923af.pth"), str(models / "lpips" / "vgg.pth")),
                         str(trepa), config_of(read_videomae_file(trepa), 4, 112), init)


def metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    lines = read_metrics(Path(run_dir) / "metrics.jsonl")
    return [l for l in lines if "loss" in l], [l for l in lines if "val_loss" in l]


def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _last(run_dir: Path) -> Path:
    return sorted((Path(run_dir) / "checkpoints").glob("step-*"))[-1] / "latentsync_unet.pt"


# -- the data -------------------------------------------------------------------------------------------------

def test_windows_references_mel_and_whisper_features(clips, models):
    """A sample: 16 frames of the face (RGB, at the model's resolution), 16 frames of the same clip that do not
    overlap them, the expert's 52 mel columns from int(80 t / 25), and each frame's Whisper chunk: the 10 rows of
    the clip's features around it, the features being Whisper's over the clip's own audio."""
    train = clips["train"]
    settings = load_latentsync_config("2", SMALL_CONFIG).data
    settings = dataclasses.replace(settings, clips_per_batch=3, batches_per_clip=2, num_workers=0)
    batches = [b for _, b in zip(range(3), iter(LatentStream(train, 64, settings, micro_batch=3, seed=1)))]
    encoder = load_whisper_encoder(models / "whisper" / "tiny.pt")
    features = {clip.path: whisper_features(encoder, clip_audio(clip.path)[1]).numpy() for clip in train}
    for batch in batches:
        assert batch["faces"].shape == batch["references"].shape == (3, 16, 64, 64, 3)
        assert batch["mel"].shape == (3, 1, 80, 52) and batch["audio"].shape == (3, 16, 50, 384)
        assert sorted(batch["sample"].tolist()) == [0, 1, 2]
        targets, references = batch["target_start"], batch["reference_start"]
        assert ((targets - references).abs() >= NUM_FRAMES).all()
        for i in range(3):
            clip = train[int(batch["clip"][i])]
            t = int(targets[i])
            assert 0 <= t <= clip.last_start(16) and 0 <= int(references[i]) <= clip.last_start(16)
            column = mel_start(t)
            assert np.array_equal(batch["mel"][i, 0].numpy(), np.load(clip.mel)[:, column:column + 52])
            rows = features[clip.path]
            for k in (0, 7, 15):
                expected = rows[chunk_rows(t + k, len(rows)).numpy()].reshape(50, 384)
                assert np.abs(batch["audio"][i, k].numpy() - expected).max() < 2e-3 * (1 + np.abs(expected).max())
    # RGB: the red and blue of a face are not the other way round (skin is redder than it is blue)
    faces = batches[0]["faces"].float()
    assert faces[..., 0].mean() > faces[..., 2].mean()
    # two ranks' shares make one rank's batch, places in the batch included; loader processes give the same
    whole = batches[1]
    shares = [next(iter(LatentStream(train, 64, settings, 3, 1, rank=r, world_size=2, start=1))) for r in (0, 1)]
    key = lambda b: sorted(zip(b["sample"].tolist(), b["clip"].tolist(), b["target_start"].tolist()))  # noqa: E731
    assert key(whole) == sorted(key(shares[0]) + key(shares[1]))
    loaded = next(loader(LatentStream(train, 64, dataclasses.replace(settings, num_workers=1), 3, 1, start=1)))
    assert torch.equal(loaded["faces"], whole["faces"]) and torch.equal(loaded["audio"], whole["audio"])
    # the validation windows are fixed
    val = LatentValWindows(clips["val"], 64, settings, seed=4)
    first, second = list(val.batches(2)), list(val.batches(2))
    assert sum(len(b["sample"]) for b in first) == len(val) == 2 * settings.val_windows_per_clip
    for a, b in zip(first, second):
        assert torch.equal(a["faces"], b["faces"]) and torch.equal(a["audio"], b["audio"])
        assert ((a["target_start"] - a["reference_start"]).abs() >= NUM_FRAMES).all()


def test_shards_carry_the_whisper_features_and_give_the_cached_clips_batches(readme_run, clips, models, tmp_path,
                                                                               monkeypatch):
    """`curate shards` with the `latentsync` model installed puts each clip's Whisper features in its sample
    (those the cache holds, and the encoder's sha256 in the index); LatentSync's stream over the shards gives
    the cached clips' batches, features from the shards; an encoder the shards were not made with is refused."""
    from curate.errors import RunError
    from curate.models import sha256_of
    from curate.train_data import attach_whisper, prepare_clips
    from training.clips import read_lists
    from training.face_windows import face_framing

    monkeypatch.setenv("CURATE_MODELS_DIR", str(models))
    shards = tmp_path / "shards"
    assert main(["shards", str(readme_run["out"]), "--out", str(shards), "--val-fraction", "0"]) == 0
    encoder = models / "whisper" / "tiny.pt"
    settings = dataclasses.replace(load_latentsync_config("2", SMALL_CONFIG).data, clips_per_batch=3,
                                   batches_per_clip=2, num_workers=0, cache_dir=str(tmp_path / "nothing"))
    train, val = prepare_clips(read_lists(shards), settings, face_framing(64), keep=usable_latent)
    train, val = attach_whisper(train, val, settings, str(encoder))
    assert not (tmp_path / "nothing").exists()                           # nothing prepared, nothing cached
    cached = sorted(clips["train"] + clips["val"], key=lambda c: c.path)   # the same five clips, in clip-id order
    assert [c.frames for c in train + val] == [c.frames for c in cached] and all(c.sample for c in train)
    assert {c.sample.whisper_sha256 for c in train} == {sha256_of(encoder)}
    make = lambda c: LatentStream(c, 64, settings, micro_batch=3, seed=5)  # noqa: E731
    ours, theirs = ([b for _, b in zip(range(4), iter(make(c)))] for c in (train + val, cached))
    for a, b in zip(ours, theirs):
        for key in ("faces", "references", "mel", "audio", "clip", "target_start", "reference_start"):
            assert torch.equal(a[key], b[key]), key
    other = tmp_path / "other.pt"
    other.write_bytes(encoder.read_bytes() + b"\0")
    with pytest.raises(RunError, match="have no Whisper features of .*other.pt"):
        attach_whisper(train, val, settings, str(other))


def test_whisper_features_are_computed_once_per_clip_and_content(clips, models, tmp_path):
    """A second look finds the features without running Whisper; the same file at another path, or the clip
    changed, or another encoder, gets features of its own; a clip without audio is skipped with the reason."""
    clip = clips["train"][0]
    cache = AudioFeatureCache(clips["folder"], models / "whisper" / "tiny.pt", "stand-in")

    def never(items, encoder):
        raise AssertionError(f"Whisper ran again for {items}")

    again, _ = cache.attach([clip], clips["sha"], never)
    assert again[0].whisper == clip.whisper
    copy = tmp_path / "copy.mp4"
    shutil.copy(clip.path, copy)
    assert cache.target(str(copy), clips["sha"][clip.path]) != Path(clip.whisper)
    assert cache.target(clip.path, "other content") != Path(clip.whisper)
    other = AudioFeatureCache(clips["folder"], models / "whisper" / "tiny.pt", "another encoder")
    assert other.target(clip.path, clips["sha"][clip.path]) != Path(clip.whisper)
    made, skipped = cache.attach([dataclasses.replace(clip, path=str(copy))], {str(copy): "x"})
    assert not skipped and np.array_equal(np.load(made[0].whisper), np.load(clip.whisper))
    problems = whisper_features_in([(str(tmp_path / "gone.mp4"), str(tmp_path / "gone.npy"))], str(models / "whisper" /
                                                                                                   "tiny.pt"))
    assert problems[0].startswith("unreadable") and not (tmp_path / "gone.npy").exists()


def test_clips_too_short_for_a_window_and_its_reference_are_skipped(clips):
    short = dataclasses.replace(clips["train"][0], frames=40)
    kept, skipped = usable_latent([clips["train"][0], short], "training")
    assert kept == [clips["train"][0]] and skipped[0][1].startswith("too_short: 40 frames")


# -- the stages -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stage1(clips, models, tmp_path_factory):
    """Stage 1 from scratch: 60 steps of the small U-Net, without motion modules, on the noise loss."""
    run = tmp_path_factory.mktemp("stage1")
    job = job_for(clips, models, run, stage="1", max_steps=60, validate_every=60, checkpoint_every=60)
    train_latentsync(job)
    return run


def _changed(before: dict, after: dict) -> set[str]:
    return {key for key in after if not torch.equal(before[key], after[key])}


def test_stage_1_learns_to_predict_the_noise_of_held_out_windows(stage1):
    """On the validation clips' fixed windows (frames the model never saw), the noise MSE falls well under that
    of predicting no noise (1.0 for unit noise, and what the U-Net scores at its start: its last convolution
    begins at zero)."""
    steps, vals = metrics(stage1)
    start = json.loads((stage1 / "metrics.jsonl").read_text().splitlines()[0])
    assert start["trainable_parameters"] == sum(v.numel() for v in _weights(_last(stage1)).values()
                                                if v.is_floating_point()) and start["precision"] == "float32"
    assert abs(vals[0]["val_recon"] - vals[0]["val_zero_recon"]) < 1e-6
    assert vals[-1]["val_recon"] < 0.6 * vals[-1]["val_zero_recon"], vals
    assert np.mean([l["recon"] for l in steps[-3:]]) < np.mean([l["recon"] for l in steps[:2]])
    weights = _weights(_last(stage1))
    assert not any(".motion_modules." in key for key in weights)
    assert torch.load(_last(stage1), weights_only=True)["resolution"] == 64


@pytest.mark.parametrize("stage", ["2", "2-efficient"])
def test_stage_2_trains_only_its_weights_from_a_stage_1_unet(stage, stage1, clips, models, tmp_path):
    """From stage 1's U-Net: the motion modules the stage builds start at zero output, so the U-Net starts as
    stage 1's (the same first validation); only the stage's weights change (motion modules and attentions, or
    decoder motion modules and audio cross-attention); the pixel losses are measured and learnt from."""
    job = job_for(clips, models, tmp_path, stage=stage, init=str(_last(stage1)), max_steps=3, log_every=1,
                  validate_every=3, checkpoint_every=3)
    train_latentsync(job)
    steps, vals = metrics(tmp_path)
    _, stage1_vals = metrics(stage1)
    assert abs(vals[0]["val_recon"] - stage1_vals[-1]["val_recon"]) < 1e-4
    terms = {"sync", "lpips"} | ({"trepa"} if stage == "2" else set())
    assert all(set(line) >= terms for line in steps) and set(vals[-1]) >= {f"val_{t}" for t in terms}
    if stage == "2-efficient":
        assert "trepa" not in steps[-1]
    before, after = _weights(_last(stage1)), _weights(_last(tmp_path))
    torch.manual_seed(job.loop.seed)           # as the loop builds it: the fresh motion modules are these
    model = LatentSyncUNet(job.unet)
    mark_trainable(model, STAGES[stage])
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    changed = _changed({**model.state_dict(), **before}, after)
    assert changed and changed <= trainable
    assert len(changed) > 0.5 * len(trainable)
    motion = {key for key in after if ".motion_modules." in key}
    if stage == "2":
        assert any(k.startswith("down_blocks.") for k in motion) and any(".attn1." in k for k in changed)
    else:
        assert motion and all(k.startswith("up_blocks.") for k in motion)
        assert all(".motion_modules." in k or ".attn2." in k for k in changed)
    assert not any(k.startswith(("conv_in", "conv_out")) or ".resnets." in k for k in changed)


def test_a_resumed_run_gives_the_uninterrupted_runs_numbers(clips, models, stage1, tmp_path):
    """Stage 2 with every loss, stopped after a checkpoint at step 2 and run again to 4: the same losses and the
    same weights, bit for bit, as a run that went straight to 4."""
    init = str(_last(stage1))
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train_latentsync(job_for(clips, models, whole, init=init, max_steps=4, log_every=1, validate_every=2,
                             checkpoint_every=2, keep_checkpoints=5))
    train_latentsync(job_for(clips, models, parts, init=init, max_steps=2, log_every=1, validate_every=2,
                             checkpoint_every=2, keep_checkpoints=5))
    train_latentsync(job_for(clips, models, parts, init=init, max_steps=4, log_every=1, validate_every=2,
                             checkpoint_every=2, keep_checkpoints=5))
    strip = lambda lines: [{k: v for k, v in l.items() if k not in ("time", "samples_per_s", "data_wait_share")}  # noqa: E731
                           for l in lines]
    (a_steps, a_vals), (b_steps, b_vals) = metrics(whole), metrics(parts)
    assert strip(a_steps) == strip(b_steps) and strip(a_vals) == strip(b_vals)
    assert [l["step"] for l in a_steps] == [1, 2, 3, 4]
    ours, theirs = _weights(_last(whole)), _weights(_last(parts))
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.timeout(600)
def test_two_workers_make_the_update_one_worker_makes(clips, models, stage1, tmp_path, ray_cluster):
    """DDP on two CPU workers (gloo) through Ray Train, each with one of the batch's two clips: the losses and
    the weights of one worker with the whole batch (each sample's noise is its own, not the process's)."""
    from training.launch import launch

    runs = {}
    for workers in (1, 2):
        run = tmp_path / f"workers{workers}"
        job = job_for(clips, models, run, stage="2-efficient", init=str(_last(stage1)),
                      data={"clips_per_batch": 2, "num_workers": 0, "val_windows_per_clip": 1}, batch_size=2,
                      max_steps=3, log_every=1, validate_every=3, checkpoint_every=3)
        if workers == 1:   # the reference: one process with the whole batch (Ray Train adds nothing to it)
            train_latentsync(job)
        else:
            launch(train_latentsync, job, run, workers=workers, cpus_per_worker=1, max_failures=0)
        runs[workers] = run
    (one_steps, one_vals), (two_steps, two_vals) = metrics(runs[1]), metrics(runs[2])
    assert [l["step"] for l in two_steps] == [1, 2, 3]
    for a, b in zip(one_steps + one_vals, two_steps + two_vals):
        assert abs(a.get("loss", a.get("val_loss")) - b.get("loss", b.get("val_loss"))) < 1e-4
    assert json.loads((runs[2] / "metrics.jsonl").read_text().splitlines()[0])["world_size"] == 2
    ours, theirs = _weights(_last(runs[1])), _weights(_last(runs[2]))
    diffs = torch.cat([(ours[k].float() - theirs[k].float()).abs().flatten() for k in ours])
    lr = load_latentsync_config("2-efficient", SMALL_CONFIG).train.lr
    assert float((diffs > 1e-6).float().mean()) < 1e-3 and float(diffs.max()) <= 2 * lr * 3


# -- the command ----------------------------------------------------------------------------------------------

def test_fine_tuning_from_a_checkpoint_with_the_command_then_lipsync(clips, models, stage1, work, tmp_path,
                                                                     monkeypatch, capsys, ray_cluster):
    """What the README's tour does: `curate train latentsync --stage 2-efficient --init` a U-Net, on a list of
    clips with a validation list, the expert from --syncnet; the loss is logged, samples of the validation clips
    appear with their mouth's PSNR / SSIM, the summary names the checkpoint, and `curate lipsync --model
    latentsync --checkpoint RUN` makes a video with it."""
    monkeypatch.setenv("CURATE_MODELS_DIR", str(models))
    monkeypatch.setenv("CURATE_FEATURES_DIR", str(clips["folder"]))
    (tmp_path / "train.txt").write_text("".join(c.path + "\n" for c in clips["train"]))
    (tmp_path / "val.txt").write_text(clips["val"][0].path + "\n")
    run = tmp_path / "run"
    stable = models / "stable_syncnet.pt"
    args = ["train", "latentsync", str(tmp_path / "train.txt"), "--out", str(run), "--stage", "2-efficient",
            "--init", str(_last(stage1)), "--syncnet", str(stable), "--config", str(SMALL_CONFIG),
            "--val-list", str(tmp_path / "val.txt"), "--max-steps", "4", "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "stage 2-efficient:" in out and "parameters train" in out
    assert "not used: stage 2-efficient builds them in the decoder only" not in out   # stage 1 has none to drop
    assert "start afresh" in out and "val:     loss" in out and "noise MSE" in out and "samples: " in out
    samples = sorted((run / "samples").glob("step-*"))
    assert [p.name for p in samples] == ["step-000000000", "step-000000004"]
    assert len(list(samples[-1].glob("*.mp4"))) == 1
    _, vals = metrics(run)
    assert vals[-1]["val_samples"] == 1 and 5 < vals[-1]["val_mouth_psnr"] < 60
    checkpoint = _last(run)
    saved = torch.load(checkpoint, weights_only=True)
    assert set(saved) == {"state_dict", "global_step", "resolution"} and saved["global_step"] == 4
    LatentSyncUNet(job_for(clips, models, tmp_path, stage="2-efficient").unet).load_state_dict(saved["state_dict"])
    # the result speaks: curate lipsync with the run folder (its best checkpoint)
    made = tmp_path / "made.mp4"
    assert main(["lipsync", str(work / "kitchen.mp4"), str(work / "speech.wav"), "-o", str(made), "--model", "latentsync",
                 "--checkpoint", str(run), "--steps", "2", "--no-progress"]) == 0
    assert made.stat().st_size > 0
    # a second start of the same command is done already; another stage in the same folder is refused
    assert main(args) == 0 and "already" in capsys.readouterr().out
    assert main([*args[:6], "2", *args[7:]]) == 2
    assert "other settings" in capsys.readouterr().err


def test_missing_weights_are_all_named_at_once_before_any_work(tmp_path, monkeypatch, capsys, clips):
    """Stage 2 with an empty models folder: one line naming the VAE, Whisper, LPIPS, TREPA and the expert, each
    with its folder and the command that fetches it; no run folder is made."""
    monkeypatch.setenv("CURATE_MODELS_DIR", str(tmp_path / "models"))
    (tmp_path / "train.txt").write_text(clips["train"][0].path + "\n")
    assert main(["train", "latentsync", str(tmp_path / "train.txt"), "--out", str(tmp_path / "run"), "--stage", "2",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    for name, command in (("tiny.pt", "latentsync"), ("diffusion_pytorch_model.safetensors", "latentsync"),
                          ("vgg16-397923af.pth", "lpips"), ("vit_g_hybrid_pt_1200e_ssv2_ft.pth", "trepa"),
                          ("stable_syncnet.pt", "stable-syncnet")):
        assert name in err and f"curate models download {command}" in err, (name, err)
    assert str(tmp_path / "models") in err and not (tmp_path / "run").exists()
    # stage 1 needs none of the pixel losses' networks
    assert main(["train", "latentsync", str(tmp_path / "train.txt"), "--out", str(tmp_path / "run"), "--stage", "1",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "tiny.pt" in err and "lpips" not in err and "trepa" not in err
