"""`curate lipsync --preview`: a PNG strip beside the output, to judge a model at a glance.

`draw_strip` draws any number of labelled rows of frames over a plot of any number of labelled curves on the
25 fps timeline, as a 256-colour PNG (a third of the size of full colour, the tiles' pixels within a few levels;
they are placed as they are, not resampled). `PreviewRecorder` gathers what the
lip-sync pass's strip needs while it streams: about 8 frames evenly spaced over the output, cropped around the
face, as the model was given them and as they were written; and per frame only scalars: the mouth's opening in
the input frame (the tracker's own landmarks) and in the written one (the same landmark model run again on its
face, in the box the tracker gave it), with how dark the mouth is. Under the rows: the two openings and the
speech's envelope, z-scored, with the weight-free sync cue of each (`faces.speaking`, as `curate eval-sync
--weight-free` measures it).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from PIL import Image

from faces import speaking
from faces.landmarks import FaceBox, LandmarkBackend
from lipsync.faces import Tracked
from lipsync.media import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME, bounce
from manifests.files import write_atomically

TILE_HEIGHT = 112
FRAMES_SHOWN = 8
FACE_MARGIN = 0.15      # of the face's size, on each side of its landmarks' box

Box = tuple[int, int, int, int]   # x0, y0, x1, y1 in pixels, x1 and y1 excluded


@dataclass(frozen=True)
class Curve:
    label: str
    values: np.ndarray            # one per frame on the timeline; NaN where unknown (the line breaks)
    colour: str | None = None     # None: matplotlib's cycle


def draw_strip(path: Path, rows: Sequence[tuple[str, Sequence[np.ndarray]]], curves: Sequence[Curve],
               fps: float = FPS, title: str = "", marks: Sequence[float] = (), ylabel: str = "z-score",
               tile_height: int = TILE_HEIGHT) -> list[list[Box]]:
    """Write a PNG: a row of tiles (RGB pictures, scaled to `tile_height` unless they have it) per labelled row,
    left to right, and under them the curves against time (s), with dotted lines at the times in `marks`.
    Returns where each row's tiles are in the PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    gap, label_width, plot_height, right = 2, 84, 230, 12
    top = 26 if title else gap
    scaled = [[tile if tile.shape[0] == tile_height else
               cv2.resize(tile, (max(1, round(tile.shape[1] * tile_height / tile.shape[0])), tile_height),
                          interpolation=cv2.INTER_AREA) for tile in tiles] for _, tiles in rows]
    row_width = max([sum(t.shape[1] + gap for t in tiles) for tiles in scaled] + [0])
    width = max(label_width + row_width + right, 640)
    height = top + len(rows) * (tile_height + gap) + plot_height
    figure = Figure(figsize=(width / 100, height / 100), dpi=100)
    FigureCanvasAgg(figure)
    if title:
        figure.text(0.5, 1 - 4 / height, title, ha="center", va="top", fontsize=9)
    placed = []
    for number, ((label, _), tiles) in enumerate(zip(rows, scaled)):
        y0 = top + number * (tile_height + gap)
        figure.text((label_width - 6) / width, 1 - (y0 + tile_height / 2) / height, label, ha="right",
                    va="center", fontsize=8)
        x0, boxes = label_width, []
        for tile in tiles:
            # figimage puts pixels as they are, its offset from the bottom left
            figure.figimage(np.ascontiguousarray(tile), xo=x0, yo=height - y0 - tile.shape[0], origin="upper")
            boxes.append((x0, y0, x0 + tile.shape[1], y0 + tile.shape[0]))
            x0 += tile.shape[1] + gap
        placed.append(boxes)
    axes = figure.add_axes((label_width / width, 36 / height, (width - label_width - right) / width,
                            (plot_height - 50) / height))
    span = max([len(curve.values) for curve in curves] + [1])
    for curve in curves:
        axes.plot(np.arange(len(curve.values)) / fps, curve.values, label=curve.label, color=curve.colour,
                  linewidth=1.0)
    for mark in marks:
        axes.axvline(mark, color="0.6", linestyle=":", linewidth=0.8)
    axes.set_xlim(0, (span - 1) / fps if span > 1 else 1)
    axes.set_xlabel("time (s)", fontsize=8)
    axes.set_ylabel(ylabel, fontsize=8)
    axes.tick_params(labelsize=7)
    if curves:
        axes.legend(loc="lower left", bbox_to_anchor=(0, 1), ncol=len(curves), fontsize=7, frameon=False,
                    borderaxespad=0.2)
    drawn = io.BytesIO()
    figure.savefig(drawn, format="png", dpi=100)
    picture = Image.open(drawn).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
    write_atomically(Path(path), lambda partial: picture.save(partial, format="png", optimize=True))
    return placed


def face_box(landmarks: np.ndarray, shape: tuple[int, ...], margin: float = FACE_MARGIN) -> Box:
    """A square around the landmarks' box with `margin` of its size on each side, moved inside the picture
    (cut where the picture is smaller)."""
    height, width = shape[:2]
    (x0, y0), (x1, y1) = landmarks.min(0), landmarks.max(0)
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    out = []
    for centre, extent in (((x0 + x1) / 2, width), ((y0 + y1) / 2, height)):
        start = int(round(min(max(centre - side / 2, 0), max(extent - side, 0))))
        out.append((start, int(min(extent, start + round(side)))))
    return out[0][0], out[1][0], out[0][1], out[1][1]


