"""Resume: a rerun skips finished work, a changed stage recomputes from there on, a crash loses nothing."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from footage import GARDEN, KITCHEN, assert_same_run, downscaled, hard_cut, read_manifest, sha256, synthetic

from curate.config import config_from_dict


def chain(stages: dict | None = None, skip=("face", "speech", "duplicates")):
    """A config for these tests: the chain without the face stage (resume works the same with it; see the
    last test), the speech check (the test pattern's tone is no speech) and the duplicates check (kitchen.mp4 and
    cut.mp4 share a clip, and which copy a run keeps depends on which finishes first), with `stages` overriding
    defaults. A part only at the end of a run, never on the clock (a loaded
    machine would otherwise write a second one and the count of manifest files would say nothing)."""
    return config_from_dict({"run": {"skip": list(skip), "part_seconds": 3600}, "stages": stages or {}})


@pytest.fixture(scope="module")
def raw(tmp_path_factory, talking_heads):
    raw = tmp_path_factory.mktemp("raw")
    downscaled(raw / "a" / "kitchen.mp4", KITCHEN, size="180x320")
    hard_cut(raw / "a" / "cut.mp4", KITCHEN, 6, GARDEN, 7, size="180x320")
    synthetic(raw / "b" / "pattern.mp4", 23, fps="30", sample_rate=48000, channels=2)
    return raw


def clip_files(out: Path) -> dict[str, tuple[str, int]]:
    return {p.relative_to(out).as_posix(): (sha256(p), p.stat().st_mtime_ns)
            for p in sorted((out / "clips").rglob("*")) if p.is_file()}


def test_rerun_does_nothing_and_rewrites_nothing(raw, tmp_path, curate):
    out = tmp_path / "out"
    first = curate(raw, out, chain())
    assert first.sources_processed == 3
    files = clip_files(out)
    manifests = {p: p.read_bytes() for p in sorted((out / "manifests").rglob("*")) if p.is_file()}
    assert len(manifests) == 3  # runs.parquet, a part in sources/ and its pair in clips/

    second = curate(raw, out, chain())
    assert (second.sources_processed, second.sources_reused) == (0, 3)
    assert clip_files(out) == files
    assert {p: p.read_bytes() for p in sorted((out / "manifests").rglob("*")) if p.is_file()} == manifests
    runs = read_manifest(out, "runs")
    assert list(runs.sources_processed) == [3]  # a run that did nothing is not recorded either

    # an input file taken away: its rows go, and that run is recorded
    os.rename(raw / "b" / "pattern.mp4", raw / "b" / "pattern.mp4.away")
    try:
        third = curate(raw, out, chain())
    finally:
        os.rename(raw / "b" / "pattern.mp4.away", raw / "b" / "pattern.mp4")
    assert (third.sources_found, third.sources_processed) == (2, 0)
    assert "b/pattern.mp4" not in set(read_manifest(out, "sources").source_id)
    assert list(read_manifest(out, "runs").sources_processed) == [3, 0]


def test_changing_a_stage_recomputes_it_and_later_stages_only(raw, tmp_path, curate):
    out = tmp_path / "out"
    curate(raw, out, chain())
    before = read_manifest(out, "clips")
    before_files = clip_files(out)

    # clips: new spans from the recorded shots; the shot detector does not run again
    shorter = chain({"clips": {"min_seconds": 3, "max_seconds": 6}})
    summary = curate(raw, out, shorter)
    assert summary.sources_processed == 3
    sources = read_manifest(out, "sources")
    assert sources.shots_reused.all()
    timings = {t["stage"]: t for t in read_manifest(out, "runs").stage_timings.iloc[-1]}
    assert timings["shots"]["sources_computed"] == 0 and timings["write"]["sources_computed"] == 3
    after = read_manifest(out, "clips")
    kept = after[after.status == "kept"]
    assert kept.duration_s.between(3, 6).all() and len(kept) > len(before[before.status == "kept"])
    # the old clips that no longer exist are gone from disk, the new ones are there (kept, or rejected by a clip
    # stage: cut.mp4's first shot is kitchen.mp4's first 6 s, so the new 6 s clip of one is the other's duplicate)
    assert sorted(clip_files(out)) == sorted(after.path.dropna())

    # write: same spans, files encoded again
    back = chain({"write": {"crf": 30}})
    curate(raw, out, back)
    again = read_manifest(out, "clips")
    assert list(again.clip_id) == list(before.clip_id)
    assert read_manifest(out, "sources").shots_reused.all()
    rewritten = clip_files(out)
    assert sorted(rewritten) == sorted(before_files)
    assert all(rewritten[path][0] != before_files[path][0] for path in rewritten)  # crf 30 != crf 18

    # shots: detected again
    curate(raw, out, chain({"shots": {"adaptive_threshold": 2.5}}))
    assert not read_manifest(out, "sources").shots_reused.any()


def test_a_killed_run_resumes_to_the_same_result(raw, tmp_path, curate):
    reference = tmp_path / "reference"
    curate(raw, reference, chain())

    out = tmp_path / "out"
    config = tmp_path / "parts.yaml"
    config.write_text("run:\n  part_sources: 1\n")   # a part per finished source
    command = [sys.executable, "-m", "curate.cli", "run", "--input", str(raw), "--output", str(out),
               "--num-cpus", "1", "--no-progress", "--skip", "face,speech,duplicates", "--config", str(config)]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    parts = out / "manifests" / "sources"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if parts.is_dir() and any(p.suffix == ".parquet" for p in parts.iterdir()):
            break
        time.sleep(0.05)
    assert process.poll() is None, process.stderr.read().decode()
    os.killpg(process.pid, signal.SIGKILL)  # the driver and its embedded Ray, mid-run
    process.wait()
    # every source it finished is in the manifests as their readers see them (the journal holds those that
    # finished after the last part)
    from curate.results import open_view

    done = sum(len(batch) for batch in open_view(out).batches("sources", ["source_id"]))
    assert 1 <= done < 3, "the run should have been killed with work left"

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{3 - done} processed now, {done} unchanged" in resumed.stdout

    assert_same_run(out, reference)


def test_changing_the_face_stage_keeps_the_shots_and_recomputes_face_and_write(tmp_path, curate, talking_heads):
    raw = tmp_path / "raw"
    downscaled(raw / "kitchen.mp4", KITCHEN, size="540x960", seconds=8)
    out = tmp_path / "out"
    no_sync = {"run": {"skip": ["sync", "quality"]}}
    curate(raw, out, config_from_dict(no_sync))
    first = read_manifest(out, "clips")
    assert list(first.face_status) == ["done"] and first.face_jitter_px.iloc[0] > 0
    curate(raw, out, config_from_dict({**no_sync, "stages": {"face": {"smooth_sigma_frames": 0}}}))
    second = read_manifest(out, "clips")
    sources = read_manifest(out, "sources")
    assert sources.shots_reused.all()
    assert second.face_jitter_px.iloc[0] > first.face_jitter_px.iloc[0]  # the face stage ran again, unsmoothed
    # skipping the face stage writes the clip unaligned; bringing it back aligns it again
    curate(raw, out, chain())
    assert read_manifest(out, "clips").face_status.tolist() == ["skipped"]
    curate(raw, out, config_from_dict(no_sync))
    assert read_manifest(out, "clips").face_jitter_px.iloc[0] == first.face_jitter_px.iloc[0]
