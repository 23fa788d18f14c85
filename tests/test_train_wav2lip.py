"""Training Wav2Lip's generator: its data (target and reference windows, the audio under each frame), its loss
and the expert's switch, that it learns to remake held-out lower halves better than copying the reference, that
a resumed run is the uninterrupted one (with and without the discriminator), and `curate train wav2lip` as a
user runs it, through Ray."""

import dataclasses
import json
import shutil
import wave
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from curate.cli import main
from curate.training_config import load_wav2lip_config
from training.wav2lip import GanSettings, Wav2LipJob, Wav2LipRecipe, expert_input, train_wav2lip
from networks.wav2lip import DISC_FILE, GENERATOR_FILE, load_discriminator, load_generator
from footage import read_clip
from networks.syncnet.experts import load_expert, official_layout
from media.mel import mel_start
from networks.syncnet.stable import StableSyncNet
from networks.syncnet.wav2lip_expert import Wav2LipExpert
from training.face_windows import (NUM_FRAMES, FaceStream, FaceValWindows, FaceWindowSettings, last_start,
                                   usable_faces)
from training.metrics import read_metrics
from training.checkpoints import checkpoint_dirs
from training.windows import loader
from training.clips import FeatureCache

ROOT = Path(__file__).resolve().parents[1]
SMALL = ROOT / "configs" / "wav2lip-small.yaml"


