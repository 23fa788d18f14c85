"""`curate report`: one self-contained HTML file about a run: the funnel with what each stage dropped and
why, the rejects, the scores of kept and dropped clips with their thresholds, contact sheets of sample clips
per reject reason and of kept clips, and the config and versions.

The manifests are read a part at a time (`Tally`): counts and hours are summed, the scores kept as float32
apart for kept and dropped clips (4 bytes a score a clip, 56 a clip), and the sample rows chosen by a seeded
hash of their ids, a fixed number per reason, so the same clips are drawn whatever the parts. Only those
samples are decoded for thumbnails. Images are embedded as data URIs; the page has no script and loads
nothing from anywhere.
"""

from __future__ import annotations

import base64
import html
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
from curate.report_plots import GROUPS, distributions
from curate.results import View, open_view
from curate.words import counted
from media.frames import frames_at

SOURCE_STAGES = {"probe", "worker"}   # a clip span rejected here went with its whole source
THUMB_HEIGHT = 112
GROUP = ["status", "reject_stage", "reject_reason"]
SOURCE_COLUMNS = ["source_id", "path", "status", "reject_stage", "reject_reason", "reject_detail", "duration_s"]
SCORES = ["sync_conf", "sync_offset", "quality_score", "face_size_px", "face_detection_rate", "duration_s",
          "speech_fraction", "face_mouth_sharpness", "face_yaw_deg", "face_pitch_deg", "face_off_pose_share",
          "face_mouth_outside_share", "face_turn_deg_s", "face_move_widths_s"]
CLIP_COLUMNS = ["source_id", "clip_id", "path", "status", "reject_stage", "reject_reason", "reject_detail",
                "start_s", "end_s", "fps", *SCORES]
SIDES = ("kept", "dropped", "other")   # a clip's status kept, rejected (at any stage), or anything else


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
    # score -> side -> float32 arrays of the finite values, a part at a time; clips per side
    scores: dict[str, dict[str, list[np.ndarray]]] = field(
        default_factory=lambda: {c: {side: [] for side in SIDES} for c in SCORES})
    clips_per_side: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SIDES, 0))
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
            status = batch["status"].to_numpy(zero_copy_only=False)
            kept, dropped = status == "kept", status == "rejected"
            masks = {"kept": kept, "dropped": dropped, "other": ~(kept | dropped)}
            for side, mask in masks.items():
                self.clips_per_side[side] += int(mask.sum())
            for column in SCORES:
                values = pc.fill_null(pc.cast(batch[column], pa.float32()), np.nan).to_numpy(zero_copy_only=False)
                finite = np.isfinite(values)
                for side, mask in masks.items():
                    self.scores[column][side].append(values[mask & finite])
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

    def values(self, column: str, side: str | None = None) -> np.ndarray:
        """The finite values of a score: of the kept or the dropped clips, or with no side of every clip."""
        arrays = [a for s in ([side] if side else SIDES) for a in self.scores[column][s]]
        return np.concatenate(arrays).astype(float) if arrays else np.zeros(0)

    def missing(self, column: str, side: str) -> int:
        """The clips of a side without a value of `column` (a clip dropped before the stage that measures it)."""
        return self.clips_per_side[side] - sum(len(a) for a in self.scores[column][side])

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
    return [(step, count, hours) for step, count, hours, _ in funnel_steps(tally)]


def funnel_steps(tally: Tally) -> list[tuple[str, int, float, pd.DataFrame]]:
    """The funnel's steps, each with the rejects it counts off (kind, reject_stage, reject_reason, count, hours),
    whatever the reasons. A clip stage the run order does not name (a stage newer than this report) gets its own
    step after the known ones, so no drop goes uncounted before 'kept'."""
    sources, clips = tally.counts("source"), tally.counts("clip")
    ok = sources[sources.status == "ok"]
    none = _dropped(clips, "clip", set())
    rows = [("sources found", int(sources["count"].sum()), sources.seconds.sum() / 3600, none),
            ("sources readable", int(ok["count"].sum()), ok.seconds.sum() / 3600,
             _dropped(sources, "source", set(sources.reject_stage.dropna()))),
            ("clip spans cut", int(clips["count"].sum()), clips.seconds.sum() / 3600, none)]
    known = {*SOURCE_STAGES, *STAGE_ORDER}
    later = sorted(set(clips.reject_stage.dropna()) - known)
    gone = set(SOURCE_STAGES)
    for stage in [*STAGE_ORDER[STAGE_ORDER.index("resample"):], *later]:
        new = {stage} | (gone if stage == "resample" else set())   # the first step also counts the sources' drops
        gone.add(stage)
        if stage == "shots":
            continue  # it cuts, never drops
        left = clips[~clips.reject_stage.isin(gone)]
        skipped = " (skipped)" if stage in SKIPPABLE and tally.config.skipped(stage) else ""
        rows.append((f"left after {stage}{skipped}", int(left["count"].sum()), left.seconds.sum() / 3600,
                     _dropped(clips, "clip", new)))
    kept = clips[clips.status == "kept"]
    rows.append(("kept", int(kept["count"].sum()), kept.seconds.sum() / 3600, none))
    return rows


