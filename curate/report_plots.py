"""The report's plots: every score of the kept and the dropped clips as overlaid histograms on the same
bins, the run's thresholds drawn in red, grouped as the page shows them (`checks`). They read a `Tally` of
`curate.report` (its `values`, `missing` and `config`), a part of the manifests at a time already summed."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np

from curate.config import Config


@dataclass(frozen=True)
class Check:
    """One score's plot: where it goes on the page, its title, its thresholds and how they read."""
    group: str
    stage: str   # the stage that measures it
    title: str
    column: str
    thresholds: tuple[float, ...]
    rule: str
    bounds: tuple[float, float] | None = None
    note: str = ""

    def values(self, tally, side: str | None = None) -> np.ndarray:
        values = tally.values(self.column, side)
        return np.abs(values) if self.column == "sync_offset" else values


# the section's groups, in page order; "other" is the section after it
GROUPS = {"pose": "Head pose and framing", "size": "Face size", "speech": "Speech",
          "sharpness": "Mouth sharpness beside HyperIQA", "other": "Other scores"}


def checks(config: Config) -> list[Check]:
    """Every plotted score, in page order, with the run's thresholds."""
    face, stages = config.stages.face, config.stages
    positive, share = (0.0, np.inf), (0.0, 1.0)
    limit = f"a clip is dropped (off_pose) when over {face.max_off_pose_share:g} of its frames pass a limit"
    return [
        Check("pose", "face", "head yaw (median |yaw|, deg)", "face_yaw_deg", (face.max_yaw_deg,),
              "per-frame limit", (0.0, 90.0), limit),
        Check("pose", "face", "head pitch (median |pitch|, deg)", "face_pitch_deg", (face.max_pitch_deg,),
              "per-frame limit", (0.0, 90.0), limit),
        Check("pose", "face", "share of frames past the yaw / pitch limits", "face_off_pose_share",
              (face.max_off_pose_share,), "keep at or below", share),
        Check("pose", "face", "share of frames with the mouth outside the picture", "face_mouth_outside_share",
              (face.max_mouth_outside_share,), "keep at or below", share),
        Check("pose", "face", "head turn speed (deg/s, 95th percentile)", "face_turn_deg_s",
              (face.max_turn_deg_s,), "keep at or below", positive),
        Check("pose", "face", "face movement (face widths/s, 95th percentile)", "face_move_widths_s",
              (face.max_move_widths_s,), "keep at or below", positive),
        Check("size", "face", "face width (median px)", "face_size_px", (face.min_face,), "keep at or above",
              positive),
        Check("speech", "speech", "speech fraction (Silero VAD)", "speech_fraction",
              (stages.speech.min_fraction,), "keep at or above", share),
        Check("sharpness", "face", "mouth sharpness (Laplacian variance, median)", "face_mouth_sharpness",
              (face.min_mouth_sharpness,), "keep at or above", positive),
        Check("sharpness", "quality", "HyperIQA score", "quality_score", (stages.quality.min_score,),
              "keep at or above"),
        Check("other", "sync", "SyncNet confidence (LSE-C)", "sync_conf", (stages.sync.min_confidence,),
              "keep at or above"),
        Check("other", "sync", "|A/V offset| (frames)", "sync_offset", (stages.sync.max_offset,),
              "keep at or below", positive),
        Check("other", "face", "face detection rate", "face_detection_rate", (face.min_detection_rate,),
              "keep at or above", share),
        Check("other", "clips", "clip duration (s)", "duration_s",
              (stages.clips.min_seconds, stages.clips.max_seconds), "keep between", positive),
    ]


def distributions(tally) -> list[tuple[Check, str | None]]:
    """(check, PNG data URI or None when no clip has a value) for each score, kept and dropped drawn apart."""
    plt = _pyplot()
    out = []
    for check, figure in figures(tally):
        if figure is None:
            out.append((check, None))
            continue
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        plt.close(figure)
        out.append((check, "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()))
    return out


def figures(tally) -> list[tuple[Check, object]]:
    """(check, matplotlib figure or None when no clip has a value) for each score; the caller closes them."""
    out = []
    for check in checks(tally.config):
        kept, dropped = check.values(tally, "kept"), check.values(tally, "dropped")
        drawn = len(kept) + len(dropped)
        out.append((check, histogram({"kept": kept, "dropped": dropped}, list(check.thresholds), check.title,
                                     check.rule, check.bounds) if drawn else None))
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


COLOURS = {"kept": "#4a78b0", "dropped": "#e08a1e"}


def histogram(sides: dict[str, np.ndarray], thresholds: list[float], title: str, rule: str, bounds=None):
    """The values of each side (kept, dropped) as overlaid histograms on the same bins, the legend with their
    counts, the thresholds as red lines (one far off the data marked at the edge instead)."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    values = np.concatenate(list(sides.values()))
    (left, right), off = x_range(values, thresholds, bounds)
    figure, axes = plt.subplots(figsize=(4.2, 2.6), dpi=80)
    # bins over the data only; one distinct value gets bins over the drawn range (matplotlib's own is +-0.5)
    span = (values.min(), values.max()) if values.max() > values.min() else (left, right)
    edges = np.histogram_bin_edges(values, bins=min(50, max(5, int(np.sqrt(len(values))))), range=span)
    for side, those in sides.items():  # the first filled, the others outlined over it with a faint fill
        first = side == next(iter(sides))
        axes.hist(those, bins=edges, color=COLOURS[side], alpha=0.55 if first else 0.25, histtype="stepfilled")
        axes.hist(those, bins=edges, color=COLOURS[side], histtype="step", linewidth=1.0 if first else 1.8,
                  label=f"{side} (n = {len(those)})")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlim(left, right)
    axes.set_ylim(top=axes.get_ylim()[1] * 1.35)  # room for the legend and a label over the bars
    for threshold in thresholds:
        if threshold not in off:
            axes.axvline(threshold, color="#c0392b", linestyle="--", linewidth=1.5)
    for below in (True, False):  # those off the range: drawn at the edge they lie beyond, with their values
        side = [f"{t:g}" for t in off if (t < left) == below]
        if not side:
            continue
        edge = axes.spines["left" if below else "right"]
        edge.set(color="#c0392b", linestyle="--", linewidth=2)
        label = f"threshold {', '.join(side)} (off the range)"
        axes.text(0.02 if below else 0.98, 0.97, f"← {label}" if below else f"{label} →",
                  transform=axes.transAxes,
                  ha="left" if below else "right", va="top", fontsize=7, color="#c0392b",
                  bbox={"facecolor": "white", "alpha": 0.8, "linewidth": 0})
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, 0.86 if off else 1.0), ncol=len(sides), fontsize=7,
                frameon=False)
    axes.set_title(title, fontsize=9)
    axes.set_xlabel(f"red: threshold ({rule} {', '.join(f'{t:g}' for t in thresholds)})", fontsize=8)
    axes.tick_params(labelsize=7)
    figure.tight_layout()
    return figure
