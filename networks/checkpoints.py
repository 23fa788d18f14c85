"""Reading a network's checkpoint file: the one reader (`load_tensors`) and the one strict loader
(`load_strict`) every network's loader goes through, and the error both raise."""

from __future__ import annotations

import re
from pathlib import Path

import torch


class CheckpointError(ValueError, RuntimeError):
    """A file that is not the checkpoint asked for; the message is one line: the file and what is wrong. A
    ValueError (a bad input), and a RuntimeError as torch's own strict load raises. Each network names its own
    subclass (GeneratorFileError, UNetFileError...), so a caller can tell which file was refused."""


def load_tensors(path: str | Path, error: type[Exception] = CheckpointError, mmap: bool = False):
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


def key_problems(state: dict, expected: dict) -> list[str]:
    """What keeps `state` from loading strictly where `expected` (a module's state_dict) is wanted: how many keys
    are missing, unexpected or of another shape, each with the first of them."""
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    reshaped = [f"{key} {tuple(state[key].shape)} vs {tuple(expected[key].shape)}" for key in expected
                if key in state and tuple(state[key].shape) != tuple(expected[key].shape)]
    return [f"{len(keys)} {what} (first {keys[0]!r})" for keys, what in
            ((missing, "keys missing"), (unexpected, "unexpected keys"), (reshaped, "of another shape")) if keys]


def load_strict(model: torch.nn.Module, state: dict, refused: str, error: type[Exception] = CheckpointError,
                dtype: torch.dtype | None = None, assign: bool = False) -> torch.nn.Module:
    """`model` given exactly the tensors of `state`: every key it has, of its shape, and no other, else `error`
    with `refused` ("<file> does not fit X") and the keys that differ. Each tensor becomes `dtype`, or the
    model's own dtype for it. `assign`: the tensors are taken as they are (a model built on the meta device)."""
    expected = model.state_dict()
    problems = key_problems(state, expected)
    if problems:
        raise error(f"{refused}: {', '.join(problems)}")
    model.load_state_dict({key: value.to(dtype or expected[key].dtype) for key, value in state.items()},
                          strict=True, assign=assign)
    return model