@pytest.fixture(scope="session")
def expert_file(tmp_path_factory) -> Path:
    """A stand-in for lipsync_expert.pth: Wav2Lip's expert with seeded random weights, in the official layout.
    It judges every window about alike (sync loss about 1.0), which is all the mechanics below need."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("expert") / "lipsync_expert.pth"
    torch.save(official_layout("wav2lip", Wav2LipExpert(), 0, 0), path)
    return path


@pytest.fixture(scope="module")
def speakers(readme_run, tmp_path_factory):
    """The README's run of the shared videos, its clips split by time, not by speaker: the first clip of each
    source (three speakers) to train on, the later clips of the two sources that have them to validate on, so
    that validation is on held-out frames of speakers the generator has seen."""
    by_source: dict[str, list[str]] = {}
    for path in sorted((readme_run["out"] / "clips").glob("*/*.mp4")):
        by_source.setdefault(path.parent.name, []).append(str(path))
    train = [paths[0] for paths in by_source.values()]
    val = [path for paths in by_source.values() for path in paths[1:]]
    cache = FeatureCache(tmp_path_factory.mktemp("features"))
    (train_clips, skipped), (val_clips, _) = cache.prepare(train), cache.prepare(val)
    assert not skipped and len(train_clips) == 3 and len(val_clips) == 2
    return train_clips, val_clips


def job_for(clips, expert: Path, run_dir: Path, gan: bool = False, data: dict | None = None, loss: dict | None = None,
            **train) -> Wav2LipJob:
    """configs/wav2lip-small.yaml with `data`, `loss` and `train` changes, as `curate train wav2lip` makes it."""
    config = load_wav2lip_config(SMALL)
    loop = dataclasses.replace(config.train, **train)
    if gan:
        loop = dataclasses.replace(loop, betas=config.gan.generator_betas)
    return Wav2LipJob(config.model.size, dataclasses.replace(config.data, **(data or {})), loop,
                      dataclasses.replace(config.loss, **(loss or {})), config.gan if gan else None, str(expert),
                      clips[0], clips[1], str(run_dir))


def metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    lines = read_metrics(run_dir / "metrics.jsonl")
    return [l for l in lines if "loss" in l], [l for l in lines if "val_loss" in l]


def _same_numbers(a, b) -> None:
    """The lines equal but for what measures time."""
    strip = lambda lines: [{k: v for k, v in l.items() if k not in ("time", "samples_per_s", "data_wait_share")}
                           for l in lines]
    assert strip(a[0]) == strip(b[0]) and strip(a[1]) == strip(b[1])


def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


# -- the data -------------------------------------------------------------------------------------------------

def test_windows_references_and_the_audio_under_each_frame(speakers):
    """A sample: 5 frames of the face at the model's size (BGR), 5 frames of the same clip that do not overlap
    them, and frame k's mel window starting at column int(80 k / 25), inference's convention; the expert's
    window of the five is the first frame's."""
    train, _ = speakers
    settings = FaceWindowSettings(clips_per_batch=3, batches_per_clip=2, num_workers=0)
    batches = [b for _, b in zip(range(3), iter(FaceStream(train, 64, settings, micro_batch=6, seed=1)))]
    pictures, _, _ = read_clip(train[0].path)            # RGB frames, as FFmpeg converts them
    for batch in batches:
        assert batch["faces"].shape == batch["references"].shape == (6, 5, 64, 64, 3)
        assert batch["mels"].shape == (6, 5, 1, 80, 16) and batch["mel"].shape == (6, 1, 80, 16)
        assert torch.equal(batch["mel"], batch["mels"][:, 0])
        targets, references = batch["target_start"], batch["reference_start"]
        assert ((targets - references).abs() >= NUM_FRAMES).all()          # no frame of both
        for i in range(6):
            clip = train[int(batch["clip"][i])]
            t = int(targets[i])
            assert 0 <= t <= last_start(clip) and 0 <= int(references[i]) <= last_start(clip)
            mel = np.load(clip.mel)
            for k in range(5):
                column = mel_start(t + k)
                assert column == int(80 * (t + k) / 25)
                assert np.array_equal(batch["mels"][i, k, 0].numpy(), mel[:, column:column + 16])
            if int(batch["clip"][i]) == 0:
                expected = cv2.resize(pictures[t][..., ::-1], (64, 64), interpolation=cv2.INTER_AREA)
                assert np.abs(batch["faces"][i, 0].numpy().astype(int) - expected).mean() < 2.5
    # two ranks' shares make one rank's batch; a stream started later and loader processes give the same
    whole = batches[1]
    shares = [next(iter(FaceStream(train, 64, settings, 6, 1, rank=r, world_size=2, start=1))) for r in (0, 1)]
    key = lambda clips, t, r: sorted(zip(clips.tolist(), t.tolist(), r.tolist()))
    assert key(whole["clip"], whole["target_start"], whole["reference_start"]) == key(
        *(torch.cat([s[k] for s in shares]) for k in ("clip", "target_start", "reference_start")))
    loaded = next(loader(FaceStream(train, 64, dataclasses.replace(settings, num_workers=1), 6, 1, start=1)))
    assert torch.equal(loaded["faces"], whole["faces"]) and torch.equal(loaded["mels"], whole["mels"])
    # the validation windows: fixed by the seed, a reference that does not overlap, the same audio convention
    val = FaceValWindows(train, 64, FaceWindowSettings(val_windows_per_clip=3), seed=4)
    first, second = (list(val.batches(batch_size=4)) for _ in range(2))
    assert sum(len(b["clip"]) for b in first) == len(val) == 9
    for a, b in zip(first, second):
        assert torch.equal(a["faces"], b["faces"]) and torch.equal(a["target_start"], b["target_start"])
        assert ((a["target_start"] - a["reference_start"]).abs() >= NUM_FRAMES).all()
        assert torch.equal(a["mel"], a["mels"][:, 0])


def test_clips_too_short_for_a_window_and_its_reference_are_skipped(speakers):
    train, _ = speakers
    short = dataclasses.replace(train[0], frames=12)
    kept, skipped = usable_faces([train[0], short], "training")
    assert kept == [train[0]] and skipped[0][0] == short.path and skipped[0][1].startswith("too_short: 12 frames")


# -- the loss -------------------------------------------------------------------------------------------------

def test_the_experts_input_is_the_lower_halves_at_its_size():
    """5 faces (B, 3, 5, S, S) -> (B, 15, 48, 96), frame by frame; the 256 variant's are scaled down to it."""
    smooth = lambda side: torch.nn.functional.interpolate(torch.rand(10, 3, 6, 6), size=(side, side), mode="bilinear",
                                                          align_corners=True)
    torch.manual_seed(0)
    small = smooth(96).reshape(2, 5, 3, 96, 96).transpose(1, 2)
    x = expert_input(small)
    assert x.shape == (2, 15, 48, 96)
    assert torch.equal(x[:, 3:6], small[:, :, 1, 48:])              # frame 1 of sample 0 .. 1, its 3 channels
    torch.manual_seed(0)
    big = smooth(256).reshape(2, 5, 3, 256, 256).transpose(1, 2)    # the same pictures at 256
    scaled = expert_input(big)
    assert scaled.shape == (2, 15, 48, 96) and (scaled - x).abs().mean() < 0.01


