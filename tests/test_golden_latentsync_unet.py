"""LatentSync's 3D U-Net: the official file's layout key for key, the reference's noise prediction on the golden
inputs with stand-in weights (../shared/golden/latentsync, or CURATE_GOLDEN_DIR), strict loading and refusal of
other files, and what a small one does with a 16-frame window."""

import gc
import json
import time

import numpy as np
import pytest
import torch
from golden import golden_dir, stand_in

from networks.latentsync_unet import (
    LatentSyncUNet,
    UNetConfig,
    UNetFileError,
    load_unet,
    official_layout,
    read_unet_file,
    sinusoid_table,
)

SMALL = UNetConfig(block_out_channels=(32, 64, 64, 64), norm_num_groups=8, attention_head_dim=2,
                   cross_attention_dim=24, motion_module_kwargs={"num_attention_heads": 2})


def _stand_in_weights(model: torch.nn.Module) -> dict:
    """The golden rule for every tensor but the position tables, which keep their sinusoids (as the golden run)."""
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("pos_encoder.pe"):
            state[key] = sinusoid_table(value.shape[1], value.shape[2])
        else:
            state[key] = stand_in(key, value.shape).to(torch.float32)
    return state


def _small(config: UNetConfig = SMALL) -> LatentSyncUNet:
    torch.manual_seed(0)
    model = LatentSyncUNet(config)
    model.load_state_dict(_stand_in_weights(model), strict=True)
    return model.eval()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _full_config() -> dict:
    return json.loads((golden_dir("latentsync") / "unet_config.json").read_text())


def test_golden_unet_layout_is_the_official_files():
    folder = golden_dir("latentsync")
    with torch.device("meta"):
        model = LatentSyncUNet.from_config_dict(_full_config())
    shapes = {key: list(value.shape) for key, value in model.state_dict().items()}
    expected = json.loads((folder / "latentsync_unet_state_dict_shapes.json").read_text())
    assert [key for key in expected if key not in shapes] == []
    assert [key for key in shapes if key not in expected] == []
    assert shapes == expected
    assert len(shapes) == 1246
    assert sum(np.prod(shape) for shape in shapes.values()) == pytest.approx(1.268e9, rel=1e-3)
    # the yaml's defaults are ours
    assert UNetConfig.from_config_dict(_full_config()) == UNetConfig()


@pytest.mark.timeout(900)
def test_golden_unet_reproduces_the_reference_output():
    folder = golden_dir("latentsync")
    inputs = np.load(folder / "latentsync_input.npz")
    expected = np.load(folder / "latentsync_expected.npz")["unet_output"]
    with torch.device("meta"):
        model = LatentSyncUNet.from_config_dict(_full_config())
    model.load_state_dict(_stand_in_weights(model), strict=True, assign=True)   # ~5 GB, allocated once
    model.eval()
    try:
        start = time.perf_counter()
        with torch.no_grad():
            out = model(torch.from_numpy(inputs["unet_sample"]), torch.from_numpy(inputs["unet_timestep"]),
                        torch.from_numpy(inputs["unet_encoder_hidden_states"])).numpy()
        seconds = time.perf_counter() - start
    finally:
        del model
        gc.collect()
    assert out.shape == expected.shape == (1, 4, 2, 32, 32)
    error = np.abs(out - expected).max()
    relative = error / np.abs(expected).max()
    print(f"U-Net forward {seconds:.1f} s; max abs error {error:.2e}, relative to max |out| {relative:.2e}")
    assert error < 1e-4 * max(1.0, float(np.abs(expected).max()))


def test_golden_unet_loads_its_file_strictly_and_refuses_others(tmp_path):
    golden_dir("latentsync")
    model = _small()
    path = tmp_path / "latentsync_unet.pt"
    torch.save(official_layout(model, global_step=1234), path)
    assert set(torch.load(path, weights_only=True)) == {"state_dict", "global_step"}
    assert read_unet_file(path)["global_step"] == 1234

    loaded = load_unet(path, SMALL)
    assert not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # without a config, the layout is read from the file (heads aside, which no shape holds)
    inferred = load_unet(path).config
    assert (inferred.block_out_channels, inferred.in_channels, inferred.cross_attention_dim,
            inferred.layers_per_block) == ((32, 64, 64, 64), 13, 24, 2)

    sample = torch.randn(1, 13, 3, 8, 8)
    audio = torch.randn(3, 50, 24)
    with torch.no_grad():
        assert torch.allclose(loaded(sample, 500, audio), model(sample, 500, audio), atol=1e-6)

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(UNetFileError, match="junk.pt is not a PyTorch checkpoint"):
        load_unet(junk, SMALL)

    wav2lip = tmp_path / "wav2lip.pth"     # the official Wav2Lip layout, DataParallel prefix and all
    torch.save({"state_dict": {"module.face_encoder_blocks.0.0.conv_block.0.weight": torch.zeros(16, 6, 7, 7)},
                "optimizer": None, "global_step": 1, "global_epoch": 1}, wav2lip)
    with pytest.raises(UNetFileError, match=r"wav2lip.pth is not a LatentSync U-Net.*face_encoder_blocks"):
        load_unet(wav2lip, SMALL)

    other = tmp_path / "nine_channels.pt"  # another in_channels: the config says 13
    torch.save(official_layout(LatentSyncUNet(SMALL.replace(in_channels=9)), 0), other)
    with pytest.raises(UNetFileError, match=r"nine_channels.pt is a U-Net of another config.*in_channels=9"):
        load_unet(other, SMALL)

    state = official_layout(model, 0)
    del state["state_dict"]["up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v.weight"]
    state["state_dict"]["up_blocks.1.extra.weight"] = torch.zeros(1)
    broken = tmp_path / "broken.pt"
    torch.save(state, broken)
    with pytest.raises(UNetFileError, match=r"broken.pt does not fit.*1 keys missing \(first 'up_blocks.1.attentions"
                                            r".0.transformer_blocks.0.attn2.to_v.weight'\), 1 unexpected keys"):
        load_unet(broken, SMALL)

    state = official_layout(model, 0)
    key = "down_blocks.0.motion_modules.0.temporal_transformer.proj_in.weight"
    state["state_dict"][key] = torch.zeros(16, 32)
    reshaped = tmp_path / "reshaped.pt"
    torch.save(state, reshaped)
    with pytest.raises(UNetFileError, match=rf"1 of another shape \(first '{key} \(16, 32\) vs \(32, 32\)'\)"):
        load_unet(reshaped, SMALL)


