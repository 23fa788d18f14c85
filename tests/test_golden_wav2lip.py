"""The Wav2Lip generator and discriminator: the official files' layouts key for key, the reference's output on
the golden inputs with stand-in weights (../shared/golden/wav2lip, or CURATE_GOLDEN_DIR), loading the official
files and refusing others with one clear line, and our 256 x 256 variant."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from curate import models
from networks.wav2lip import (DISC_FILE, GAN_FILE, GENERATOR_FILE, GeneratorFileError, Wav2Lip,
                                Wav2LipDiscriminator, load_discriminator, load_generator, official_layout,
                                read_checkpoint)
from golden import golden_dir, stand_in_state_dict
from networks.syncnet.experts import official_layout as expert_layout
from media.mel import mel_window_starts
from networks.syncnet.wav2lip_expert import Wav2LipExpert

ROOT = Path(__file__).resolve().parents[1]


def _shapes(model: torch.nn.Module) -> dict:
    return {key: list(value.shape) for key, value in model.state_dict().items()}


def _with_stand_in_weights(model: torch.nn.Module) -> torch.nn.Module:
    model.load_state_dict(stand_in_state_dict(model), strict=True)
    return model.eval()


def _relative(got: torch.Tensor, expected: np.ndarray) -> float:
    return float(np.abs(got.numpy() - expected).max() / np.abs(expected).max())


@pytest.fixture(scope="module")
def golden():
    folder = golden_dir("wav2lip")
    inputs, expected = np.load(folder / "wav2lip_input.npz"), np.load(folder / "wav2lip_expected.npz")
    return folder, {key: inputs[key] for key in inputs}, {key: expected[key] for key in expected}


@pytest.fixture(scope="module")
def generator():
    return _with_stand_in_weights(Wav2Lip())


@pytest.fixture(scope="module")
def official_file(tmp_path_factory, generator):
    """wav2lip.pth's layout as DataParallel writes it: every key under `module.`, with an optimizer state."""
    path = tmp_path_factory.mktemp("official") / GENERATOR_FILE
    optimizer = {"state": {}, "param_groups": [{"lr": 1e-4, "betas": (0.5, 0.999), "eps": 1e-8,
                                                "weight_decay": 0, "amsgrad": False, "params": [0, 1, 2]}]}
    torch.save({"state_dict": {f"module.{key}": value for key, value in generator.state_dict().items()},
                "optimizer": optimizer, "global_step": 250000, "global_epoch": 41}, path)
    return path


def _output(model: Wav2Lip, mel: np.ndarray, faces: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.from_numpy(mel), torch.from_numpy(faces))


def test_golden_state_dicts_are_the_official_layouts(golden):
    folder = golden[0]
    assert _shapes(Wav2Lip()) == json.loads((folder / "wav2lip_state_dict_shapes.json").read_text())
    assert _shapes(Wav2LipDiscriminator()) == json.loads((folder / "wav2lip_disc_state_dict_shapes.json").read_text())
    assert Wav2Lip().size == Wav2LipDiscriminator().size == 96


def test_golden_generator_reproduces_wav2lip(golden, generator):
    _, inputs, expected = golden
    mel, faces = inputs["gen_mel_input"], inputs["gen_face_input"]
    output = _output(generator, mel, faces)
    assert output.shape == (6, 3, 96, 96)
    assert _relative(output, expected["gen_output"]) < 1e-4
    # the sequence form, as the official training feeds it: (B, T, 1, 80, 16) and (B, 6, T, 96, 96), B=2, T=3
    mel_seq = torch.from_numpy(mel).reshape(2, 3, 1, 80, 16)
    faces_seq = torch.from_numpy(faces).reshape(2, 3, 6, 96, 96).transpose(1, 2)
    with torch.no_grad():
        sequence = generator(mel_seq, faces_seq)
    assert sequence.shape == (2, 3, 3, 96, 96)
    assert _relative(sequence.transpose(1, 2).reshape(6, 3, 96, 96), expected["gen_output"]) < 1e-4


