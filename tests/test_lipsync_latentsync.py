"""`curate lipsync --model latentsync`: LatentSync through the same pipeline as Wav2Lip, with small U-Nets and
VAEs (the full-size networks have golden tests of their own: test_golden_latentsync_unet.py,
test_golden_whisper.py), at 256 and at 512, the weights' files in the models folder's layout as `curate models
download latentsync` leaves them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from golden import golden_dir, stand_in_state_dict
from test_lipsync import assert_only_the_mouth_changed, frames_of

from networks.latentsync import VAE_CONFIG, LatentSyncSampler, build_vae, mouth_mask
from networks.latentsync_unet import LatentSyncUNet, UNetConfig, official_layout, sinusoid_table
from networks.whisper import TINY_DIMS, WhisperEncoder, feature_chunks, whisper_features
from footage import ffmpeg

pytestmark = pytest.mark.usefixtures("talking_heads")

# small enough for the CPU; the audio cross-attention as the official (Whisper tiny's 384)
SMALL_UNET = UNetConfig(block_out_channels=(32, 64, 64, 64), norm_num_groups=8, attention_head_dim=8,
                        motion_module_kwargs={"num_attention_heads": 8})
SMALL_VAE = {**VAE_CONFIG, "block_out_channels": (8, 8, 16, 16), "norm_num_groups": 4, "layers_per_block": 1}
STEPS = ("--steps", "2")


def _filled(model: torch.nn.Module) -> torch.nn.Module:
    """The golden's stand-in weights (seeded by name), position tables kept as computed."""
    state = stand_in_state_dict(model)
    for key, value in model.state_dict().items():
        if key.endswith("pos_encoder.pe"):
            state[key] = sinusoid_table(value.shape[1], value.shape[2])
        elif key.endswith("positional_embedding"):
            state[key] = value
    model.load_state_dict(state)
    return model.eval()


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    """A models folder as `curate models download latentsync latentsync-512` makes it: the U-Nets in a folder
    per version, Whisper's tiny.pt (the official layout; stand-in weights), the VAE's config and weights."""

    folder = tmp_path_factory.mktemp("models")
    for version in ("1.5", "1.6"):
        (folder / f"latentsync-{version}").mkdir()
        torch.save(official_layout(_filled(LatentSyncUNet(SMALL_UNET)), 0),
                   folder / f"latentsync-{version}" / "latentsync_unet.pt")
    write_whisper_and_vae(folder)
    return folder


def write_whisper_and_vae(folder: Path) -> None:
    """Whisper's tiny.pt (the official layout) and the small VAE's config and weights, stand-in weights, in the
    models folder's layout (whisper/, sd-vae-ft-mse/)."""
    from safetensors.torch import save_file

    (folder / "whisper").mkdir()
    encoder = _filled(WhisperEncoder())
    torch.save({"dims": {**TINY_DIMS, "n_vocab": 51865, "n_text_ctx": 448, "n_text_state": 384, "n_text_head": 6,
                         "n_text_layer": 4},
                "model_state_dict": {f"encoder.{k}": v for k, v in encoder.state_dict().items()}},
               folder / "whisper" / "tiny.pt")
    vae = folder / "sd-vae-ft-mse"
    vae.mkdir()
    (vae / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", **SMALL_VAE}))
    save_file(_filled(build_vae(SMALL_VAE)).state_dict(), vae / "diffusion_pytorch_model.safetensors")


def refused(models: Path, monkeypatch, capsys, *args) -> str:
    """`curate lipsync --model latentsync ARGS` in this process, which must fail: its one-line error."""
    from curate.cli import main

    monkeypatch.setenv("CURATE_MODELS_DIR", str(models))
    assert main(["lipsync", *map(str, args), "--model", "latentsync"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def curate(models: Path, *args) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "curate.cli", "lipsync", *map(str, args), "--model", "latentsync"],
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "CURATE_MODELS_DIR": str(models), "OMP_NUM_THREADS": "2"})


@pytest.mark.timeout(900)
def test_latentsync_at_256_writes_the_audios_frames_and_changes_only_the_mouth(models_dir, work, tmp_path):
    out = tmp_path / "out.mp4"
    result = curate(models_dir, work / "kitchen.mp4", work / "speech.wav", "-o", out, *STEPS, "--crf", "0",
                    "--preset", "ultrafast")
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}: 40 frames (1.60 s)" in result.stdout and "0 without the face" in result.stdout
    source, made = frames_of(work / "kitchen.mp4"), frames_of(out)
    assert len(made) == 40
    for k in (0, 17, 39):       # in each of the three windows (16, 16, 8 frames)
        assert_only_the_mouth_changed(made[k], source[k])
    import av

    with av.open(str(out)) as container:         # the speech's own sound: AAC at its rate and channels
        stream = container.streams.audio[0]
        assert (stream.codec_context.sample_rate, stream.codec_context.channels) == (44100, 2)
        samples = sum(frame.samples for frame in container.decode(stream))
    assert abs(samples - 1.6 * 44100) < 3072


