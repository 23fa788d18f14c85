"""The 224 x 224 face crops SyncNet looks at, made as the reference makes them, from landmarks we already have.

The reference detects a face box per frame (S3FD), smooths its centre and half-size with a 13-frame median,
pads the frame with grey 110 and crops a square biased towards the lower face: from half a box above the
centre to 1.8 half-boxes below it, 1.4 half-boxes either side (crop scale 0.4), resized to 224 x 224. Here
the box comes from the 68 landmarks instead of a second detection: their extent, raised by a quarter of its
height at the top to take in the forehead, as a detector's box does.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy.signal import medfilt

CROP_SCALE = 0.4
SIZE = 224
PAD_VALUE = 110
SMOOTHING = 13


def boxes_from_landmarks(landmarks: np.ndarray, present: np.ndarray | None = None) -> np.ndarray:
    """(T, 4) boxes x0, y0, x1, y1 from (T, 68, 2) landmarks; frames without a face take their neighbours'."""
    count = len(landmarks)
    present = np.ones(count, bool) if present is None else present.astype(bool)
    if not present.any():
        raise ValueError("no frame has a face to crop")
    lo, hi = np.nanmin(landmarks, axis=1), np.nanmax(landmarks, axis=1)
    boxes = np.column_stack([lo[:, 0], lo[:, 1] - 0.25 * (hi[:, 1] - lo[:, 1]), hi[:, 0], hi[:, 1]])
    known = np.flatnonzero(present)
    for column in range(4):
        boxes[:, column] = np.interp(np.arange(count), known, boxes[known, column])
    return boxes


def crops(frames: list[np.ndarray] | np.ndarray, boxes: np.ndarray, crop_scale: float = CROP_SCALE) -> np.ndarray:
    """(T, 224, 224, 3) crops of `frames` (any channel order; kept) around smoothed `boxes`."""
    half = np.maximum(boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]) / 2
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    if len(boxes) >= SMOOTHING:
        half, cx, cy = (medfilt(v, kernel_size=SMOOTHING) for v in (half, cx, cy))
    out = np.empty((len(frames), SIZE, SIZE, 3), np.uint8)
    for index, frame in enumerate(frames):
        bs = half[index]
        pad = int(bs * (1 + 2 * crop_scale))
        padded = cv2.copyMakeBorder(frame, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3)
        my, mx = cy[index] + pad, cx[index] + pad
        face = padded[int(my - bs):int(my + bs * (1 + 2 * crop_scale)),
                      int(mx - bs * (1 + crop_scale)):int(mx + bs * (1 + crop_scale))]
        out[index] = cv2.resize(face, (SIZE, SIZE))
    return out