def test_golden_inputs_are_framed_as_inference_frames_them(golden):
    """The golden generator input is the 96 x 96 BGR faces / 255, frames 0-5 with rows 48+ zeroed and frames
    10-15 as references, and the 16-column mel windows at the starts inference.py cuts."""
    _, inputs, expected = golden
    faces = inputs["faces_bgr"].astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    target = faces[:6].copy()
    target[:, :, 48:] = 0
    assert np.allclose(np.concatenate([target, faces[10:16]], axis=1), inputs["gen_face_input"], atol=1e-6)
    starts = mel_window_starts(6, expected["mel"].shape[1])
    assert np.array_equal(np.stack([expected["mel"][None, :, s:s + 16] for s in starts]), inputs["gen_mel_input"])


def test_golden_mel_window_starts_are_inference_py_s(golden):
    mel = golden[2]["mel"]
    starts = golden[2]["mel_chunk_starts"].tolist()
    assert mel.shape[1] == 97 and len(starts) == 27   # 1.2 s: 96 columns and one; the loop stops at the clamp
    assert mel_window_starts(len(starts), mel.shape[1]) == starts
    # beyond the reference's loop: one window per frame asked for, the last one for frames past the audio
    assert mel_window_starts(30, 97)[26:] == [81] * 4
    assert mel_window_starts(3, 16) == [0, 0, 0]
    with pytest.raises(ValueError, match="shorter than one 16-column window"):
        mel_window_starts(1, 15)


def test_golden_official_files_load_strictly(golden, generator, official_file, tmp_path):
    """wav2lip.pth with DataParallel's keys; wav2lip_gan.pth, the same network in the same layout; a bare state_dict."""
    _, inputs, expected = golden
    mel, faces, output = inputs["gen_mel_input"], inputs["gen_face_input"], expected["gen_output"]
    loaded = load_generator(official_file)
    assert isinstance(loaded, Wav2Lip) and loaded.size == 96 and not loaded.training
    assert _relative(_output(loaded, mel, faces), output) < 1e-4
    found = read_checkpoint(official_file)
    assert (found["global_step"], found["global_epoch"], found["size"]) == (250000, 41, None)
    assert found["optimizer"]["param_groups"][0]["betas"] == (0.5, 0.999)
    gan = tmp_path / GAN_FILE
    gan.symlink_to(official_file)
    torch.save(generator.state_dict(), tmp_path / "bare.pth")
    for path in (gan, tmp_path / "bare.pth"):      # two frames each keep it quick
        assert _relative(_output(load_generator(path), mel[:2], faces[:2]), output[:2]) < 1e-4
    # ours: official_layout, which the reference's load_checkpoint reads (no "size" at 96)
    layout = official_layout(generator, 7, 1)
    assert set(layout) == {"state_dict", "optimizer", "global_step", "global_epoch"}