@pytest.mark.timeout(900)
def test_latentsync_at_512_and_what_it_refuses(models_dir, work, tmp_path, monkeypatch, capsys):
    short = tmp_path / "short.wav"
    ffmpeg("-i", work / "speech.wav", "-t", "0.4", short)
    out = tmp_path / "out.mp4"
    # 1.6's folder says 512: one window of 10 frames at 512
    result = curate(models_dir, work / "kitchen.mp4", short, "-o", out, *STEPS, "--resolution", "512", "--preset",
                    "ultrafast", "--crf", "0")
    assert result.returncode == 0, result.stderr
    made, source = frames_of(out), frames_of(work / "kitchen.mp4")
    assert len(made) == 10
    assert_only_the_mouth_changed(made[5], source[5])

    # a U-Net file that says it is 256 px, asked to run at 512: refused before any work
    ours = tmp_path / "ours.pt"
    torch.save({**torch.load(models_dir / "latentsync-1.5" / "latentsync_unet.pt", weights_only=True),
                "resolution": 256}, ours)
    for args, message in (
            (("--checkpoint", ours, "--resolution", "512"), f"--resolution 512: {ours} is a 256 px model"),
            # a file from elsewhere that says nothing of its resolution
            (("--checkpoint", ours.with_name("plain.pt")), "does not say its resolution: give --resolution 256"),
            (("--checkpoint", work / "kitchen.mp4"), "is not a PyTorch checkpoint"),
            (("--framing", "box"), "LatentSync sees the curation's template crop only")):
        if "plain.pt" in str(args[1]):
            torch.save(torch.load(models_dir / "latentsync-1.5" / "latentsync_unet.pt", weights_only=True), args[1])
        assert message in refused(models_dir, monkeypatch, capsys, work / "kitchen.mp4", short, "-o",
                                  tmp_path / "no.mp4", *args)
    assert not (tmp_path / "no.mp4").exists()


def test_missing_latentsync_weights_stop_before_any_work(models_dir, work, tmp_path, monkeypatch, capsys):
    """The file, its folder and the command; nothing written."""
    empty = tmp_path / "models"
    (empty / "latentsync-1.5").mkdir(parents=True)
    (empty / "latentsync-1.5" / "latentsync_unet.pt").write_bytes(
        (models_dir / "latentsync-1.5" / "latentsync_unet.pt").read_bytes())
    out = tmp_path / "out.mp4"
    err = refused(empty, monkeypatch, capsys, work / "kitchen.mp4", work / "speech.wav", "-o", out)
    # every missing file at once, with one command for them all
    assert (f"tiny.pt is missing in {empty / 'whisper'}, config.json is missing in {empty / 'sd-vae-ft-mse'}, "
            f"diffusion_pytorch_model.safetensors is missing in {empty / 'sd-vae-ft-mse'}; get them with `curate "
            "models download latentsync`") in err
    err = refused(tmp_path / "nothing", monkeypatch, capsys, work / "kitchen.mp4", work / "speech.wav", "-o", out,
                  "--resolution", "512")
    assert "latentsync_unet.pt is missing in" in err and "latentsync-1.6" in err and "download latentsync-512" in err
    assert not out.exists() and list(tmp_path.glob("*.mp4")) == []


def test_the_sampler_keeps_what_the_mask_keeps_and_repeats_itself():
    """Pixels outside LatentSync's mouth region are the input's exactly; the same seed gives the same faces,
    another seed other ones; and the audio changes the mouth (the cross-attention is used)."""
    torch.manual_seed(0)
    unet, vae = _filled(LatentSyncUNet(SMALL_UNET)), _filled(build_vae(SMALL_VAE))
    faces = torch.rand(4, 3, 64, 64) * 2 - 1
    audio = torch.randn(4, 50, 384)
    run = lambda seed, sound=audio: LatentSyncSampler(unet, vae, 64, torch.device("cpu"), steps=2,  # noqa: E731
                                                      seed=seed)(faces, sound)
    first = run(1)
    keep = mouth_mask(64) == 1
    assert torch.equal(first[:, :, keep], faces[:, :, keep])
    assert (first[:, :, ~keep] - faces[:, :, ~keep]).abs().mean() > 0.05
    assert torch.equal(run(1), first) and not torch.equal(run(2), first)
    assert (run(1, torch.randn(4, 50, 384)) - first).abs().mean() > 1e-4


