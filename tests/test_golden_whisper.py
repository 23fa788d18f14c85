"""Whisper tiny's encoder and LatentSync's audio features: the official `tiny.pt` layout key for key, the reference's
features and per-frame chunks on the golden audio with stand-in weights (../shared/golden/latentsync, or
CURATE_GOLDEN_DIR), refusing other files with one clear line, and no seam at 30 s boundaries on long audio."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from networks.whisper import (WHISPER_FILE, WINDOW_FRAMES, WhisperEncoder, WhisperFileError, chunk_rows,
                                feature_chunks, iter_chunks, load_whisper_encoder, log_mel_spectrogram, num_chunks,
                                num_feature_rows, sinusoids, whisper_features, window_plan)
from golden import golden_dir, stand_in

SECOND = 50  # feature rows a second
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def golden():
    folder = golden_dir("latentsync")
    inputs, expected = np.load(folder / "latentsync_input.npz"), np.load(folder / "latentsync_expected.npz")
    shapes = json.loads((folder / "whisper_tiny_state_dict_shapes.json").read_text())
    return inputs["audio_s16"], {key: expected[key] for key in expected}, shapes


def _stand_in_official(shapes: dict) -> dict:
    """The whole model_state_dict of the shapes json with stand-in weights, the positional table kept as the
    sinusoids the official file holds (as the golden was made)."""
    table = shapes["model_state_dict"]["encoder.positional_embedding"]
    return {key: sinusoids(*table) if key == "encoder.positional_embedding" else stand_in(key, shape)
            for key, shape in shapes["model_state_dict"].items()}


@pytest.fixture(scope="module")
def official(golden, tmp_path_factory):
    """tiny.pt's layout, decoder included: {"dims", "model_state_dict"}; and the state it holds."""
    shapes = golden[2]
    state = _stand_in_official(shapes)
    path = tmp_path_factory.mktemp("whisper") / WHISPER_FILE
    torch.save({"dims": shapes["dims"], "model_state_dict": state}, path)
    return path, state


@pytest.fixture(scope="module")
def encoder(official):
    return load_whisper_encoder(official[0])


def test_layout_is_the_official_encoder(golden):
    shapes = golden[2]
    official = {key.removeprefix("encoder."): shape for key, shape in shapes["model_state_dict"].items()
                if key.startswith("encoder.")}
    ours = {key: list(value.shape) for key, value in WhisperEncoder.from_dims(shapes["dims"]).state_dict().items()}
    assert ours == official
    assert {key: list(value.shape) for key, value in WhisperEncoder().state_dict().items()} == official


def test_loads_the_official_layout_strictly(official, encoder):
    path, state = official
    assert not encoder.training
    loaded = encoder.state_dict()
    assert set(loaded) == {key.removeprefix("encoder.") for key in state if key.startswith("encoder.")}
    for key, value in loaded.items():
        assert value.dtype == torch.float32 and torch.equal(value, state[f"encoder.{key}"]), key


@pytest.mark.parametrize("prefix", ["encoder.", ""])
def test_loads_a_bare_encoder_state_dict(official, encoder, tmp_path, prefix):
    """Only the encoder's keys, with or without the prefix, in float16 as openai's files store them: dims
    from the shapes, weights widened to float32."""
    state = {f"{prefix}{key}": value.half() for key, value in encoder.state_dict().items()}
    torch.save(state, tmp_path / "encoder.pt")
    loaded = load_whisper_encoder(tmp_path / "encoder.pt")
    assert loaded.dims == encoder.dims
    for key, value in loaded.state_dict().items():
        assert value.dtype == torch.float32 and torch.equal(value, encoder.state_dict()[key].half().float())


@pytest.fixture(scope="module")
def golden_features(golden, encoder):
    """LatentSync's procedure (the same as the default up to 30 s; another golden set may hold longer audio)."""
    return whisper_features(encoder, golden[0], seamless=False)


