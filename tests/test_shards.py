"""`curate shards`: the README run's kept clips as WebDataset tar shards, on a local folder and on fsspec's
in-memory filesystem: every clip once, split as `curate filelist` splits them, its files byte for byte, its mel
as the trainers prepare it; a rerun appends and never rewrites a shard."""

import io
import json
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest

from curate.cli import main


def samples_of(tar_bytes: bytes) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        for member in tar.getmembers():
            folder, _, base = member.name.rpartition("/")
            key, _, extension = base.partition(".")
            out.setdefault(f"{folder}/{key}" if folder else key, {})[extension] = tar.extractfile(member).read()
    return out


def test_shards_hold_every_kept_clip_as_filelist_splits_them_on_disk_and_in_memory(readme_run, tmp_path, capsys):
    import fsspec

    from media.mel import melspectrogram
    from training.clips import clip_audio

    out = readme_run["out"]
    assert main(["filelist", str(out), "--out", str(tmp_path / "lists"), "--val-fraction", "0.3"]) == 0
    split = pq.read_table(tmp_path / "lists" / "split.parquet").to_pylist()
    size_mb = 1.5
    assert main(["shards", str(out), "--out", str(tmp_path / "shards"), "--shard-size", str(size_mb),
                 "--val-fraction", "0.3"]) == 0
    assert f"{len(split)} new clips (0 already there)" in capsys.readouterr().out
    index = pq.read_table(tmp_path / "shards" / "index.parquet").to_pylist()
    assert sorted((r["clip_id"], r["split"], r["speaker"]) for r in index) == \
        sorted((r["clip_id"], r["split"], r["speaker"]) for r in split)
    assert {r["split"] for r in index} == {"train", "val"}
    rows = {r["clip_id"]: r for r in split}
    shards = sorted(p for p in (tmp_path / "shards").iterdir() if p.suffix == ".tar")
    assert sorted({r["shard"] for r in index}) == [p.name for p in shards]
    seen = 0
    for shard in shards:
        samples = samples_of(shard.read_bytes())
        # filled to the size, a sample never split: over it only when alone
        assert shard.stat().st_size <= size_mb * 1e6 + 1024 or len(samples) == 1
        for key, files in samples.items():
            entry = next(r for r in index if r["key"] == key)
            assert entry["shard"] == shard.name and shard.name.startswith(entry["split"] + "-")
            row = rows[entry["clip_id"]]
            clip = row["abs_path"]
            assert files["mp4"] == open(clip, "rb").read()
            assert files["npz"] == open(clip.removesuffix(".mp4") + ".npz", "rb").read()
            mel = np.load(io.BytesIO(files["mel.npy"]))
            assert np.array_equal(mel, melspectrogram(clip_audio(clip)[1]))
            manifest = json.loads(files["json"])
            assert manifest["clip_id"] == entry["clip_id"] and manifest["speaker"] == row["speaker"]
            assert "abs_path" not in manifest
            seen += 1
    assert seen == len(split)

    # the same shards through fsspec's in-memory filesystem, byte for byte
    url = f"memory://shards-{tmp_path.name}"
    try:
        assert main(["shards", str(out), "--out", url, "--shard-size", str(size_mb), "--val-fraction", "0.3"]) == 0
        fs = fsspec.filesystem("memory")
        root = url.removeprefix("memory://")
        for shard in shards:
            assert fs.cat_file(f"{root}/{shard.name}") == shard.read_bytes()
        with fs.open(f"{root}/index.parquet", "rb") as handle:
            assert pq.read_table(handle).to_pylist() == index
        assert not [p for p in fs.ls(root, detail=False) if p.endswith(".partial")]
    finally:
        fsspec.filesystem("memory").rm(url.removeprefix("memory://"), recursive=True)


def test_a_rerun_appends_new_clips_and_never_rewrites_a_shard(readme_run, tmp_path):
    from curate.shards import write_shards

    out = readme_run["out"]
    assert main(["filelist", str(out), "--out", str(tmp_path / "lists")]) == 0
    table = pq.read_table(tmp_path / "lists" / "split.parquet")
    table = table.sort_by("clip_id")
    shards = tmp_path / "shards"
    first = write_shards(table.slice(0, 2), str(shards), shard_bytes=10 ** 9)
    assert first.new_samples == 2 and len(first.new_shards) >= 1
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in shards.glob("*.tar")}
    again = write_shards(table.slice(0, 2), str(shards), shard_bytes=10 ** 9)
    assert again.new_samples == 0 and again.new_shards == []
    more = write_shards(table, str(shards), shard_bytes=10 ** 9)
    assert more.new_samples == len(table) - 2 and more.kept_samples == 2
    for name, (data, mtime) in before.items():
        assert (shards / name).read_bytes() == data and (shards / name).stat().st_mtime_ns == mtime
    assert not set(more.new_shards) & set(before)
    index = pq.read_table(shards / "index.parquet").to_pylist()
    assert sorted(r["clip_id"] for r in index) == sorted(table["clip_id"].to_pylist())
    for name in more.new_shards:
        keys = set(samples_of((shards / name).read_bytes()))
        assert keys == {r["key"] for r in index if r["shard"] == name}
        assert not keys & {r["key"] for r in index if r["shard"] in before}


