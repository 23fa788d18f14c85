"""The quality stage: HyperIQA on each aligned clip in an actor pool, after the sync stage; the score in the
manifest, clips under the threshold dropped, only what changed computed again."""

import pandas as pd
import pytest

from curate.cli import main
from curate.config import config_from_dict
from curate.summary import format_dry_run, format_summary
from networks.hyperiqa import load_hyperiqa
from stages.quality_score import QualityScorer
from footage import read_manifest, KITCHEN, downscaled

SHORT_CLIPS = {"clips": {"min_seconds": 2, "max_seconds": 4}}


@pytest.fixture(scope="module")
def raw(tmp_path_factory, talking_heads):
    raw = tmp_path_factory.mktemp("quality_raw")
    downscaled(raw / "kitchen.mp4", KITCHEN, size="540x960", seconds=3)
    return raw


def settings(models, skip=("sync",), min_score=-1000.0, **sync):
    # the stand-in weights score about -1.7, so a threshold of -1000 keeps the clip and the default 40 drops it
    # the duplicates check after quality is left out: these tests count the quality stage's work
    return config_from_dict({"run": {"skip": [*skip, "duplicates"]}, "models": {"dir": str(models)},
                             "stages": {**SHORT_CLIPS, "quality": {"min_score": min_score}, "sync": sync}})


def only_clip(out):
    [clip] = read_manifest(out, "clips").itertuples()
    return clip


def test_scores_thresholds_and_recomputes_only_what_changed(raw, tmp_path, curate, stand_in_models):
    out = tmp_path / "out"
    summary = curate(raw, out, settings(stand_in_models))
    assert summary.clips_staged == {"quality": 1}
    clip = only_clip(out)
    assert (clip.status, clip.sync_status, clip.quality_status) == ("kept", "skipped", "done")
    # the manifest's score is HyperIQA's on the written clip's first, middle and last frame
    direct = QualityScorer(load_hyperiqa(stand_in_models / "koniq_pretrained.pkl")).score_video(str(out / clip.path))
    assert clip.quality_score == pytest.approx(direct.score, abs=1e-4)
    assert list(clip.quality_frame_scores) == pytest.approx(list(direct.frame_scores), abs=1e-4)
    assert curate(raw, out, settings(stand_in_models)).clips_staged == {}   # nothing left to do

    # LatentSync's threshold: scored again (the source pass is not), dropped with the reason
    summary = curate(raw, out, settings(stand_in_models, min_score=40))
    assert (summary.sources_processed, summary.clips_staged) == (0, {"quality": 1})
    assert summary.rejects == {("clip", "quality", "low_visual_quality"): 1}
    clip = only_clip(out)
    assert (clip.status, clip.reject_stage, clip.reject_reason, clip.quality_status) == \
        ("rejected", "quality", "low_visual_quality", "rejected")
    assert "below 40" in clip.reject_detail
    assert (out / clip.path).exists(), "a rejected clip stays on disk for the report to show"
    runs = read_manifest(out, "runs")
    assert list(runs.clips_quality_scored) == [1, 1]  # the run with nothing to do left no row


def test_quality_follows_the_sync_stage(raw, tmp_path, curate, stand_in_models):
    out = tmp_path / "out"
    # a clip the sync stage drops is not scored for quality
    summary = curate(raw, out, settings(stand_in_models, skip=(), min_confidence=1000))
    assert summary.clips_staged == {"sync": 1}
    clip = only_clip(out)
    assert clip.reject_stage == "sync" and pd.isna(clip.quality_status) and pd.isna(clip.quality_score)
    # one it keeps goes on to the quality stage in the same run; a dry run says so first
    keep = settings(stand_in_models, skip=(), min_confidence=0, max_offset=15)
    planned = curate(raw, out, keep, dry_run=True).planned_clips
    assert planned == {"sync": {"stages.sync settings changed": 1}, "quality": {"if sync keeps them": 1}}
    printed = " ".join(format_dry_run(curate(raw, out, keep, dry_run=True)).split())
    assert "1 source found, 1 unchanged, 0 would be processed" in printed
    assert "sync 1 clip (stages.sync settings changed: 1) quality 1 clip (if sync keeps them: 1)" in printed
    summary = curate(raw, out, keep)
    assert summary.clips_staged == {"sync": 1, "quality": 1}
    clip = only_clip(out)
    assert (clip.status, clip.sync_status, clip.quality_status) == ("kept", "done", "done")
    # what each clip stage cost, in the summary and the runs manifest: its actors' CPU and wall seconds, and
    # the seconds of clip it scored
    timings = {t["stage"]: t for t in read_manifest(out, "runs").stage_timings.iloc[-1]}
    assert [t["stage"] for t in summary.stage_timings][-2:] == ["sync", "quality"]
    for stage in ("sync", "quality"):
        assert timings[stage]["clips_computed"] == 1 and timings[stage]["media_s"] == pytest.approx(clip.duration_s)
        assert 0 < timings[stage]["cpu_s"] and 0 < timings[stage]["wall_s"]
    assert timings["decode"]["sources_computed"] == 0   # the source pass did not run again
    printed = format_summary(summary, out).splitlines()
    assert any(line.split()[0] == "sync" and line.endswith("s of 1 clip") for line in printed)
    # a new quality threshold leaves the sync result alone
    summary = curate(raw, out, settings(stand_in_models, skip=(), min_score=40, min_confidence=0, max_offset=15))
    assert summary.clips_staged == {"quality": 1}
    assert only_clip(out).reject_reason == "low_visual_quality"
    settled = curate(raw, out, settings(stand_in_models, skip=(), min_score=40, min_confidence=0, max_offset=15),
                     dry_run=True)
    assert settled.planned_clips == {"sync": {}, "quality": {}} and "clip stages" not in format_dry_run(settled)


def test_missing_hyperiqa_weights_stop_the_run_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CURATE_MODELS_DIR", str(tmp_path / "models"))
    (tmp_path / "raw").mkdir()
    out = tmp_path / "out"
    assert main(["run", "--input", str(tmp_path / "raw"), "--output", str(out), "--skip", "sync"]) == 2
    err = capsys.readouterr().err
    assert f"koniq_pretrained.pkl is missing in {tmp_path / 'models'}" in err
    assert "curate models download hyperiqa" in err and "--skip quality" in err
    assert not out.exists()
