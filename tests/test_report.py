"""The rejected-clip report, `curate rejects` and `curate filelist`, on a run over real talking heads in
VoxCeleb2's layout plus broken and faceless files; the report is opened in headless Chromium."""

import base64
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import cv2
import numpy as np
import pandas as pd
import pytest
from footage import KITCHEN, TALKING_HEADS, downscaled, read_manifest, synthetic

from curate.cli import main
from curate.config import config_from_dict

SOFA = TALKING_HEADS / "man_sofa_1080x1920_30fps.mp4"
GARDEN = TALKING_HEADS / "woman_garden_1080x1920_25fps.mp4"


def settings(models, min_score):
    return config_from_dict({"run": {"skip": ["sync"]}, "models": {"dir": str(models)},
                             "stages": {"clips": {"min_seconds": 2, "max_seconds": 4}, "face": {"min_face_px": 64},
                                        # the kitchen's 3 s from 8 s has a pause: 44 % speech
                                        "speech": {"min_fraction": 0.3}, "quality": {"min_score": min_score}}})


@pytest.fixture(scope="module")
def run(tmp_path_factory, talking_heads, stand_in_models, curate):
    """Three speakers in VoxCeleb2's id/video/clip layout (one with two videos), a test pattern (no face), a
    video without audio, a 1 s file and a text file named .mp4; the quality threshold set between the stand-in
    weights' scores so that some clips are dropped for quality, with their files on disk."""
    raw = tmp_path_factory.mktemp("report_raw")
    downscaled(raw / "id00001/aaa/00001.mp4", KITCHEN, size="540x960", seconds=3)
    downscaled(raw / "id00001/bbb/00001.mp4", KITCHEN, size="540x960", seconds=3, extra=["-ss", "8"])
    downscaled(raw / "id00002/ccc/00001.mp4", SOFA, size="540x960", seconds=3)
    downscaled(raw / "id00003/ddd/00001.mp4", GARDEN, size="540x960", seconds=3)
    synthetic(raw / "other/pattern.mp4", 3)
    synthetic(raw / "other/silent.mp4", 3, audio=False)
    synthetic(raw / "other/tiny.mp4", 1)
    (raw / "other/notes.mp4").write_text("not a video")
    out = tmp_path_factory.mktemp("report") / "out"
    curate(raw, out, settings(stand_in_models, -1000))
    scored = read_manifest(out, "clips").dropna(subset=["quality_score"])
    assert len(scored) == 4
    # the threshold: just under the best clips that cover two speakers, so both file lists get one
    scored = scored.sort_values("quality_score", ascending=False).reset_index(drop=True)
    speakers = scored.source_id.str.split("/").str[0]
    enough = next(k for k in range(1, 5) if speakers[:k].nunique() == 2)
    threshold = (scored.quality_score[enough - 1] + scored.quality_score[enough]) / 2
    summary = curate(raw, out, settings(stand_in_models, threshold))
    # only quality ran again, and the duplicates check after it on the clips quality kept
    assert (summary.sources_processed, summary.clips_staged) == (0, {"quality": 4, "duplicates": enough})
    return out


def manifests(out):
    return read_manifest(out, "sources"), read_manifest(out, "clips")


def tally_of(run, sources=None, clips=None, samples=0):
    """The report's tally of `run`, or of its manifests as changed by a test (`sources`, `clips`: frames)."""
    import pyarrow as pa

    from curate.report import CLIP_COLUMNS, SOURCE_COLUMNS, gather
    from curate.results import open_view

    read_sources, read_clips = manifests(run)
    sources = read_sources if sources is None else sources
    clips = read_clips if clips is None else clips
    return gather(open_view(run), samples=samples,
                  sources=[pa.Table.from_pandas(sources[SOURCE_COLUMNS], preserve_index=False)],
                  clips=[pa.Table.from_pandas(clips[CLIP_COLUMNS], preserve_index=False)])


