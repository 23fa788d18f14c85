"""SyncNet: the official checkpoint's layout, and the reference evaluator's numbers on the golden inputs."""

import json

import av
import numpy as np
import pytest
import torch
from scipy.io import wavfile

from golden import GOLDEN, golden_dir, stand_in_state_dict
from stages.sync_crops import boxes_from_landmarks, crops
from networks.syncnet.syncnet_v2 import SyncNet, load_syncnet
from stages.sync_score import SyncScorer, mfcc, offsets


@pytest.fixture(scope="module")
def golden():
    golden_dir("syncnet")
    expected = json.loads((GOLDEN / "syncnet/syncnet_expected.json").read_text())
    rate, audio = wavfile.read(GOLDEN / "syncnet/syncnet_audio.wav")
    assert rate == 16000
    return expected, audio


@pytest.fixture(scope="module")
def scorer():
    model = SyncNet()
    model.load_state_dict(stand_in_state_dict(model))
    return SyncScorer(model, batch_size=20)


def test_golden_official_keys_and_shapes_load_strictly(tmp_path):
    golden_dir("syncnet")
    shapes = json.loads((GOLDEN / "syncnet/syncnet_v2_state_dict_shapes.json").read_text())
    ours = SyncNet().state_dict()
    assert {k: list(v.shape) for k, v in ours.items()} == shapes
    # a file with those keys loads; one key more or less does not
    state = {k: torch.zeros(v) if v else torch.tensor(0) for k, v in shapes.items()}
    torch.save(state, tmp_path / "good.model")
    load_syncnet(tmp_path / "good.model")
    del state["netfclip.3.bias"]
    torch.save(state, tmp_path / "bad.model")
    with pytest.raises(RuntimeError, match="netfclip.3.bias"):
        load_syncnet(tmp_path / "bad.model")


def decoded_crops() -> np.ndarray:
    with av.open(str(GOLDEN / "syncnet/crops_ffv1.mkv")) as container:
        return np.stack([frame.to_ndarray(format="bgr24") for frame in container.decode(video=0)])


def test_golden_reproduces_the_reference_on_stand_in_weights(golden, scorer):
    expected, audio = golden
    frames = decoded_crops()
    assert np.array_equal(frames, np.load(GOLDEN / "syncnet/syncnet_input.npz")["frames_bgr"])  # lossless
    coefficients = mfcc(audio)
    assert list(coefficients.shape) == expected["mfcc_shape"]
    assert np.allclose(coefficients[:, 0], expected["mfcc_first_column"], rtol=1e-6)
    lips, sounds = scorer.embeddings(frames, audio)
    assert len(lips) == expected["num_windows"]
    assert np.allclose(lips[0, :8], expected["lip_feature_0_first8"], rtol=1e-4, atol=1e-4)
    assert np.allclose(sounds[0, :8], expected["audio_feature_0_first8"], rtol=1e-4, atol=1e-4)
    result = scorer.score(frames, audio)
    assert np.allclose(result.mean_dists, expected["mean_dists"], rtol=1e-4)
    assert result.offset == expected["av_offset"]
    assert result.min_dist == pytest.approx(expected["min_dist"], rel=1e-4)
    assert result.conf == pytest.approx(expected["conf"], rel=2e-4)  # a difference of two ~600 distances
    assert result.frame_conf.shape == (expected["num_windows"],)


def test_batching_clips_together_changes_nothing(golden, scorer):
    _, audio = golden
    frames = decoded_crops()
    alone = scorer.score(frames[:40], audio[:40 * 640])
    together = scorer.score_many([(frames, audio), (frames[:40], audio[:40 * 640])])
    assert np.allclose(together[1].mean_dists, alone.mean_dists, rtol=1e-5)
    assert together[1].offset == alone.offset and together[1].windows == 35


