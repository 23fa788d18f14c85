"""LPIPS with the VGG-16 trunk (Zhang et al., CVPR 2018, "The Unreasonable Effectiveness of Deep Features as a
Perceptual Metric"), v0.1, as LatentSync's trainer uses it (`lpips.LPIPS(net="vgg")` on the lower half of the
decoded frames, inputs in [-1, 1]); ours because neither torchvision nor the `lpips` package installs here.

Both images are shifted and scaled per channel (the v0.1 ScalingLayer, towards ImageNet's statistics), run
through VGG-16's convolutional stack, and compared at relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3: each
feature vector is unit-normalised over its channels, the squared difference weighted per channel by a learned
non-negative 1x1 head, averaged over the map and summed over the five layers. That is the paper's equation 1,
d = sum_l mean_hw ||w_l * (y_l - y0_l)||^2, with the head's weights being w_l squared.

Module names follow the two files it is made of, so both load with strict key matching: the trunk is
torchvision's `vgg16().features` (`features.0.weight` ... `features.28.bias`; the classifier of
`vgg16-397923af.pth` is not needed and ignored), the heads are the `lpips` package's `weights/v0.1/vgg.pth`
(`lin0.model.1.weight` ... `lin4.model.1.weight`, `model.0` being the training Dropout). The shift and scale are
constants, not in the state_dict, as neither file holds them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from networks.checkpoints import CheckpointError, key_problems, load_tensors

VGG_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
HEADS_URL = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth"
VGG_FILE = "vgg16-397923af.pth"
HEADS_FILE = "vgg.pth"

SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10                      # the reference's normalize_tensor: y / (||y|| + eps), so a zero vector stays 0
CHANNELS = (64, 128, 256, 512, 512)
SLICES = (4, 9, 16, 23, 30)      # features[:4] -> relu1_2, [4:9] -> relu2_2, ... [23:30] -> relu5_3
# torchvision's vgg16 "D" configuration up to relu5_3 ("M": 2 x 2 max pooling); its last pooling (index 30)
# is not used by LPIPS and not built
_VGG_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


class LpipsFileError(CheckpointError):
    """A file that is not the VGG-16 or the LPIPS heads this needs."""


def _vgg16_features() -> nn.Sequential:
    """features[0:30] of torchvision's vgg16: Conv 3x3 pad 1 + ReLU, max pools between the stages; the indices
    (hence the state_dict keys) are torchvision's."""
    layers: list[nn.Module] = []
    channels = 3
    for item in _VGG_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU()]
            channels = item
    return nn.Sequential(*layers)


class LinearHead(nn.Module):
    """The reference's NetLinLayer with use_dropout: `model.0` Dropout, `model.1` a 1x1 conv to one channel
    without bias. Here always in eval, so the Dropout is the identity; it is kept for the key names."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def unit_normalise(features: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """(B, C, H, W) divided by each position's norm over the channels (+ eps, as the reference)."""
    return features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


def layer_distance(features0: torch.Tensor, features1: torch.Tensor, head: nn.Module) -> torch.Tensor:
    """One layer's term, (B, 1, 1, 1): the head on the squared difference of the unit-normalised features,
    averaged over the map."""
    diff = (unit_normalise(features0) - unit_normalise(features1)).pow(2)
    return head(diff).mean(dim=(2, 3), keepdim=True)


class LPIPS(nn.Module):
    """The frozen metric: `forward(x0, x1)` of two (B, 3, H, W) images in [-1, 1] (RGB, H and W at least 16
    for relu5_3 to exist) is their (B, 1, 1, 1) distance, the reference's `spatial=False` output; gradients
    flow to the inputs, never to the network. `train()` leaves it in eval, so a trainer holding it as a
    submodule cannot switch the heads' Dropout on."""

    def __init__(self):
        super().__init__()
        self.features = _vgg16_features()
        self.lin0, self.lin1, self.lin2, self.lin3, self.lin4 = (LinearHead(c) for c in CHANNELS)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:
        return super().train(False)

    @property
    def heads(self) -> tuple[LinearHead, ...]:
        return (self.lin0, self.lin1, self.lin2, self.lin3, self.lin4)

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """relu1_2 ... relu5_3 of a [-1, 1] image, after the scaling layer."""
        h = (x - self.shift) / self.scale
        maps, start = [], 0
        for stop in SLICES:
            for index in range(start, stop):
                h = self.features[index](h)
            maps.append(h)
            start = stop
        return maps

    def forward(self, x0: torch.Tensor, x1: torch.Tensor, per_layer: bool = False):
        """(B, 1, 1, 1) distances; with `per_layer`, also the five terms (each (B, 1, 1, 1)) they sum."""
        if x0.shape != x1.shape or x0.dim() != 4 or x0.shape[1] != 3:
            raise ValueError(f"LPIPS compares two (B, 3, H, W) images of one shape, not {tuple(x0.shape)} and "
                             f"{tuple(x1.shape)}")
        if min(x0.shape[2:]) < 16:
            raise ValueError(f"{tuple(x0.shape[2:])} is too small for VGG-16's four poolings; use 16 x 16 or more")
        terms = [layer_distance(f0, f1, head)
                 for f0, f1, head in zip(self.feature_maps(x0), self.feature_maps(x1), self.heads)]
        total = torch.stack(terms).sum(dim=0)
        return (total, terms) if per_layer else total


def _read(path: Path, what: str) -> dict:
    state = load_tensors(path, LpipsFileError)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LpipsFileError(f"{path}: not a state_dict of tensors, so not {what}")
    return state


def _check(path: Path, what: str, state: dict, mine: dict) -> None:
    """Strict: every key `mine` has, of its shape, and no other (of those `state` was cut down to)."""
    problems = key_problems(state, mine)
    if problems:
        raise LpipsFileError(f"{path} is not {what}: {', '.join(problems)}")


def read_vgg_file(path: str | Path) -> dict:
    """The `features.*` tensors of torchvision's `vgg16-397923af.pth`, checked strictly (the classifier ignored)."""
    path, mine = Path(path), LPIPS().state_dict()
    vgg = {k: v for k, v in _read(path, "torchvision's VGG-16").items() if k.startswith("features.")}
    _check(path, "torchvision's VGG-16", vgg, {k: v for k, v in mine.items() if k.startswith("features.")})
    return vgg


def read_heads_file(path: str | Path) -> dict:
    """The linear heads of the `lpips` package's `weights/v0.1/vgg.pth`, checked strictly."""
    path, mine = Path(path), LPIPS().state_dict()
    heads = _read(path, "the LPIPS v0.1 VGG heads")
    _check(path, "the LPIPS v0.1 VGG heads", heads, {k: v for k, v in mine.items() if k.startswith("lin")})
    return heads


def load_lpips(vgg_path: str | Path, heads_path: str | Path, device: str | torch.device = "cpu") -> LPIPS:
    """The metric from torchvision's `vgg16-397923af.pth` (its `features.*` keys; the classifier ignored) and
    the `lpips` package's `weights/v0.1/vgg.pth`, both checked strictly, frozen, on `device`."""
    model = LPIPS()
    model.load_state_dict({**read_vgg_file(vgg_path), **read_heads_file(heads_path)}, strict=True)
    return model.to(device)