def test_whisper_chunks_are_read_in_order_with_a_window_held():
    """What the model reads frame by frame equals the chunks of the whole features, a restart included."""
    from lipsync.models import _Chunks

    encoder = _filled(WhisperEncoder())
    speech = (np.random.default_rng(0).standard_normal(16000 * 3) * 3000).astype(np.int16)
    whole = feature_chunks(whisper_features(encoder, speech))
    chunks = _Chunks(encoder, speech)
    assert torch.equal(chunks.get(list(range(0, 16))), whole[:16])
    assert torch.equal(chunks.get([20, 21, 40]), whole[[20, 21, 40]])
    assert torch.equal(chunks.get([3]), whole[[3]])                       # back: read again from the start
    assert torch.equal(chunks.get([len(whole) + 5]), whole[[-1]])        # past the end: the last one


@pytest.mark.parametrize("size", [256, 512])
def test_golden_mouth_mask_matches_latentsyncs(size):
    """Ours against LatentSync's mask.png (resized as its load_fixed_mask does): IoU of the regenerated region."""
    theirs = cv2.imread(str(golden_dir("latentsync") / "mask.png"))
    theirs = cv2.resize(theirs, (size, size), interpolation=cv2.INTER_LANCZOS4)[..., 0] / 255.0 < 0.5
    ours = mouth_mask(size).numpy() < 0.5
    assert (ours & theirs).sum() / (ours | theirs).sum() >= 0.99


def test_golden_vae_layout_loads_strictly_and_a_wrong_file_is_refused(tmp_path):
    """sd-vae-ft-mse's keys and shapes (the golden's list) are our VAE's exactly; its weights load strictly from
    safetensors, and a file of other weights is one clear error."""
    from safetensors.torch import save_file

    from networks.latentsync import LatentSyncFileError, load_vae

    shapes = json.loads((golden_dir("latentsync") / "sd_vae_ft_mse_state_dict_shapes.json").read_text())
    with torch.device("meta"):
        ours = {key: list(value.shape) for key, value in build_vae().state_dict().items()}
    assert ours == {key: list(value) for key, value in shapes.items()}
    small = _filled(build_vae(SMALL_VAE))
    save_file(small.state_dict(), tmp_path / "vae.safetensors")
    loaded = load_vae(tmp_path / "vae.safetensors", SMALL_VAE)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in small.state_dict().items())
    with pytest.raises(LatentSyncFileError, match="is not sd-vae-ft-mse's VAE: .* keys missing"):
        load_vae(tmp_path / "vae.safetensors")               # the small weights into the full-size VAE
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(LatentSyncFileError, match="cannot read it as the VAE's weights"):
        load_vae(tmp_path / "junk.safetensors")


def test_download_latentsync_puts_each_file_in_its_folder_verified(models_dir, tmp_path, monkeypatch):
    """`curate models download latentsync` against a server on loopback serving the four files (stand-ins of
    the official layouts): each lands in its folder, verified by its strict load; a U-Net that is not one is
    refused and nothing is left of it."""
    import threading

    from test_models import Handler, Server

    from curate import models

    server = Server(("127.0.0.1", 0), Handler)
    server.files = {}
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        served = []
        for file in models.MODELS["latentsync"][1]:
            source = next(models_dir.glob(f"*/{file.name}"))
            if file.name == "latentsync_unet.pt":
                source = models_dir / "latentsync-1.5" / file.name
            server.files[f"/{file.name}"] = source.read_bytes()
            served.append(models.ModelFile(file.name, f"http://127.0.0.1:{server.server_address[1]}/{file.name}",
                                           file.folder, file.verify))
        monkeypatch.setitem(models.MODELS, "latentsync", (models.MODELS["latentsync"][0], served))
        settings = models.ModelSettings(dir=str(tmp_path / "models"))
        paths = models.download_model("latentsync", settings, progress=lambda line: None)
        assert [p.relative_to(tmp_path / "models").as_posix() for p in paths] == [
            "latentsync-1.5/latentsync_unet.pt", "whisper/tiny.pt", "sd-vae-ft-mse/config.json",
            "sd-vae-ft-mse/diffusion_pytorch_model.safetensors"]
        assert [status for *_, status in models.state("latentsync", settings)] == ["ok"] * 4
        server.files["/latentsync_unet.pt"] = server.files["/tiny.pt"]          # Whisper's file as the U-Net
        paths[0].unlink()
        with pytest.raises(models.ModelError, match="is not a valid latentsync_unet.pt"):
            models.download_model("latentsync", settings, progress=lambda line: None)
        assert list((tmp_path / "models" / "latentsync-1.5").iterdir()) == []
    finally:
        server.shutdown()
        server.server_close()
