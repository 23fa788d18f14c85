"""A training run's metrics: `metrics.jsonl` (a line per logged step and per validation) and `metrics.png`,
the panels a recipe asks for."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

METRICS = "metrics.jsonl"
PLOT = "metrics.png"


@dataclass(frozen=True)
class Panel:
    """One plot of metrics.png: `series` of (metrics key, label) against the step."""
    title: str
    series: tuple[tuple[str, str], ...]
    line: tuple[float, str] | None = None       # a horizontal line: (value, label)
    unit_range: bool = False                    # y from 0 to 1


class MetricsLog:
    """`metrics.jsonl`, appended by rank 0; on resume, lines past the checkpoint's step are dropped, so the file
    tells the story of the run as it would read without the interruption."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled

    def keep_until(self, step: int) -> None:
        if self.enabled and self.path.exists():
            self._rewrite([line for line in read_metrics(self.path) if line.get("step", 0) <= step])

    def clear(self) -> None:
        if self.enabled and self.path.exists():
            self._rewrite([])

    def _rewrite(self, lines: list[dict]) -> None:
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text("".join(json.dumps(line) + "\n" for line in lines))
        os.replace(partial, self.path)

    def write(self, line: dict) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as handle:
            handle.write(json.dumps({**line, "time": round(time.time(), 3)}) + "\n")


def read_metrics(path: Path) -> list[dict]:
    lines = []
    try:
        with open(path) as handle:
            for text in handle:
                try:
                    lines.append(json.loads(text))
                except ValueError:
                    continue   # a line cut short by a crash
    except OSError:
        pass
    return lines


# the experts' plot: the loss against chance, and the accuracies
EXPERT_PANELS = (
    Panel("loss", (("loss", "train loss"), ("val_loss", "val loss")), (math.log(2), "chance (ln 2)")),
    Panel("accuracy", (("accuracy", "train accuracy"), ("val_accuracy", "val accuracy"),
                       ("val_offset_accuracy", "val offset accuracy")), unit_range=True),
)


def plot_metrics(run_dir: Path, panels: tuple[Panel, ...] | None = None) -> Path | None:
    """`metrics.png`: the panels' metrics (by default the experts': loss and accuracies) against the step;
    validation numbers (keys `val_*`) are drawn with dots."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    panels = panels or EXPERT_PANELS
    lines = read_metrics(Path(run_dir) / METRICS)
    if not any("loss" in line or "val_loss" in line for line in lines):
        return None
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for axis, panel in zip(axes[0], panels):
        for key, label in panel.series:
            points = [(line["step"], line[key]) for line in lines if key in line and "step" in line]
            if points:
                axis.plot(*zip(*points), label=label, marker="." if key.startswith("val_") else None)
        if panel.line is not None:
            axis.axhline(panel.line[0], color="grey", linestyle=":", label=panel.line[1])
        if panel.unit_range:
            axis.set_ylim(0, 1)
        axis.set_xlabel("step")
        axis.set_title(panel.title)
        if axis.get_legend_handles_labels()[0]:
            axis.legend()
    figure.tight_layout()
    target = Path(run_dir) / PLOT
    partial = target.with_name("metrics.partial.png")
    figure.savefig(partial, dpi=90)
    plt.close(figure)
    os.replace(partial, target)
    return target
