"""The stand-in weights of ../shared/golden, re-implemented from its fill_weights.py's docstring: every tensor of a
state_dict filled by a rule keyed on its name, so any model with the official key names and shapes gets the same
tensors whatever its code looks like. The official weights cannot be fetched here; the golden tests, the
benchmarks and bench/gpu_check.py (on a bare GPU machine, torch only) load these instead."""

from __future__ import annotations

import math
import zlib

import torch


def stand_in(name: str, shape) -> torch.Tensor:
    """The stand-in tensor of the key `name` and shape `shape`."""
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
    """`model`'s state_dict filled with stand-in tensors, each in its own dtype."""
    return {name: stand_in(name, value.shape).to(value.dtype) for name, value in model.state_dict().items()}
