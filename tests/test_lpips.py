"""LPIPS-VGG (generators/lpips.py) against its definition: zero on identical images and growing with noise, equal
to an explicit re-implementation of the paper's equation 1, a hand-computed normalise-and-weigh step, strict
loading of the two official file layouts, and a frozen network that still passes gradients to its inputs. The
official weights are not here, so the network carries stand-in weights (tests/golden.py's rule; the heads made
non-negative, as the published ones are)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from golden import stand_in_state_dict

from networks.lpips import (
    CHANNELS,
    LPIPS,
    LinearHead,
    LpipsFileError,
    layer_distance,
    load_lpips,
)

# torchvision's vgg16 classifier, as vgg16-397923af.pth holds it next to `features.*`
_CLASSIFIER = {"classifier.0.weight": (4096, 25088), "classifier.0.bias": (4096,),
               "classifier.3.weight": (4096, 4096), "classifier.3.bias": (4096,),
               "classifier.6.weight": (1000, 4096), "classifier.6.bias": (1000,)}


def _stand_in() -> dict:
    state = stand_in_state_dict(LPIPS())
    return {k: v.abs() if k.startswith("lin") else v for k, v in state.items()}


def _placeholder(shape) -> torch.Tensor:
    """A tensor of `shape` over one element: torch.save keeps the stride-0 view, so a 4096 x 25088 classifier
    weight costs bytes, not 400 MB, in a file whose values nobody reads."""
    return torch.zeros(1).expand(*shape)


@pytest.fixture(scope="module")
def state() -> dict:
    return _stand_in()


@pytest.fixture(scope="module")
def model(state) -> LPIPS:
    net = LPIPS()
    net.load_state_dict(state, strict=True)
    return net


def _smooth_image(seed: int, size: int = 64) -> torch.Tensor:
    """(1, 3, size, size) in [-1, 1]: 8 x 8 noise upsampled, a picture of soft blobs rather than white noise."""
    coarse = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    return torch.tanh(F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False))


def test_identical_is_zero_and_noise_grows_it(model):
    image = _smooth_image(0)
    assert torch.equal(model(image, image.clone()), torch.zeros(1, 1, 1, 1))

    sigmas = torch.tensor([0.01, 0.03, 0.1, 0.3, 0.6]).view(-1, 1, 1, 1)
    noise = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    clean = image.expand(len(sigmas), -1, -1, -1)
    with torch.no_grad():
        distances = model(clean, clean + sigmas * noise).flatten()
    assert distances.shape == (5,) and distances[0] > 0
    assert torch.all(distances[1:] > distances[:-1]), distances


# --- an independent re-implementation, written from the paper and the reference's constants ----------------

_SHIFT = torch.tensor([-0.030, -0.088, -0.188], dtype=torch.float64).view(1, 3, 1, 1)
_SCALE = torch.tensor([0.458, 0.448, 0.450], dtype=torch.float64).view(1, 3, 1, 1)
# VGG-16's convolutions by torchvision index, grouped by the stage each ends (relu1_2 ... relu5_3); a 2 x 2
# max pool precedes every stage but the first
_STAGES = ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))


def _reference_terms(state: dict, x0: torch.Tensor, x1: torch.Tensor) -> list[torch.Tensor]:
    """Equation 1 per layer l, in float64: mean over (h, w) of sum_c (w_lc (yhat_hwc - yhat0_hwc))^2, with
    yhat the channel vector over its L2 norm (+1e-10) and w_l = sqrt of the stored 1x1 head (the code's head
    multiplies the squared difference, so it holds w_l squared)."""
    def features(x):
        h = (x.double() - _SHIFT) / _SCALE
        out = []
        for stage, convs in enumerate(_STAGES):
            if stage:
                h = F.max_pool2d(h, kernel_size=2, stride=2)
            for i in convs:
                h = F.relu(F.conv2d(h, state[f"features.{i}.weight"].double(), state[f"features.{i}.bias"].double(),
                                    padding=1))
            out.append(h)
        return out

    terms = []
    for layer, (y, y0) in enumerate(zip(features(x0), features(x1))):
        yhat = y / (torch.sqrt((y * y).sum(dim=1, keepdim=True)) + 1e-10)
        yhat0 = y0 / (torch.sqrt((y0 * y0).sum(dim=1, keepdim=True)) + 1e-10)
        w = state[f"lin{layer}.model.1.weight"].double().view(1, -1, 1, 1).sqrt()
        per_position = ((w * (yhat - yhat0)) ** 2).sum(dim=1)                  # ||w ⊙ (ŷ - ŷ0)||² at each h, w
        height, width = per_position.shape[1:]
        terms.append(per_position.sum(dim=(1, 2)) / (height * width))
    return terms


def test_matches_equation_1(model, state):
    x0 = _smooth_image(2, 32).expand(2, -1, -1, -1).contiguous()
    x1 = torch.cat([_smooth_image(3, 32), x0[:1] + 0.2 * torch.randn(1, 3, 32, 32,
                                                                        generator=torch.Generator().manual_seed(4))])
    with torch.no_grad():
        total, terms = model(x0, x1, per_layer=True)
    expected = _reference_terms(state, x0, x1)
    assert total.shape == (2, 1, 1, 1) and len(terms) == 5
    for got, want in zip(terms, expected):
        assert torch.allclose(got.flatten().double(), want, rtol=0, atol=1e-6), (got.flatten(), want)
    assert torch.allclose(total.flatten().double(), sum(expected), rtol=0, atol=1e-6)
    assert total.min() > 1e-3                                   # not a vacuous agreement of zeros


def test_normalise_and_head_by_hand():
    # one image, 2 channels, 1 x 2 positions. Position 1: (3, 4) -> (0.6, 0.8) against (0, 1) -> (0, 1),
    # squared difference (0.36, 0.04). Position 2: a zero vector stays zero (the eps) against (0, 5) -> (0, 1),
    # squared difference (0, 1). Head weights (1, 2): 0.36 + 0.08 = 0.44 and 0 + 2 = 2, mean 1.22.
    f0 = torch.tensor([[3.0, 0.0], [4.0, 0.0]], dtype=torch.float64).view(1, 2, 1, 2)
    f1 = torch.tensor([[0.0, 0.0], [1.0, 5.0]], dtype=torch.float64).view(1, 2, 1, 2)
    head = LinearHead(2).double().eval()
    with torch.no_grad():
        head.model[1].weight.copy_(torch.tensor([1.0, 2.0]).view(1, 2, 1, 1))
    d = layer_distance(f0, f1, head)
    assert d.shape == (1, 1, 1, 1)
    assert abs(d.item() - 1.22) < 1e-9


def _save_vgg(path, features: dict) -> None:
    torch.save({**features, **{k: _placeholder(s) for k, s in _CLASSIFIER.items()}}, path)


def test_files_load_strictly(tmp_path, model, state):
    features = {k: v for k, v in state.items() if k.startswith("features.")}
    heads = {k: v for k, v in state.items() if k.startswith("lin")}
    assert sorted(heads) == [f"lin{i}.model.1.weight" for i in range(5)]
    assert [heads[f"lin{i}.model.1.weight"].shape[1] for i in range(5)] == list(CHANNELS)
    vgg_file, heads_file = tmp_path / "vgg16-397923af.pth", tmp_path / "vgg.pth"
    _save_vgg(vgg_file, features)
    torch.save(heads, heads_file)

    loaded = load_lpips(vgg_file, heads_file, "cpu")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    image = _smooth_image(5, 32)
    with torch.no_grad():
        assert torch.equal(loaded(image, -image), model(image, -image))

    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"<html>404: Not Found</html>")
    with pytest.raises(LpipsFileError, match="junk.pth"):
        load_lpips(vgg_file, junk)
    with pytest.raises(LpipsFileError, match="junk.pth"):
        load_lpips(junk, heads_file)

    short = tmp_path / "short.pth"
    torch.save({k: v for k, v in heads.items() if k != "lin3.model.1.weight"}, short)
    with pytest.raises(LpipsFileError, match=r"short\.pth.*1 keys missing.*lin3\.model\.1\.weight"):
        load_lpips(vgg_file, short)

    bent = tmp_path / "bent.pth"
    wrong = {k: _placeholder(v.shape) for k, v in features.items()}
    wrong["features.10.weight"] = _placeholder((256, 128, 1, 1))
    _save_vgg(bent, wrong)
    with pytest.raises(LpipsFileError, match=r"bent\.pth.*1 of another shape.*features\.10\.weight"):
        load_lpips(bent, heads_file)

    with pytest.raises(LpipsFileError, match=r"vgg\.pth.*26 keys missing.*features\.0\.weight"):
        load_lpips(heads_file, heads_file)                      # the heads where the trunk should be


def test_gradients_reach_inputs_not_the_network(model):
    model.train()                                               # as a trainer would, holding it as a submodule
    assert not model.training and not any(m.training for m in model.modules())
    assert not any(p.requires_grad for p in model.parameters())
    x0 = _smooth_image(6, 32).requires_grad_(True)
    x1 = _smooth_image(7, 32)
    model(x0, x1).sum().backward()
    assert x0.grad is not None and torch.isfinite(x0.grad).all() and x0.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())
    # deterministic: the heads' Dropout stays off
    with torch.no_grad():
        assert torch.equal(model(x0, x1), model(x0, x1))


def test_rejects_mismatched_or_tiny_inputs(model):
    with pytest.raises(ValueError, match="one shape"):
        model(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 48))
    with pytest.raises(ValueError, match="too small"):
        model(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
