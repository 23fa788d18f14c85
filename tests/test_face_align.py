"""Geometry of the face warp: the fit, the template, the warp itself, rotation and the jitter measure."""

import numpy as np
import pytest

from faces import align as face_align


def similarity(angle: float, scale: float, shift) -> np.ndarray:
    c, s = np.cos(angle) * scale, np.sin(angle) * scale
    return np.array([[c, -s, shift[0]], [s, c, shift[1]]])


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def test_fit_recovers_a_similarity_exactly():
    rng = np.random.default_rng(0)
    source = rng.normal(size=(12, 2)) * 40 + 300
    truth = similarity(0.4, 1.7, (12.0, -30.0))
    assert np.allclose(face_align.fit_similarity(source, apply(truth, source)), truth)


def test_fit_never_reflects():
    source = np.array([[0.0, 0], [1, 0], [0, 1]])
    mirrored = source * np.array([-1, 1])
    matrix = face_align.fit_similarity(source, mirrored)
    assert np.linalg.det(matrix[:, :2]) > 0


def test_align_matrix_puts_template_shaped_anchors_on_the_template():
    # anchors that are the template itself, turned, scaled and moved: they land exactly
    for size in (256, 512):
        truth = similarity(-0.2, 3.1, (400.0, 700.0))
        anchors = apply(truth, face_align.TEMPLATE_BOX)
        matrix = face_align.align_matrix(anchors, size)
        assert np.allclose(apply(matrix, anchors), face_align.template(size), atol=1e-6)
    # the recipe's box is 75 x 100 resized to a square: the brows land at x = 17/75 and 58/75 of the side
    assert np.allclose(face_align.template(256)[:2, 0], [256 * 17 / 75, 256 * 58 / 75])


def test_anchors_are_brow_and_nose_centres():
    landmarks = np.zeros((68, 2))
    landmarks[17:22] = [10, 20]
    landmarks[22:27] = [50, 20]
    landmarks[28:31] = [30, 40]
    assert np.allclose(face_align.anchors(landmarks), [[10, 20], [50, 20], [30, 40]])


def test_warp_moves_a_dot_where_the_matrix_says():
    plane = np.zeros((400, 600), np.uint8)
    plane[120:125, 300:305] = 255           # a dot centred at (302, 122)
    matrix = similarity(0.3, 0.9, (-150.0, 40.0))
    out = face_align.warp_plane(plane, matrix, (256, 256), fill=0).astype(float)
    ys, xs = np.indices(out.shape)
    centroid = [(xs * out).sum() / out.sum(), (ys * out).sum() / out.sum()]
    assert np.allclose(centroid, apply(matrix, np.array([[302.0, 122.0]]))[0], atol=0.5)


def test_warp_fills_outside_the_picture_with_the_given_grey():
    plane = np.full((100, 100), 200, np.uint8)
    out = face_align.warp_plane(plane, similarity(0, 1.0, (300.0, 300.0)), (64, 64), fill=125)
    assert (out == 125).all()


def test_strong_shrink_does_not_alias():
    # a fine checkerboard shrunk 8x should turn grey, not into a coarse pattern
    plane = ((np.indices((800, 800)).sum(0) % 2) * 255).astype(np.uint8)
    out = face_align.warp_plane(plane, similarity(0, 0.125, (0.0, 0.0)), (100, 100), fill=0)
    assert abs(out[10:90, 10:90].astype(float).mean() - 127.5) < 10
    assert out[10:90, 10:90].std() < 12


@pytest.mark.parametrize("rotation", [90, -90, 180, 270])
def test_rotation_matrix_matches_numpy_rot90(rotation):
    stored = np.zeros((30, 50), np.uint8)
    stored[7, 11] = 1
    upright = np.rot90(stored, rotation // 90)
    y, x = np.argwhere(upright)[0]
    mapped = face_align.rotation_matrix(rotation, 50, 30) @ np.array([11, 7, 1.0])
    assert np.allclose(mapped[:2], [x, y])


def test_jitter_ignores_steady_motion_and_measures_wobble():
    steady = np.array([similarity(0.0, 1.0, (3.0 * t, -2.0 * t)) for t in range(50)])
    assert face_align.jitter_px(steady, 256) < 1e-9
    rng = np.random.default_rng(1)
    shaky = np.array([similarity(0.0, 1.0, (3.0 * t + rng.normal() * 2, 0.0)) for t in range(200)])
    assert 3.0 < face_align.jitter_px(shaky, 256) < 7.0  # second difference of +-2 px noise: about 4.9
