"""What judging a personal model needs: the weight-free sync measure (faces.speaking, the speaking cue), where a
face under its own speech scores above the same face under another person's speech or its own a second late,
reported by `curate eval-sync` with or without SyncNet's weights; and validation clips disjoint in time from the
training clips (`curate filelist --split time`)."""

import json

import numpy as np
import yaml

from curate.cli import main
from faces import speaking
from footage import read_manifest


def clip_inputs(out):
    clips = read_manifest(out, "clips")
    clips = clips[clips.status == "kept"].sort_values("clip_id")
    inputs = []
    for clip in clips.itertuples():
        arrays = np.load(out / clip.landmarks_path)
        margin, frames = int(arrays["audio_margin"]), len(arrays["present"])
        audio = arrays["audio_context"][margin:margin + frames * 640]
        openings = [speaking.mouth_opening(arrays["landmarks_aligned"]), arrays["mouth_darkness"]]
        inputs.append((clip.source_id, openings, audio, frames))
    return inputs


def cue(openings, audio, frames):
    return speaking.speaking_cue(openings, speaking.speech_envelope(audio, frames, 640, 16000), 6)


def test_own_speech_scores_above_another_speakers_and_its_own_a_second_late(readme_run):
    """On the shared talking heads' clips: per clip, its own speech beats its own shifted by 25 frames and the
    mean of the other speakers'; over the 3 s windows, own against mismatched, the AUC is well above chance
    (0.82 measured; docs/configuration.md)."""
    inputs = clip_inputs(readme_run["out"])
    assert len({source for source, *_ in inputs}) == 3 and len(inputs) >= 5
    matched, mismatched = [], []
    for source, openings, audio, frames in inputs:
        own = cue(openings, audio, frames)
        late = cue(openings, np.roll(audio, 25 * 640), frames)
        others = [cue(openings, other, frames) for other_source, _, other, other_frames in inputs
                  if other_source != source and other_frames >= frames]
        assert own.score > late.score and own.score > np.mean([o.score for o in others]), (source, own.score)
        matched += list(own.windows)
        mismatched += list(late.windows) + [w for o in others for w in o.windows]
    matched, mismatched = np.array(matched), np.array(mismatched)
    auc = np.mean((matched[:, None] > mismatched[None, :]) + 0.5 * (matched[:, None] == mismatched[None, :]))
    assert auc > 0.7, auc


def test_eval_sync_reports_the_cue_alone_without_syncnet_weights(readme_run, tmp_path, capsys):
    clips = read_manifest(readme_run["out"], "clips")
    video = readme_run["out"] / clips[clips.status == "kept"].sort_values("clip_id").path.iloc[0]
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({"models": {"dir": str(tmp_path / "no-models")}}))

    assert main(["eval-sync", str(video), "--json", "--config", str(config)]) == 0
    captured = capsys.readouterr()
    assert "syncnet_v2.model is missing" in captured.err and "weight-free speaking cue alone" in captured.err
    [row] = json.loads(captured.out)
    assert "lse_c" not in row and -6 <= row["speaking_lag"] <= 6
    assert row["speaking_cue"] > 0.1 and len(row["speaking_windows"]) >= 3

    # asked for explicitly, the same, and no note
    assert main(["eval-sync", str(video), "--weight-free", "--json", "--config", str(config)]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and json.loads(captured.out)[0]["speaking_cue"] == row["speaking_cue"]


def test_filelist_split_in_time_holds_out_the_end_of_each_speakers_footage(readme_run, tmp_path):
    """`--split time` (a personal model's validation): each speaker's last clips in val, every val clip later in
    its source than every train clip of that speaker, a speaker with one clip wholly in train."""
    import pandas as pd

    lists = tmp_path / "lists"
    assert main(["filelist", str(readme_run["out"]), "--out", str(lists), "--split", "time",
                 "--val-fraction", "0.3"]) == 0
    split = pd.read_parquet(lists / "split.parquet")
    for speaker, clips in split.groupby("speaker"):
        if len(clips) == 1:
            assert clips.split.tolist() == ["train"]
            continue
        train, val = clips[clips.split == "train"], clips[clips.split == "val"]
        assert len(train) and len(val), speaker
        assert val.start_frame.min() >= train.end_frame.max()
    assert sorted((lists / "val.txt").read_text().split()) == sorted(split[split.split == "val"].abs_path)
    assert set(split.speaker[split.split == "val"]) == set(split.speaker[split.split == "train"]) - {
        s for s, c in split.groupby("speaker") if len(c) == 1}
