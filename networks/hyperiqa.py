"""HyperIQA (Su et al., CVPR 2020) as in `koniq_pretrained.pkl`: a ResNet-50 whose four stages also feed
small "local distortion aware" heads, and a hyper network that turns the last feature map into the weights
of a per-image target network, which maps the LDA vector to a quality score (0..100 with the KonIQ weights).

Attribute names follow the checkpoint's state_dict (`res.*`, `conv1.*`, `fc1w_conv` .. `fc5b_fc`), so the
official file loads with strict key matching. The target network is evaluated as batched matrix products
rather than as modules built per call. The input must be 224 x 224: the LDA heads pool fixed 7 x 7 windows.
Nothing is downloaded at construction (the reference fetches ImageNet weights it then overwrites).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from networks.checkpoints import CheckpointError, load_strict, load_tensors

INPUT_SIZE = 224
# HyperNet(16, 112, 224, 112, 56, 28, 14, 7), the configuration trained on KonIQ-10k
LDA_OUT = 16
HYPER_IN = 112
TARGET_IN = 224
TARGET_SIZES = (112, 56, 28, 14)
FEATURE_SIZE = 7


class Bottleneck(nn.Module):
    """ResNet-50's block: 1x1 reduce, 3x3 (carrying the stride), 1x1 expand, plus the shortcut."""

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        cout = width * 4
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


def _stage(cin: int, width: int, blocks: int, stride: int) -> nn.Sequential:
    return nn.Sequential(Bottleneck(cin, width, stride), *[Bottleneck(width * 4, width) for _ in range(blocks - 1)])


def _lda_pool(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.AvgPool2d(7, stride=7))


class Backbone(nn.Module):
    """ResNet-50 without its classifier; returns the last feature map and the 224-d LDA vector."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = _stage(64, 64, 3, 1)
        self.layer2 = _stage(256, 128, 4, 2)
        self.layer3 = _stage(512, 256, 6, 2)
        self.layer4 = _stage(1024, 512, 3, 2)
        # each stage's map, 1x1-reduced and average-pooled in 7x7 cells (56->8, 28->4, 14->2, 7->1), then a
        # linear layer: 16 + 16 + 16 + 176 = 224 values
        self.lda1_pool, self.lda1_fc = _lda_pool(256, 16), nn.Linear(16 * 64, LDA_OUT)
        self.lda2_pool, self.lda2_fc = _lda_pool(512, 32), nn.Linear(32 * 16, LDA_OUT)
        self.lda3_pool, self.lda3_fc = _lda_pool(1024, 64), nn.Linear(64 * 4, LDA_OUT)
        self.lda4_pool, self.lda4_fc = nn.AvgPool2d(7, stride=7), nn.Linear(2048, TARGET_IN - 3 * LDA_OUT)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        parts = []
        for layer, pool, fc in ((self.layer1, self.lda1_pool, self.lda1_fc), (self.layer2, self.lda2_pool, self.lda2_fc),
                                (self.layer3, self.lda3_pool, self.lda3_fc), (self.layer4, self.lda4_pool, self.lda4_fc)):
            x = layer(x)
            parts.append(fc(pool(x).flatten(1)))
        return x, torch.cat(parts, 1)


class HyperIQA(nn.Module):
    def __init__(self):
        super().__init__()
        self.res = Backbone()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv1 = nn.Sequential(
            nn.Conv2d(2048, 1024, 1), nn.ReLU(inplace=True),
            nn.Conv2d(1024, 512, 1), nn.ReLU(inplace=True),
            nn.Conv2d(512, HYPER_IN, 1), nn.ReLU(inplace=True),
        )
        # weights of the target network's four hidden layers come from 3x3 convs over the 7x7 feature map
        # (the output, reshaped, is a (out, in) matrix per image); biases and the last layer from its mean
        sizes = (TARGET_IN, *TARGET_SIZES)
        for i in range(4):
            cin, cout = sizes[i], sizes[i + 1]
            setattr(self, f"fc{i + 1}w_conv", nn.Conv2d(HYPER_IN, cin * cout // FEATURE_SIZE ** 2, 3, padding=1))
            setattr(self, f"fc{i + 1}b_fc", nn.Linear(HYPER_IN, cout))
        self.fc5w_fc = nn.Linear(HYPER_IN, TARGET_SIZES[-1])
        self.fc5b_fc = nn.Linear(HYPER_IN, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, 224, 224) ImageNet-normalised RGB -> (N,) quality scores."""
        if images.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"HyperIQA takes {INPUT_SIZE}x{INPUT_SIZE} crops, not {tuple(images.shape[-2:])}")
        features, q = self.res(images)
        hyper = self.conv1(features)                     # (N, 112, 7, 7)
        pooled = self.pool(hyper).flatten(1)             # (N, 112)
        n = images.shape[0]
        sizes = (TARGET_IN, *TARGET_SIZES)
        for i in range(4):
            weight = getattr(self, f"fc{i + 1}w_conv")(hyper).reshape(n, sizes[i + 1], sizes[i])
            bias = getattr(self, f"fc{i + 1}b_fc")(pooled)
            q = torch.sigmoid(torch.bmm(weight, q.unsqueeze(2)).squeeze(2) + bias)
        return (self.fc5w_fc(pooled) * q).sum(1) + self.fc5b_fc(pooled).squeeze(1)


def load_hyperiqa(path: str | Path, device: str = "cpu") -> HyperIQA:
    """The network with the weights of `path` (a state_dict, as `koniq_pretrained.pkl` is), keys matched strictly."""
    state = load_tensors(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state_dict")
    return load_strict(HyperIQA(), state, f"{path} is not HyperIQA's network").to(device).eval()