def tile_of(frame: np.ndarray, box: Box, height: int = TILE_HEIGHT) -> np.ndarray:
    """`frame` cut to `box` and scaled to `height` pixels high, its aspect kept."""
    x0, y0, x1, y1 = box
    piece = frame[y0:y1, x0:x1]
    size = (max(1, round(piece.shape[1] * height / piece.shape[0])), height)
    return cv2.resize(piece, size, interpolation=cv2.INTER_AREA)


def zscored(values: np.ndarray) -> np.ndarray:
    known = values[~np.isnan(values)]
    if known.size < 2 or known.std() == 0:
        return np.full(values.shape, np.nan)
    return (values - known.mean()) / known.std()


@dataclass
class Preview:
    path: Path
    frames: list[int]                  # the output frames shown, left to right
    crops: list[Box]                   # where each was cut from its frame
    tiles: list[list[Box]]             # where the tiles are in the PNG: the input row, then the generated row
    input_cue: speaking.SpeakingCue    # the weight-free sync cue of the frames as given to the model
    generated_cue: speaking.SpeakingCue

    def line(self) -> str:
        return (f"preview {self.path}: weight-free sync cue {self.generated_cue.score:.3f} generated "
                f"(lag {self.generated_cue.lag}), {self.input_cue.score:.3f} input (lag {self.input_cue.lag})")


class PreviewRecorder:
    """Fed by the pass: `source` per tracked input frame, `before` and `after` the paste per output frame."""

    def __init__(self, total: int, backend: LandmarkBackend, count: int = FRAMES_SHOWN):
        self.total = total
        self.backend = backend
        self.shown = sorted({int(k) for k in np.linspace(0, total - 1, min(count, total)).round()})
        nan = np.full(total, np.nan)
        self.source_opening, self.source_darkness = nan.copy(), nan.copy()
        self.source_boxes = np.full((total, 4), np.nan)
        self.opening, self.darkness = nan.copy(), nan.copy()
        self.crops: dict[int, Box] = {}
        self.tiles: dict[int, np.ndarray] = {}        # the input frames' tiles
        self.written: dict[int, np.ndarray] = {}      # the output frames' tiles
        self.last_crop: Box | None = None

    def source(self, tracked: Tracked) -> None:
        """The input frame's mouth, from the tracker's unsmoothed landmarks (as `curate eval-sync` reads it)."""
        found = tracked.found
        if not found.present or tracked.index >= self.total:
            return
        self.source_opening[tracked.index] = speaking.mouth_opening(found.landmarks[None])[0]
        self.source_darkness[tracked.index] = speaking.mouth_darkness(tracked.view.full(1), found.landmarks[48:68])
        box = found.box
        self.source_boxes[tracked.index] = (box.x0, box.y0, box.x1, box.y1)

    def before(self, k: int, frame: np.ndarray, landmarks: np.ndarray | None) -> None:
        """Output frame `k` as the model was given it (not yet pasted)."""
        if landmarks is not None:
            self.last_crop = face_box(landmarks, frame.shape)
        if k in self.shown:
            crop = self.last_crop or (0, 0, frame.shape[1], frame.shape[0])
            self.crops[k] = crop
            self.tiles[k] = tile_of(frame, crop)

    def after(self, k: int, source: int, frame: np.ndarray, landmarks: np.ndarray | None) -> None:
        """Output frame `k` as written (source: the input frame it was made from): its mouth, measured by the
        landmark model in the box the tracker gave it in the input frame."""
        if k in self.crops:
            self.written[k] = tile_of(frame, self.crops[k])
        box = self.source_boxes[source]
        if landmarks is None or np.isnan(box[0]):
            return
        face = FaceBox(*box)
        pad = face.size
        x0, y0 = int(max(0, face.x0 - pad)), int(max(0, face.y0 - pad))
        x1, y1 = int(min(frame.shape[1], face.x1 + pad)), int(min(frame.shape[0], face.y1 + pad))
        region = np.ascontiguousarray(frame[y0:y1, x0:x1])
        if min(region.shape[:2]) < 8:
            return
        grey = cv2.cvtColor(region, cv2.COLOR_RGB2GRAY)
        local = FaceBox(face.x0 - x0, face.y0 - y0, face.x1 - x0, face.y1 - y0)
        points = self.backend.landmarks(grey if self.backend.channels == 1 else region, local)
        if points is not None:
            self.opening[k] = speaking.mouth_opening(points[None])[0]
            self.darkness[k] = speaking.mouth_darkness(grey, points[48:68])

    def finish(self, path: Path, seen: int, speech: np.ndarray, max_lag: int, title: str) -> Preview:
        """Draw the strip: `seen` input frames were shown, played back and forth past their end."""
        sources = np.array([k if k < seen else bounce(k, seen) for k in range(self.total)])
        given = [self.source_opening[sources], self.source_darkness[sources]]
        envelope = speaking.speech_envelope(speech, self.total, SAMPLES_PER_FRAME, SAMPLE_RATE)
        input_cue = speaking.speaking_cue(given, envelope, max_lag)
        generated_cue = speaking.speaking_cue([self.opening, self.darkness], envelope, max_lag)
        shown = [k for k in self.shown if k in self.tiles and k in self.written]
        curves = [Curve(f"input mouth opening (cue {input_cue.score:.2f})", zscored(given[0]), "tab:blue"),
                  Curve(f"generated mouth opening (cue {generated_cue.score:.2f})", zscored(self.opening),
                        "tab:red"),
                  Curve("speech envelope", zscored(envelope.astype(np.float64)), "0.55")]
        tiles = draw_strip(path, [("input", [self.tiles[k] for k in shown]),
                                  ("generated", [self.written[k] for k in shown])],
                           curves, title=title, marks=[k / FPS for k in shown])
        return Preview(Path(path), shown, [self.crops[k] for k in shown], tiles, input_cue, generated_cue)