def _dropped(table: pd.DataFrame, kind: str, stages: set[str]) -> pd.DataFrame:
    """The rejects of `table` (counts per GROUP) at `stages`, one row per stage and reason, the most first."""
    rejected = table[(table.status == "rejected") & table.reject_stage.isin(stages)]
    out = rejected.groupby(["reject_stage", "reject_reason"], dropna=False) \
        .agg(count=("count", "sum"), seconds=("seconds", "sum")).reset_index()
    out.insert(0, "kind", kind)
    return out.sort_values(["count", "reject_stage", "reject_reason"], ascending=[False, True, True],
                           kind="stable").reset_index(drop=True)


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
tr.dropped td{color:#8a4b0f;font-size:12px;border-top:none} tr.dropped td:first-child{padding-left:24px}
.plots{display:flex;flex-wrap:wrap;gap:12px} .plots figure{margin:0;max-width:336px}
figcaption,.no-values{font-size:11px;color:#444}
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
    parts += _distributions_html(tally)
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


def _distributions_html(tally: Tally) -> list[str]:
    """The kept and dropped clips' scores: the new checks' section, then the other scores."""
    kept, dropped = tally.clips_per_side["kept"], tally.clips_per_side["dropped"]
    out = ["<h2 id='kept-dropped'>Kept and dropped clips, per check</h2>",
           f"<p>Each score of the {counted(kept, 'kept clip')} (blue) and the {counted(dropped, 'dropped clip')} "
           "(orange: rejected at any stage) on the same bins, the thresholds in red. A clip dropped before the "
           "stage that measures a score (no face found, say) has no value of it: each plot says how many.</p>"]
    current = None
    for check, uri in distributions(tally):
        if check.group != current:
            if current is not None:
                out.append("</div>")
            current = check.group
            heading = "h2" if check.group == "other" else "h3"
            anchor = "distributions" if check.group == "other" else f"kept-dropped-{check.group}"
            out.append(f"<{heading} id='{anchor}'>{_e(GROUPS[check.group])}</{heading}><div class='plots'>")
        numbers = {side: (len(check.values(tally, side)), tally.missing(check.column, side))
                   for side in ("kept", "dropped")}
        attributes = " ".join(f"data-{side}='{n}' data-{side}-missing='{m}'" for side, (n, m) in numbers.items())
        missing = [f"{m} {side}" for side, (_, m) in numbers.items() if m]
        rule = f"threshold: {check.rule} {', '.join(f'{t:g}' for t in check.thresholds)}"
        notes = [check.note] if check.note else []
        if check.stage in SKIPPABLE and tally.config.skipped(check.stage):
            notes.append(f"the {check.stage} stage did not run in the newest run")
        caption = " · ".join([f"kept {numbers['kept'][0]}, dropped {numbers['dropped'][0]}",
                              *([f"no value: {', '.join(missing)}"] if missing else []), rule, *notes])
        body = (f"<img alt='{_e(check.title)}' src='{uri}'>" if uri
                else f"<p class='no-values'>{_e(check.title)}: no clip has a value in this run</p>")
        out.append(f"<figure data-score='{_e(check.column)}' {attributes}>{body}"
                   f"<figcaption>{_e(caption)}</figcaption></figure>")
    out.append("</div>")
    return out


def _funnel_html(tally: Tally) -> list[str]:
    rows = funnel_steps(tally)
    top = max(1, rows[2][1])
    out = ["<h2 id='funnel'>Funnel</h2><table id='funnel-table'><tr><th>step</th><th>count</th><th>hours</th><th></th></tr>"]
    for step, count, hours, dropped in rows:
        width = 0 if step.startswith("sources") else round(300 * count / top)
        out.append(f"<tr data-step='{_e(step)}'><td>{_e(step)}</td><td class='num' data-count='{count}'>{count}</td>"
                   f"<td class='num'>{hours:.3f}</td><td><div class='bar' style='width:{width}px'></div></td></tr>")
        for row in dropped.itertuples():  # what this step counted off, reason by reason
            anchor = section_id(row.kind, row.reject_stage, row.reject_reason)
            reason = f"{row.kind}/{row.reject_stage}/{row.reject_reason}"
            out.append(f"<tr class='dropped' data-reason='{_e(reason)}'>"
                       f"<td>− <a href='#{_e(anchor)}'>{_e(row.reject_stage)} / {_e(row.reject_reason)}</a></td>"
                       f"<td class='num' data-dropped='{row.count}'>−{row.count}</td>"
                       f"<td class='num'>{row.seconds / 3600:.3f}</td><td></td></tr>")
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
