"""The lip-sync experts and their audio features: the official checkpoints' layouts, and the references' numbers
on the golden inputs (../shared/golden, or CURATE_GOLDEN_DIR)."""

import json

import numpy as np
import pytest
import torch

from golden import golden_dir, stand_in_state_dict
from networks.syncnet.experts import FRAMING, build_expert, framing_of, load_expert, official_layout, read_checkpoint
from media.mel import mel_columns, mel_start, mel_window, melspectrogram
from networks.syncnet.stable import StableSyncNet
from networks.syncnet.wav2lip_expert import Wav2LipExpert

SMALL_STABLE = {  # configs/syncnet-stable-small.yaml's network
    "audio_encoder": {"in_channels": 1, "block_out_channels": [32, 32, 64, 64, 128, 256, 512],
                      "downsample_factors": [[2, 1], 2, 2, 1, 2, 2, [2, 3]], "attn_blocks": [0, 0, 0, 0, 1, 0, 0],
                      "dropout": 0.0},
    "visual_encoder": {"in_channels": 48, "block_out_channels": [32, 32, 64, 64, 128, 512],
                       "downsample_factors": [[1, 2], 2, 2, 2, 2, 2], "attn_blocks": [0, 0, 0, 0, 1, 0], "dropout": 0.0},
}


@pytest.mark.parametrize("name", ["wav2lip", "latentsync"])
def test_golden_mel_reproduces_the_references(name):
    folder = golden_dir(name)
    audio = np.load(folder / f"{name}_input.npz")["audio_s16"]
    expected = np.load(folder / f"{name}_expected.npz")["mel"]
    mel = melspectrogram(audio)
    assert mel.shape == expected.shape and mel.dtype == np.float32
    assert np.abs(mel - expected).max() < 1e-4
    # the same samples as floats in [-1, 1], as the references load them
    assert np.abs(melspectrogram(audio / 32768.0) - expected).max() < 1e-4


def test_golden_mel_windows_are_the_references():
    stable, wav2lip = golden_dir("latentsync"), golden_dir("wav2lip")
    expected = np.load(stable / "latentsync_expected.npz")
    window = np.load(stable / "latentsync_input.npz")["syncnet_mel"][0, 0]
    start = int(expected["syncnet_start_frame"])
    assert (mel_columns(16), mel_columns(5), mel_start(start)) == (52, 16, int(80 * start / 25))
    assert np.array_equal(mel_window(expected["mel"], start, 16), window)
    # Wav2Lip's expert windows: frames 0, 3, 6, 9 of its golden input and their 16 columns
    mel = np.load(wav2lip / "wav2lip_expected.npz")["mel"]
    inputs = np.load(wav2lip / "wav2lip_input.npz")["expert_mel_input"][:, 0]
    for frame, given in zip((0, 3, 6, 9), inputs):
        assert np.array_equal(mel_window(mel, frame, 5), given)
    with pytest.raises(ValueError, match="reach past the audio"):
        mel_window(mel, 30, 5)


def _shapes(model: torch.nn.Module) -> dict:
    return {key: list(value.shape) for key, value in model.state_dict().items()}


def test_golden_stable_syncnet_reproduces_latentsync(tmp_path):
    folder = golden_dir("latentsync")
    assert _shapes(StableSyncNet()) == json.loads((folder / "stable_syncnet_state_dict_shapes.json").read_text())
    model = StableSyncNet().eval()
    model.load_state_dict(stand_in_state_dict(model), strict=True)
    inputs, expected = np.load(folder / "latentsync_input.npz"), np.load(folder / "latentsync_expected.npz")
    # our framing of the aligned frames is LatentSync's: lower half, [-1, 1], frame-major channels
    frames = StableSyncNet.frames_input(torch.from_numpy(inputs["aligned_frames_rgb"][None, :, 128:]))
    assert torch.allclose(frames, torch.from_numpy(inputs["syncnet_frames"]), atol=1e-6)
    with torch.no_grad():
        vision, audio = model(frames, torch.from_numpy(inputs["syncnet_mel"]))
    assert np.abs(vision.numpy() - expected["syncnet_vision_embeds"]).max() < 1e-4
    assert np.abs(audio.numpy() - expected["syncnet_audio_embeds"]).max() < 1e-4
    cosine = torch.nn.functional.cosine_similarity(vision, audio).numpy()
    assert np.allclose(cosine, expected["syncnet_cosine"], atol=1e-4)
    # in stable_syncnet.pt's layout, the same network comes back (the file is LatentSync's 1.6 GB one)
    torch.save({"state_dict": model.state_dict(), "global_step": 100}, tmp_path / "stable_syncnet.pt")
    arch, loaded = load_expert(tmp_path / "stable_syncnet.pt")
    with torch.no_grad():
        again = loaded(frames, torch.from_numpy(inputs["syncnet_mel"]))
    assert arch == "stable" and torch.equal(again[0], vision) and torch.equal(again[1], audio)


