"""`curate train`'s config: the documented defaults are the code's, keys are checked as in pipeline.yaml, and the
model and training-step code needs nothing but torch."""

import subprocess
import sys
from pathlib import Path

import pytest

from curate.config import ConfigError
from curate.training_config import (documented_defaults, latentsync_documented_defaults, load_latentsync_config,
                                    load_training_config, load_wav2lip_config, wav2lip_documented_defaults)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("arch", ["stable", "wav2lip"])
def test_the_documented_defaults_are_the_codes(arch):
    assert load_training_config(arch, documented_defaults(arch)) == load_training_config(arch)


def test_the_generators_documented_defaults_are_the_codes():
    assert load_wav2lip_config(wav2lip_documented_defaults()) == load_wav2lip_config()


def test_the_generators_defaults_are_wav2lips_hyperparameters():
    """hparams.py: batch 16 at 96, lr 1e-4, eval and checkpoint every 3000 steps; wav2lip_train.py: Adam with its
    default betas, sync weight 0.01 once the validation's sync loss is under 0.75; hq_wav2lip_train.py (--gan):
    sync 0.03, disc 0.07, both Adams at lr 1e-4 with betas (0.5, 0.999)."""
    config = load_wav2lip_config()
    assert config.model.size == 96
    assert (config.train.batch_size, config.train.optimizer, config.train.lr, config.train.betas,
            config.train.weight_decay, config.train.max_grad_norm) == (16, "adam", 1e-4, (0.9, 0.999), 0.0, None)
    assert (config.train.validate_every, config.train.checkpoint_every) == (3000, 3000)
    assert (config.loss.sync_weight, config.loss.gan_sync_weight, config.loss.sync_on_below,
            config.loss.gan_weight) == (0.01, 0.03, 0.75, 0.07)
    assert (config.gan.optimizer, config.gan.lr, config.gan.betas, config.gan.generator_betas) == \
        ("adam", 1e-4, (0.5, 0.999), (0.5, 0.999))
    hd = load_wav2lip_config(ROOT / "configs" / "wav2lip-hd.yaml")
    assert hd.model.size == 256 and hd.train == config.train
    small = load_wav2lip_config(ROOT / "configs" / "wav2lip-small.yaml")
    assert small.train.batch_size == 4 and small.data.num_workers == 1


