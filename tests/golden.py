"""Where ../shared/golden is (or CURATE_GOLDEN_DIR), and its stand-in weights (networks.stand_in, the fill rule
the golden tests, the benchmarks and bench/gpu_check.py share)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from networks.stand_in import stand_in, stand_in_state_dict

__all__ = ["GOLDEN", "golden_dir", "stand_in", "stand_in_state_dict"]

# another golden set of the same layout can be checked by the same tests: CURATE_GOLDEN_DIR=/path pytest -k golden
GOLDEN = Path(os.environ.get("CURATE_GOLDEN_DIR") or Path(__file__).resolve().parents[2] / "shared" / "golden")


def golden_dir(name: str) -> Path:
    """GOLDEN/name, or a skip that says what is missing."""
    folder = GOLDEN / name
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent: the golden tests need ../shared/golden (or CURATE_GOLDEN_DIR)")
    return folder