def test_the_sync_weight_switches_on_below_the_threshold_and_stays(expert_file):
    _, expert = load_expert(expert_file)
    batches = lambda: iter([])
    recipe = Wav2LipRecipe(64, expert, val_batches=batches)
    assert recipe.sync_weight == 0 and recipe.sync_weight_on == 0.01
    recipe.sync_on = True
    assert recipe.sync_weight == 0.01
    state = recipe.state_dict()
    again = Wav2LipRecipe(64, expert, val_batches=batches)
    again.load_state_dict(state)
    assert again.sync_weight == 0.01
    assert Wav2LipRecipe(64, expert, gan=GanSettings()).sync_weight_on == 0.03


# -- training -------------------------------------------------------------------------------------------------

@pytest.mark.timeout(900)
def test_the_generator_learns_to_remake_held_out_lower_halves(speakers, expert_file, tmp_path):
    """Trained briefly on the first 10 s of three speakers, judged on later frames of two of them (their own
    audio, another window of the same clip as the reference): the remade lower halves are nearer the truth
    than the reference's lower half is, which is what a generator that ignored its inputs but the reference
    would give, and much nearer than before training."""
    steps = 60
    # a batch of one window of each training clip: every batch norm sees the same speakers at every step, which
    # a batch this small needs for its running statistics (what eval mode uses) to be the batches'
    train_wav2lip(job_for(speakers, expert_file, tmp_path, data={"val_windows_per_clip": 8, "clips_per_batch": 3},
                          batch_size=3, max_steps=steps, validate_every=steps, checkpoint_every=steps))
    trained, vals = metrics(tmp_path)
    before, after = vals[0], vals[-1]
    print({k: round(v, 4) for k, v in before.items()}, {k: round(v, 4) for k, v in after.items()},
          [(l["step"], round(l["loss"], 4)) for l in trained])
    assert (before["step"], after["step"]) == (0, steps) and after["val_windows"] == 16
    for key in ("val_copy_l1", "val_copy_psnr", "val_copy_ssim"):   # the same windows
        assert after[key] == before[key]
    assert after["val_l1"] < 0.95 * after["val_copy_l1"] and after["val_psnr"] > after["val_copy_psnr"]
    assert after["val_l1"] < 0.6 * before["val_l1"] and after["val_psnr"] > before["val_psnr"] + 3
    assert trained[-1]["loss"] < 0.8 * trained[0]["loss"]


def test_a_resumed_run_gives_the_uninterrupted_runs_losses_discriminator_included(speakers, expert_file, tmp_path):
    """--gan, with gradient accumulation and the expert's loss switched on at the first validation (a threshold
    over the stand-in's sync loss): stopped at a checkpoint and rerun, the run gives the uninterrupted one's
    losses and weights, generator's and discriminator's, bit for bit (a cut after a checkpoint, whose metrics
    past it are dropped, is the harness's, tested with the experts). The switch is in the checkpoint (without it the resumed steps would train without the expert),
    the discriminator beside the generator in the official layout (hq_wav2lip_train.py's), and the generator
    takes hq's Adam betas."""
    # micro-batches of 2: a batch of one through the expert's last convolutions is not reproducible bit for bit
    # on the CPU (a single-row matrix product whose rounding varies from call to call)
    settings = dict(gan=True, batch_size=4, grad_accum=2, log_every=1, validate_every=2, checkpoint_every=2,
                    data={"clips_per_batch": 2, "val_clips": 1, "val_windows_per_clip": 1},
                    loss={"sync_on_below": 2.0})
    whole = tmp_path / "whole"
    train_wav2lip(job_for(speakers, expert_file, whole, max_steps=3, **settings))
    parts = tmp_path / "parts"
    train_wav2lip(job_for(speakers, expert_file, parts, max_steps=2, **settings))
    train_wav2lip(job_for(speakers, expert_file, parts, max_steps=3, **settings))
    _same_numbers(metrics(parts), metrics(whole))
    steps, vals = metrics(whole)
    assert [line["val_sync_weight"] for line in vals] == [0.03, 0.03, 0.03]   # steps 0, 2, 3
    assert all(line[k] > 0 for line in steps for k in ("sync", "gan", "disc_real", "disc_fake", "l1"))
    start = read_metrics(whole / "metrics.jsonl")[0]
    assert start["adversary_parameters"] > 1_000_000 and start["settings"]["betas"] == [0.5, 0.999]
    final = whole / "checkpoints" / "step-000000003"
    blob = torch.load(final / DISC_FILE, map_location="cpu", weights_only=True)
    assert set(blob) >= {"state_dict", "optimizer", "global_step", "global_epoch"} and blob["global_step"] == 3
    assert load_discriminator(final / DISC_FILE).size == 64
    state = torch.load(final / "train_state.pt", map_location="cpu", weights_only=False)
    assert state["adversary"]["optimizer"]["param_groups"][0]["betas"] == (0.5, 0.999)
    assert state["recipe"] == {"sync_on": True}
    for name in (GENERATOR_FILE, DISC_FILE):
        ours, theirs = _weights(parts / "checkpoints" / "step-000000003" / name), _weights(final / name)
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    # the discriminator moved: it is not the one of step 2
    first = _weights(parts / "checkpoints" / "step-000000002" / DISC_FILE)
    assert any(not torch.equal(first[k], blob["state_dict"][k]) for k in first)


