"""`curate report`: one self-contained HTML file about a run: the funnel, the rejects, the score
distributions with their thresholds, contact sheets of sample clips per reject reason and of kept clips, and
the config and versions.

The manifests are read a part at a time (`Tally`): counts and hours are summed, the scores kept as float32
(24 bytes a clip), and the sample rows chosen by a seeded hash of their ids, a fixed number per reason, so the
same clips are drawn whatever the parts. Only those samples are decoded for thumbnails. Images are embedded as
data URIs; the page has no script and loads nothing from anywhere.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from curate.config import SKIPPABLE, STAGE_ORDER, Config
from curate.results import View, open_view
from curate.words import counted
from media.frames import frames_at

SOURCE_STAGES = {"probe", "worker"}   # a clip span rejected here went with its whole source
THUMB_HEIGHT = 112
GROUP = ["status", "reject_stage", "reject_reason"]
SOURCE_COLUMNS = ["source_id", "path", "status", "reject_stage", "reject_reason", "reject_detail", "duration_s"]
CLIP_COLUMNS = ["source_id", "clip_id", "path", "status", "reject_stage", "reject_reason", "reject_detail",
                "start_s", "end_s", "fps", "duration_s", "sync_conf", "sync_offset", "quality_score",
                "face_size_px", "face_detection_rate", "speech_fraction", "face_mouth_sharpness", "face_off_pose_share",
                "face_turn_deg_s"]
SCORES = ["sync_conf", "sync_offset", "quality_score", "face_size_px", "face_detection_rate", "duration_s",
          "speech_fraction", "face_mouth_sharpness", "face_off_pose_share", "face_turn_deg_s"]


def build_report(output_dir: Path, target: Path, samples: int = 6, seed: int = 0) -> Path:
    page = render(gather(open_view(output_dir), samples=samples, seed=seed))
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.write_text(page, encoding="utf-8")
    partial.replace(target)
    return target


# -- gathering ------------------------------------------------------------------------------------

@dataclass
class Tally:
    """What the page shows, gathered from the manifests a part at a time."""
    view: View
    samples: int
    seed: int
    groups: dict[str, pd.DataFrame] = field(default_factory=dict)     # kind -> count, seconds per GROUP
    scores: dict[str, list[np.ndarray]] = field(default_factory=lambda: {c: [] for c in SCORES})
    drawn: dict[str, pd.DataFrame] = field(default_factory=dict)      # kind -> the sample rows, with `group`
    source_paths: dict[str, str] = field(default_factory=dict)        # of the sampled rows' sources

    @property
    def output_dir(self) -> Path:
        return self.view.output_dir

    @property
    def config(self) -> Config:
        return self.view.config

    @property
    def runs(self) -> pd.DataFrame:
        return self.view.runs

    def add(self, kind: str, batch: pa.Table) -> None:
        keys = pa.table({**{c: batch[c] for c in GROUP}, "seconds": pc.fill_null(batch["duration_s"], 0.0)})
        counts = keys.group_by(GROUP, use_threads=False).aggregate([("seconds", "count"), ("seconds", "sum")]) \
            .to_pandas().rename(columns={"seconds_count": "count", "seconds_sum": "seconds"}).set_index(GROUP)
        old = self.groups.get(kind)
        self.groups[kind] = counts if old is None else old.add(counts, fill_value=0)
        if kind == "clip":
            for column in SCORES:
                values = pc.drop_null(batch[column]).to_numpy(zero_copy_only=False).astype(np.float32)
                self.scores[column].append(values[np.isfinite(values)])
        if self.samples:
            self._draw(kind, batch)

    def _draw(self, kind: str, batch: pa.Table) -> None:
        """Keep, per reject reason (and for the kept clips), the rows of the smallest seeded hashes of their ids."""
        keys = pd.DataFrame({c: batch[c].to_pandas() for c in GROUP})
        group = keys.status.where(keys.status != "rejected",
                                  keys.status + "/" + keys.reject_stage.fillna("") + "/" + keys.reject_reason.fillna(""))
        wanted = (keys.status == "rejected") | ((keys.status == "kept") & (kind == "clip"))
        ids = batch["clip_id" if kind == "clip" else "source_id"].to_pandas()
        hashed = pd.DataFrame({"group": group, "hash": pd.util.hash_array(ids.to_numpy(dtype=object),
                                                                           hash_key=f"{self.seed:016d}"[-16:])})
        hashed = hashed[wanted.to_numpy()]
        if hashed.empty:
            return
        limit = 2 * self.samples if kind == "clip" else self.samples
        best = hashed.sort_values("hash", kind="stable").groupby("group", sort=False).head(limit)
        rows = batch.take(pa.array(best.index.to_numpy())).to_pandas()
        rows["group"], rows["hash"] = best.group.to_numpy(), best.hash.to_numpy()
        held = self.drawn.get(kind)
        rows = rows if held is None else pd.concat([held, rows], ignore_index=True)
        self.drawn[kind] = rows.sort_values("hash", kind="stable").groupby("group", sort=False).head(limit) \
            .reset_index(drop=True)

    def counts(self, kind: str) -> pd.DataFrame:
        table = self.groups.get(kind)
        if table is None:
            return pd.DataFrame({c: pd.Series(dtype=object) for c in GROUP} | {"count": pd.Series(dtype=int),
                                                                              "seconds": pd.Series(dtype=float)})
        return table.reset_index().astype({"count": int})

    def values(self, column: str) -> np.ndarray:
        return np.concatenate(self.scores[column]).astype(float) if self.scores[column] else np.zeros(0)

    def sample(self, kind: str, group: str) -> pd.DataFrame:
        drawn = self.drawn.get(kind)
        return drawn[drawn.group == group] if drawn is not None else pd.DataFrame()


def gather(view: View, samples: int = 6, seed: int = 0, sources: Iterable[pa.Table] | None = None,
           clips: Iterable[pa.Table] | None = None) -> Tally:
    """The tally of `view` (or of the `sources` and `clips` tables given instead, as a test does)."""
    tally = Tally(view, samples, seed)
    for batch in sources if sources is not None else view.batches("sources", SOURCE_COLUMNS):
        tally.add("source", batch)
    for batch in clips if clips is not None else view.batches("clips", CLIP_COLUMNS):
        tally.add("clip", batch)
    wanted = set()
    for drawn in tally.drawn.values():
        wanted.update(drawn.source_id)
    if wanted:
        value_set = pa.array(sorted(wanted), pa.string())
        for batch in sources if sources is not None else view.batches("sources", ["source_id", "path"]):
            batch = batch.filter(pc.is_in(batch["source_id"], value_set=value_set))
            tally.source_paths.update(zip(batch["source_id"].to_pylist(), batch["path"].to_pylist()))
    return tally


# -- numbers --------------------------------------------------------------------------------------

def funnel(tally: Tally) -> list[tuple[str, int, float]]:
    """(step, count, hours): sources found and readable, the clip spans, those left after each stage that drops
    clips (in run order), and the kept clips."""
    sources, clips = tally.counts("source"), tally.counts("clip")
    ok = sources[sources.status == "ok"]
    rows = [("sources found", int(sources["count"].sum()), sources.seconds.sum() / 3600),
            ("sources readable", int(ok["count"].sum()), ok.seconds.sum() / 3600),
            ("clip spans cut", int(clips["count"].sum()), clips.seconds.sum() / 3600)]
    gone = set(SOURCE_STAGES)
    for stage in STAGE_ORDER[STAGE_ORDER.index("resample"):]:
        gone.add(stage)
        if stage == "shots":
            continue  # it cuts, never drops
        left = clips[~clips.reject_stage.isin(gone)]
        skipped = " (skipped)" if stage in SKIPPABLE and tally.config.skipped(stage) else ""
        rows.append((f"left after {stage}{skipped}", int(left["count"].sum()), left.seconds.sum() / 3600))
    kept = clips[clips.status == "kept"]
    rows.append(("kept", int(kept["count"].sum()), kept.seconds.sum() / 3600))
    return rows


def reject_counts(tally: Tally) -> pd.DataFrame:
    """Count and share per (kind, stage, reason); shares are of the sources found or of the clip spans."""
    parts = []
    for kind in ("source", "clip"):
        table = tally.counts(kind)
        rejected = table[table.status == "rejected"]
        counts = rejected.groupby(["reject_stage", "reject_reason"], dropna=False) \
            .agg(count=("count", "sum"), seconds=("seconds", "sum")).reset_index()
        counts.insert(0, "kind", kind)
        counts["share"] = counts["count"] / max(1, int(table["count"].sum()))
        counts["hours"] = counts.pop("seconds") / 3600
        parts.append(counts)
    return pd.concat(parts, ignore_index=True).sort_values(["kind", "count"], ascending=[False, False])


# -- plots ----------------------------------------------------------------------------------------

def distributions(tally: Tally) -> list[tuple[str, str | None]]:
    """(title, PNG data URI or None when there are no values) for each score, threshold lines drawn."""
    plt = _pyplot()
    out = []
    for title, figure in figures(tally):
        if figure is None:
            out.append((title, None))
            continue
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        plt.close(figure)
        out.append((title, "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()))
    return out


def figures(tally: Tally) -> list[tuple[str, object]]:
    """(title, matplotlib figure or None when there are no values) for each score; the caller closes them."""
    config = tally.config.stages
    positive = (0.0, np.inf)
    specs = [
        ("SyncNet confidence (LSE-C)", tally.values("sync_conf"), [config.sync.min_confidence], "keep at or above",
         None),
        ("|A/V offset| (frames)", np.abs(tally.values("sync_offset")), [config.sync.max_offset], "keep at or below",
         positive),
        ("HyperIQA score", tally.values("quality_score"), [config.quality.min_score], "keep at or above", None),
        ("mouth sharpness (Laplacian variance, median)", tally.values("face_mouth_sharpness"),
         [config.face.min_mouth_sharpness], "keep at or above", positive),
        ("face width (median px)", tally.values("face_size_px"), [config.face.min_face], "keep at or above",
         positive),
        ("face detection rate", tally.values("face_detection_rate"), [config.face.min_detection_rate],
         "keep at or above", (0.0, 1.0)),
        ("share of frames past the yaw / pitch limits", tally.values("face_off_pose_share"),
         [config.face.max_off_pose_share], "keep at or below", (0.0, 1.0)),
        ("head turn speed (deg/s, 95th percentile)", tally.values("face_turn_deg_s"), [config.face.max_turn_deg_s],
         "keep at or below", positive),
        ("speech fraction (Silero VAD)", tally.values("speech_fraction"), [config.speech.min_fraction],
         "keep at or above", (0.0, 1.0)),
        ("clip duration (s)", tally.values("duration_s"), [config.clips.min_seconds, config.clips.max_seconds],
         "keep between", positive),
    ]
    return [(title, histogram(values, thresholds, title, rule, bounds) if len(values) else None)
            for title, values, thresholds, rule, bounds in specs]


def x_range(values: np.ndarray, thresholds: list[float], bounds=None) -> tuple[tuple[float, float], list[float]]:
    """The x range to draw and the thresholds that lie off it. The range is the data's with a margin, widened to
    each threshold within one data width of the data; one further off would squeeze the bars to slivers, so it
    is left out and marked at the edge instead. `bounds` (lowest, highest possible value) clip the margin."""
    low, high = float(values.min()), float(values.max())
    width = high - low or abs(high) * 0.1 or 1.0  # a single value: a tenth of it (1 for a 0)
    near = [t for t in thresholds if low - width <= t <= high + width]
    left, right = min([low, *near]), max([high, *near])
    margin = 0.05 * (right - left) if right > left else width / 2
    left, right = left - margin, right + margin
    if bounds is not None:
        left, right = max(left, bounds[0]), min(right, bounds[1])
    return (left, right), [t for t in thresholds if t not in near]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    from matplotlib import pyplot

    return pyplot


def histogram(values: np.ndarray, thresholds: list[float], title: str, rule: str, bounds=None):
    plt = _pyplot()
    (left, right), off = x_range(values, thresholds, bounds)
    figure, axes = plt.subplots(figsize=(4.2, 2.4), dpi=80)
    # bins over the data only; one distinct value gets bins over the drawn range (matplotlib's own is +-0.5)
    span = (values.min(), values.max()) if values.max() > values.min() else (left, right)
    axes.hist(values, bins=min(50, max(5, int(np.sqrt(len(values))))), range=span, color="#4a78b0")
    axes.set_xlim(left, right)
    for threshold in thresholds:
        if threshold not in off:
            axes.axvline(threshold, color="#c0392b", linestyle="--", linewidth=1.5)
    for below in (True, False):  # those off the range: drawn at the edge they lie beyond, with their values
        side = [f"{t:g}" for t in off if (t < left) == below]
        if not side:
            continue
        edge = axes.spines["left" if below else "right"]
        edge.set(color="#c0392b", linestyle="--", linewidth=2)
        axes.set_ylim(top=axes.get_ylim()[1] * 1.2)  # room for the label over the bars
        label = f"threshold {', '.join(side)} (off the range)"
        axes.text(0.02 if below else 0.98, 0.95, f"← {label}" if below else f"{label} →", transform=axes.transAxes,
                  ha="left" if below else "right", va="top", fontsize=7, color="#c0392b",
                  bbox={"facecolor": "white", "alpha": 0.8, "linewidth": 0})
    axes.set_title(f"{title}  (n = {len(values)})", fontsize=9)
    axes.set_xlabel(f"red: threshold ({rule} {', '.join(f'{t:g}' for t in thresholds)})", fontsize=8)
    axes.tick_params(labelsize=7)
    figure.tight_layout()
    return figure


# -- thumbnails -----------------------------------------------------------------------------------

def _thumb(rgb: np.ndarray) -> str:
    height, width = rgb.shape[:2]
    small = cv2.resize(rgb, (max(1, round(width * THUMB_HEIGHT / height)), THUMB_HEIGHT), interpolation=cv2.INTER_AREA)
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
    if not ok:
        raise ValueError("cannot encode a thumbnail")
    return "data:image/jpeg;base64," + base64.b64encode(jpeg.tobytes()).decode()


def clip_frames(path: Path) -> list[np.ndarray]:
    """First, middle and last frame of a written clip."""
    from media.frames import key_frames

    return list(key_frames(str(path)))


def _pictures(tally: Tally, row: pd.Series, kind: str) -> tuple[list[str], str]:
    """Thumbnails for a sample row and what they show; never raises (a broken source has none)."""
    try:
        if kind == "source" and not os.path.isfile(tally.source_paths[row["source_id"]]):
            return [], "not a regular file"  # a pipe would block whoever opens it; a link loop has no frames
        if kind == "clip" and isinstance(row.get("path"), str) and (tally.output_dir / row["path"]).is_file():
            frames, what = clip_frames(tally.output_dir / row["path"]), "clip as written"
        else:
            if kind == "clip":
                last = max(row["start_s"], row["end_s"] - 1.0 / max(1, row["fps"]))
                times, what = [row["start_s"], (row["start_s"] + row["end_s"]) / 2, last], "source frames"
            else:
                times, what = [0.0], "the source's first frame"
            frames = frames_at(tally.source_paths[row["source_id"]], times)
        if not frames:
            return [], "no picture could be decoded"
        return [_thumb(frame) for frame in frames], what
    except Exception as exc:  # noqa: BLE001 - a sample without pictures still gets its caption
        return [], f"no picture: {type(exc).__name__}: {str(exc)[:200]}"


# -- the page -------------------------------------------------------------------------------------

_STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px} h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ccc}
h3{font-size:15px;margin-bottom:4px}
table{border-collapse:collapse;font-size:13px} td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.bar{background:#4a78b0;height:10px}
.plots{display:flex;flex-wrap:wrap;gap:12px} .plots figure{margin:0}
.sheet{display:flex;flex-wrap:wrap;gap:12px}
.sample{border:1px solid #ddd;padding:6px;font-size:11px;max-width:420px}
.sample img{height:112px;margin-right:2px}
.caption{word-break:break-all} pre{font-size:12px;background:#f6f6f6;padding:8px;overflow:auto}
"""


