"""Model weights the stages need: where each file lives, fetching it, and proving it is the right file.

A file counts as installed only once it has loaded into our network with the official key names and shapes
(strict), and its sha256 has been recorded in ``<models dir>/verified.json``. Later uses hash the file again
and refuse one that changed since; a sha256 pinned in the config (``models.sha256``) must match as well.

`curate models list` shows every file and its state; `curate models download [NAME]` fetches from the public
locations, resuming a download that was cut off, and puts a file in place only once complete and verified.
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from curate.config import ModelSettings
from faces import landmarks as face_landmarks
from manifests.files import file_sha256 as sha256_of


class ModelError(RuntimeError):
    """A model file that is missing, cannot be fetched, or is not what it claims to be."""


DownloadError = ModelError  # the name the download code and its callers use


def models_dir(settings: ModelSettings) -> Path:
    configured = settings.dir or os.environ.get("CURATE_MODELS_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "lipsync-curate" / "models"


# -- what each file must load into --------------------------------------------------------------------

def _verify_syncnet(path: Path) -> None:
    from networks.syncnet.syncnet_v2 import load_syncnet

    load_syncnet(path)


def _verify_hyperiqa(path: Path) -> None:
    from networks.hyperiqa import load_hyperiqa

    load_hyperiqa(path)


def _verify_expert(arch: str) -> Callable[[Path], None]:
    def verify(path: Path) -> None:
        from networks.syncnet.experts import load_expert

        load_expert(path, arch=arch)
    return verify


def _verify_generator(path: Path) -> None:
    from networks.wav2lip import load_generator

    load_generator(path)


def _verify_unet(path: Path) -> None:
    from networks.latentsync_unet import load_unet

    load_unet(path)


def _verify_whisper(path: Path) -> None:
    from networks.whisper import load_whisper_encoder

    load_whisper_encoder(path)


def _verify_vae_config(path: Path) -> None:
    import torch

    from networks.latentsync import build_vae, read_vae_config

    with torch.device("meta"):    # the config must build the network; no memory spent on it
        build_vae(read_vae_config(path))


def _verify_vae(path: Path) -> None:
    from networks.latentsync import load_vae

    load_vae(path)


def _verify_vgg(path: Path) -> None:
    from networks.lpips import read_vgg_file

    read_vgg_file(path)


def _verify_trepa(path: Path) -> None:
    from networks.videomae import config_of, load_videomae, read_videomae_file

    state = read_videomae_file(path)
    width = state["patch_embed.proj.weight"].shape[0] if "patch_embed.proj.weight" in state else 1
    # the heads are in no shape: any divisor of the width checks the file the same
    load_videomae(path, config=config_of(state, num_heads=next(h for h in (16, 8, 4, 2, 1) if width % h == 0)))


def _verify_lpips_heads(path: Path) -> None:
    from networks.lpips import read_heads_file

    read_heads_file(path)


def _verify_fan(path: Path) -> None:
    from face_alignment.detection.sfd.net_s3fd import s3fd
    from face_alignment.models import FAN

    from networks.checkpoints import load_strict, load_tensors

    network = s3fd() if path.name.startswith("s3fd") else FAN(4)
    load_strict(network, load_tensors(path), f"{path} is not face-alignment's {network.__class__.__name__}")


def _verify_dlib(path: Path) -> None:
    import dlib

    dlib.shape_predictor(str(path))


@dataclass(frozen=True)
class ModelFile:
    name: str
    url: str | None                                  # None: shipped inside a Python package
    folder: Callable[[ModelSettings], Path]
    verify: Callable[[Path], None]
    mirrors: tuple[str, ...] = ()                    # tried in turn when `url` fails

    def path(self, settings: ModelSettings) -> Path:
        return self.folder(settings) / self.name


_FAN_URL = "https://www.adrianbulat.com/downloads/python-fan/"
SYNCNET_FILE = "syncnet_v2.model"
HYPERIQA_FILE = "koniq_pretrained.pkl"
# the HyperIQA authors share theirs on Google Drive (no direct link); LatentSync mirrors the same state_dict
_HYPERIQA_URL = "https://huggingface.co/ByteDance/LatentSync-1.5/resolve/main/auxiliary/" + HYPERIQA_FILE
STABLE_SYNCNET_FILE = "stable_syncnet.pt"
WAV2LIP_EXPERT_FILE = "lipsync_expert.pth"
# the Wav2Lip authors' own share (SharePoint), and a copy on Hugging Face; the strict load tells a wrong file
_WAV2LIP_EXPERT_URL = ("https://iiitaphyd-my.sharepoint.com/personal/radrabha_m_research_iiit_ac_in/_layouts/15/"
                       "download.aspx?SourceUrl=%2Fpersonal%2Fradrabha%5Fm%5Fresearch%5Fiiit%5Fac%5Fin%2FDocuments"
                       "%2FWav2Lip%5FModels%2Flipsync%5Fexpert%2Epth")
_WAV2LIP_EXPERT_MIRROR = "https://huggingface.co/Nekochu/Wav2Lip/resolve/main/" + WAV2LIP_EXPERT_FILE
WAV2LIP_FILE = "wav2lip.pth"
WAV2LIP_GAN_FILE = "wav2lip_gan.pth"
# The generators, from the same share's Wav2Lip_Models folder (Rudrabha/Wav2Lip's README linked SharePoint
# shares of these files until it moved to Google Drive, which has no direct link). None fetched from here, so
# all unverified: wav2lip_gan.pth's SourceUrl is the one scripts in the wild fetch; wav2lip.pth's is built the
# same way from the folder path the share's web links show. Behind them, the Hugging Face copies that
# third-party code fetches (Nekochu/Wav2Lip, as for the expert; camenduru/Wav2Lip's checkpoints/). The strict
# load tells a wrong file.
_WAV2LIP_SHARE = ("https://iiitaphyd-my.sharepoint.com/personal/radrabha_m_research_iiit_ac_in/_layouts/15/"
                  "download.aspx?SourceUrl=%2Fpersonal%2Fradrabha%5Fm%5Fresearch%5Fiiit%5Fac%5Fin%2FDocuments"
                  "%2FWav2Lip%5FModels%2F")


def _wav2lip_generator(name: str) -> ModelFile:
    return ModelFile(name, _WAV2LIP_SHARE + name.replace("_", "%5F").replace(".", "%2E"), models_dir,
                     _verify_generator,
                     mirrors=("https://huggingface.co/Nekochu/Wav2Lip/resolve/main/" + name,
                              "https://huggingface.co/camenduru/Wav2Lip/resolve/main/checkpoints/" + name))


LATENTSYNC_UNET_FILE = "latentsync_unet.pt"
WHISPER_FILE = "tiny.pt"
TREPA_FILE = "vit_g_hybrid_pt_1200e_ssv2_ft.pth"
VAE_FILES = ("config.json", "diffusion_pytorch_model.safetensors")   # the config first: the weights load into it


def _latentsync(version: str) -> list[ModelFile]:
    """LatentSync 1.5 (256 px) or 1.6 (512 px): its U-Net (the same name in both: a folder per version, which
    also tells its resolution), and the Whisper tiny encoder and SD VAE both use, from their Hugging Face
    repositories."""
    repository = f"https://huggingface.co/ByteDance/LatentSync-{version}/resolve/main/"
    return [ModelFile(LATENTSYNC_UNET_FILE, repository + LATENTSYNC_UNET_FILE,
                      lambda settings: models_dir(settings) / f"latentsync-{version}", _verify_unet),
            ModelFile(WHISPER_FILE, repository + "whisper/" + WHISPER_FILE,
                      lambda settings: models_dir(settings) / "whisper", _verify_whisper),
            *(ModelFile(name, "https://huggingface.co/stabilityai/sd-vae-ft-mse/resolve/main/" + name,
                        lambda settings: models_dir(settings) / "sd-vae-ft-mse", verify)
              for name, verify in zip(VAE_FILES, (_verify_vae_config, _verify_vae)))]


MODELS: dict[str, tuple[str, list[ModelFile]]] = {
    "dlib": ("68-point landmarks for the face stage's dlib backend (in face_recognition_models)",
             [ModelFile("shape_predictor_68_face_landmarks.dat", None,
                        lambda settings: face_landmarks.dlib_model_path().parent, _verify_dlib)]),
    "fan": ("S3FD face detector and 2D-FAN-4 landmarks for the face stage's fan backend (face-alignment)",
            [ModelFile(name, _FAN_URL + name, lambda settings: face_landmarks.fan_weights_dir(), _verify_fan)
             for name in face_landmarks.FAN_FILES]),
    "syncnet": ("SyncNet of Chung & Zisserman, for the sync stage and `curate eval-sync`",
                [ModelFile(SYNCNET_FILE, "http://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model",
                           models_dir, _verify_syncnet)]),
    "hyperiqa": ("HyperIQA trained on KonIQ-10k, for the quality stage and `curate eval-quality`",
                 [ModelFile(HYPERIQA_FILE, _HYPERIQA_URL, models_dir, _verify_hyperiqa)]),
    "stable-syncnet": ("LatentSync's StableSyncNet expert (1.5 / 1.6), to fine-tune (`curate train syncnet --init`) "
                       "or evaluate (`curate eval-syncnet`)",
                       [ModelFile(STABLE_SYNCNET_FILE,
                                  "https://huggingface.co/ByteDance/LatentSync-1.5/resolve/main/" + STABLE_SYNCNET_FILE,
                                  models_dir, _verify_expert("stable"))]),
    "wav2lip-expert": ("Wav2Lip's lip-sync expert, to fine-tune (`curate train syncnet --arch wav2lip --init`) or "
                       "evaluate",
                       [ModelFile(WAV2LIP_EXPERT_FILE, _WAV2LIP_EXPERT_URL, models_dir, _verify_expert("wav2lip"),
                                  mirrors=(_WAV2LIP_EXPERT_MIRROR,))]),
    "wav2lip": ("Wav2Lip's generator, the most accurate lip-sync of its two, for inference or to fine-tune",
                [_wav2lip_generator(WAV2LIP_FILE)]),
    "wav2lip-gan": ("Wav2Lip's generator trained with its visual-quality discriminator (sharper, slightly less "
                    "accurate sync), for inference or to fine-tune",
                    [_wav2lip_generator(WAV2LIP_GAN_FILE)]),
    "lpips": ("LPIPS-VGG (torchvision's VGG-16 and the lpips package's v0.1 heads), LatentSync's perceptual loss",
              [ModelFile(name, url, lambda settings: models_dir(settings) / "lpips", verify)
               for name, url, verify in (
                   ("vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth", _verify_vgg),
                   ("vgg.pth", "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/"
                               "vgg.pth", _verify_lpips_heads))]),
    "trepa": ("VideoMAE-v2 ViT-g/14 (SSv2), the feature extractor of LatentSync's TREPA loss (`curate train "
              "latentsync --stage 2`)",
              [ModelFile(TREPA_FILE, "https://huggingface.co/ByteDance/LatentSync-1.5/resolve/main/auxiliary/"
                         + TREPA_FILE, models_dir, _verify_trepa)]),
    "latentsync": ("LatentSync 1.5 at 256 px: its U-Net, Whisper tiny's encoder and the SD VAE (sd-vae-ft-mse), "
                   "for `curate lipsync --model latentsync`", _latentsync("1.5")),
    "latentsync-512": ("LatentSync 1.6 at 512 px: its U-Net, Whisper tiny's encoder and the SD VAE, for `curate "
                       "lipsync --model latentsync --resolution 512`", _latentsync("1.6")),
}


# -- the record of verified files ---------------------------------------------------------------------

def _record_path(settings: ModelSettings) -> Path:
    return models_dir(settings) / "verified.json"


def _records(settings: ModelSettings) -> dict:
    try:
        return json.loads(_record_path(settings).read_text())
    except (OSError, ValueError):
        return {}


def _remember(settings: ModelSettings, path: Path, sha256: str) -> None:
    records = _records(settings)
    records[str(path)] = {"sha256": sha256, "size": path.stat().st_size, "verified_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    target = _record_path(settings)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.write_text(json.dumps(records, indent=1, sort_keys=True))
    os.replace(partial, target)


def _check_pin(file: ModelFile, path: Path, settings: ModelSettings, sha256: str) -> None:
    pinned = settings.sha256.get(file.name)
    if pinned and pinned.lower() != sha256:
        raise ModelError(f"{path} has sha256 {sha256}, not the pinned {pinned} (models.sha256)")


def _check(file: ModelFile, path: Path, settings: ModelSettings, sha256: str) -> None:
    """Raise unless `path` loads into our network strictly and matches a pinned hash."""
    _check_pin(file, path, settings, sha256)
    try:
        file.verify(path)
    except Exception as exc:  # noqa: BLE001 - any failure to load means it is not the model
        raise ModelError(f"{path} is not a valid {file.name}: {type(exc).__name__}: {str(exc)[:300]}") from None


# -- using and fetching -------------------------------------------------------------------------------

def state(name: str, settings: ModelSettings) -> list[tuple[ModelFile, Path | None, str]]:
    """(file, path, state) per file of model `name`; state is ok, unverified, changed or missing."""
    rows = []
    for file in MODELS[name][1]:
        try:
            path = file.path(settings)
        except face_landmarks.BackendUnavailable:
            rows.append((file, None, "missing"))
            continue
        if not path.is_file():
            rows.append((file, path, "missing"))
            continue
        record = _records(settings).get(str(path))
        if record is None:
            rows.append((file, path, "unverified"))
        else:
            rows.append((file, path, "ok" if record["sha256"] == sha256_of(path) else "changed"))
    return rows


def require(name: str, settings: ModelSettings, skip: tuple[str, ...] = ()) -> list[Path]:
    """The paths of model `name`'s files (but those named in `skip`), each verified; one that is there but not
    yet verified is verified now. Raises ModelError naming the file, its folder and the command that gets it."""
    rows = [row for row in state(name, settings) if row[0].name not in skip]
    missing = [(file, path) for file, path, status in rows if status == "missing"]
    if missing:   # all of them in one message: one command gets them all
        where = [f"{file.name} is missing {f'in {path.parent}' if path is not None else '(its package is not installed)'}"
                 for file, path in missing]
        fix = f"`curate models download {name}`" if all(file.url for file, _ in missing) else "reinstalling its package"
        raise ModelError(f"{', '.join(where)}; get {'it' if len(missing) == 1 else 'them'} with {fix}")
    paths = []
    for file, path, status in rows:
        sha256 = sha256_of(path)
        if status == "changed":
            raise ModelError(f"{path} changed since it was verified (sha256 now {sha256}); "
                             f"run `curate models download {name}` to check it again")
        if status == "ok":   # this very file (its sha256) loaded strictly before: only a pin is checked again
            _check_pin(file, path, settings, sha256)
        else:
            _check(file, path, settings, sha256)
            _remember(settings, path, sha256)
        paths.append(path)
    return paths


def download_model(name: str, settings: ModelSettings, progress: Callable[[str], None] = print,
                   timeout: float = 60.0) -> list[Path]:
    """Fetch what is missing of model `name`, verify every file, record it; returns the paths."""
    if name not in MODELS:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    paths = []
    for file in MODELS[name][1]:
        try:
            target = file.path(settings)
        except face_landmarks.BackendUnavailable as exc:
            raise ModelError(str(exc)) from None
        if not target.is_file():
            if file.url is None:
                raise ModelError(f"{name}: {target} is missing; it comes with a Python package (reinstall it)")
            partial = _fetch(file, target, timeout, progress, name)
            sha256 = sha256_of(partial)
            try:
                _check(file, partial, settings, sha256)
            except ModelError:
                partial.unlink(missing_ok=True)  # a wrong file is not kept, not even to resume
                raise
            os.replace(partial, target)
        else:
            sha256 = sha256_of(target)
            _check(file, target, settings, sha256)
        _remember(settings, target, sha256)
        progress(f"{name}: {target} ok")
        paths.append(target)
    return paths


def _fetch(file: ModelFile, target: Path, timeout: float, progress: Callable[[str], None], name: str) -> Path:
    """Download from the file's location, then from each mirror in turn; the first complete one wins."""
    failures = []
    for url in (file.url, *file.mirrors):
        progress(f"{name}: fetching {url}")
        try:
            return download(url, target, timeout=timeout, keep_partial=True)
        except ModelError as exc:
            failures.append(str(exc))
    raise ModelError("; ".join(failures))