def test_the_run_has_what_the_report_must_show(run):
    sources, clips = manifests(run)
    reasons = set(zip(clips.reject_stage, clips.reject_reason)) | set(zip(sources.reject_stage, sources.reject_reason))
    assert {("quality", "low_visual_quality"), ("face", "no_face"), ("probe", "no_audio_stream"),
            ("probe", "too_short")} <= reasons
    assert (clips.status == "kept").sum() >= 2 and (clips.reject_stage == "quality").sum() >= 1


class Page(HTMLParser):
    """What the test reads back from the DOM Chromium produced."""

    def __init__(self):
        super().__init__()
        self.funnel, self.sections, self.images, self.reject_counts = {}, set(), [], []
        self._step = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and "data-step" in attrs:
            self._step = attrs["data-step"]
        if tag == "td" and "data-count" in attrs and self._step:
            self.funnel[self._step] = int(attrs["data-count"])
            self._step = None
        if tag == "section":
            self.sections.add(attrs["id"])
        if tag == "img":
            self.images.append(attrs["src"])


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no Chromium here: .ci/run installs Debian's chromium package for this test")


def test_report_loads_in_chromium_with_the_manifest_numbers(run, tmp_path):
    target = tmp_path / "report.html"
    assert main(["report", str(run), "-o", str(target)]) == 0
    assert target.stat().st_size < 5_000_000
    browser = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
         "--user-data-dir=" + str(tmp_path / "profile"), "--dump-dom", target.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert browser.returncode == 0, browser.stderr[-2000:]
    console = [line for line in browser.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == [], console
    page = Page()
    page.feed(browser.stdout)

    sources, clips = manifests(run)
    assert page.funnel["sources found"] == len(sources)
    assert page.funnel["sources readable"] == (sources.status == "ok").sum()
    assert page.funnel["clip spans cut"] == len(clips)
    assert page.funnel["left after face"] == len(clips) - (clips.reject_stage == "face").sum()
    assert page.funnel["left after quality"] == page.funnel["kept"] == (clips.status == "kept").sum()
    for kind, table in (("source", sources), ("clip", clips)):
        for stage, reason in set(zip(table.reject_stage.dropna(), table.reject_reason.dropna())):
            assert f"reject-{kind}-{stage}-{reason}" in page.sections
    assert "kept-sample" in page.sections
    # every embedded picture decodes; thumbnails of clips and sources, and the plots' PNGs
    assert len(page.images) >= 10
    for uri in page.images:
        header, data = uri.split(",", 1)
        assert header in ("data:image/jpeg;base64", "data:image/png;base64")
        picture = cv2.imdecode(np.frombuffer(base64.b64decode(data), np.uint8), cv2.IMREAD_COLOR)
        assert picture is not None and picture.size > 0


def test_funnel_counts_every_stage_that_drops_clips(run):
    """A span the resample stage drops (audio_missing) or a source rejected partway counts where it happened."""
    from curate.report import funnel

    clips = manifests(run)[1]
    kept = clips.index[clips.status == "kept"]
    clips.loc[kept[0], ["status", "reject_stage", "reject_reason"]] = ["rejected", "resample", "audio_missing"]
    clips.loc[kept[1], ["status", "reject_stage", "reject_reason"]] = ["rejected", "worker", "worker_crashed"]
    steps = dict((step, count) for step, count, _ in funnel(tally_of(run, clips=clips)))
    assert steps["left after resample"] == len(clips) - 2 - (clips.reject_stage == "probe").sum()
    assert steps["left after write"] == steps["left after face"]
    assert steps["kept"] == (clips.status == "kept").sum() == steps["left after quality"]


def test_rejects_lists_each_rejected_source_and_clip(run, capsys):
    sources, clips = manifests(run)
    assert main(["rejects", str(run), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == (sources.status == "rejected").sum() + (clips.status == "rejected").sum()
    assert main(["rejects", str(run), "--stage", "quality", "--format", "csv"]) == 0
    table = pd.read_csv(__import__("io").StringIO(capsys.readouterr().out))
    expected = clips[clips.reject_stage == "quality"]
    assert sorted(table.clip_id) == sorted(expected.clip_id)
    assert (table.reject_reason == "low_visual_quality").all() and table.quality_score.notna().all()
    assert main(["rejects", str(run), "--reason", "no_face"]) == 0
    printed = capsys.readouterr().out
    assert "other/pattern.mp4" in printed and "low_visual_quality" not in printed


def test_filelist_splits_kept_clips_by_speaker_deterministically(run, tmp_path, capsys):
    _, clips = manifests(run)
    kept = {str((run / path).resolve()) for path in clips.path[clips.status == "kept"]}
    args = ["filelist", str(run), "--val-fraction", "0.5", "--seed", "3"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    train = (tmp_path / "a/train.txt").read_text().splitlines()
    val = (tmp_path / "a/val.txt").read_text().splitlines()
    assert set(train) | set(val) == kept and not set(train) & set(val)
    assert train and val
    for name in ("train.txt", "val.txt"):  # the same seed, the same lists
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    split = pd.read_parquet(tmp_path / "a/split.parquet")
    assert set(split.abs_path) == kept and {"sync_conf", "quality_score", "speaker", "split"} <= set(split.columns)
    assert split.speaker.str.fullmatch(r"id\d+").all()
    assert not set(split.speaker[split.split == "train"]) & set(split.speaker[split.split == "val"])
    # a stricter filter than the run's keeps fewer
    best = split.quality_score.max()
    assert main(["filelist", str(run), "--out", str(tmp_path / "c"), "--min-quality", str(best)]) == 0
    listed = (tmp_path / "c/train.txt").read_text().splitlines() + (tmp_path / "c/val.txt").read_text().splitlines()
    assert listed == [split.abs_path[split.quality_score == best].iloc[0]]


def test_speakers_from_voxceleb_folders_or_the_source_file():
    from curate.results import speaker_of, split_speakers

    assert speaker_of("dev/mp4/id00012/21Uxsk56VDQ/00001.mp4") == "id00012"
    assert speaker_of("WDA_BarackObama_000.mp4") == "WDA_BarackObama_000.mp4"
    hdtf = re.compile(r"([^/]+)_[0-9]+[.][^.]+$")
    assert speaker_of("WDA_BarackObama_001.mp4", hdtf) == speaker_of("WDA_BarackObama_000.mp4", hdtf) == "WDA_BarackObama"
    assert speaker_of("id00012/abc/00001.mp4", hdtf) == "id00012"  # no match: the usual rules
    speakers = [f"s{i}" for i in range(40)]
    val = split_speakers(speakers, 0.1, seed=0)
    assert len(val) == 4 and val == split_speakers(list(reversed(speakers)), 0.1, seed=0)
    assert val != split_speakers(speakers, 0.1, seed=1)
    assert split_speakers(["only"], 0.5, 0) == set()


def test_report_of_a_folder_without_a_run_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "has no finished run" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err == f"curate: error: output folder {tmp_path / 'nope'} does not exist\n"


def test_results_commands_fail_in_one_line_and_say_why_a_list_is_empty(run, tmp_path, capsys):
    def error(*argv):
        assert main(list(argv)) == 2
        err = capsys.readouterr().err
        assert err.startswith("curate: error: ") and len(err.splitlines()) == 1, err
        return err

    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    assert "is a file, not a folder" in error("filelist", str(run), "--out", str(blocker))
    assert blocker.read_text() == "mine"
    assert "is a file, not an output folder" in error("rejects", str(blocker))
    assert "the stages that reject are scan, worker, probe" in error("rejects", str(run), "--stage", "bogus")
    # the run left the sync stage out: a sync threshold would silently empty the lists
    assert "has a sync score (the run left out the sync stage)" in error("filelist", str(run), "--out",
                                                                         str(tmp_path / "l"), "--min-confidence", "0")
    # a threshold no clip reaches: empty lists are written, and the warning says why
    assert main(["filelist", str(run), "--out", str(tmp_path / "l"), "--min-quality", "1e9"]) == 0
    printed = capsys.readouterr()
    assert "the file lists are empty: none of the" in printed.err and "train: 0 clips, 0 speakers" in printed.out
    assert (tmp_path / "l" / "train.txt").read_text() == ""


def test_the_report_draws_the_same_samples_and_counts_whatever_the_parts(run):
    """The report reads a part at a time: split into parts, the manifests give the same page."""
    import pyarrow as pa

    from curate.report import CLIP_COLUMNS, SOURCE_COLUMNS, gather, reject_counts, render
    from curate.results import open_view

    sources, clips = manifests(run)
    whole = tally_of(run, samples=2)
    shuffled = clips.sample(frac=1, random_state=5)
    parts = [shuffled[:len(clips) // 3], shuffled[len(clips) // 3:]]
    split = gather(open_view(run), samples=2, sources=[pa.Table.from_pandas(sources[SOURCE_COLUMNS])],
                   clips=[pa.Table.from_pandas(part[CLIP_COLUMNS], preserve_index=False) for part in parts])
    assert reject_counts(split).equals(reject_counts(whole))
    for kind in ("source", "clip"):
        assert sorted(split.drawn[kind].clip_id if kind == "clip" else split.drawn[kind].source_id) == \
            sorted(whole.drawn[kind].clip_id if kind == "clip" else whole.drawn[kind].source_id)
    assert (split.drawn["clip"].groupby("group").size() <= 4).all()
    assert render(split) == render(whole)


def test_report_of_a_run_without_rejects_says_so(run):
    """No empty rejects table and no empty heading over the samples when nothing was rejected."""
    from curate.report import render

    sources, clips = manifests(run)
    sources, clips = sources[sources.status == "ok"], clips[clips.status == "kept"]
    page = render(tally_of(run, sources, clips, samples=1))
    assert "Nothing was rejected" in page
    assert "rejects-table" not in page and "id='samples'" not in page and "<section id='reject-" not in page
    assert f"a sample of the {len(clips)} kept clips" in page


def test_report_counts_are_singular_or_plural(run):
    from curate.report import render

    sources, clips = manifests(run)
    page = render(tally_of(run))
    assert (sources.reject_reason == "too_short").sum() == 1
    assert "probe / too_short (1 source)" in page  # the 1 s file
    for kind, table in (("source", sources), ("clip", clips)):
        for (stage, reason), n in table.groupby(["reject_stage", "reject_reason"]).size().items():
            assert f"{stage} / {reason} ({n} {kind if n == 1 else kind + 's'})" in page
    assert "1 clips" not in page and "1 sources" not in page


def _plots(tally):
    from curate.report_plots import figures

    return {check.title: figure.axes[0] for check, figure in figures(tally) if figure is not None}


def _bars_inside(axes):
    """Every histogram (kept and dropped, each a filled outline of its bars) lies within the drawn x range."""
    left, right = axes.get_xlim()
    outlines = [patch.get_xy() for patch in axes.patches if patch.get_xy()[:, 1].max() > 0]
    assert outlines
    for xy in outlines:
        assert left - 1e-9 <= xy[:, 0].min() and xy[:, 0].max() <= right + 1e-9


def test_histogram_zooms_to_the_data_and_marks_a_far_threshold_at_the_edge(run):
    from matplotlib import pyplot as plt

    tally = tally_of(run)
    threshold = tally.config.stages.quality.min_score
    # the run's own scores lie on both sides of its threshold: drawn as before, with the red line inside
    axes = _plots(tally)["HyperIQA score"]
    left, right = axes.get_xlim()
    assert left < threshold < right
    assert any(line.get_xdata()[0] == threshold for line in axes.get_lines())
    assert not [text for text in axes.texts if "off the range" in text.get_text()]
    _bars_inside(axes)
    # scores far above it: the range is the data's, with the threshold marked at the left edge
    clips = manifests(run)[1]
    scored = clips.quality_score.notna()
    clips.loc[scored, "quality_score"] = threshold + 100 + np.linspace(0, 20, scored.sum())
    axes = _plots(tally_of(run, clips=clips))["HyperIQA score"]
    left, right = axes.get_xlim()
    assert threshold + 98 <= left < threshold + 100 and threshold + 120 < right <= threshold + 122
    labels = [text.get_text() for text in axes.texts]
    assert labels == [f"← threshold {threshold:g} (off the range)"]
    _bars_inside(axes)
    plt.close("all")


def test_detection_rate_axis_ends_at_one(run):
    """Every frame with a face (rate 1 for every clip) used to stretch the axis to 1.5."""
    from matplotlib import pyplot as plt

    clips = manifests(run)[1]
    clips.loc[clips.face_detection_rate.notna(), "face_detection_rate"] = 1.0
    axes = _plots(tally_of(run, clips=clips))["face detection rate"]
    left, right = axes.get_xlim()
    assert 0.8 <= left < 1.0 <= right <= 1.05
    _bars_inside(axes)
    plt.close("all")


def test_mouth_sharpness_is_drawn_beside_hyperiqa_with_its_minimum(run):
    from matplotlib import pyplot as plt

    from curate.report_plots import figures

    tally = tally_of(run)
    titles = [check.title for check, _ in figures(tally)]
    sharpness = "mouth sharpness (Laplacian variance, median)"
    assert abs(titles.index(sharpness) - titles.index("HyperIQA score")) == 1
    axes = _plots(tally)[sharpness]
    minimum = tally.config.stages.face.min_mouth_sharpness
    left, right = axes.get_xlim()
    assert left <= minimum <= right or [text for text in axes.texts if "off the range" in text.get_text()]
    assert len(tally.values("face_mouth_sharpness")) > 0
    plt.close("all")


# -- the kept and dropped clips per check (#29 item 7) ----------------------------------------------

class Figures(HTMLParser):
    """The figures of the page's kept/dropped plots: per score, its attributes, caption, heading and picture."""

    def __init__(self):
        super().__init__()
        self.figures, self.headings, self._figure, self._heading, self._in = {}, [], None, None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("h2", "h3"):
            self._heading = attrs.get("id")
        if tag == "figure" and "data-score" in attrs:
            self._figure = {**attrs, "section": self._heading, "img": None, "text": ""}
            self.figures[attrs["data-score"]] = self._figure
            self.headings.append(self._heading)
        if tag == "img" and self._figure is not None:
            self._figure["img"] = attrs["src"]

    def handle_endtag(self, tag):
        if tag == "figure":
            self._figure = None

    def handle_data(self, data):
        if self._figure is not None:
            self._figure["text"] += data


def figures_of(page):
    parsed = Figures()
    parsed.feed(page)
    return parsed.figures


NEW_CHECKS = {"kept-dropped-pose": ["face_yaw_deg", "face_pitch_deg", "face_off_pose_share",
                                    "face_mouth_outside_share", "face_turn_deg_s", "face_move_widths_s"],
              "kept-dropped-size": ["face_size_px"], "kept-dropped-speech": ["speech_fraction"],
              "kept-dropped-sharpness": ["face_mouth_sharpness", "quality_score"]}


def test_kept_and_dropped_section_shows_each_check_with_the_manifest_counts(run):
    """One figure per score under its heading, the kept and dropped clips with a value and without one counted as
    the manifest has them, the threshold in the caption; the speech check, off in this run, says it has no
    values instead of a picture."""
    from curate.report import render

    _, clips = manifests(run)
    page = render(tally_of(run))
    assert "<h2 id='kept-dropped'>" in page
    found = figures_of(page)
    for section, scores in NEW_CHECKS.items():
        assert [score for score in found if found[score]["section"] == section] == scores
    kept, dropped = clips.status == "kept", clips.status == "rejected"
    assert kept.sum() >= 2 and dropped.sum() >= 2
    for score in [s for scores in NEW_CHECKS.values() for s in scores]:
        figure, valued = found[score], clips[score].notna()
        numbers = {key: int(figure[f"data-{key}"]) for key in ("kept", "kept-missing", "dropped", "dropped-missing")}
        assert numbers == {"kept": (kept & valued).sum(), "kept-missing": (kept & ~valued).sum(),
                           "dropped": (dropped & valued).sum(), "dropped-missing": (dropped & ~valued).sum()}, score
        assert (figure["img"] is not None) == bool(valued.any()), score
    # the clip with no face was dropped before the pose was measured: it is counted as having no value
    no_face = (clips.reject_reason == "no_face").sum()
    assert no_face >= 1 and int(found["face_yaw_deg"]["data-dropped-missing"]) >= no_face
    assert f"no value: {int(found['face_yaw_deg']['data-dropped-missing'])} dropped" in found["face_yaw_deg"]["text"]
    face = tally_of(run).config.stages.face
    assert f"keep at or above {face.min_mouth_sharpness:g}" in found["face_mouth_sharpness"]["text"]
    assert f"keep at or above {face.min_face:g}" in found["face_size_px"]["text"]
    assert f"per-frame limit {face.max_yaw_deg:g}" in found["face_yaw_deg"]["text"]
    speech = found["speech_fraction"]   # on by default: drawn, each clip that reached it with its value
    assert speech["img"] is not None and "did not run" not in speech["text"]
    assert int(speech["data-kept-missing"]) == 0


def _legend_and_lines(axes):
    legend = [text.get_text() for text in axes.get_legend().get_texts()]
    lines = [line.get_xdata()[0] for line in axes.get_lines()]
    edge = " ".join(text.get_text() for text in axes.texts)
    return legend, lines, edge


def test_each_plot_draws_kept_and_dropped_apart_with_its_thresholds(run):
    """Speech fractions given to the run's clips (kept high, dropped low, one dropped as too_little_speech):
    every plot with values has a kept and a dropped histogram whose legend counts match, and every threshold is
    a red line or marked at the edge."""
    from matplotlib import pyplot as plt

    from curate.report_plots import figures

    clips = manifests(run)[1]
    kept, dropped = clips.index[clips.status == "kept"], clips.index[clips.status == "rejected"]
    clips.loc[kept, "speech_fraction"] = np.linspace(0.7, 0.95, len(kept))
    clips.loc[dropped[:2], "speech_fraction"] = [0.1, 0.2]
    clips.loc[dropped[0], ["reject_stage", "reject_reason"]] = ["speech", "too_little_speech"]
    tally = tally_of(run, clips=clips)
    drawn = {}
    for check, figure in figures(tally):
        if figure is None:
            assert not len(tally.values(check.column)), check.column
            continue
        drawn[check.column] = legend, lines, edge = _legend_and_lines(figure.axes[0])
        valued = clips[check.column].notna()
        assert legend == [f"kept (n = {(valued & (clips.status == 'kept')).sum()})",
                          f"dropped (n = {(valued & (clips.status == 'rejected')).sum()})"], check.column
        for threshold in check.thresholds:
            assert threshold in lines or f"{threshold:g}" in edge, (check.column, threshold)
        plt.close(figure)
    assert len(drawn) >= 10
    legend, lines, _ = drawn["speech_fraction"]
    assert legend == [f"kept (n = {len(kept)})", "dropped (n = 2)"]
    assert tally.config.stages.speech.min_fraction in lines


NEW_REASONS = [("face", "off_pose"), ("face", "mouth_outside"), ("face", "fast_motion"), ("face", "blurry_mouth"),
               ("speech", "too_little_speech"), ("face", "not_the_speaker"), ("face", "speakers_take_turns"),
               ("sync", "not_the_speaker"), ("duplicates", "duplicate_clip"), ("later_check", "made_up")]


def _with_new_reasons(clips):
    """The run's clips, one more copied per new reason and rejected for it (a stage no code knows, 'later_check',
    among them)."""
    template = clips[clips.status == "kept"].iloc[0]
    extra = pd.DataFrame([template] * len(NEW_REASONS)).reset_index(drop=True)
    extra["clip_id"] = [f"{template.clip_id}-new{i}" for i in range(len(NEW_REASONS))]
    extra["status"] = "rejected"
    extra["reject_stage"], extra["reject_reason"] = zip(*NEW_REASONS)
    extra["reject_detail"] = "made by the test"
    return pd.concat([clips, extra], ignore_index=True)


def test_funnel_and_rejects_table_show_every_new_reason(run):
    """Reasons the report has no word for show in the funnel under the step that dropped them and in the rejects
    table, and a stage it does not know gets its own step, so the steps still add up to the kept clips."""
    from curate.report import funnel, render

    clips = _with_new_reasons(manifests(run)[1])
    tally = tally_of(run, clips=clips)
    page = render(tally)
    funnel_html = page[page.index("id='funnel-table'"):page.index("</table>", page.index("id='funnel-table'"))]
    for stage, reason in NEW_REASONS:
        assert f"data-reason='clip/{stage}/{reason}'><td>− <a href='#reject-clip-{stage}-{reason}'>" in funnel_html
        assert f"<a href='#reject-clip-{stage}-{reason}'>{reason}</a></td>" in page   # the rejects table
        assert f"<section id='reject-clip-{stage}-{reason}'>" in page
    steps = funnel(tally)
    names = [step for step, _, _ in steps]
    assert names.index("left after quality") < names.index("left after later_check") == len(names) - 2
    counts = dict((step, count) for step, count, _ in steps)
    assert counts["left after later_check"] == counts["kept"] == (clips.status == "kept").sum()
    # each step is the one before it less the rejects listed under it
    dropped = {key: int(n) for key, n in re.findall(r"data-reason='clip/([^']+)'>.*?data-dropped='(\d+)'",
                                                      funnel_html)}
    assert dropped["later_check/made_up"] == 1
    clip_steps = names[names.index("clip spans cut"):]
    for before, after in zip(clip_steps, clip_steps[1:-1]):
        stage = after.removeprefix("left after ").removesuffix(" (skipped)")
        assert counts[before] - counts[after] == sum(n for key, n in dropped.items()
                                                     if key.split("/")[0] in ({stage} | ({"probe", "worker"} if stage == "resample" else set()))), after


def test_curate_rejects_lists_new_reasons(run, tmp_path, capsys):
    """A part written with the new reasons: `curate rejects` lists each, by reason and by stage."""
    import pyarrow.compute as pc

    from manifests.dataset import current_table, new_tag, write_part

    out = tmp_path / "out"
    shutil.copytree(run, out, ignore=shutil.ignore_patterns("*.mp4", "*.npz"))
    clips = current_table(out, "clips")
    template = clips.filter(pc.equal(clips["status"], "kept")).to_pylist()[0]
    sources = current_table(out, "sources")
    source = sources.filter(pc.equal(sources["source_id"], template["source_id"])).to_pylist()
    rows = clips.filter(pc.equal(clips["source_id"], template["source_id"])).to_pylist()
    rows += [{**template, "clip_id": f"{template['clip_id']}-new{i}", "status": "rejected", "reject_stage": stage,
              "reject_reason": reason, "reject_detail": "made by the test"}
             for i, (stage, reason) in enumerate(NEW_REASONS)]
    write_part(out, new_tag(), source, rows)
    assert main(["rejects", str(out), "--format", "json"]) == 0
    listed = {(row["reject_stage"], row["reject_reason"]) for row in json.loads(capsys.readouterr().out)}
    assert set(NEW_REASONS) <= listed
    assert main(["rejects", str(out), "--reason", "not_the_speaker", "--format", "csv"]) == 0
    table = pd.read_csv(__import__("io").StringIO(capsys.readouterr().out))
    assert sorted(table.reject_stage) == ["face", "sync"] and (table.reject_detail == "made by the test").all()
    # the new checks' scores come with each row, so a user can see why without opening the manifest
    assert {"face_yaw_deg", "face_mouth_sharpness", "speech_fraction", "speaker_cue", "duplicates_of"} <= set(table.columns)
    assert (table.face_mouth_sharpness == template["face_mouth_sharpness"]).all()
