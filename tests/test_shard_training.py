"""The trainers reading `curate shards`' shards, on the README run's curated clips: the same batches as the
file lists for the same seed (the experts', Wav2Lip's, validation's), whatever the ranks or the loader processes;
features from the shard, never the cache; an exact resume with the shard and key in the checkpoint; a damaged
sample skipped and counted with its reason; and `curate train syncnet SHARDS` as a user runs it."""

import dataclasses
import json
from pathlib import Path

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from curate.cli import main
from curate.shards import write_shards
from curate.train_data import prepare_clips
from networks.syncnet.experts import framing_of
from training.clips import read_lists
from training.face_windows import FaceStream, FaceValWindows, FaceWindowSettings, usable_faces
from training.windows import ValWindows, WindowSettings, WindowStream, loader

SETTINGS = WindowSettings(clips_per_batch=2, batches_per_clip=2, num_workers=0, val_clips=8, val_windows_per_clip=2)
FRAMING = framing_of("wav2lip", None, None)


@pytest.fixture(scope="module")
def written(readme_run, tmp_path_factory):
    """The README run as lists (`curate filelist`) and as shards on disk and in memory, the same split."""
    folder = tmp_path_factory.mktemp("shard-training")
    out = str(readme_run["out"])
    assert main(["filelist", out, "--out", str(folder / "lists"), "--val-fraction", "0.34"]) == 0
    assert main(["shards", out, "--out", str(folder / "shards"), "--val-fraction", "0.34", "--shard-size", "2"]) == 0
    memory = f"memory://shard-training-{folder.name}"
    assert main(["shards", out, "--out", memory, "--val-fraction", "0.34", "--shard-size", "2"]) == 0
    yield {"lists": folder / "lists", "shards": folder / "shards", "memory": memory, "folder": folder}
    fsspec.filesystem("memory").rm(memory.removeprefix("memory://"), recursive=True)


@pytest.fixture(scope="module")
def clips(written):
    """(train, val) from the lists (features prepared into a cache) and from the shards in memory (none)."""
    settings = dataclasses.replace(SETTINGS, cache_dir=str(written["folder"] / "features"))
    from_lists = prepare_clips(read_lists(written["lists"]), settings, FRAMING)
    from_shards = prepare_clips(read_lists(written["memory"]), settings, FRAMING)
    return from_lists, from_shards


def batches(stream, count: int) -> list[dict]:
    out = []
    for batch in stream:
        out.append(batch)
        if len(out) == count:
            return out
    return out


def assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) and a
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            assert torch.equal(x[key], y[key]) if torch.is_tensor(x[key]) else x[key] == y[key], key