def test_golden_unet_small_runs_a_16_frame_window_and_mixes_frames():
    golden_dir("latentsync")
    model = _small()
    torch.manual_seed(1)
    sample = torch.randn(2, 13, 16, 8, 8)
    audio = torch.randn(2 * 16, 50, 24)
    with torch.no_grad():
        out = model(sample, torch.tensor([10, 900]), audio)
        assert out.shape == (2, 4, 16, 8, 8)
        assert torch.isfinite(out).all()
        # the audio is per frame, (B F, ...) or (B, F, ...) alike
        assert torch.equal(model(sample, torch.tensor([10, 900]), audio.reshape(2, 16, 50, 24)), out)
        changed = sample.clone()
        changed[:, :, 5] += torch.randn(changed[:, :, 5].shape)   # not a constant, which GroupNorms remove
        other = model(changed, torch.tensor([10, 900]), audio)
        assert (other[:, :, 0] - out[:, :, 0]).abs().max() > 1e-4     # frame 5's change reaches frame 0
        # a batch item is on its own
        alone = model(sample[1:], torch.tensor([900]), audio[16:])
        assert (alone - out[1:]).abs().max() < 1e-3 * out.abs().max()        # float noise of another batch size
    with pytest.raises(ValueError, match="encoder_hidden_states must be"):
        model(sample, 10, audio[:16])
    with pytest.raises(ValueError, match="position table of 24"):
        model(torch.randn(1, 13, 25, 8, 8), 10, None)


def test_golden_unet_motion_modules_mix_frames_and_start_as_the_identity():
    golden_dir("latentsync")
    fresh = LatentSyncUNet(SMALL).eval()
    module = fresh.down_blocks[1].motion_modules[0]
    x = torch.randn(1, 64, 16, 4, 4)
    with torch.no_grad():
        assert torch.equal(module(x), x)          # proj_out starts at zero: a residual that adds nothing
        # the same module with weights: frame 0 sees frame 5, and only through the motion module
        module.load_state_dict({k.removeprefix("down_blocks.1.motion_modules.0."): v
                                for k, v in _stand_in_weights(fresh).items()
                                if k.startswith("down_blocks.1.motion_modules.0.")})
        y = x.clone()
        y[:, :, 5] += torch.randn(y[:, :, 5].shape)
        assert (module(y)[:, :, 0] - module(x)[:, :, 0]).abs().max() > 1e-3
        spatial = _small().down_blocks[1].attentions[0]
        audio = torch.randn(16, 50, 24)
        assert torch.allclose(spatial(y, audio)[:, :, 0], spatial(x, audio)[:, :, 0])   # per frame

    # the position table is the sinusoid, a persistent buffer (so it is in the file)
    pe = dict(fresh.named_buffers())["down_blocks.1.motion_modules.0.temporal_transformer.transformer_blocks.0."
                                     "attention_blocks.0.pos_encoder.pe"]
    assert pe.shape == (1, 24, 64)
    assert torch.allclose(pe[0, 3, 0::2], torch.sin(3 * torch.exp(torch.arange(0, 64, 2) * (-np.log(1e4) / 64))))
    assert torch.allclose(pe[0, 3, 1::2], torch.cos(3 * torch.exp(torch.arange(0, 64, 2) * (-np.log(1e4) / 64))))


def test_golden_unet_trains_with_gradient_checkpointing():
    golden_dir("latentsync")
    model = _small().train()
    sample = torch.randn(1, 13, 4, 8, 8)
    audio = torch.randn(4, 50, 24)
    model(sample, 300, audio).square().mean().backward()
    plain = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.enable_gradient_checkpointing()
    model(sample, 300, audio).square().mean().backward()
    for key, grad in plain.items():
        assert torch.allclose(dict(model.named_parameters())[key].grad, grad, atol=1e-5, rtol=1e-4), key