def download(url: str, target: Path, chunk: int = 1 << 20, timeout: float = 60.0, keep_partial: bool = False) -> Path:
    """Fetch `url` for `target`, resuming from `target.partial` if an earlier attempt was cut off.

    The bytes go to the .partial file, which is renamed to `target` only when the server's full length has
    arrived (with `keep_partial`, the complete .partial is returned for the caller to check and rename), so
    an interrupted download never looks like a model.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    have = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if have and response.status != 206:  # the server ignored the range: start again
                have = 0
            total = _total_length(response, have)
            with open(partial, "ab" if have else "wb") as out:
                while True:
                    block = response.read(chunk)
                    if not block:
                        break
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
    except (OSError, http.client.HTTPException) as exc:  # URLError, a reset, a body cut short
        size = partial.stat().st_size if partial.exists() else 0
        if not size:   # nothing arrived (offline, refused, not found): nothing to resume
            partial.unlink(missing_ok=True)
            raise ModelError(f"downloading {url} failed ({exc}); nothing was downloaded") from None
        raise ModelError(f"downloading {url} failed ({exc}) after {size} bytes; run the same command again to "
                         "resume") from None
    size = partial.stat().st_size
    if total is not None and size != total:
        raise ModelError(f"downloading {url} stopped at {size} of {total} bytes; run the same command again to resume")
    if keep_partial:
        return partial
    os.replace(partial, target)
    return target


def _total_length(response, have: int) -> int | None:
    content_range = response.headers.get("Content-Range")  # bytes 100-999/1000
    if content_range and "/" in content_range:
        total = content_range.rsplit("/", 1)[1]
        return int(total) if total.isdigit() else None
    length = response.headers.get("Content-Length")
    return int(length) + have if length and length.isdigit() else None


def describe(settings: ModelSettings) -> list[tuple[str, str, Path | None, str]]:
    """(model, file name, path, state) for every file of every model."""
    return [(name, file.name, path, status) for name in MODELS for file, path, status in state(name, settings)]
