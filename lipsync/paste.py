"""Putting the generated mouth back into the frame, and nothing else.

The models regenerate the lower half of their crop. Only the lower face inside it is replaced: the region
under the nose and inside the jaw line (from the 68 landmarks), cut to the crop's lower half. Its edge is
feathered inwards (alpha rises from 0 on the edge to 1 at `feather` of the face's width inside), so every pixel
outside the region keeps the frame's value exactly. The generated face is warped from the crop into the frame
once, with the inverse of the crop's matrix, and only over the region's bounding box. Its colour is matched to
the frame on the feathered band (a per-channel offset), where both should show the same skin, so no seam shows
where a model's output is a little darker or warmer than the frame.
"""

from __future__ import annotations

import cv2
import numpy as np

# the lower face: jaw from the left cheek round the chin to the right cheek, back along the nostrils
LOWER_FACE = [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 35, 34, 33, 32, 31]


def region(landmarks: np.ndarray, matrix: np.ndarray, size: int, shape: tuple[int, int]) -> tuple[slice, slice] | None:
    """The frame's rows and columns the paste can touch (the lower face's bounding box), or None."""
    points = landmarks[LOWER_FACE]
    x0, y0 = np.floor(points.min(0)).astype(int) - 2
    x1, y1 = np.ceil(points.max(0)).astype(int) + 3
    height, width = shape
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return slice(y0, y1), slice(x0, x1)


def alpha(landmarks: np.ndarray, matrix: np.ndarray, size: int, rows: slice, cols: slice,
          feather: float) -> np.ndarray:
    """Blend weights over the region: 1 inside the lower face, falling to 0 at its edge, 0 outside it and
    above the crop's middle line (the part the model does not regenerate)."""
    height, width = rows.stop - rows.start, cols.stop - cols.start
    offset = np.array([cols.start, rows.start], np.float64)
    inside = np.zeros((height, width), np.uint8)
    cv2.fillPoly(inside, [np.round(landmarks[LOWER_FACE] - offset).astype(np.int32)], 1)
    # the crop's lower half, in frame pixels
    inverse = cv2.invertAffineTransform(matrix)
    half = np.array([[0, size / 2], [size, size / 2], [size, size], [0, size]], np.float64)
    quad = half @ inverse[:, :2].T + inverse[:, 2] - offset
    lower = np.zeros_like(inside)
    cv2.fillPoly(lower, [np.round(quad).astype(np.int32)], 1)
    mask = inside & lower
    face_width = float(np.ptp(landmarks[:, 0]))
    ramp = max(1.0, feather * face_width)
    distance = cv2.distanceTransform(mask, cv2.DIST_L2, 5)
    weight = np.clip(distance / ramp, 0.0, 1.0)
    return weight * weight * (3 - 2 * weight)   # smoothstep: no visible ridge where the ramp ends


def paste(frame: np.ndarray, face: np.ndarray, matrix: np.ndarray, landmarks: np.ndarray,
          feather: float = 0.06) -> None:
    """Blend the generated `face` (the crop, size x size RGB) into `frame` (RGB, modified in place)."""
    size = face.shape[0]
    where = region(landmarks, matrix, size, frame.shape[:2])
    if where is None:
        return
    rows, cols = where
    weights = alpha(landmarks, matrix, size, rows, cols, feather)
    if not weights.any():
        return
    # crop -> region pixels, in one warp
    inverse = cv2.invertAffineTransform(matrix)
    inverse[:, 2] -= (cols.start, rows.start)
    generated = cv2.warpAffine(face, inverse, (cols.stop - cols.start, rows.stop - rows.start),
                               flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
    original = frame[rows, cols].astype(np.float32)
    band = (weights > 0) & (weights < 1)
    if band.any():
        generated += (original[band] - generated[band]).mean(0)
    blended = original + weights[..., None] * (generated - original)
    frame[rows, cols] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
