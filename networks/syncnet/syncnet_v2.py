"""SyncNet (Chung & Zisserman, 2016) as in `syncnet_v2.model`: an audio tower and a lip tower that map a
0.2 s window (5 frames, 20 MFCC columns) to 1024-d embeddings, close when lips and sound agree.

The layer layout follows the checkpoint's state_dict exactly (`netcnnaud`, `netfcaud`, `netcnnlip`,
`netfclip`, numbered as in the file), so the official weights load with strict key matching. Everything
else here is ours.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from networks.checkpoints import CheckpointError, load_strict, load_tensors

EMBEDDING = 1024


def _tower(dims: int, spec: list[tuple]) -> nn.Sequential:
    """Stack conv / batch-norm / ReLU / pool layers from a compact spec.

    ("conv", cin, cout, kernel, stride, padding) adds a convolution, its batch norm and a ReLU;
    ("pool", kernel, stride, padding) adds a max pool.
    """
    conv = nn.Conv2d if dims == 2 else nn.Conv3d
    norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d
    pool = nn.MaxPool2d if dims == 2 else nn.MaxPool3d
    layers: list[nn.Module] = []
    for kind, *args in spec:
        if kind == "conv":
            cin, cout, kernel, stride, padding = args
            layers += [conv(cin, cout, kernel, stride=stride, padding=padding), norm(cout), nn.ReLU()]
        else:
            kernel, stride, padding = args
            layers.append(pool(kernel, stride=stride, padding=padding))
    return nn.Sequential(*layers)


def _head() -> nn.Sequential:
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, EMBEDDING))


class SyncNet(nn.Module):
    def __init__(self):
        super().__init__()
        # audio: 1 x 13 MFCC x 20 columns -> 512 x 1 x 1
        self.netcnnaud = _tower(2, [
            ("conv", 1, 64, 3, 1, 1), ("pool", 1, 1, 0),
            ("conv", 64, 192, 3, 1, 1), ("pool", 3, (1, 2), 0),
            ("conv", 192, 384, 3, 1, 1),
            ("conv", 384, 256, 3, 1, 1),
            ("conv", 256, 256, 3, 1, 1), ("pool", 3, 2, 0),
            ("conv", 256, 512, (5, 4), 1, 0),
        ])
        self.netfcaud = _head()
        # lips: 3 x 5 frames x 224 x 224 (BGR, 0..255) -> 512 x 1 x 1 x 1
        self.netcnnlip = _tower(3, [
            ("conv", 3, 96, (5, 7, 7), (1, 2, 2), 0), ("pool", (1, 3, 3), (1, 2, 2), 0),
            ("conv", 96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)), ("pool", (1, 3, 3), (1, 2, 2), (0, 1, 1)),
            ("conv", 256, 256, (1, 3, 3), 1, (0, 1, 1)),
            ("conv", 256, 256, (1, 3, 3), 1, (0, 1, 1)),
            ("conv", 256, 256, (1, 3, 3), 1, (0, 1, 1)), ("pool", (1, 3, 3), (1, 2, 2), 0),
            ("conv", 256, 512, (1, 6, 6), 1, 0),
        ])
        self.netfclip = _head()

    def forward_audio(self, mfcc: torch.Tensor) -> torch.Tensor:
        """(N, 1, 13, 20) MFCC windows -> (N, 1024)."""
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def forward_lips(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, 5, 224, 224) BGR windows, 0..255 -> (N, 1024)."""
        return self.netfclip(self.netcnnlip(frames).flatten(1))


def load_syncnet(path: str | Path, device: str = "cpu") -> SyncNet:
    """The network with the weights of `path` (a state_dict, as `syncnet_v2.model` is), keys matched strictly."""
    state = load_tensors(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state_dict")
    return load_strict(SyncNet(), state, f"{path} is not SyncNet v2").to(device).eval()