# -- the command ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lists(readme_run, tmp_path_factory):
    folder = tmp_path_factory.mktemp("lists")
    assert main(["filelist", str(readme_run["out"]), "--out", str(folder), "--val-fraction", "0.34"]) == 0
    return folder


@pytest.fixture
def features(tmp_path, monkeypatch):
    folder = tmp_path / "features"
    monkeypatch.setenv("CURATE_FEATURES_DIR", str(folder))
    return folder


@pytest.mark.timeout(900)
def test_curate_train_wav2lip_trains_continues_and_refuses(lists, readme_run, expert_file, tmp_path, features,
                                                           ray_cluster, stand_in_models, monkeypatch, capsys):
    monkeypatch.setenv("CURATE_MODELS_DIR", str(stand_in_models))    # syncnet_v2.model: the samples' LSE
    run = tmp_path / "run"
    # the expert as a checkpoint folder of `curate train syncnet --arch wav2lip` gives it: its file is taken
    expert_checkpoint = tmp_path / "expert" / "step-000000200"
    expert_checkpoint.mkdir(parents=True)
    shutil.copy(expert_file, expert_checkpoint / "lipsync_expert.pth")
    # samples (a second of a validation clip through lipsync.pipeline, and its LSE) at the second run's
    # validation only: they cost seconds each, and the samples: section may change between runs
    quiet = tmp_path / "small.yaml"
    quiet.write_text(SMALL.read_text().replace("samples:\n  clips: 1", "samples:\n  clips: 0"))
    train = ["train", "wav2lip", str(lists), "--out", str(run), "--syncnet", str(expert_checkpoint), "--no-progress"]
    assert main([*train, "--config", str(quiet), "--max-steps", "1"]) == 0
    out = capsys.readouterr().out
    assert "trained: step 1" in out and "val:     loss" in out and "copying the reference" in out
    assert f"last:    {run}/checkpoints/step-000000001/{GENERATOR_FILE}" in out
    record = json.loads((run / "run.json").read_text())
    assert record["trainer"] == "wav2lip" and record["gan"] is False
    assert record["syncnet"] == str(expert_checkpoint / "lipsync_expert.pth")
    # the checkpoint is the official layout, which the generator's own loader takes strictly
    checkpoint = run / "checkpoints" / "step-000000001" / GENERATOR_FILE
    blob = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert set(blob) >= {"state_dict", "optimizer", "global_step", "global_epoch"} and blob["framing"] == "template"
    generator = load_generator(checkpoint)
    assert generator.size == load_wav2lip_config(SMALL).model.size
    assert all(torch.equal(generator.state_dict()[k], v) for k, v in blob["state_dict"].items())
    assert (run / "metrics.png").is_file() and not (run / "samples").exists()

    # the same command, further: it continues from step 1, the numbers so far kept; with samples this time
    first = read_metrics(run / "metrics.jsonl")
    assert main([*train, "--config", str(SMALL), "--max-steps", "2"]) == 0
    out = capsys.readouterr().out
    again = read_metrics(run / "metrics.jsonl")
    assert again[:len(first)] == first and again[-1]["step"] == 2
    assert [p.name for p in checkpoint_dirs(run)] == ["step-000000001", "step-000000002"]
    sample = sorted((run / "samples" / "step-000000002").glob("*.mp4"))
    assert len(sample) == 1 and f"samples: {run}/samples/step-000000002 (1 video; LSE-D " in out
    pictures, sound, _ = read_clip(sample[0])
    assert len(pictures) == 25 and pictures[0].shape == (256, 256, 3) and len(sound) > 15000
    last = metrics(run)[1][-1]
    assert last["val_samples"] == 1 and last["val_lse_d"] > 0 and "val_lse_c" in last
    train.extend(["--config", str(SMALL)])
    assert main([*train, "--max-steps", "2"]) == 0
    assert capsys.readouterr().out.startswith(f"{run} is at step 2 already")
    # --gan is another run: refused on this folder unless asked for
    assert main([*train, "--max-steps", "3", "--gan"]) == 2
    assert "holds a run with other settings (gan: False -> True" in capsys.readouterr().err

    # the README's last step: the run folder's generator makes one speaker's clip say another's speech, through
    # `curate lipsync` (its template framing read from the checkpoint); only the lower face changes
    clips = sorted((readme_run["out"] / "clips").glob("*/*.mp4"))
    video, other = clips[0], next(c for c in clips if c.parent.name != clips[0].parent.name)
    speech = tmp_path / "speech.wav"
    _write_wav(read_clip(other)[1][:16000], speech)
    synced = tmp_path / "synced.mp4"
    assert main(["lipsync", str(video), str(speech), "-o", str(synced), "--checkpoint", str(run)]) == 0
    assert f"wrote {synced}: 25 frames" in capsys.readouterr().out
    made, sound, _ = read_clip(synced)
    assert len(made) == 25 and made[0].shape == (256, 256, 3) and abs(len(sound) - 16000) < 1024
    source = np.stack(read_clip(video)[0][:25]).astype(int)
    change = np.abs(np.stack(made).astype(int) - source).mean(axis=(0, 3))     # (256, 256), over frames
    assert change[:96].mean() < 2.0                     # above the nose: the codec's noise only
    assert change[160:224, 80:176].mean() > 2 * change[:96].mean()               # the mouth was remade


