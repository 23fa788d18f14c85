"""The experts' data path: clip lists, the feature cache, windows, labels and shifts, the audio under the frames,
the deterministic stream (ranks, loader processes, resuming), and bad clips."""

import os
import shutil

import numpy as np
import pytest
import torch
from footage import read_clip, synthetic, talking_clip

from media.mel import mel_start
from networks.syncnet.experts import Framing, framing_of
from training.clips import Clip, DataError, FeatureCache, read_lists, usable
from training.windows import ValWindows, WindowSettings, WindowStream, loader

STABLE = framing_of("stable")
WAV2LIP = framing_of("wav2lip")


@pytest.fixture(scope="session")
def curated_lists(readme_run, tmp_path_factory):
    """`curate filelist` on the README's run of the shared videos: 5 aligned clips of 3 speakers."""
    from curate.results import open_view, write_file_lists

    lists = tmp_path_factory.mktemp("lists")
    write_file_lists(open_view(readme_run["out"]), lists, val_fraction=0.34)
    return lists


@pytest.fixture(scope="session")
def curated_clips(curated_lists, tmp_path_factory):
    lists = read_lists(curated_lists)
    cache = FeatureCache(tmp_path_factory.mktemp("features"))
    train, skipped = cache.prepare(lists.train)
    val, _ = cache.prepare(lists.val)
    assert not skipped
    return train, val


def settings(**changes) -> WindowSettings:
    base = dict(clips_per_batch=2, batches_per_clip=2, num_workers=0, min_negative_shift=5)
    return WindowSettings(**{**base, **changes})