def _e(value) -> str:
    return html.escape("" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value))


def _fmt(value, digits: int = 2) -> str:
    return f"{float(value):.{digits}f}"


def section_id(kind: str, stage: str, reason: str) -> str:
    return f"reject-{kind}-{stage}-{reason}"


def render(tally: Tally) -> str:
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             "<link rel='icon' href='data:,'>",
             f"<title>curate report: {_e(tally.output_dir.name)}</title><style>{_STYLE}</style></head><body>",
             f"<h1>Curation report: {_e(tally.output_dir)}</h1>"]
    parts += _funnel_html(tally)
    counts = reject_counts(tally)
    parts += _rejects_html(counts)
    parts.append("<h2 id='distributions'>Distributions</h2><div class='plots'>")
    for title, uri in distributions(tally):
        parts.append(f"<figure><img alt='{_e(title)}' src='{uri}'></figure>" if uri
                     else f"<figure><p>{_e(title)}: no values in this run</p></figure>")
    parts.append("</div>")
    if not counts.empty:  # with no rejects the rejects section says so; no empty heading here
        parts.append("<h2 id='samples'>Samples per reject reason</h2>")
    for row in counts.itertuples():
        chosen = tally.sample(row.kind, f"rejected/{row.reject_stage}/{row.reject_reason}")
        parts += _sheet(tally, chosen, row.kind, section_id(row.kind, row.reject_stage, row.reject_reason),
                        f"{row.reject_stage} / {row.reject_reason} ({counted(row.count, row.kind)})")
    kept = funnel(tally)[-1][1]
    parts.append("<h2 id='kept'>Kept clips</h2>")
    parts += _sheet(tally, tally.sample("clip", "kept"), "clip", "kept-sample",
                    f"a sample of the {counted(kept, 'kept clip')}")
    parts += _run_html(tally)
    parts.append("</body></html>")
    return "\n".join(parts)


