"""The stand-in weights of ../shared/golden, re-implemented from fill_weights.py's docstring: every tensor of a
state_dict filled by a rule keyed on its name, so any model with the official key names and shapes gets the
same tensors whatever its code looks like."""

from __future__ import annotations

import math
import os
import zlib
from pathlib import Path

import pytest
import torch

# another golden set of the same layout can be checked by the same tests: CURATE_GOLDEN_DIR=/path pytest -k golden
GOLDEN = Path(os.environ.get("CURATE_GOLDEN_DIR") or Path(__file__).resolve().parents[2] / "shared" / "golden")


def golden_dir(name: str) -> Path:
    """GOLDEN/name, or a skip that says what is missing."""
    folder = GOLDEN / name
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent: the golden tests need ../shared/golden (or CURATE_GOLDEN_DIR)")
    return folder


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