@pytest.mark.parametrize("text, message", [
    ("model:\n  size: 100\n", "'model.size': 100 is not a size the generator is built for: 64, 96, 128, 192, 256"),
    ("train:\n  batch_size: 24\n", "a micro-batch of 24 samples (train.batch_size / grad_accum) does not split "
                                   "evenly over data.clips_per_batch = 16"),
    ("loss:\n  gan_weight: 0.99\n", "gan_sync_weight + gan_weight must be under 1"),
    ("gan:\n  betas: [0.5]\n", "'gan.betas.1': Field required"),
    ("data:\n  min_negative_shift: 5\n", "unknown key 'data.min_negative_shift'"),
])
def test_bad_generator_settings_are_named(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_wav2lip_config(path)
    assert message in str(caught.value) and str(path) in str(caught.value)


def test_the_references_hyperparameters_are_the_defaults():
    stable, wav2lip = load_training_config("stable"), load_training_config("wav2lip")
    assert (stable.train.batch_size, stable.train.optimizer, stable.train.lr, stable.train.max_grad_norm) == \
        (256, "adamw", 1e-5, 1.0)
    assert stable.model.visual_encoder.block_out_channels[-1] == 2048 and stable.model.visual_encoder.in_channels == 48
    assert (wav2lip.train.batch_size, wav2lip.train.optimizer, wav2lip.train.lr, wav2lip.train.max_grad_norm) == \
        (64, "adam", 1e-4, None)
    assert wav2lip.model is None


@pytest.mark.parametrize("text, message", [
    ("train:\n  lrr: 1\n", "unknown key 'train.lrr' (did you mean 'train.lr'?)"),
    ("data:\n  clips_per_bach: 4\n", "unknown key 'data.clips_per_bach' (did you mean 'data.clips_per_batch'?)"),
    ("trian: {}\n", "unknown key 'trian' (did you mean 'train'?)"),
    ("train:\n  batch_size: 10\n  grad_accum: 4\n", "batch_size 10 is not a whole number of grad_accum (4)"),
    ("train:\n  lr: 0\n", "lr must be above 0"),
    ("model:\n  visual_encoder:\n    block_out_channels: [48, 64, 128, 256, 512, 1024, 2048, 2048]\n",
     "block width 48 is not a multiple of 32"),
    ("model:\n  audio_encoder:\n    attn_blocks: [0, 1]\n", "need one entry per block"),
    ("resources:\n  workers: 0\n", "'resources.workers': Input should be greater than or equal to 1"),
])
def test_bad_settings_are_named(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=None) as caught:
        load_training_config("stable", path)
    assert message in str(caught.value) and str(path) in str(caught.value)


def test_yaml_exponents_without_a_dot_are_numbers(tmp_path):
    """PyYAML reads `1e-5` as a string (YAML 1.1 wants `1.0e-5`); LatentSync's configs load it so. Here it is
    the number it says."""
    path = tmp_path / "lr.yaml"
    path.write_text("train:\n  lr: 1e-5\n")
    assert load_training_config("stable", path).train.lr == 1e-5


def test_the_wav2lip_expert_takes_no_model_and_its_own_size(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text("model:\n  visual_encoder: {in_channels: 15}\n")
    with pytest.raises(ConfigError, match="architecture is fixed"):
        load_training_config("wav2lip", path)
    path.write_text("data:\n  resolution: 128\n")
    with pytest.raises(ConfigError, match="takes 96 x 96 faces"):
        load_training_config("wav2lip", path)


@pytest.mark.parametrize("arch", ["stable", "wav2lip"])
def test_the_small_configs_load(arch):
    config = load_training_config(arch, ROOT / "configs" / f"syncnet-{arch}-small.yaml")
    assert config.train.batch_size == 16 and config.data.num_workers == 1


def test_the_personal_and_one_gpu_configs_load():
    """The personal model's pair (one speaker, a small batch, validations every 100 steps, checkpoints kept for
    the curve) and the one-window LatentSync override, for every stage."""
    expert = load_training_config("wav2lip", ROOT / "configs" / "syncnet-wav2lip-personal.yaml")
    generator = load_wav2lip_config(ROOT / "configs" / "wav2lip-personal.yaml")
    assert expert.train.validate_every == generator.train.validate_every == 100
    assert generator.model.size == 96 and generator.train.keep_checkpoints >= generator.train.max_steps // 100
    for stage in ("1", "2", "2-efficient"):
        config = load_latentsync_config(stage, ROOT / "configs" / "latentsync-one-gpu-24gb.yaml")
        assert config.train.micro_batch == 1 and config.train.gradient_checkpointing
        assert config.loss == load_latentsync_config(stage).loss


def test_model_and_training_step_code_import_only_torch():
    """What runs on a bare GPU machine: the networks, the mel, the recipe and the loop load no Ray, PyAV or
    pydantic."""
    code = ("import sys; import networks.syncnet.stable, networks.syncnet.wav2lip_expert, networks.syncnet.experts, media.mel, "
            "training.expert, training.loop, networks.wav2lip, training.wav2lip, networks.latentsync_unet, "
            "networks.whisper, networks.latentsync, networks.videomae, networks.lpips, training.latentsync, "
            "networks.hyperiqa, networks.syncnet.syncnet_v2, networks.checkpoints, training.losses, "
            "training.checkpoints, training.metrics; "
            "print(sorted(m for m in ('ray', 'av', 'pydantic', 'cv2') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("stage", ["1", "2", "2-efficient"])
def test_the_latentsync_stages_documented_defaults_are_the_codes(stage):
    assert load_latentsync_config(stage, latentsync_documented_defaults(stage)) == load_latentsync_config(stage)


def test_the_latentsync_stages_are_the_references_configs():
    """configs/unet/stage1.yaml, stage2.yaml, stage2_efficient.yaml: AdamW at 1e-5, clipping at 1.0, fp16 with
    gradient checkpointing, seed 1247, mixed noise alpha 1; stage 1 the noise loss alone, stage 2 with sync 0.05,
    LPIPS 0.1 and TREPA 10, 2-efficient the same without TREPA."""
    one, two, efficient = (load_latentsync_config(stage) for stage in ("1", "2", "2-efficient"))
    for config in (one, two, efficient):
        assert (config.train.optimizer, config.train.lr, config.train.max_grad_norm, config.train.precision,
                config.train.gradient_checkpointing, config.train.seed) == ("adamw", 1e-5, 1.0, "fp16", True, 1247)
        assert config.loss.mixed_noise and config.loss.mixed_noise_alpha == 1 and config.loss.recon_weight == 1
        assert config.model.resolution == 256 and config.model.unet == {}
    assert one.loss.pixel_terms == () and not one.loss.pixel_space
    assert (two.loss.sync_weight, two.loss.lpips_weight, two.loss.trepa_weight) == (0.05, 0.1, 10.0)
    assert efficient.loss.pixel_terms == ("sync", "lpips") and efficient.loss.trepa_weight == 0
    assert (one.train.batch_size, two.train.batch_size) == (24, 4)


@pytest.mark.parametrize("text, message", [
    ("model:\n  unet:\n    use_motion_module: true\n", "'model.unet': use_motion_module: set by --stage"),
    ("model:\n  unet:\n    block_out_chanels: [32]\n", "unknown U-Net config keys ['block_out_chanels']"),
    ("model:\n  resolution: 100\n", "100 is not a multiple of 64"),
    ("loss:\n  pixel_space: false\n", "need pixel_space: true"),
    ("loss:\n  lpips_wieght: 1\n", "unknown key 'loss.lpips_wieght' (did you mean 'loss.lpips_weight'?)"),
    ("train:\n  batch_size: 6\n", "a micro-batch of 6 samples"),
])
def test_bad_latentsync_settings_are_named(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_latentsync_config("2", path)
    assert message in str(caught.value) and str(path) in str(caught.value)
