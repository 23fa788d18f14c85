"""TREPA's feature extractor, VideoMAE-v2's ViT-g/14: the official file's layout key for key, the reference's
features and loss on the golden clips with stand-in weights (../shared/golden/latentsync, or CURATE_GOLDEN_DIR),
strict loading and refusal of other files, and what the loss does with a small ViT."""

import gc
import json
import time

import numpy as np
import pytest
import torch
from golden import golden_dir, stand_in, stand_in_state_dict

from networks.videomae import OFFICIAL, SMALL, TrepaFileError, VideoMAEv2, load_videomae, official_layout, sinusoid_table
from training.losses import TrepaLoss, frames_to_clip


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _small() -> VideoMAEv2:
    model = VideoMAEv2(SMALL)
    model.load_state_dict(stand_in_state_dict(model), strict=True)
    return model.eval()


def _clip(seed: int, frames: int = 16, side: int = 128) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, frames, side, side, generator=generator) * 2 - 1


def test_golden_videomae_layout_is_the_official_file():
    folder = golden_dir("latentsync")
    with torch.device("meta"):
        model = VideoMAEv2(OFFICIAL)
    shapes = {key: list(value.shape) for key, value in model.state_dict().items()}
    expected = json.loads((folder / "videomae_v2_g_state_dict_shapes.json").read_text())
    assert [key for key in expected if key not in shapes] == []
    assert [key for key in shapes if key not in expected] == []
    assert shapes == expected
    assert len(shapes) == 526
    assert "pos_embed" not in shapes          # the sinusoid table is computed, not in the file
    assert sum(np.prod(shape) for shape in shapes.values()) == 1_011_855_918    # 1.01 B parameters


