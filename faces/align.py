"""Geometry of the face warp: the LatentSync template, the similarity fit, smoothing over time, the warp.

LatentSync aligns a frame by the least-squares similarity transform that takes three points (the centres of
the two eyebrows and of the nose) onto a template laid out in a 75 x 100 box, warps that box out of the frame
and resizes it to a square (so the face is stretched 4:3 horizontally; its trainers and checkpoints expect
exactly that). Here the two steps are one affine warp straight to the output size, so the picture is
resampled once, from the full-resolution frame.

Points are (x, y) in pixels. A transform is a 2x3 matrix mapping source points to output points.
"""

from __future__ import annotations

import cv2
import numpy as np

# LatentSync's three-point template in its 75 x 100 box: left brow, right brow, nose
TEMPLATE_BOX = np.array([[17.0, 20.0], [58.0, 20.0], [37.5, 40.0]])
BOX_SIZE = (75.0, 100.0)

# iBUG 68-point indices of the three anchors (image left and right, as the picture shows them). The recipe's
# nose centre averages four points of a 106-point layout; on the 68-point layout the mean of the nose bridge's
# lower points and tip (28-30) sits where the template expects it: on real talking heads its height below the
# brows is 0.46 of the brows' distance, against the template's 0.49 (all nine nose points give 0.59).
LEFT_BROW = list(range(17, 22))
RIGHT_BROW = list(range(22, 27))
NOSE = [28, 29, 30]


def anchors(landmarks: np.ndarray) -> np.ndarray:
    """The three alignment points of a 68-point shape: eyebrow centres and nose centre."""
    return np.stack([landmarks[LEFT_BROW].mean(0), landmarks[RIGHT_BROW].mean(0), landmarks[NOSE].mean(0)])


def template(size: int) -> np.ndarray:
    """Where the three anchors land in a size x size aligned picture."""
    return TEMPLATE_BOX * np.array([size / BOX_SIZE[0], size / BOX_SIZE[1]])


def fit_similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares rotation, uniform scale and translation taking `source` points onto `target`.

    In complex numbers a 2-D similarity is z -> c z + t, and the least-squares c is sum(conj(s) d) / sum(|s|^2)
    over the centred points s, d; no reflection can come out of it.
    """
    src_mean, dst_mean = source.mean(0), target.mean(0)
    s = (source[:, 0] - src_mean[0]) + 1j * (source[:, 1] - src_mean[1])
    d = (target[:, 0] - dst_mean[0]) + 1j * (target[:, 1] - dst_mean[1])
    c = np.vdot(s, d) / max(np.vdot(s, s).real, 1e-12)
    linear = np.array([[c.real, -c.imag], [c.imag, c.real]])
    return np.hstack([linear, (dst_mean - linear @ src_mean)[:, None]])


def align_matrix(anchor_points: np.ndarray, size: int) -> np.ndarray:
    """Source -> output transform for one frame: the similarity onto the template box, then the box resized
    to size x size (the recipe's non-uniform resize folded into the same matrix)."""
    similarity = fit_similarity(anchor_points, TEMPLATE_BOX)
    resize = np.diag([size / BOX_SIZE[0], size / BOX_SIZE[1]])
    return resize @ similarity


def smoothed(points: dict[int, np.ndarray], index: int, sigma: float, max_gap: int) -> np.ndarray | None:
    """Frame `index`'s points smoothed over time: a Gaussian-weighted mean over the frames within 3 sigma that
    have them; for a frame without them, interpolated from the nearest frames with them within `max_gap`
    (the nearer one when only one side has them), else None. `points` maps frame -> points of one track
    (the caller leaves out frames across a shot cut); the weights do not care what the points are, so the
    face stage smooths its three anchors and the lip-sync pipeline the 68 landmarks with the same rule."""
    radius = int(round(3 * sigma)) if sigma > 0 else 0
    if index in points:
        if radius == 0:
            return points[index]
        frames = np.array([i for i in points if abs(i - index) <= radius])
        weights = np.exp(-0.5 * ((frames - index) / sigma) ** 2)
        return np.tensordot(weights / weights.sum(), np.stack([points[i] for i in frames]), axes=1)
    before = [i for i in points if index - max_gap <= i < index]
    after = [i for i in points if index < i <= index + max_gap]
    if before and after:
        a, b = max(before), min(after)
        weight = (index - a) / (b - a)
        return (1 - weight) * points[a] + weight * points[b]
    if before or after:
        return points[max(before)] if before else points[min(after)]
    return None


def jitter_px(matrices: np.ndarray, size: int) -> float:
    """How much the crop window shakes, in output pixels: the RMS second difference over time of where the
    template's anchors come from in the source, scaled to output pixels. Steady head motion (constant
    velocity) costs nothing; frame-to-frame wobble does."""
    if len(matrices) < 3:
        return 0.0
    targets = template(size)
    sources = []
    for matrix in matrices:
        inverse = cv2.invertAffineTransform(matrix)
        sources.append(targets @ inverse[:, :2].T + inverse[:, 2])
    sources = np.array(sources)                             # (T, 3, 2) in source pixels
    scales = np.sqrt(np.abs(np.linalg.det(matrices[:, :, :2])))  # output px per source px
    second = sources[2:] - 2 * sources[1:-1] + sources[:-2]
    per_frame = np.linalg.norm(second, axis=2).mean(1) * scales[1:-1]
    return float(np.sqrt(np.mean(per_frame ** 2)))


def warp_plane(plane: np.ndarray, matrix: np.ndarray, size: tuple[int, int], fill: int) -> np.ndarray:
    """Warp one image plane with `matrix` (plane coordinates -> output) into `size` (w, h), bicubic.

    When the warp shrinks by more than 2x, the plane is first halved (pyrDown) as often as needed, so the
    resampling does not alias.
    """
    scale = np.sqrt(abs(np.linalg.det(matrix[:, :2])))
    while scale < 0.5 and min(plane.shape[:2]) > 32:
        plane = cv2.pyrDown(plane)  # its pixel (u, v) is centred on the plane's (2u, 2v)
        matrix = matrix @ np.array([[2.0, 0, 0], [0, 2.0, 0], [0, 0, 1]])
        scale *= 2
    return cv2.warpAffine(plane, matrix, size, flags=cv2.INTER_CUBIC,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=fill)


def rotation_matrix(rotation: int, width: int, height: int) -> np.ndarray:
    """3x3 map from stored-frame pixel coordinates to upright (displayed) ones, for a display rotation of
    `rotation` degrees counter-clockwise; width and height are the stored frame's."""
    turns = (rotation // 90) % 4
    if turns == 0:
        return np.eye(3)
    if turns == 1:   # counter-clockwise: (x, y) -> (y, W - 1 - x)
        return np.array([[0.0, 1, 0], [-1, 0, width - 1], [0, 0, 1]])
    if turns == 2:
        return np.array([[-1.0, 0, width - 1], [0, -1, height - 1], [0, 0, 1]])
    return np.array([[0.0, -1, height - 1], [1, 0, 0], [0, 0, 1]])