def test_what_train_wav2lip_refuses_before_any_work(lists, expert_file, tmp_path, features, ray_cluster, capsys):
    def refused(*args: str) -> str:
        """The error: one line, the last one (warnings about skipped clips may come before it)."""
        assert main(["train", "wav2lip", *args, "--config", str(SMALL)]) == 2
        err = capsys.readouterr().err
        assert err.strip().splitlines()[-1].startswith("curate: error: "), err
        return err.strip().splitlines()[-1]

    out = ["--out", str(tmp_path / "run")]
    assert "--syncnet EXPERT is required" in refused(str(lists), *out)
    assert "does not exist" in refused(str(lists), *out, "--syncnet", str(tmp_path / "nowhere.pth"))
    (tmp_path / "junk.pth").write_bytes(b"junk")
    assert "cannot load" in refused(str(lists), *out, "--syncnet", str(tmp_path / "junk.pth"))
    torch.save(official_layout("stable", StableSyncNet(_tiny_stable()), 0, 0), tmp_path / "stable.pt")
    assert "holds a stable expert" in refused(str(lists), *out, "--syncnet", str(tmp_path / "stable.pt"))
    assert "nowhere does not exist" in refused(str(tmp_path / "nowhere"), *out, "--syncnet", str(expert_file))
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{tmp_path / 'missing.mp4'}\n")
    assert "no usable training clips" in refused(str(bad), *out, "--syncnet", str(expert_file))
    assert not (tmp_path / "run" / "checkpoints").exists()


def _write_wav(samples: np.ndarray, path: Path) -> None:
    """16 kHz mono int16 samples as a WAV file."""
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(16000)
        handle.writeframes(np.asarray(samples).astype("<i2").tobytes())


def _tiny_stable() -> dict:
    """The smallest StableSyncNet config the schema takes: a stable expert is not the one Wav2Lip trains with."""
    encoder = lambda channels: {"in_channels": channels, "block_out_channels": [32], "downsample_factors": [2],
                                "attn_blocks": [0]}
    return {"audio_encoder": encoder(1), "visual_encoder": encoder(48)}
