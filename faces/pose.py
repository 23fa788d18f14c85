"""Head pose from the 68 landmarks, and the sharpness of the aligned mouth.

Pose: the landmarks of the rigid part of the face (eyes' corners, nose, mouth corners, chin) are fitted with
`cv2.solvePnP` to a generic 3-D face. Its points are our own, in millimetres, from published adult anthropometric
averages (Farkas' tables: biocular width ex-ex about 90 mm, intercanthal en-en about 32, mouth width ch-ch about
50, nose height n-sn about 50, lower face sn-me about 70, nasal tip protrusion about 20): x to the image's right,
y down, z away from the camera, the nose tip at the origin. The camera is a pinhole whose focal length is the
frame's longer side (about a 53 degree field of view, a phone or webcam held at arm's length); an error in it
shifts the angles of a face near the centre by little. Angles are in degrees: yaw the turn left or right, pitch
up or down, roll the tilt in the picture; 0, 0, 0 looks straight at the camera.

Sharpness: the variance of the Laplacian of the luma around the mouth, after the mouth box is resized to a fixed
96 x 48, so that the figure is the same for a 256 and a 512 target of the same source. It grows with contrast as
well as detail (a dim face reads lower); dividing by the patch's own variance was tried and dropped: on a heavily
blurred face the encoder's noise is then most of what is left, and the ratio rose again.
"""

from __future__ import annotations

import cv2
import numpy as np

# landmark index: (x, y, z) mm
MODEL_POINTS = {
    30: (0.0, 0.0, 0.0),        # nose tip (pronasale)
    27: (0.0, -42.0, 20.0),     # nose bridge between the eyes (sellion)
    33: (0.0, 10.0, 15.0),      # below the nose (subnasale)
    31: (-14.0, 8.0, 20.0),     # nostrils' outer edges (alar base)
    35: (14.0, 8.0, 20.0),
    36: (-45.0, -35.0, 38.0),   # outer eye corners (exocanthion)
    45: (45.0, -35.0, 38.0),
    39: (-16.0, -35.0, 28.0),   # inner eye corners (endocanthion)
    42: (16.0, -35.0, 28.0),
    48: (-25.0, 32.0, 28.0),    # mouth corners (cheilion)
    54: (25.0, 32.0, 28.0),
    8: (0.0, 80.0, 25.0),       # chin (menton)
}
_INDEX = list(MODEL_POINTS)
_MODEL = np.array([MODEL_POINTS[i] for i in _INDEX], np.float64)
MOUTH = list(range(48, 68))
SHARPNESS_BOX = (96, 48)   # the mouth box is resized to this (width, height) before the Laplacian


def head_pose(landmarks: np.ndarray, frame_size: tuple[int, int]) -> np.ndarray:
    """(yaw, pitch, roll) in degrees of one face's (68, 2) upright landmarks in a frame of (width, height)."""
    focal = float(max(frame_size))
    camera = np.array([[focal, 0, frame_size[0] / 2], [0, focal, frame_size[1] / 2], [0, 0, 1]])
    image = landmarks[_INDEX].astype(np.float64)
    ok, rvec, _ = cv2.solvePnP(_MODEL, image, camera, None, flags=cv2.SOLVEPNP_SQPNP)
    if not ok:
        return np.full(3, np.nan)
    rotation, _ = cv2.Rodrigues(rvec)
    # rotation = Rz(roll) @ Ry(yaw) @ Rx(pitch)
    yaw = np.degrees(np.arcsin(np.clip(-rotation[2, 0], -1.0, 1.0)))
    pitch = np.degrees(np.arctan2(rotation[2, 1], rotation[2, 2]))
    roll = np.degrees(np.arctan2(rotation[1, 0], rotation[0, 0]))
    return np.array([yaw, pitch, roll])


def mouth_box(mouth: np.ndarray, size: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the mouth's box in the aligned picture: centred on the mouth's landmarks, 0.36 x 0.18
    of the picture (about one and a half mouth widths on LatentSync's template), clipped to the picture."""
    centre = mouth.mean(0)
    half = np.array([0.18, 0.09]) * size
    x0, y0 = np.clip(np.round(centre - half), 0, size).astype(int)
    x1, y1 = np.clip(np.round(centre + half), 0, size).astype(int)
    return x0, y0, x1, y1


def mouth_sharpness(luma: np.ndarray, mouth: np.ndarray) -> float:
    """Variance of the Laplacian of the aligned luma (size x size, uint8) in the mouth's box, resized to 96 x 48;
    NaN when the box is (nearly) empty. `mouth`: the 20 mouth landmarks in aligned pixels."""
    x0, y0, x1, y1 = mouth_box(mouth, luma.shape[0])
    if x1 - x0 < 8 or y1 - y0 < 4:
        return float("nan")
    patch = cv2.resize(luma[y0:y1, x0:x1], SHARPNESS_BOX, interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(patch, cv2.CV_32F).var())