def test_discriminator_layout_loss_and_file(tmp_path):
    disc = _with_stand_in_weights(Wav2LipDiscriminator())
    faces = torch.rand(2, 3, 4, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        sequence = disc(faces)
        frames = disc(faces.permute(2, 0, 1, 3, 4).reshape(8, 3, 96, 96))   # time-major, as the official
        upper_changed = disc(torch.cat([torch.rand(8, 3, 48, 96), faces.permute(2, 0, 1, 3, 4).reshape(8, 3, 96, 96)[:, :, 48:]], 2))
    assert sequence.shape == (8, 1) and torch.equal(sequence, frames) and ((0 < frames) & (frames < 1)).all()
    assert torch.allclose(upper_changed, frames)          # it judges the lower half only
    with torch.no_grad():
        loss = disc.perceptual_loss(faces)
    assert torch.allclose(loss, -torch.log(sequence).mean())
    torch.save({"state_dict": {f"module.{k}": v for k, v in disc.state_dict().items()}, "optimizer": None,
                "global_step": 3, "global_epoch": 0}, tmp_path / DISC_FILE)
    loaded = load_discriminator(tmp_path / DISC_FILE)
    with torch.no_grad():
        assert torch.equal(loaded(faces), sequence) and not loaded.training
    with pytest.raises(GeneratorFileError, match="holds the Wav2Lip discriminator"):
        load_generator(tmp_path / DISC_FILE)


def _one_line_error(load, path: Path, match: str) -> str:
    with pytest.raises(GeneratorFileError, match=match) as caught:
        load(path)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message and "Traceback" not in message
    assert isinstance(caught.value, ValueError)
    return message


class NotWeights:
    """A pickled object of our own: only full unpickling would build it (and run what it asks)."""


def test_wrong_files_are_one_clear_line(golden, generator, official_file, tmp_path):
    shapes = json.loads((golden[0] / "lipsync_expert_state_dict_shapes.json").read_text())
    expert = Wav2LipExpert()
    assert _shapes(expert) == shapes
    torch.save({**expert_layout("wav2lip", expert, 10, 1), "state_dict": {f"module.{k}": v for k, v in
                expert.state_dict().items()}}, tmp_path / "lipsync_expert.pth")
    _one_line_error(load_generator, tmp_path / "lipsync_expert.pth", "lip-sync expert SyncNet_color")
    torch.save({"state_dict": {"visual_encoder.conv_in.weight": torch.zeros(1)}, "global_step": 1},
               tmp_path / "stable_syncnet.pt")
    _one_line_error(load_generator, tmp_path / "stable_syncnet.pt", "StableSyncNet")
    torch.save({"state_dict": {name: torch.zeros(1) for name in ("conv_in.weight", "down_blocks.0.resnets.0.conv1.weight",
                                                                 "up_blocks.0.resnets.0.conv1.weight")},
                "global_step": 1}, tmp_path / "latentsync_unet.pt")
    _one_line_error(load_generator, tmp_path / "latentsync_unet.pt", "U-Net")
    torch.save({"dims": {"n_mels": 80}, "model_state_dict": {"encoder.conv1.weight": torch.zeros(1)}}, tmp_path / "tiny.pt")
    _one_line_error(load_generator, tmp_path / "tiny.pt", "openai-whisper")
    torch.save({"some.weight": torch.zeros(2)}, tmp_path / "random_keys.pth")
    _one_line_error(load_generator, tmp_path / "random_keys.pth", "no Wav2Lip network .*'some.weight'")
    (tmp_path / "junk.pth").write_bytes(bytes(range(256)) * 64)
    _one_line_error(load_generator, tmp_path / "junk.pth", "is not a PyTorch checkpoint")
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    _one_line_error(load_generator, tmp_path / "tensor.pth", "holds a Tensor, not a checkpoint")
    torch.save({"state_dict": {"a": 1}}, tmp_path / "not_tensors.pth")
    _one_line_error(load_generator, tmp_path / "not_tensors.pth", "holds no state_dict")
    torch.save({"state_dict": NotWeights()}, tmp_path / "pickled.pth")
    _one_line_error(load_generator, tmp_path / "pickled.pth", "pickles .*NotWeights besides tensors.*not unpickled")
    (tmp_path / "text.pth").write_text("not weights\n" * 10)
    _one_line_error(load_generator, tmp_path / "text.pth", "is not a PyTorch checkpoint")
    _one_line_error(load_discriminator, official_file, "holds the Wav2Lip generator")
    # a generator with a key missing, or one of another shape: named, in one line
    state = dict(generator.state_dict())
    del state["face_decoder_blocks.3.1.conv_block.1.running_var"]
    torch.save({"state_dict": state, "optimizer": None, "global_step": 1, "global_epoch": 0}, tmp_path / "missing.pth")
    _one_line_error(load_generator, tmp_path / "missing.pth",
                    r"size 96: 1 keys missing \(first 'face_decoder_blocks\.3\.1\.conv_block\.1\.running_var'\)")
    state = dict(generator.state_dict())
    state["output_block.1.weight"] = torch.zeros(4, 32, 1, 1)
    torch.save(state, tmp_path / "reshaped.pth")
    _one_line_error(load_generator, tmp_path / "reshaped.pth", "1 of another shape")
    with pytest.raises(FileNotFoundError):
        load_generator(tmp_path / "absent.pth")


def test_the_256_variant_runs_and_round_trips(tmp_path):
    """One frame through each form (the sequence form's frame order is checked on the golden at 96)."""
    torch.manual_seed(0)
    model = Wav2Lip(256).eval()
    assert model.size == 256 and len(model.face_encoder_blocks) == 9     # 7 stride-2 levels: 256 -> 2 -> 1
    mel = torch.rand(1, 1, 80, 16)
    faces = torch.rand(1, 6, 256, 256)
    faces[:, :3, 128:] = 0
    with torch.no_grad():
        frame = model(mel, faces)
        sequence = model(mel[None], faces[:, :, None])                  # B=1, T=1
    assert frame.shape == (1, 3, 256, 256) and ((0 <= frame) & (frame <= 1)).all()
    assert sequence.shape == (1, 3, 1, 256, 256) and torch.allclose(sequence[:, :, 0], frame, atol=1e-6)
    with pytest.raises(ValueError, match=r"faces must be \(B, 6, 256, 256\)"):
        model(mel, faces[:, :, :96, :96])
    layout = official_layout(model, 12, 2, optimizer_state={"state": {}, "param_groups": []})
    assert layout["size"] == 256 and layout["global_step"] == 12
    torch.save(layout, tmp_path / "ours.pth")
    loaded = load_generator(tmp_path / "ours.pth")
    assert loaded.size == 256 and not loaded.training and all(
        torch.equal(value, layout["state_dict"][key]) for key, value in loaded.state_dict().items())
    assert all(parameter.requires_grad for parameter in loaded.parameters())     # ready to fine-tune
    # without the "size" entry, the size comes from the layers
    del layout["size"]
    torch.save(layout, tmp_path / "no_size.pth")
    assert load_generator(tmp_path / "no_size.pth").size == 256
    disc = Wav2LipDiscriminator(256).eval()
    with torch.no_grad():
        assert disc(sequence.expand(2, 3, 1, 256, 256)).shape == (2, 1)
    torch.save(official_layout(disc, 12, 2), tmp_path / "disc256.pth")
    assert load_discriminator(tmp_path / "disc256.pth").size == 256
    torch.save(disc.state_dict(), tmp_path / "disc256_bare.pth")
    assert load_discriminator(tmp_path / "disc256_bare.pth").size == 256
    for bad in (100, 32):
        with pytest.raises(ValueError):
            Wav2Lip(bad)


@pytest.mark.parametrize("name, file", [("wav2lip", GENERATOR_FILE), ("wav2lip-gan", GAN_FILE)])
def test_models_entries_verify_by_a_strict_load(name, file, official_file, tmp_path):
    [entry] = models.MODELS[name][1]
    assert entry.name == file and entry.url and entry.mirrors
    assert all(url.endswith(file) or "SourceUrl=" in url for url in (entry.url, *entry.mirrors))
    entry.verify(official_file)
    expert = Wav2LipExpert()
    torch.save(expert_layout("wav2lip", expert, 1, 1), tmp_path / "lipsync_expert.pth")
    with pytest.raises(GeneratorFileError):
        entry.verify(tmp_path / "lipsync_expert.pth")


def test_generator_code_imports_only_torch():
    code = ("import sys; import networks.wav2lip; "
            "print(sorted(m for m in ('ray', 'av', 'pydantic', 'cv2') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
