"""bench/bench_memory.py's tracker on a tiny training step: the weights, gradients and Adam state it counts are
the bytes they must take, and fake tensors give the real run's peak."""

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_memory  # noqa: E402

from training.loop import LoopSettings  # noqa: E402

BATCH, WIDTH = 32, 256


class TinyRecipe:
    def loss(self, model, batch, device):
        return (model(batch["x"]) - batch["y"]).pow(2).sum(), {"samples": len(batch["x"])}


def tiny(frozen_tail: bool = False):
    model = nn.Sequential(nn.Linear(WIDTH, 2 * WIDTH), nn.ReLU(), nn.Linear(2 * WIDTH, WIDTH), nn.ReLU(),
                          nn.Linear(WIDTH, 8))
    if frozen_tail:
        model[4].requires_grad_(False)
    batch = {"x": torch.randn(BATCH, WIDTH), "y": torch.randn(BATCH, 8)}
    settings = LoopSettings(batch_size=BATCH, optimizer="adamw", max_grad_norm=1.0)
    return bench_memory.Built(TinyRecipe(), model, None, [], settings, batch, None)


def elements(frozen_tail: bool):
    model = tiny(frozen_tail).model
    learn = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return learn, sum(p.numel() for p in model.parameters()) - learn, sum(1 for p in model.parameters()
                                                                           if p.requires_grad)


@pytest.mark.parametrize("frozen_tail", [False, True])
def test_tracker_counts_weights_gradients_and_adam_state(frozen_tail):
    learn, frozen, tensors = elements(frozen_tail)
    result = bench_memory.measure_built("tiny", lambda: tiny(frozen_tail), fake=False)
    peak = result["peak"]
    assert peak["trainable_weights"] == 4 * learn and peak["frozen_weights"] == 4 * frozen
    assert peak["weights"] == 4 * (learn + frozen)
    # AdamW: exp_avg and exp_avg_sq per weight that learns, and a float32 step counter per tensor
    adam = 2 * 4 * learn + 4 * tensors
    # the peak is in the optimizer step: the state, and Adam's temporaries (a few of the largest weight's size,
    # counted as the optimizer's)
    largest = max(p.numel() for p in tiny(frozen_tail).model.parameters() if p.requires_grad)
    assert adam <= peak["optimizer"] <= adam + 3 * 4 * largest
    assert peak["gradients"] == 4 * learn
    # after each step: the weights, the Adam state (from the first step on), no gradient (set to None); the
    # batch (tracked from the start) is all else that lives
    batch = 4 * BATCH * (WIDTH + 8)
    assert result["after_step"] == [4 * (learn + frozen) + adam + batch] * 2
    assert peak["total"] == peak["weights"] + peak["gradients"] + peak["optimizer"] + peak["activations"]
    assert peak["activations"] >= batch


def test_fake_tensors_give_the_real_peak():
    real = bench_memory.measure_built("tiny", tiny, fake=False)
    fake = bench_memory.measure_built("tiny", tiny, fake=True)
    assert fake["mode"] == "fake" and real["mode"] == "real"
    assert abs(fake["peak"]["total"] - real["peak"]["total"]) <= 0.03 * real["peak"]["total"]
    for key in ("weights", "gradients", "optimizer"):
        assert fake["peak"][key] == real["peak"][key]
    assert fake["after_step"] == real["after_step"]