def _funnel_html(tally: Tally) -> list[str]:
    rows = funnel(tally)
    top = max(1, rows[2][1])
    out = ["<h2 id='funnel'>Funnel</h2><table id='funnel-table'><tr><th>step</th><th>count</th><th>hours</th><th></th></tr>"]
    for step, count, hours in rows:
        width = 0 if step.startswith("sources") else round(300 * count / top)
        out.append(f"<tr data-step='{_e(step)}'><td>{_e(step)}</td><td class='num' data-count='{count}'>{count}</td>"
                   f"<td class='num'>{hours:.3f}</td><td><div class='bar' style='width:{width}px'></div></td></tr>")
    out.append("</table>")
    return out


def _rejects_html(counts: pd.DataFrame) -> list[str]:
    out = ["<h2 id='rejects'>Rejects by stage and reason</h2>"]
    if counts.empty:
        return out + ["<p id='no-rejects'>Nothing was rejected: every source found was readable and every clip span "
                      "was kept.</p>"]
    out.append("<table id='rejects-table'><tr><th>kind</th><th>stage</th>"
               "<th>reason</th><th>count</th><th>share</th><th>hours</th></tr>")
    for row in counts.itertuples():
        anchor = section_id(row.kind, row.reject_stage, row.reject_reason)
        out.append(f"<tr><td>{_e(row.kind)}</td><td>{_e(row.reject_stage)}</td>"
                   f"<td><a href='#{_e(anchor)}'>{_e(row.reject_reason)}</a></td>"
                   f"<td class='num' data-count='{row.count}'>{row.count}</td><td class='num'>{row.share:.1%}</td>"
                   f"<td class='num'>{row.hours:.3f}</td></tr>")
    out.append("</table>")
    return out