def test_golden_wav2lip_expert_reproduces_wav2lip():
    folder = golden_dir("wav2lip")
    assert _shapes(Wav2LipExpert()) == json.loads((folder / "lipsync_expert_state_dict_shapes.json").read_text())
    model = Wav2LipExpert().eval()
    model.load_state_dict(stand_in_state_dict(model), strict=True)
    inputs, expected = np.load(folder / "wav2lip_input.npz"), np.load(folder / "wav2lip_expected.npz")
    # the 5-frame windows from the 96 x 96 BGR faces: lower halves stacked on channels, /255
    faces = torch.from_numpy(np.stack([inputs["faces_bgr"][s:s + 5, 48:] for s in (0, 3, 6, 9)]))
    assert torch.allclose(Wav2LipExpert.frames_input(faces), torch.from_numpy(inputs["expert_face_input"]), atol=1e-6)
    with torch.no_grad():
        vision, audio = model(torch.from_numpy(inputs["expert_face_input"]), torch.from_numpy(inputs["expert_mel_input"]))
    assert np.abs(vision.numpy() - expected["expert_face_embedding"]).max() < 1e-4
    assert np.abs(audio.numpy() - expected["expert_audio_embedding"]).max() < 1e-4
    assert np.allclose(torch.nn.functional.cosine_similarity(vision, audio).numpy(), expected["expert_cosine"], atol=1e-4)


def test_golden_official_files_load_strictly_in_their_layouts(tmp_path):
    """lipsync_expert.pth's layout with DataParallel's `module.` keys, and a bare state_dict; a key missing or
    one too many is refused with its name (stable_syncnet.pt's layout: test_golden_stable_syncnet_...)."""
    shapes = json.loads((golden_dir("wav2lip") / "lipsync_expert_state_dict_shapes.json").read_text())
    state = {key: torch.full(shape, 0.5) if shape else torch.tensor(0) for key, shape in shapes.items()}
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "optimizer": None, "global_step": 100,
                "global_epoch": 3}, tmp_path / "lipsync_expert.pth")
    arch, model = load_expert(tmp_path / "lipsync_expert.pth")
    assert arch == "wav2lip" and not model.training
    assert all(torch.equal(value, state[key]) for key, value in model.state_dict().items())
    assert read_checkpoint(tmp_path / "lipsync_expert.pth").global_step == 100
    torch.save(state, tmp_path / "bare.pth")
    assert load_expert(tmp_path / "bare.pth")[0] == "wav2lip"
    missing = dict(state)
    del missing["audio_encoder.13.conv_block.1.running_var"]
    torch.save({"state_dict": missing}, tmp_path / "missing.pth")
    with pytest.raises(RuntimeError, match=r"audio_encoder\.13\.conv_block\.1\.running_var"):
        load_expert(tmp_path / "missing.pth")
    torch.save({"state_dict": {**state, "extra.weight": torch.zeros(1)}}, tmp_path / "extra.pth")
    with pytest.raises(RuntimeError, match="extra.weight"):
        load_expert(tmp_path / "extra.pth")
    with pytest.raises(ValueError, match="holds a wav2lip expert, not a stable one"):
        load_expert(tmp_path / "lipsync_expert.pth", arch="stable")


def test_our_checkpoints_carry_the_architecture_and_resolution(tmp_path):
    """A small StableSyncNet written in the official layout loads back, architecture and all, and LatentSync's
    own loader (`load_state_dict(torch.load(f)["state_dict"])`) takes it; the Wav2Lip layout has the four keys
    Wav2Lip's load_checkpoint reads."""
    small = build_expert("stable", SMALL_STABLE)
    torch.save(official_layout("stable", small, 7, 0, resolution=64), tmp_path / "stable_syncnet.pt")
    expert = read_checkpoint(tmp_path / "stable_syncnet.pt")
    assert (expert.arch, expert.config, expert.resolution, expert.global_step) == ("stable", SMALL_STABLE, 64, 7)
    reference = StableSyncNet(SMALL_STABLE)
    reference.load_state_dict(torch.load(tmp_path / "stable_syncnet.pt", weights_only=True)["state_dict"])
    wav2lip = official_layout("wav2lip", build_expert("wav2lip"), 5, 2)
    assert set(wav2lip) == {"state_dict", "optimizer", "global_step", "global_epoch"}
    assert (wav2lip["global_step"], wav2lip["global_epoch"], wav2lip["optimizer"]) == (5, 2, None)


@pytest.mark.parametrize("arch, config, resolution", [("stable", None, None), ("stable", SMALL_STABLE, 64),
                                                      ("wav2lip", None, None)])
def test_each_framing_reaches_one_by_one(arch, config, resolution):
    framing = framing_of(arch, config, resolution)
    model = build_expert(arch, config).eval()
    frames = torch.zeros(1, framing.num_frames, framing.height, framing.width, 3, dtype=torch.uint8)
    with torch.no_grad():
        vision, audio = model(type(model).frames_input(frames), torch.zeros(1, 1, 80, mel_columns(framing.num_frames)))
    assert vision.shape[0] == audio.shape[0] == 1 and vision.shape[1] == audio.shape[1]
    assert FRAMING[arch].channel_order == framing.channel_order


def test_a_config_that_does_not_fit_the_frames_is_a_clear_error():
    model = build_expert("stable", SMALL_STABLE).eval()
    with pytest.raises(ValueError, match="not 1 x 1: its downsample_factors do not fit"):
        model(torch.zeros(1, 48, 128, 256), torch.zeros(1, 1, 80, 52))
