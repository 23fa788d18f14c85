"""The manifests as Parquet datasets that grow by parts: which rows are current, and the journal's tail."""

import pyarrow.parquet as pq

from manifests.dataset import PartWriter, current_table, fold_journal, parts, write_part


def source(source_id, status="ok", **extra):
    return {"source_id": source_id, "path": f"/in/{source_id}", "status": status, "duration_s": 8.0, **extra}


def clip(source_id, start, status="kept", **extra):
    return {"clip_id": f"{source_id}/{start:07d}", "source_id": source_id, "start_frame": start,
            "status": status, "path": f"clips/{source_id}/{start:07d}.mp4", **extra}


def test_the_newest_part_naming_a_source_holds_its_rows(tmp_path):
    write_part(tmp_path, "1", [source("a"), source("b")], [clip("a", 0), clip("a", 200), clip("b", 0)])
    write_part(tmp_path, "2", [source("a", fingerprint="new")], [clip("a", 100)])
    write_part(tmp_path, "3", [{"source_id": "b", "status": "removed"}], [])
    sources = current_table(tmp_path, "sources").to_pylist()
    assert [(row["source_id"], row["fingerprint"]) for row in sources] == [("a", "new")]
    assert current_table(tmp_path, "clips", ["clip_id"])["clip_id"].to_pylist() == ["a/0000100"]


def test_a_clips_part_without_its_sources_part_is_never_read(tmp_path):
    write_part(tmp_path, "1", [source("a")], [clip("a", 0)])
    write_part(tmp_path, "2", [source("a")], [clip("a", 50)])
    (tmp_path / "manifests" / "sources" / "part-2.parquet").unlink()   # killed between the two writes
    assert current_table(tmp_path, "clips", ["clip_id"])["clip_id"].to_pylist() == ["a/0000000"]


def test_a_column_an_older_part_lacks_reads_as_null(tmp_path):
    write_part(tmp_path, "1", [source("a")], [])
    path = tmp_path / "manifests" / "sources" / "part-1.parquet"
    pq.write_table(pq.read_table(path).drop_columns(["generation"]), path)
    write_part(tmp_path, "2", [source("b", generation="g")], [])
    assert current_table(tmp_path, "sources", ["source_id", "generation"]).to_pylist() == [
        {"source_id": "a", "generation": None}, {"source_id": "b", "generation": "g"}]


def test_the_journal_tail_is_read_as_the_newest_part(tmp_path):
    write_part(tmp_path, "1", [source("a"), source("b")], [clip("a", 0), clip("b", 0)])
    records = [
        {"source_id": "b", "generation": "g2", "fingerprints": {"write": "w"}, "source": source("b"),
         "clips": [clip("b", 0), clip("b", 250)]},
        {"kind": "stage", "stage": "sync", "source_id": "b", "clip_id": "b/0000000", "generation": "g2",
         "fingerprint": "s1", "row": {"sync_status": "done", "sync_conf": 7.5}},
        {"kind": "stage", "stage": "sync", "source_id": "b", "clip_id": "b/0000250", "generation": "old",
         "fingerprint": "s1", "row": {"sync_status": "rejected", "status": "rejected"}},   # another generation's
    ]
    journal = fold_journal(records, ["sync", "quality"])
    clips = current_table(tmp_path, "clips", ["clip_id", "sync_conf", "sync_fingerprint", "status"], journal)
    assert clips.to_pylist() == [
        {"clip_id": "a/0000000", "sync_conf": None, "sync_fingerprint": None, "status": "kept"},
        {"clip_id": "b/0000000", "sync_conf": 7.5, "sync_fingerprint": "s1", "status": "kept"},
        {"clip_id": "b/0000250", "sync_conf": None, "sync_fingerprint": None, "status": "kept"}]
    sources = current_table(tmp_path, "sources", ["source_id", "generation", "n_clips_kept"], journal).to_pylist()
    assert sources[1] == {"source_id": "b", "generation": "g2", "n_clips_kept": 2}


def test_a_writer_writes_a_part_every_n_sources(tmp_path):
    writer = PartWriter(tmp_path, every_sources=2, every_s=3600)
    for name in "abcde":
        writer.add(source(name), [clip(name, 0)])
        if writer.due():
            writer.flush()
    assert len(parts(tmp_path)) == 2        # a, b and c, d; e waits for the next flush
    writer.flush()
    assert len(parts(tmp_path)) == 3
    assert len(current_table(tmp_path, "clips")) == 5