def test_delaying_the_audio_delays_its_windows_and_lowers_the_offset(golden, scorer):
    """Sign convention, on the real scoring code: audio delayed by k frames (the sound after the lips) gives
    audio windows that are the original ones k places later, so each lip window finds its sound at a shift k
    larger and the offset (15 - best shift) drops by k. So a clip measured at offset k > 0 has its sound k
    frames early, and delaying its audio by k brings it in."""
    _, audio = golden
    frames = decoded_crops()
    k = 3
    delayed = np.concatenate([np.zeros(k * 640, np.int16), audio[:-k * 640]])
    lips, sounds = scorer.embeddings(frames, audio)
    _, sounds_late = scorer.embeddings(frames, delayed)
    # MFCC columns are 10 ms and frames 40 ms: a k-frame delay moves the windows by exactly k
    assert torch.allclose(sounds_late[k + 1:], sounds[1:-k], rtol=1e-4, atol=1e-3)
    # in distances: lip window i meets at shift j + k what it met at shift j
    dists = torch.linalg.vector_norm(lips[:, None] - torch.nn.functional.pad(sounds, (0, 0, 15, 15)).unfold(0, 31, 1).permute(0, 2, 1), dim=2)
    late = torch.linalg.vector_norm(lips[:, None] - torch.nn.functional.pad(sounds_late, (0, 0, 15, 15)).unfold(0, 31, 1).permute(0, 2, 1), dim=2)
    assert torch.allclose(late[20:50, 10 + k:21 + k], dists[20:50, 10:21], rtol=1e-4)


@pytest.mark.parametrize("late", [-4, 0, 2])
def test_offsets_on_known_embeddings(late):
    lips = torch.randn(60, 16, generator=torch.Generator().manual_seed(0))
    sounds = torch.roll(lips, shifts=late, dims=0)  # lip window i's sound is audio window i + late
    result = offsets(lips, sounds)
    assert result.offset == -late and result.min_dist < 1.0 < result.conf


def test_crops_follow_the_face_box_with_the_lower_face_bias():
    frames = np.zeros((20, 300, 300, 3), np.uint8)
    frames[:, 100:200, 100:200] = 255            # a bright square where the face is
    landmarks = np.zeros((20, 68, 2))
    landmarks[:, :, 0] = np.linspace(100, 200, 68)
    landmarks[:, :, 1] = np.linspace(120, 200, 68)
    boxes = boxes_from_landmarks(landmarks)
    assert np.allclose(boxes[0], [100, 100, 200, 200])  # the top raised by a quarter of the height
    out = crops(frames, boxes)
    assert out.shape == (20, 224, 224, 3)
    bright = np.argwhere(out[0, :, :, 0] > 128)
    # the crop spans 1.4 half-boxes either side and from 1 above to 1.8 below the centre: the face sits high
    assert abs(bright[:, 1].mean() - 111.5) < 3 and bright[:, 0].mean() < 100


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "syncnet_v2.model"
    model = SyncNet()
    torch.save(stand_in_state_dict(model), path)
    return path


def test_golden_eval_sync_on_precropped_video_gives_the_reference_numbers(golden, weights_file, capsys):
    from curate.cli import main

    expected, _ = golden
    assert main(["eval-sync", str(GOLDEN / "syncnet/crops_ffv1.mkv"), "--precropped", "--weights",
                 str(weights_file), "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["av_offset"] == expected["av_offset"] and row["windows"] == expected["num_windows"]
    assert row["lse_d"] == pytest.approx(expected["min_dist"], rel=1e-4)
    assert row["lse_c"] == pytest.approx(expected["conf"], abs=1e-3)


def test_eval_sync_tracks_the_face_and_reports_videos_without_one(weights_file, tmp_path, capsys, talking_heads):
    from curate.cli import main
    from footage import GARDEN, downscaled, synthetic

    face = downscaled(tmp_path / "face.mp4", GARDEN, size="540x960", seconds=3)
    pattern = synthetic(tmp_path / "pattern.mp4", 3)
    assert main(["eval-sync", str(face), str(pattern), "--weights", str(weights_file), "--json"]) == 1
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["video"] == str(face) and rows[0]["frames"] == 75 and rows[0]["windows"] == 70
    assert -15 <= rows[0]["av_offset"] <= 15 and np.isfinite(rows[0]["lse_c"])
    assert rows[1] == {"video": str(pattern), "error": "a face is found in only 0% of the frames"}