def _sheet(tally: Tally, chosen: pd.DataFrame, kind: str, anchor: str, title: str) -> list[str]:
    out = [f"<section id='{_e(anchor)}'><h3>{_e(title)}</h3><div class='sheet'>"]
    for _, row in chosen.iterrows():
        pictures, what = _pictures(tally, row, kind)
        if kind == "clip":
            scores = [(name, row.get(column), digits) for name, column, digits in (
                ("sync conf", "sync_conf", 2), ("offset", "sync_offset", 0), ("quality", "quality_score", 1),
                ("face px", "face_size_px", 0), ("detected", "face_detection_rate", 2),
                ("speech", "speech_fraction", 2), ("mouth sharpness", "face_mouth_sharpness", 1),
                ("off pose", "face_off_pose_share", 2))]
            label = " · ".join([f"{row['clip_id']}", f"{row['start_s']:.2f}–{row['end_s']:.2f} s"]
                               + [f"{name} {_fmt(value, digits)}" for name, value, digits in scores if pd.notna(value)])
        else:
            label = row["source_id"]
        source_path = tally.source_paths.get(row["source_id"])
        detail = row.get("reject_detail")
        out.append("<div class='sample'>" + "".join(f"<img alt='frame' src='{uri}'>" for uri in pictures)
                   + f"<div class='caption'><b>{_e(label)}</b><br>source: {_e(source_path)}<br>{_e(what)}"
                   + (f"<br>{_e(detail)}" if isinstance(detail, str) else "") + "</div></div>")
    if len(chosen) == 0:
        out.append("<p>none</p>")
    out.append("</div></section>")
    return out


def _run_html(tally: Tally) -> list[str]:
    out = ["<h2 id='run'>Runs, config and versions</h2><table><tr><th>started</th><th>wall s</th><th>command</th>"
           "<th>processed</th><th>kept</th></tr>"]
    for row in tally.runs.itertuples():
        out.append(f"<tr><td>{_e(row.started_at)}</td><td class='num'>{row.wall_s:.1f}</td><td>{_e(row.command)}</td>"
                   f"<td class='num'>{row.sources_processed}</td><td class='num'>{row.clips_kept}</td></tr>")
    out.append("</table>")
    if not tally.runs.empty:
        last = tally.runs.iloc[-1]
        config = json.dumps(json.loads(last["config_json"]), indent=2)
        versions = dict(last["versions"]) if last["versions"] is not None else {}
        out.append(f"<h3>config of the newest run</h3><pre>{_e(config)}</pre><h3>versions</h3><table>")
        out += [f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in sorted(versions.items())]
        out.append("</table>")
    return out