def test_a_filter_on_a_score_the_run_never_computed_is_refused(readme_run, tmp_path, capsys):
    assert main(["shards", str(readme_run["out"]), "--out", str(tmp_path / "s"), "--min-quality", "40"]) == 2
    assert "--min-quality: none of the" in capsys.readouterr().err
    assert not (tmp_path / "s" / "index.parquet").exists()


def test_a_bad_shard_size_is_refused(readme_run, tmp_path, capsys):
    assert main(["shards", str(readme_run["out"]), "--out", str(tmp_path / "s"), "--shard-size", "0"]) == 2
    assert "--shard-size must be above 0" in capsys.readouterr().err


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_missing_clip_stops_with_its_name_and_the_finished_shards_stay_indexed(readme_run, tmp_path):
    """A clip gone from the run's folder (the table says where it was): a one-line error naming it; the shards
    finished before it are in the index, no partial file is left, and a rerun with the clip back goes on."""
    import shutil

    from curate.shards import ShardError, write_shards

    assert main(["filelist", str(readme_run["out"]), "--out", str(tmp_path / "lists")]) == 0
    table = pq.read_table(tmp_path / "lists" / "split.parquet").sort_by([("split", "ascending"),
                                                                          ("clip_id", "ascending")])
    # the third clip's file, copied aside and its path in the table pointed at the copy, then removed
    rows = table.to_pylist()
    moved = tmp_path / "moved.mp4"
    shutil.copy(rows[2]["abs_path"], moved)
    rows[2]["abs_path"] = str(moved)
    broken = table.from_pylist(rows, table.schema)
    moved.unlink()
    shards = tmp_path / "shards"
    with pytest.raises(ShardError, match=f"clip {moved} cannot be read"):
        write_shards(broken, str(shards), shard_bytes=1)       # one clip a shard
    index = pq.read_table(shards / "index.parquet").to_pylist()
    assert [r["clip_id"] for r in index] == [rows[0]["clip_id"], rows[1]["clip_id"]]
    assert sorted(p.name for p in shards.iterdir()) == sorted({r["shard"] for r in index} | {"index.parquet"})
    again = write_shards(table, str(shards), shard_bytes=1)
    assert again.kept_samples == 2 and again.new_samples == len(rows) - 2


def test_an_output_url_no_filesystem_reads_is_refused_in_one_line(readme_run, capsys):
    assert main(["shards", str(readme_run["out"]), "--out", "nosuchprotocol://bucket/x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("curate: error: --out nosuchprotocol://bucket/x") and err.count("\n") == 1, err


def test_a_clip_the_trainers_would_skip_is_not_written_and_says_why(readme_run, tmp_path):
    """A clip whose audio stops halfway (the trainers' audio-mismatch check): left out with its reason, the
    others written; the index gives each sample's frames and the byte range of every member."""
    import subprocess

    from curate.shards import write_shards
    from footage import ffmpeg_exe
    from training.clips import ShardSample, read_sample

    assert main(["filelist", str(readme_run["out"]), "--out", str(tmp_path / "lists")]) == 0
    table = pq.read_table(tmp_path / "lists" / "split.parquet").sort_by("clip_id")
    rows = table.to_pylist()
    half = tmp_path / "half.mp4"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-i", rows[0]["abs_path"], "-map", "0:v", "-map", "0:a",
                    "-c:v", "copy", "-af", "atrim=0:2", "-c:a", "aac", str(half)], check=True)
    rows[0]["abs_path"] = str(half)
    written = write_shards(table.from_pylist(rows, table.schema), str(tmp_path / "shards"))
    assert [clip for clip, _ in written.skipped] == [rows[0]["clip_id"]]
    assert written.skipped[0][1].startswith("audio_mismatch: 2.0")
    index = pq.read_table(tmp_path / "shards" / "index.parquet").to_pylist()
    assert sorted(r["clip_id"] for r in index) == sorted(r["clip_id"] for r in rows[1:])
    for entry in index:
        sample = ShardSample.of(str(tmp_path / "shards" / entry["shard"]), entry["offset"], entry["length"],
                                [(m["suffix"], m["start"], m["size"]) for m in entry["members"]])
        members = read_sample(sample)
        clip = next(r for r in rows if r["clip_id"] == entry["clip_id"])["abs_path"]
        assert members["mp4"] == open(clip, "rb").read()
        assert json.loads(members["json"])["clip_id"] == entry["clip_id"]
        assert abs(entry["frames"] - entry["duration_s"] * 25) <= 1