def test_position_table_is_the_references_sinusoid():
    positions, dim = 2048, 1408
    angle = np.array([[p / np.power(10000, 2 * (j // 2) / dim) for j in range(dim)] for p in (0, 1, 7, 1000, 2047)])
    angle[:, 0::2] = np.sin(angle[:, 0::2])
    angle[:, 1::2] = np.cos(angle[:, 1::2])
    table = sinusoid_table(positions, dim)
    assert table.shape == (1, positions, dim) and table.dtype == torch.float32
    np.testing.assert_allclose(table[0, [0, 1, 7, 1000, 2047]].numpy(), angle.astype(np.float32), rtol=0, atol=1e-6)


@pytest.mark.timeout(900)
def test_golden_trepa_reproduces_the_reference_features_and_loss():
    folder = golden_dir("latentsync")
    inputs = np.load(folder / "latentsync_input.npz")
    expected = np.load(folder / "latentsync_expected.npz")
    start = time.monotonic()
    with torch.device("meta"):
        model = VideoMAEv2(OFFICIAL)
    state = {key: stand_in(key, value.shape) for key, value in model.state_dict().items()}
    model.load_state_dict(state, strict=True, assign=True)
    del state
    model.reset_positions()
    trepa = TrepaLoss(model)
    fake = torch.from_numpy(inputs["trepa_fake"])
    real = frames_to_clip(torch.from_numpy(inputs["aligned_frames_rgb"]))
    assert real.shape == fake.shape == (1, 3, 16, 256, 256)
    try:
        with torch.no_grad():
            feats = trepa.features(torch.cat([fake, real]))     # one pass for both: the same as two
        feats_fake, feats_real = feats[:1], feats[1:]
        loss = torch.nn.functional.mse_loss(feats_fake, feats_real).item()     # as TrepaLoss.__call__
        errors = {name: float(np.abs(ours.numpy() - expected[name]).max())
                  for name, ours in (("trepa_feats_fake", feats_fake), ("trepa_feats_real", feats_real))}
        errors["trepa_loss (relative)"] = abs(loss - float(expected["trepa_loss"])) / float(expected["trepa_loss"])
        print(f"TREPA golden: {time.monotonic() - start:.0f} s, max abs errors {errors}, loss {loss:.6e} vs "
              f"{float(expected['trepa_loss']):.6e}")
        for name in ("trepa_feats_fake", "trepa_feats_real"):
            assert errors[name] < 1e-6      # of unit-norm features of 1408 entries (found: about 2e-8)
            np.testing.assert_allclose(np.linalg.norm(expected[name]), 1, rtol=1e-5)
        # the loss is the MSE of two nearly equal features (about 2e-8): it needs the features' differences right
        assert loss == pytest.approx(float(expected["trepa_loss"]), rel=1e-4)
    finally:
        del model, trepa
        gc.collect()


def test_small_vit_saves_and_loads_strictly(tmp_path):
    model = _small()
    clip = _clip(1, side=SMALL.img_size)
    with torch.no_grad():
        want = model(clip)
    assert want.shape == (1, SMALL.num_classes)
    for name, blob in (("model.pth", official_layout(model)),
                       ("module.pth", {"module": official_layout(model)["model"]}),
                       ("bare.pth", official_layout(model)["model"]),
                       ("prefixed.pth", {"module." + key: value for key, value in official_layout(model)["model"].items()})):
        torch.save(blob, tmp_path / name)
        loaded = load_videomae(tmp_path / name, config=SMALL)
        assert not loaded.training
        assert loaded.pos_embed.device.type == "cpu"
        with torch.no_grad():
            torch.testing.assert_close(loaded(clip), want, rtol=0, atol=0)


def test_wrong_files_are_refused_by_name(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00not a checkpoint\xff" * 64)
    with pytest.raises(TrepaFileError, match=r"junk\.pth is not a PyTorch checkpoint"):
        load_videomae(junk)

    small = tmp_path / "small.pth"
    torch.save(official_layout(_small()), small)
    with pytest.raises(TrepaFileError, match=r"small\.pth does not fit .*of another shape \(first 'patch_embed"):
        load_videomae(small)                                  # the official config
    deeper = SMALL.replace(depth=3)
    with pytest.raises(TrepaFileError, match=r"keys missing \(first 'blocks\.2\.norm1\.weight'\)"):
        load_videomae(small, config=deeper)

    from networks.wav2lip import Wav2LipDiscriminator

    other = tmp_path / "disc.pth"
    torch.save({"state_dict": Wav2LipDiscriminator().state_dict()}, other)
    with pytest.raises(TrepaFileError, match=r"disc\.pth holds no state_dict, bare or under 'model' or 'module' "
                                             r"\(top-level keys \['state_dict'\]\)"):
        load_videomae(other)
    torch.save(Wav2LipDiscriminator().state_dict(), other)
    with pytest.raises(TrepaFileError, match=r"disc\.pth does not fit .*keys missing \(first 'patch_embed\.proj"
                                             r"\.weight'\).*unexpected keys \(first 'face_encoder_blocks"):
        load_videomae(other)

    pickled = tmp_path / "pickled.pth"
    torch.save({"model": SMALL}, pickled)                  # a config object: not tensors
    with pytest.raises(TrepaFileError, match=r"pickled\.pth pickles .*VideoMAEConfig"):
        load_videomae(pickled)
    with pytest.raises(FileNotFoundError):
        load_videomae(tmp_path / "absent.pth")


def test_loss_is_zero_for_equal_clips_and_gradients_reach_only_the_fake():
    trepa = TrepaLoss(_small())
    real = _clip(2)
    assert trepa(real, real.clone()).item() == 0.0
    fake = (real + 0.3 * torch.randn_like(real)).requires_grad_(True)
    loss = trepa(fake, real)
    assert loss.item() > 0 and loss.dim() == 0
    loss.backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert all(not parameter.requires_grad and parameter.grad is None for parameter in trepa.model.parameters())
    feats = trepa.features(real)
    assert feats.shape == (1, SMALL.embed_dim)
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(1))
    recomputed = fake.detach().clone().requires_grad_(True)      # block checkpointing: the same gradient
    TrepaLoss(_small(), checkpointing=True)(recomputed, real).backward()
    torch.testing.assert_close(recomputed.grad, fake.grad)
    with torch.no_grad():        # the loss is the MSE of the features, one batch or two the same
        both = trepa.features(torch.cat([fake, real]))
        torch.testing.assert_close(trepa(fake, real), torch.nn.functional.mse_loss(both[:1], both[1:]))
        batch = torch.cat([fake, real, real])
        torch.testing.assert_close(trepa(batch, batch.flip(0)), torch.nn.functional.mse_loss(both[[0, 1, 1]],
                                                                                            both[[1, 1, 0]]))


def test_clamping_resizing_and_other_frame_counts():
    trepa = TrepaLoss(_small())
    # values beyond [-1, 1] are clamped (after the resize, as the reference): 3 and 5 are both white
    assert trepa(torch.full((1, 3, 16, 100, 100), 3.0), torch.full((1, 3, 16, 100, 100), 5.0)).item() == 0.0
    assert trepa(torch.full((1, 3, 16, 100, 100), 0.5), torch.full((1, 3, 16, 100, 100), 5.0)).item() > 0
    # eight frames: the position table is interpolated along time
    short = trepa.features(_clip(4, frames=8))
    assert short.shape == (1, SMALL.embed_dim) and torch.isfinite(short).all()
    with pytest.raises(ValueError, match="multiple of the tubelet"):
        trepa.model.forward_features(torch.zeros(1, 3, 3, SMALL.img_size, SMALL.img_size))
    with pytest.raises(ValueError, match="differ in shape"):
        trepa(_clip(5), _clip(5, frames=8))
