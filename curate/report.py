"""`curate report`: one self-contained HTML file about a run: the funnel, the rejects, the score
distributions with their thresholds, contact sheets of sample clips per reject reason and of kept clips, and
the config and versions.

Everything is aggregated with pandas and only a fixed number of clips per reason is decoded for thumbnails,
so the time and size of the report do not grow with the number of clips beyond the aggregation itself.
Images are embedded as data URIs; the page has no script and loads nothing from anywhere.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from curate.config import SKIPPABLE, STAGE_ORDER
from curate.results import Results, load_results
from curate.words import counted
from media.frames import frames_at

SOURCE_STAGES = {"probe", "worker"}   # a clip span rejected here went with its whole source
THUMB_HEIGHT = 112


def build_report(output_dir: Path, target: Path, samples: int = 6, seed: int = 0) -> Path:
    results = load_results(output_dir)
    page = render(results, samples=samples, seed=seed)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.write_text(page, encoding="utf-8")
    partial.replace(target)
    return target


# -- numbers --------------------------------------------------------------------------------------

def funnel(results: Results) -> list[tuple[str, int, float]]:
    """(step, count, hours): sources found and readable, the clip spans, those left after each stage that drops
    clips (in run order), and the kept clips."""
    sources, clips = results.sources, results.clips
    ok = sources.status == "ok"
    rows = [("sources found", len(sources), _hours(sources.duration_s)),
            ("sources readable", int(ok.sum()), _hours(sources.duration_s[ok])),
            ("clip spans cut", len(clips), _hours(clips.duration_s))]
    gone = set(SOURCE_STAGES)
    for stage in STAGE_ORDER[STAGE_ORDER.index("resample"):]:
        gone.add(stage)
        if stage == "shots":
            continue  # it cuts, never drops
        left = clips[~clips.reject_stage.isin(gone)]
        skipped = " (skipped)" if stage in SKIPPABLE and results.config.skipped(stage) else ""
        rows.append((f"left after {stage}{skipped}", len(left), _hours(left.duration_s)))
    kept = clips[clips.status == "kept"]
    rows.append(("kept", len(kept), _hours(kept.duration_s)))
    return rows


def reject_counts(results: Results) -> pd.DataFrame:
    """Count and share per (kind, stage, reason); shares are of the sources found or of the clip spans."""
    parts = []
    for kind, table in (("source", results.sources), ("clip", results.clips)):
        rejected = table[table.status == "rejected"]
        counts = rejected.groupby(["reject_stage", "reject_reason"]).size().rename("count").reset_index()
        counts.insert(0, "kind", kind)
        counts["share"] = counts["count"] / max(1, len(table))
        counts["hours"] = [_hours(rejected.duration_s[(rejected.reject_stage == s) & (rejected.reject_reason == r)])
                           for s, r in zip(counts.reject_stage, counts.reject_reason)]
        parts.append(counts)
    return pd.concat(parts, ignore_index=True).sort_values(["kind", "count"], ascending=[False, False])


def _hours(seconds: pd.Series) -> float:
    return float(seconds.fillna(0).sum()) / 3600


# -- plots ----------------------------------------------------------------------------------------

def distributions(results: Results) -> list[tuple[str, str | None]]:
    """(title, PNG data URI or None when there are no values) for each score, threshold lines drawn."""
    plt = _pyplot()
    out = []
    for title, figure in figures(results):
        if figure is None:
            out.append((title, None))
            continue
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        plt.close(figure)
        out.append((title, "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()))
    return out


def figures(results: Results) -> list[tuple[str, object]]:
    """(title, matplotlib figure or None when there are no values) for each score; the caller closes them."""
    config = results.config.stages
    clips = results.clips
    positive = (0.0, np.inf)
    specs = [
        ("SyncNet confidence (LSE-C)", clips.sync_conf, [config.sync.min_confidence], "keep at or above", None),
        ("|A/V offset| (frames)", clips.sync_offset.abs(), [config.sync.max_offset], "keep at or below", positive),
        ("HyperIQA score", clips.quality_score, [config.quality.min_score], "keep at or above", None),
        ("face width (median px)", clips.face_size_px, [config.face.min_face_px], "keep at or above", positive),
        ("face detection rate", clips.face_detection_rate, [config.face.min_detection_rate], "keep at or above",
         (0.0, 1.0)),
        ("clip duration (s)", clips.duration_s, [config.clips.min_seconds, config.clips.max_seconds], "keep between",
         positive),
    ]
    out = []
    for title, values, thresholds, rule, bounds in specs:
        values = pd.to_numeric(values, errors="coerce").dropna().to_numpy(dtype=float)
        out.append((title, histogram(values, thresholds, title, rule, bounds) if len(values) else None))
    return out


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


def _pictures(results: Results, row: pd.Series, kind: str) -> tuple[list[str], str]:
    """Thumbnails for a sample row and what they show; never raises (a broken source has none)."""
    try:
        if kind == "source" and not os.path.isfile(results.source_paths[row["source_id"]]):
            return [], "not a regular file"  # a pipe would block whoever opens it; a link loop has no frames
        if kind == "clip" and isinstance(row.get("path"), str) and (results.output_dir / row["path"]).is_file():
            frames, what = clip_frames(results.output_dir / row["path"]), "clip as written"
        else:
            if kind == "clip":
                last = max(row["start_s"], row["end_s"] - 1.0 / max(1, row["fps"]))
                times, what = [row["start_s"], (row["start_s"] + row["end_s"]) / 2, last], "source frames"
            else:
                times, what = [0.0], "the source's first frame"
            frames = frames_at(results.source_paths[row["source_id"]], times)
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


def render(results: Results, samples: int = 6, seed: int = 0) -> str:
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             "<link rel='icon' href='data:,'>",
             f"<title>curate report: {_e(results.output_dir.name)}</title><style>{_STYLE}</style></head><body>",
             f"<h1>Curation report: {_e(results.output_dir)}</h1>"]
    parts += _funnel_html(results)
    counts = reject_counts(results)
    parts += _rejects_html(counts)
    parts.append("<h2 id='distributions'>Distributions</h2><div class='plots'>")
    for title, uri in distributions(results):
        parts.append(f"<figure><img alt='{_e(title)}' src='{uri}'></figure>" if uri
                     else f"<figure><p>{_e(title)}: no values in this run</p></figure>")
    parts.append("</div>")
    if not counts.empty:  # with no rejects the rejects section says so; no empty heading here
        parts.append("<h2 id='samples'>Samples per reject reason</h2>")
    for row in counts.itertuples():
        table = results.sources if row.kind == "source" else results.clips
        chosen = table[(table.status == "rejected") & (table.reject_stage == row.reject_stage)
                       & (table.reject_reason == row.reject_reason)]
        parts += _sheet(results, chosen, row.kind, samples, seed, section_id(row.kind, row.reject_stage, row.reject_reason),
                        f"{row.reject_stage} / {row.reject_reason} ({counted(row.count, row.kind)})")
    kept = results.clips[results.clips.status == "kept"]
    parts.append("<h2 id='kept'>Kept clips</h2>")
    parts += _sheet(results, kept, "clip", 2 * samples, seed, "kept-sample",
                    f"a sample of the {counted(len(kept), 'kept clip')}")
    parts += _run_html(results)
    parts.append("</body></html>")
    return "\n".join(parts)


def _funnel_html(results: Results) -> list[str]:
    rows = funnel(results)
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


def _sheet(results: Results, chosen: pd.DataFrame, kind: str, samples: int, seed: int, anchor: str,
           title: str) -> list[str]:
    out = [f"<section id='{_e(anchor)}'><h3>{_e(title)}</h3><div class='sheet'>"]
    sample = chosen.sample(n=min(samples, len(chosen)), random_state=seed) if len(chosen) else chosen
    for _, row in sample.iterrows():
        pictures, what = _pictures(results, row, kind)
        if kind == "clip":
            scores = [(name, row.get(column), digits) for name, column, digits in (
                ("sync conf", "sync_conf", 2), ("offset", "sync_offset", 0), ("quality", "quality_score", 1),
                ("face px", "face_size_px", 0), ("detected", "face_detection_rate", 2))]
            label = " · ".join([f"{row['clip_id']}", f"{row['start_s']:.2f}–{row['end_s']:.2f} s"]
                               + [f"{name} {_fmt(value, digits)}" for name, value, digits in scores if pd.notna(value)])
        else:
            label = row["source_id"]
        source_path = results.source_paths.get(row["source_id"])
        detail = row.get("reject_detail")
        out.append("<div class='sample'>" + "".join(f"<img alt='frame' src='{uri}'>" for uri in pictures)
                   + f"<div class='caption'><b>{_e(label)}</b><br>source: {_e(source_path)}<br>{_e(what)}"
                   + (f"<br>{_e(detail)}" if isinstance(detail, str) else "") + "</div></div>")
    if len(chosen) == 0:
        out.append("<p>none</p>")
    out.append("</div></section>")
    return out


def _run_html(results: Results) -> list[str]:
    out = ["<h2 id='run'>Runs, config and versions</h2><table><tr><th>started</th><th>wall s</th><th>command</th>"
           "<th>processed</th><th>kept</th></tr>"]
    for row in results.runs.itertuples():
        out.append(f"<tr><td>{_e(row.started_at)}</td><td class='num'>{row.wall_s:.1f}</td><td>{_e(row.command)}</td>"
                   f"<td class='num'>{row.sources_processed}</td><td class='num'>{row.clips_kept}</td></tr>")
    out.append("</table>")
    if not results.runs.empty:
        last = results.runs.iloc[-1]
        config = json.dumps(json.loads(last["config_json"]), indent=2)
        versions = dict(last["versions"]) if last["versions"] is not None else {}
        out.append(f"<h3>config of the newest run</h3><pre>{_e(config)}</pre><h3>versions</h3><table>")
        out += [f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in sorted(versions.items())]
        out.append("</table>")
    return out