def test_reproduces_the_golden_features(golden, encoder, golden_features):
    audio, expected, _ = golden
    features = golden_features
    reference = expected["whisper_features"]
    assert features.shape == reference.shape == (num_feature_rows(len(audio)), 5, 384)
    error = np.abs(features.numpy() - reference).max() / np.abs(reference).max()
    assert error < 1e-4, f"relative error {error:.2e}"
    if len(audio) <= WINDOW_FRAMES * 160:        # up to 30 s both modes are LatentSync's single window
        assert torch.equal(whisper_features(encoder, audio), features)
    assert log_mel_spectrogram(audio).shape == (80, len(audio) // 160)


def test_reproduces_the_golden_chunks(golden, encoder, golden_features):
    audio, expected, _ = golden
    reference = expected["whisper_features"]
    assert num_chunks(len(reference)) == int(expected["whisper_num_chunks"])
    # the indexing alone, on the reference's own features: exact
    chunks = feature_chunks(torch.from_numpy(reference))
    assert chunks.shape == (int(expected["whisper_num_chunks"]), 50, 384)
    assert torch.equal(chunks[:16], torch.from_numpy(expected["whisper_chunks_0_15"]))
    ours = feature_chunks(golden_features)
    error = np.abs(ours[:16].numpy() - expected["whisper_chunks_0_15"]).max() / np.abs(reference).max()
    assert error < 1e-4, f"relative error {error:.2e}"
    assert torch.equal(torch.stack(list(iter_chunks(encoder, audio, seamless=False))), ours)


def test_refuses_other_files(official, encoder, tmp_path):
    state = {f"encoder.{key}": value for key, value in encoder.state_dict().items()}
    cases = {
        "junk.pt": b"not a checkpoint at all",
        "wav2lip.pth": {"state_dict": {"module.face_encoder_blocks.0.0.conv_block.0.weight": torch.zeros(16, 6, 7, 7)},
                        "optimizer": {}, "global_step": 1, "global_epoch": 1},
        "unet.pt": {"state_dict": {"conv_in.weight": torch.zeros(320, 13, 3, 3)}, "global_step": 1},
        "no_dims.pt": {"model_state_dict": state},
        "missing.pt": {k: v for k, v in state.items() if k != "encoder.blocks.3.mlp.2.bias"},
        "extra.pt": {**state, "encoder.blocks.4.attn.key.bias": torch.zeros(384)},
        "reshaped.pt": {**state, "encoder.conv2.weight": torch.zeros(384, 384, 5)},
    }
    for name, content in cases.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            torch.save(content, path)
        with pytest.raises(WhisperFileError) as raised:
            load_whisper_encoder(path)
        message = str(raised.value)
        assert str(path) in message and "\n" not in message, message
    with pytest.raises(FileNotFoundError):
        load_whisper_encoder(tmp_path / "absent.pt")


def test_window_plans_tile_the_rows():
    for frames in (2, 2999, 3000, 3001, 4500, 4501, 6000, 6500, 9001, 12345):
        rows = frames // 2
        for seamless in (True, False):
            plan = window_plan(frames, seamless)
            kept = [row for start, first, end in plan for row in range(start // 2 + first, start // 2 + end)]
            assert kept == list(range(rows)), (frames, seamless)
            assert all(start % 2 == 0 and 0 <= first < end <= WINDOW_FRAMES // 2 for start, first, end in plan)
    assert window_plan(6500) == [(0, 0, 1125), (1500, 375, 1125), (3000, 375, 1125), (4500, 375, 1000)]
    assert window_plan(6500, seamless=False) == [(0, 0, 1500), (3000, 0, 1500), (6000, 0, 250)]


def test_chunk_rows_are_latentsyncs():
    assert chunk_rows(0, 150).tolist() == [0] * 5 + [1, 2, 3, 4, 5]
    assert chunk_rows(10, 150).tolist() == list(range(16, 26))
    assert chunk_rows(76, 150).tolist() == [148] + [149] * 9
    assert [num_chunks(rows) for rows in (1, 2, 3, 150, 1500)] == [2, 3, 3, 77, 752]


@pytest.fixture(scope="module")
def long_audio(golden):
    """65 s of speech-like audio: the golden 3 s repeated with a different gain, shift and noise each time."""
    clip = golden[0].astype(np.float32)
    rng = np.random.default_rng(7)
    pieces = [np.roll(clip, int(rng.integers(len(clip)))) * rng.uniform(0.4, 1.2)
              + rng.normal(0, 30, len(clip)) for _ in range(22)]
    return np.clip(np.concatenate(pieces)[:65 * 16000], -32768, 32767).astype(np.int16)


@pytest.fixture(scope="module")
def long_features(encoder, long_audio):
    return whisper_features(encoder, long_audio), whisper_features(encoder, long_audio, seamless=False)


def _window(encoder, mel: torch.Tensor, start: int) -> torch.Tensor:
    """The encoder's features of the 30 s of whole-audio mel from `start`, zero-padded: a window by hand."""
    window = mel[:, start:start + WINDOW_FRAMES]
    with torch.inference_mode():
        return encoder.layers(torch.nn.functional.pad(window, (0, WINDOW_FRAMES - window.shape[1]))[None])[0]


def test_no_seam_at_30_s_boundaries(encoder, long_audio, long_features):
    seamless, restart = long_features
    rows = num_feature_rows(len(long_audio))
    assert seamless.shape == restart.shape == (rows, 5, 384)
    mel = log_mel_spectrogram(long_audio)
    scale = float(seamless.abs().max())
    for boundary in (30, 60):
        centre = boundary * SECOND
        around = slice(centre - 7 * SECOND, min(centre + 7 * SECOND, rows))
        context = _window(encoder, mel, 2 * centre - WINDOW_FRAMES // 2)[around.start - centre + 750:
                                                                           around.stop - centre + 750]
        # ours: what the encoder gives with 15 s of context either side of the boundary
        assert torch.allclose(seamless[around], context, rtol=0, atol=1e-5 * scale), boundary
        # LatentSync's restart does not: the rows just before and after the boundary jump
        near = slice(centre - SECOND // 5, centre + SECOND // 5)
        jump = float((restart[near] - context[near.start - around.start:near.stop - around.start]).abs().max())
        assert jump > 0.05 * scale, (boundary, jump / scale)
    # away from the boundaries both are LatentSync's own windows (0-30 s, 30-60 s)
    for away in (slice(0, 1125), slice(1875, 2625)):
        assert torch.equal(seamless[away], restart[away])
    # and seamless=False is LatentSync's procedure past 30 s too: the second window by hand
    assert torch.allclose(restart[1500:3000], _window(encoder, mel, 3000), rtol=0, atol=1e-5 * scale)


def test_chunks_stream(encoder, long_audio, long_features):
    seamless = long_features[0]
    streamed = list(iter_chunks(encoder, long_audio))
    assert len(streamed) == num_chunks(len(seamless)) == len(seamless) // 2 + 2
    assert torch.equal(torch.stack(streamed), feature_chunks(seamless))


def test_code_imports_only_torch_and_numpy():
    code = ("import sys; import networks.whisper; print(sorted(m for m in ('ray', 'av', 'pydantic', 'cv2', "
            "'transformers', 'librosa', 'torchaudio') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
