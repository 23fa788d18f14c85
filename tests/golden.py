"""The stand-in weights of ../shared/golden, re-implemented from fill_weights.py's docstring: every tensor of a
state_dict filled by a rule keyed on its name, so any model with the official key names and shapes gets the
same tensors whatever its code looks like."""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import torch

GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden"


def stand_in(name: str, shape) -> torch.Tensor:
    generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    shape = tuple(shape)
    if name.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.long)
    if name.endswith("running_mean"):
        return 0.1 * torch.randn(shape, generator=generator)
    if name.endswith("running_var"):
        return 0.5 + torch.rand(shape, generator=generator)
    if len(shape) >= 2:
        return torch.randn(shape, generator=generator) / math.sqrt(math.prod(shape[1:]))
    if name.endswith("weight"):
        return 1 + 0.1 * torch.randn(shape, generator=generator)
    return 0.1 * torch.randn(shape, generator=generator)


def stand_in_state_dict(model: torch.nn.Module) -> dict:
    return {name: stand_in(name, value.shape).to(value.dtype) for name, value in model.state_dict().items()}
