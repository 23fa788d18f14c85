"""Reading a network's checkpoint file safely, the one way every generator's loader reads one."""

from __future__ import annotations

import re
from pathlib import Path

import torch


def load_tensors(path: str | Path, error: type[Exception], mmap: bool = False):
    """torch.load with weights_only=True and no fallback to full unpickling: the official files hold only
    tensors, numbers and plain containers, which it reads, so a file that needs more is not one of them, and
    unpickling it could run its code. Anything unreadable raises `error` with one line naming the file; a
    missing file stays FileNotFoundError. `mmap`: map a large file instead of reading it (torch's legacy format,
    which cannot be mapped, is read)."""
    try:
        if mmap:
            try:
                return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as exc:  # noqa: BLE001 - torch reports a file it cannot read in many ways
        text = str(exc)
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if refused:
            raise error(f"{path} pickles {refused.group(1)} besides tensors, which no official file does; not "
                        f"unpickled, since that could run code") from None
        detail = re.search(r"WeightsUnpickler error:\s*(\S.*)", text)
        reason = detail.group(1) if detail else (text.strip().splitlines() or [""])[0]
        raise error(f"{path} is not a PyTorch checkpoint ({type(exc).__name__}: {reason[:120]})") from None