def test_lists_from_filelist_and_from_a_plain_file(curated_lists, tmp_path):
    lists = read_lists(curated_lists)
    assert len(lists.train) == 2 and len(lists.val) == 3 and not set(lists.train) & set(lists.val)
    assert all(os.path.isabs(p) and p.endswith(".mp4") for p in lists.train + lists.val)
    # LatentSync's fileslist: a path a line; relative ones are relative to the list, comments and blanks skipped
    (tmp_path / "clips").mkdir()
    plain = tmp_path / "fileslist.txt"
    plain.write_text(f"# my clips\n{lists.train[0]}\n\nclips/b.mp4\n")
    assert read_lists(plain).train == [lists.train[0], str(tmp_path / "clips" / "b.mp4")]
    with pytest.raises(DataError, match="does not exist"):
        read_lists(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds neither split.parquet nor train.txt"):
        read_lists(tmp_path / "empty")


def test_windows_labels_and_shifts_on_curated_clips(curated_clips):
    train, _ = curated_clips
    data = settings(min_negative_shift=7)
    stream = WindowStream(train, STABLE, data, micro_batch=16, seed=3)
    for batch in [b for _, b in zip(range(4), iter(stream))]:
        assert batch["frames"].shape == (16, 16, 128, 256, 3) and batch["frames"].dtype == torch.uint8
        assert batch["mel"].shape == (16, 1, 80, 52)
        labels, audio, frames = batch["label"], batch["audio_start"], batch["frame_start"]
        assert labels.sum() == 8                                       # half in sync
        assert torch.equal(audio[labels == 1], frames[labels == 1])
        assert ((audio - frames)[labels == 0].abs() >= 7).all()        # negatives at least min_negative_shift away
        for i in range(16):                                            # each sample is what its starts say
            clip = train[int(batch["clip"][i])]
            last = clip.last_start(16)
            assert 0 <= int(audio[i]) <= last and 0 <= int(frames[i]) <= last
            mel = np.load(clip.mel)
            column = mel_start(int(audio[i]))
            assert np.array_equal(batch["mel"][i, 0].numpy(), mel[:, column:column + 52])
    # Wav2Lip's framing: 5 frames of the 96 x 96 face's lower half, BGR
    batch = next(iter(WindowStream(train, WAV2LIP, data, micro_batch=8, seed=3)))
    assert batch["frames"].shape == (8, 5, 48, 96, 3) and batch["mel"].shape == (8, 1, 80, 16)
    rgb = next(iter(WindowStream(train, Framing(5, 48, 96, "rgb"), data, micro_batch=8, seed=3)))
    assert torch.equal(rgb["frame_start"], batch["frame_start"])
    assert (rgb["frames"].float() - batch["frames"].flip(-1).float()).abs().mean() < 1.5  # the same pixels, BGR


def test_frames_are_the_clips_lower_half(curated_clips):
    train, _ = curated_clips
    pictures, _, _ = read_clip(train[0].path)
    batch = next(iter(WindowStream(train[:1], STABLE, settings(clips_per_batch=1), micro_batch=2, seed=0)))
    start = int(batch["frame_start"][0])
    expected = np.stack(pictures[start:start + 16])[:, 128:]
    # the decoder's planes converted straight (OpenCV's BT.601) against FFmpeg's converter: a level or two apart
    assert np.abs(batch["frames"][0].numpy().astype(int) - expected).mean() < 2.0


def test_the_stream_is_the_same_whatever_the_ranks_processes_or_start(curated_clips):
    """Global micro-batch j is the same samples however it is made: two ranks' shares together are one rank's
    batch, a stream started at j gives batch j, and DataLoader processes taking turns give the in-process order."""
    train, _ = curated_clips
    data = settings(num_workers=2, clips_per_batch=2, batches_per_clip=2)
    whole = [b for _, b in zip(range(6), iter(WindowStream(train, WAV2LIP, data, micro_batch=8, seed=5)))]
    assert [b["index"] for b in whole] == list(range(6))
    shares = [[b for _, b in zip(range(6), iter(WindowStream(train, WAV2LIP, data, 8, 5, rank=r, world_size=2)))]
              for r in (0, 1)]
    for j, batch in enumerate(whole):
        key = lambda b: sorted(zip(b["clip"].tolist(), b["audio_start"].tolist(), b["frame_start"].tolist(), b["label"].tolist()))
        merged = {k: torch.cat([shares[0][j][k], shares[1][j][k]]) for k in ("clip", "audio_start", "frame_start", "label")}
        assert key(merged) == key(batch)
        assert len(shares[0][j]["label"]) == len(shares[1][j]["label"]) == 4   # ranks decode disjoint clips
        assert not set(shares[0][j]["clip"].tolist()) & set(shares[1][j]["clip"].tolist()) or len(train) < 2
    later = next(iter(WindowStream(train, WAV2LIP, data, 8, 5, start=3)))
    assert later["index"] == 3 and torch.equal(later["frames"], whole[3]["frames"])
    processes = [b for _, b in zip(range(6), loader(WindowStream(train, WAV2LIP, data, 8, 5)))]
    for a, b in zip(processes, whole):
        assert a["index"] == b["index"] and torch.equal(a["frames"], b["frames"]) and torch.equal(a["mel"], b["mel"])
    resumed = [b for _, b in zip(range(3), loader(WindowStream(train, WAV2LIP, data, 8, 5, start=3)))]
    assert [b["index"] for b in resumed] == [3, 4, 5] and torch.equal(resumed[2]["mel"], whole[5]["mel"])


def test_the_mel_is_the_audio_under_the_frames(tmp_path):
    """On clips whose mouth follows their loudness: in every window the stream gives, the frames' mouth opening
    follows the loudness at frame_start and the mel's energy the loudness at audio_start. With the audio delayed
    by 3 frames on purpose, the mel follows the loudness 3 frames earlier: the delay shows where it must."""
    envelope = talking_clip(tmp_path / "talk.mp4", 6, seed=1)
    talking_clip(tmp_path / "late.mp4", 6, seed=1, audio_delay_frames=3)
    cache = FeatureCache(tmp_path / "features")
    clips, _ = cache.prepare([str(tmp_path / "talk.mp4"), str(tmp_path / "late.mp4")])
    framing = framing_of("stable", resolution=128)
    for number, delay in ((0, 0), (1, 3)):
        stream = WindowStream(clips[number:number + 1], framing, settings(clips_per_batch=1), 8, seed=2)
        lags_frames, lags_audio = [], []
        for _, batch in zip(range(3), iter(stream)):
            for i in range(8):
                mouth = 255 - batch["frames"][i, :, 10:26, 40:88].float().mean(dim=(1, 2, 3)).numpy()
                energy = batch["mel"][i, 0].mean(0).numpy()
                loudness = energy[np.round(3.2 * np.arange(16) + 1.6).astype(int)]   # the column mid-frame
                lags_frames.append(_best_lag(mouth, envelope, int(batch["frame_start"][i])))
                lags_audio.append(_best_lag(loudness, envelope, int(batch["audio_start"][i])))
        assert np.median(lags_frames) == 0, lags_frames
        assert np.median(lags_audio) == -delay, (delay, lags_audio)


def _best_lag(signal: np.ndarray, envelope: np.ndarray, start: int, most: int = 4) -> int:
    """The lag L in -most..most for which `signal` best correlates with envelope[start + L : start + L + n]."""
    scores = {}
    for lag in range(-most, most + 1):
        lo = start + lag
        if lo < 0 or lo + len(signal) > len(envelope):
            continue
        piece = envelope[lo:lo + len(signal)]
        if piece.std() > 0:
            scores[lag] = np.corrcoef(signal, piece)[0, 1]
    return max(scores, key=scores.get)


def test_a_delayed_copy_of_a_real_clip_has_its_mel_columns_later(curated_clips, tmp_path):
    """A real curated clip and a copy with its audio delayed by 5 frames (16 mel columns): the copy's mel is the
    original's 16 columns later, so a window's mel always comes from the audio under its own frames."""
    from stages.sync import rewrite_audio

    train, _ = curated_clips
    copy = tmp_path / "delayed.mp4"
    shutil.copy(train[0].path, copy)
    _, samples, _ = read_clip(copy)
    rewrite_audio(copy, np.concatenate([np.zeros(5 * 640, np.int16), samples[:-5 * 640]]), 16000)
    clips, _ = FeatureCache(tmp_path / "features").prepare([str(copy)])
    original, delayed = np.load(train[0].mel), np.load(clips[0].mel)
    assert np.abs(delayed[:, 40:-40] - original[:, 24:-56]).max() < 1e-3


def test_features_are_keyed_by_path_and_content(curated_clips, tmp_path):
    train, _ = curated_clips
    for name in ("a", "b"):                     # the same file name in two folders: two entries
        (tmp_path / name).mkdir()
        shutil.copy(train[0].path, tmp_path / name / "00001.mp4")
    shutil.copy(train[1].path, tmp_path / "b" / "00001.mp4")   # ... and b's has other content
    cache = FeatureCache(tmp_path / "features")
    clips, _ = cache.prepare([str(tmp_path / n / "00001.mp4") for n in ("a", "b")])
    assert clips[0].mel != clips[1].mel
    assert not np.array_equal(np.load(clips[0].mel), np.load(clips[1].mel))
    # a later start finds them in the index without decoding anything
    again = FeatureCache(tmp_path / "features")
    def refuse(paths, folder):
        raise AssertionError(f"prepared again: {paths}")
    assert again.prepare([c.path for c in clips], run=refuse)[0] == clips
    # a clip that changes (the sync stage rewrites its audio) is prepared again, under a new key
    shutil.copy(train[1].path, tmp_path / "a" / "00001.mp4")
    changed, _ = FeatureCache(tmp_path / "features").prepare([str(tmp_path / "a" / "00001.mp4")])
    assert changed[0].mel != clips[0].mel and np.array_equal(np.load(changed[0].mel), np.load(clips[1].mel))


def test_bad_clips_are_skipped_with_the_reason(tmp_path):
    good = str(tmp_path / "good.mp4")
    talking_clip(tmp_path / "good.mp4", 3, seed=0)
    (tmp_path / "junk.mp4").write_bytes(os.urandom(4000))
    talking_clip(tmp_path / "short.mp4", 0.8, seed=1)
    talking_clip(tmp_path / "mute_end.mp4", 4, seed=2, audio_seconds=2.0)
    synthetic(tmp_path / "wide.mp4", 3, size="320x240")
    synthetic(tmp_path / "thirty.mp4", 3, fps="30", size="128x128")
    paths = [good] + [str(tmp_path / name) for name in ("missing.mp4", "junk.mp4", "short.mp4", "mute_end.mp4",
                                                       "wide.mp4", "thirty.mp4")]
    clips, skipped = FeatureCache(tmp_path / "features").prepare(paths)
    clips, short = usable(clips, STABLE, 5, "training")
    reasons = {os.path.basename(path): why.split(":")[0] for path, why in skipped + short}
    assert [c.path for c in clips] == [good]
    assert reasons == {"missing.mp4": "missing", "junk.mp4": "unreadable_container", "short.mp4": "too_short",
                       "mute_end.mp4": "audio_mismatch", "wide.mp4": "not_aligned", "thirty.mp4": "not_25_fps"}
    assert "2.00 s of audio under 4.00 s of frames" in dict(skipped)[str(tmp_path / "mute_end.mp4")]


def test_a_clip_that_fails_in_training_is_stood_in_for(tmp_path, curated_clips):
    """A clip that cannot be decoded any more when its turn comes: a warning, a line in the problems file, and
    the batch still full and balanced, from the other clips."""
    train, _ = curated_clips
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\0" * 1000)
    clips = [train[0], Clip(str(broken), train[1].frames, train[1].mel)]
    problems = tmp_path / "problems.txt"
    stream = WindowStream(clips, WAV2LIP, settings(clips_per_batch=2), 8, seed=1, problems_file=str(problems))
    with pytest.warns(UserWarning, match="skipping .*broken.mp4 in training"):
        batch = next(iter(stream))
    assert len(batch["label"]) == 8 and batch["label"].sum() == 4 and (batch["clip"] == 0).all()
    assert problems.read_text().startswith(f"{broken}\t")
    with pytest.raises(DataError, match="no usable training clips"):
        WindowStream([], WAV2LIP, settings(), 8, seed=1)
    with pytest.raises(DataError, match="does not split evenly"):
        WindowStream(clips, WAV2LIP, settings(clips_per_batch=3), 8, seed=1)


def test_validation_windows_are_fixed_and_hold_every_shift(curated_clips):
    _, val = curated_clips
    data = settings(val_windows_per_clip=3, min_negative_shift=6)
    windows = ValWindows(val, WAV2LIP, data, seed=0)
    batches = list(windows.batches(batch_size=4))
    again = list(ValWindows(val, WAV2LIP, data, seed=0).batches(batch_size=4))
    assert len(windows) == 9 == sum(len(b["negative"]) for b in batches)
    for a, b in zip(batches, again):
        assert torch.equal(a["frames"], b["frames"]) and torch.equal(a["mels"], b["mels"])
    assert batches[0]["mels"].shape[1:] == (31, 1, 80, 16)
    shifts = torch.cat([b["negative"] for b in batches]) - 15
    assert (shifts.abs() >= 6).all()
    # audio window d of a sample is the mel under frames start + d - 15: the middle one is its own
    batch = batches[0]
    for i in range(len(batch["start"])):
        mel = np.load(windows.clips[int(batch["clip"][i])].mel)
        for d in (0, 15, 30):
            column = mel_start(int(batch["start"][i]) + d - 15)
            assert np.array_equal(batch["mels"][i, d, 0].numpy(), mel[:, column:column + 16])
