"""The lip-sync experts a generator is trained against, behind one small interface, and their checkpoint files.

An expert maps a window of frames and its mel columns to two unit vectors; their cosine is the probability
(after BCE training) that lips and sound agree. Each architecture says how many frames it takes, in which
channel order and at what size (`FRAMING`), and turns the data path's uint8 windows into its input
(`frames_input`).

Files: the official layouts, `{"state_dict", "global_step"}` for LatentSync (`stable_syncnet.pt`) and
`{"state_dict", "optimizer", "global_step", "global_epoch"}` for Wav2Lip (`lipsync_expert.pth`), keys possibly
prefixed by `module.`; ours add `config` (the architecture, which the weights alone cannot tell: strides
leave no trace in them) and `resolution` (the face side the frames were scaled to). A bare state_dict loads
too. Keys are always matched strictly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from networks.checkpoints import CheckpointError, load_strict, load_tensors
from networks.syncnet.stable import LATENTSYNC_16_PIXEL_ATTN, StableSyncNet
from networks.syncnet.wav2lip_expert import Wav2LipExpert


@dataclass(frozen=True)
class Framing:
    """What an expert looks at: `num_frames` consecutive frames of the aligned face's lower half, resized to
    `height` x `width`, in `channel_order`."""
    num_frames: int
    height: int
    width: int
    channel_order: str


FRAMING = {
    "stable": Framing(16, 128, 256, "rgb"),     # the lower half of the 256 x 256 aligned face
    "wav2lip": Framing(5, 48, 96, "bgr"),       # the lower half of the face resized to 96 x 96
}
CLASSES = {"stable": StableSyncNet, "wav2lip": Wav2LipExpert}


def build_expert(arch: str, config: dict | None = None) -> nn.Module:
    if arch not in CLASSES:
        raise ValueError(f"unknown expert architecture {arch!r}; known: {', '.join(CLASSES)}")
    return CLASSES[arch](config or None)


def framing_of(arch: str, config: dict | None = None, resolution: int | None = None) -> Framing:
    """The framing of `arch` with its model config (StableSyncNet's frame count is its input channels / 3) and
    the face resolution the data is scaled to (the lower half is resolution / 2 x resolution)."""
    framing = FRAMING[arch]
    frames = config["visual_encoder"]["in_channels"] // 3 if arch == "stable" and config else framing.num_frames
    width = resolution or framing.width
    return Framing(frames, width // 2, width, framing.channel_order)


def arch_of(state_dict: dict) -> str:
    if any(key.startswith("face_encoder.") for key in state_dict):
        return "wav2lip"
    if any(key.startswith("visual_encoder.") for key in state_dict):
        return "stable"
    raise ValueError("the weights are neither StableSyncNet's (visual_encoder.*) nor Wav2Lip's expert's "
                     "(face_encoder.*)")


@dataclass(frozen=True)
class ExpertFile:
    arch: str
    config: dict | None          # StableSyncNet's architecture (None: Wav2Lip's, which is fixed)
    resolution: int              # the face side its frames are scaled to (the lower half is half of it)
    state_dict: dict
    global_step: int


def read_checkpoint(path: str | Path) -> ExpertFile:
    """An expert file in any of the layouts above."""
    blob = load_tensors(path)
    if not isinstance(blob, dict):
        raise CheckpointError(f"{path} holds a {type(blob).__name__}, not a checkpoint")
    state = blob.get("state_dict", blob)
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path} holds no state_dict")
    state = {key.removeprefix("module."): value for key, value in state.items()}
    arch = arch_of(state)
    wrapped = "state_dict" in blob
    config = (blob.get("config") if wrapped else None) or (LATENTSYNC_16_PIXEL_ATTN if arch == "stable" else None)
    resolution = int(blob.get("resolution") or 0) if wrapped else 0
    return ExpertFile(arch, config, resolution or FRAMING[arch].width, state,
                      int(blob.get("global_step", 0) or 0) if wrapped else 0)


def load_expert(path: str | Path, device: str = "cpu", arch: str | None = None) -> tuple[str, nn.Module]:
    """(arch, network) with the weights of `path`, keys matched strictly, in eval mode."""
    found = read_checkpoint(path)
    if arch is not None and arch != found.arch:
        raise ValueError(f"{path} holds a {found.arch} expert, not a {arch} one")
    model = load_strict(build_expert(found.arch, found.config), found.state_dict,
                        f"{path} is not the {found.arch} expert its keys name")
    return found.arch, model.to(device).eval()


def official_layout(arch: str, model: nn.Module, global_step: int, epoch: int, resolution: int | None = None) -> dict:
    """What `torch.save` writes for `model`, loadable by the reference trainers' own code."""
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    if arch == "wav2lip":
        # color_syncnet_train.py's load_checkpoint reads these four keys (optimizer None: not restored there)
        return {"state_dict": state, "optimizer": None, "global_step": global_step, "global_epoch": epoch}
    return {"state_dict": state, "global_step": global_step, "config": model.config,
            "resolution": resolution or FRAMING[arch].width}