def test_shards_give_the_lists_batches_for_the_same_seed(clips, written):
    (train, val), (shard_train, shard_val) = clips
    assert len(shard_train) == len(train) >= 2 and len(shard_val) == len(val) >= 1
    assert [c.frames for c in shard_train] == [c.frames for c in train]
    assert all(c.sample is not None and c.mel == "" for c in shard_train + shard_val)   # features in the sample
    # the cache holds the lists' mel and nothing of the shards'
    assert len(list((written["folder"] / "features").glob("*/*.npy"))) == len(train) + len(val)

    # the experts' stream: 12 micro-batches, over several epochs of these few clips
    make = lambda c, **kw: WindowStream(c, FRAMING, SETTINGS, micro_batch=4, seed=7, **kw)
    whole = batches(make(train), 12)
    assert_same(batches(make(shard_train), 12), whole)
    # two ranks: each its share of every batch, together the whole (clips q with q mod 2 == rank)
    for rank in (0, 1):
        part = batches(make(shard_train, rank=rank, world_size=2), 12)
        for mine, full in zip(part, whole):
            rows = [i for i in range(4) if (i // 2) % 2 == rank]
            assert torch.equal(mine["frames"], full["frames"][rows]) and torch.equal(mine["mel"], full["mel"][rows])
    # a resume from micro-batch 5 goes on as the whole stream did
    assert_same(batches(make(shard_train, start=5), 7), whole[5:])

    # the generators' stream (Wav2Lip at 96) and the validation sets
    face = FaceWindowSettings(clips_per_batch=2, batches_per_clip=3, num_workers=0, val_clips=8, val_windows_per_clip=2)
    kept = [usable_faces(c, "training")[0] for c in (train, shard_train)]
    faces = [batches(FaceStream(k, 96, face, micro_batch=4, seed=3), 5) for k in kept]
    assert_same(faces[1], faces[0])
    assert_same(list(ValWindows(shard_val, FRAMING, SETTINGS, 0).batches(4)),
                list(ValWindows(val, FRAMING, SETTINGS, 0).batches(4)))
    assert_same(list(FaceValWindows(shard_val, 96, face, 0).batches(4)),
                list(FaceValWindows(val, 96, face, 0).batches(4)))


def test_loader_processes_read_the_shards_as_one_process_does(clips, written):
    """Two DataLoader processes over the shards on disk: the micro-batches one process makes, in order."""
    (train, _), _ = clips
    on_disk = prepare_clips(read_lists(written["shards"] / "index.parquet"), SETTINGS, FRAMING)[0]
    two = dataclasses.replace(SETTINGS, num_workers=2)
    expected = batches(WindowStream(train, FRAMING, two, micro_batch=4, seed=1), 6)
    assert_same(batches(loader(WindowStream(on_disk, FRAMING, two, micro_batch=4, seed=1)), 6), expected)


def test_a_damaged_sample_is_skipped_and_counted_with_its_reason(clips, written, tmp_path):
    """One sample's video overwritten with noise in a copy of the shards, another's shard cut short: both are
    named in the problems file with why, and every batch keeps its size (the next clip of the share stands in)."""
    import shutil

    copy = tmp_path / "shards"
    shutil.copytree(written["shards"], copy)
    index = pq.read_table(copy / "index.parquet").sort_by("clip_id").to_pylist()
    noisy, cut = index[0], next(r for r in index[1:] if r["shard"] != index[0]["shard"])
    video = next(m for m in noisy["members"] if m["suffix"] == "mp4")
    with open(copy / noisy["shard"], "r+b") as handle:
        handle.seek(noisy["offset"] + video["start"])
        handle.write(np.random.default_rng(0).integers(0, 256, video["size"], dtype=np.uint8).tobytes())
    with open(copy / cut["shard"], "r+b") as handle:
        handle.truncate(cut["offset"] + cut["length"] // 2)
    shard_train = sorted(sum(prepare_clips(read_lists(copy), SETTINGS, FRAMING), []), key=lambda c: c.path)
    problems = tmp_path / "skipped_clips.txt"
    four = dataclasses.replace(SETTINGS, clips_per_batch=4, batches_per_clip=1)    # a group always has a good clip
    stream = WindowStream(shard_train, FRAMING, four, micro_batch=4, seed=2, problems_file=str(problems))
    with pytest.warns(UserWarning, match="skipping"):
        got = batches(stream, 3 * len(shard_train))
    assert all(len(b["label"]) == 4 for b in got)
    lines = dict(line.split("\t", 1) for line in problems.read_text().splitlines())
    assert set(lines) == {f"{copy}/{noisy['shard']}#{noisy['key']}", f"{copy}/{cut['shard']}#{cut['key']}"}
    assert "changed since it was indexed" in lines[f"{copy}/{cut['shard']}#{cut['key']}"]


def test_an_expert_resumes_from_shards_exactly_with_the_shard_and_key_in_its_checkpoint(clips, tmp_path):
    from curate.training_config import load_training_config
    from networks.syncnet.experts import load_expert
    from training.expert import ExpertJob, train_expert

    _, (train, val) = clips
    config = load_training_config("wav2lip", Path(__file__).parents[1] / "configs" / "syncnet-wav2lip-small.yaml")
    data = dataclasses.replace(config.data, clips_per_batch=2, batches_per_clip=2, num_workers=0, val_clips=1,
                               val_windows_per_clip=2)
    job = lambda run, steps: ExpertJob("wav2lip", None, data, dataclasses.replace(
        config.train, batch_size=4, max_steps=steps, log_every=1, validate_every=2, checkpoint_every=2),
        train, val, str(run))
    train_expert(job(tmp_path / "whole", 4))
    train_expert(job(tmp_path / "parts", 2))
    state = torch.load(tmp_path / "parts" / "checkpoints" / "step-000000002" / "train_state.pt", weights_only=False)
    stream = WindowStream(train, FRAMING, data, micro_batch=4, seed=config.train.seed)
    position = state["data"]
    assert position == stream.position(2) and position["micro_batch"] == 2
    first = train[stream.group_clips(stream.locate(2)[0])[0]]
    assert (position["shard"], position["key"]) == (first.sample.shard, first.path.rpartition("#")[2])
    train_expert(job(tmp_path / "parts", 4))
    ours, theirs = (load_expert(run / "checkpoints" / "step-000000004" / "lipsync_expert.pth")[1].state_dict()
                    for run in (tmp_path / "parts", tmp_path / "whole"))
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    # other data under the same run (a clip more): it goes on, and says the data moved
    more = dataclasses.replace(job(tmp_path / "parts", 5), train_clips=train + val)
    with pytest.warns(UserWarning, match="the data changed since step-000000004"):
        train_expert(more)


@pytest.mark.timeout(900)
def test_train_syncnet_reads_shards_and_refuses_them_once_appended_to(readme_run, written, tmp_path, ray_cluster,
                                                                       capsys, monkeypatch):
    """`curate train syncnet SHARDS` from their folder: trains, its features from the shards (the cache stays
    empty). Shards appended to since are other data: the same run folder refuses them (unless --reconfigure)."""
    features = tmp_path / "features"
    monkeypatch.setenv("CURATE_FEATURES_DIR", str(features))
    config = str(Path(__file__).parents[1] / "configs" / "syncnet-wav2lip-small.yaml")
    split = pq.read_table(written["lists"] / "split.parquet").sort_by("clip_id")
    shards = tmp_path / "shards"
    write_shards(split.slice(0, len(split) - 1), str(shards))
    run = tmp_path / "run"
    train = ["train", "syncnet", str(shards), "--arch", "wav2lip", "--out", str(run), "--config", config,
             "--no-progress"]
    assert main([*train, "--max-steps", "2"]) == 0
    assert "trained: step 2" in capsys.readouterr().out
    assert not features.exists() or not any(features.rglob("*.npy"))
    identity = json.loads((run / "run.json").read_text())
    assert identity["lists"] == str(shards) and len(identity["shards"]) == 64
    # the expert judged on the shards' validation clips
    assert main(["eval-syncnet", str(run), str(shards), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["split"] == "val" and row["clips"] == len(pq.read_table(shards / "index.parquet").filter(
        pq.read_table(shards / "index.parquet")["split"].to_numpy(zero_copy_only=False) == "val"))

    write_shards(split, str(shards))            # one more clip
    assert main([*train, "--max-steps", "4"]) == 2
    assert "holds a run with other settings (shards:" in capsys.readouterr().err
    # shards that are not there: one line, before any work
    assert main(["train", "syncnet", "memory://no-such-shards", "--out", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("curate: error: cannot read the shards' index memory://no-such-shards/index.parquet")
    assert err.count("\n") == 1 and not (tmp_path / "none").exists()
