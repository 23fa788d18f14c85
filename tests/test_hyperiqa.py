"""HyperIQA: the official checkpoint's layout, the reference filter's numbers on the golden frames, and
`curate eval-quality`."""

import json
import socket

import av
import numpy as np
import pytest
import torch

from curate import models
from curate.cli import main
from golden import GOLDEN, golden_dir, stand_in_state_dict
from networks.hyperiqa import HyperIQA, load_hyperiqa
from media.frames import key_frames
from stages.quality_score import QualityScorer, centre_crop
from networks.syncnet.syncnet_v2 import SyncNet


@pytest.fixture(scope="module")
def golden():
    golden_dir("hyperiqa")
    return json.loads((GOLDEN / "hyperiqa/hyperiqa_expected.json").read_text())


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "koniq_pretrained.pkl"
    torch.save(stand_in_state_dict(HyperIQA()), path)
    return path


def test_golden_official_keys_and_shapes_load_strictly(tmp_path):
    golden_dir("hyperiqa")
    shapes = json.loads((GOLDEN / "hyperiqa/koniq_pretrained_state_dict_shapes.json").read_text())
    assert {k: list(v.shape) for k, v in HyperIQA().state_dict().items()} == shapes
    state = {k: torch.zeros(v) if v else torch.tensor(0) for k, v in shapes.items()}
    torch.save(state, tmp_path / "good.pkl")
    load_hyperiqa(tmp_path / "good.pkl")
    del state["fc5b_fc.bias"]
    torch.save(state, tmp_path / "bad.pkl")
    with pytest.raises(RuntimeError, match="fc5b_fc.bias"):
        load_hyperiqa(tmp_path / "bad.pkl")


def test_golden_reproduces_the_reference_on_stand_in_weights(golden, weights_file):
    frames = key_frames(str(GOLDEN / "hyperiqa/frames_ffv1.mkv"))
    assert np.array_equal(frames, np.load(GOLDEN / "hyperiqa/hyperiqa_input.npz")["frames_rgb"])  # lossless
    for batch_size in (3, 1):  # one frame at a time gives the same numbers
        scorer = QualityScorer(load_hyperiqa(weights_file), batch_size=batch_size)
        [result] = scorer.score_many([frames])
        assert np.allclose(result.frame_scores, golden["per_frame"], rtol=1e-4)
        assert result.score == pytest.approx(golden["score"], rel=1e-4)


def test_building_the_network_fetches_nothing(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the network must not be reached")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    HyperIQA()


def test_centre_crop_follows_torchvision():
    picture = np.arange(300 * 257 * 3, dtype=np.int64).reshape(300, 257, 3)
    crop = centre_crop(picture)
    # CenterCrop: top = round((300 - 224) / 2) = 38, left = round(33 / 2) = 16 (half to even)
    assert np.array_equal(crop, picture[38:262, 16:240])
    small = np.full((200, 256, 3), 7, np.uint8)
    crop = centre_crop(small)
    # a short side is padded with zeros around the picture first (12 rows above, 12 below)
    assert crop.shape == (224, 224, 3)
    assert (crop[:12] == 0).all() and (crop[212:] == 0).all() and (crop[12:212] == 7).all()


def write_levels(path, levels, codec):
    """A video whose frame i is a flat grey of levels[i]."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=25)
        stream.width, stream.height = 64, 48
        stream.pix_fmt = "yuv444p" if codec == "libx264" else "yuv420p"
        if codec == "libx264":
            stream.options = {"qp": "0"}
        for level in levels:
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), level, np.uint8), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


@pytest.mark.parametrize("name, codec", [("counted.mp4", "libx264"), ("uncounted.mkv", "ffv1")])
def test_key_frames_are_the_first_middle_and_last(tmp_path, name, codec):
    levels = [20 + 8 * i for i in range(25)]      # 25 frames: the middle is frame 12
    write_levels(tmp_path / name, levels, codec)
    frames = key_frames(str(tmp_path / name))
    assert frames.shape == (3, 48, 64, 3)
    assert np.allclose(frames.reshape(3, -1).mean(1), [levels[0], levels[12], levels[24]], atol=2)


def test_golden_eval_quality_prints_the_reference_score(golden, weights_file, tmp_path, capsys):
    junk = tmp_path / "junk.mp4"
    junk.write_text("not a video")
    video = str(GOLDEN / "hyperiqa/frames_ffv1.mkv")
    assert main(["eval-quality", video, str(junk), "--weights", str(weights_file), "--json"]) == 1
    good, bad = json.loads(capsys.readouterr().out)
    assert good["score"] == pytest.approx(golden["score"], rel=1e-4) and len(good["frame_scores"]) == 3
    assert bad["video"] == str(junk) and bad["error"]
    assert main(["eval-quality", video, "--weights", str(weights_file)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["score", "first", "middle", "last", "video"]
    assert float(table[1].split()[0]) == pytest.approx(golden["score"], abs=0.01)


def test_eval_quality_without_weights_says_how_to_get_them(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CURATE_MODELS_DIR", str(tmp_path / "models"))
    assert main(["eval-quality", __file__]) == 2
    err = capsys.readouterr().err
    assert f"koniq_pretrained.pkl is missing in {tmp_path / 'models'}" in err
    assert "curate models download hyperiqa" in err


def test_a_file_of_another_network_is_not_taken_for_hyperiqa(tmp_path):
    torch.save(stand_in_state_dict(SyncNet()), tmp_path / "koniq_pretrained.pkl")
    settings = models.ModelSettings(dir=str(tmp_path))
    with pytest.raises(models.ModelError, match="is not a valid koniq_pretrained.pkl"):
        models.require("hyperiqa", settings)
    assert [status for *_, status in models.state("hyperiqa", settings)] == ["unverified"]
