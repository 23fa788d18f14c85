"""A training run's checkpoints: `checkpoints/step-N/` with the exported network (the official layout its
recipe writes), the adversary's, and `train_state.pt` (optimizer, grad scaler, RNG states, the best so far).
A folder is renamed into place only once complete; resuming restores it to the bit. `recipe` is a
training.loop.Recipe; `rival` the adversary's optimizer and grad scaler."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from networks.checkpoints import load_tensors

CHECKPOINTS = "checkpoints"
STATE_FILE = "train_state.pt"


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a folder is renamed into place only once everything is in it)."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit()
             and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = checkpoint_dirs(run_dir)
    return found[-1] if found else None


def best_checkpoint(run_dir: Path) -> Path | None:
    try:
        best = json.loads((Path(run_dir) / CHECKPOINTS / "best.json").read_text())
    except (OSError, ValueError):
        return None
    path = Path(run_dir) / CHECKPOINTS / best["checkpoint"]
    return path if path.is_dir() else None


def save_checkpoint(run_dir: Path, recipe, model: nn.Module, optimizer, scaler, step: int, position: dict,
                    best: dict | None, keep: int, adversary: nn.Module | None = None,
                    rival=None) -> Path:
    """The checkpoint of `step`: the model in the recipe's export, and the state a resumed run needs, with
    `position`, where in the data the next micro-batch is (its `epoch`, shard and key, ...)."""
    folder = Path(run_dir) / CHECKPOINTS
    target = folder / f"step-{step:09d}"
    partial = folder / f"{target.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    epoch = int(position.get("epoch", 0))
    torch.save(recipe.export(model, step, epoch), partial / recipe.export_name)
    names = [recipe.export_name, STATE_FILE]
    state = {"step": step, "epoch": epoch, "data": position, "optimizer": optimizer.state_dict(),
             "scaler": scaler.state_dict(), "rng": rng_state(), "best": best}
    if hasattr(recipe, "state_dict"):
        state["recipe"] = recipe.state_dict()
    if adversary is not None:
        torch.save(recipe.export_adversary(adversary, step, epoch), partial / recipe.adversary_export_name)
        names.insert(1, recipe.adversary_export_name)
        state["adversary"] = {"optimizer": rival.optimizer.state_dict(), "scaler": rival.scaler.state_dict()}
    torch.save(state, partial / STATE_FILE)
    for name in names:
        with open(partial / name, "rb") as handle:
            os.fsync(handle.fileno())
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)
    if best is not None:
        write_json(folder / "best.json", {"checkpoint": f"step-{best['step']:09d}", **best})
    prune(run_dir, keep, best)
    return target


def prune(run_dir: Path, keep: int, best: dict | None) -> None:
    found = checkpoint_dirs(run_dir)
    keep_names = {p.name for p in found[-keep:]}
    if best is not None:
        keep_names.add(f"step-{best['step']:09d}")
    for path in found:
        if path.name not in keep_names:
            shutil.rmtree(path, ignore_errors=True)


def restore(checkpoint: Path, recipe, model: nn.Module, optimizer, scaler, device,
             adversary: nn.Module | None = None, rival=None) -> tuple[int, dict | None, dict | None]:
    """Load a checkpoint into the model, optimizer and scaler (and the adversary's); returns its step, its best
    so far and where in the data it stopped (None for an older checkpoint)."""
    exported = load_tensors(checkpoint / recipe.export_name)
    model.load_state_dict(exported["state_dict"], strict=True)
    # our own file, with numpy's RNG state among plain values: not a network's checkpoint
    state = torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    if "recipe" in state and hasattr(recipe, "load_state_dict"):
        recipe.load_state_dict(state["recipe"])
    # a checkpoint without the adversary (a run that had none until now): it starts afresh
    if adversary is not None and "adversary" in state and (checkpoint / recipe.adversary_export_name).is_file():
        judged = load_tensors(checkpoint / recipe.adversary_export_name)
        adversary.load_state_dict(judged["state_dict"], strict=True)
        rival.optimizer.load_state_dict(state["adversary"]["optimizer"])
        rival.scaler.load_state_dict(state["adversary"]["scaler"])
    set_rng_state(state["rng"], device)
    return int(state["step"]), state.get("best"), state.get("data")


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_json(path: Path, data: dict) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=1))
    os.replace(partial, path)
