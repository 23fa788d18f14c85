"""The weights a trainer starts from or holds frozen, checked present and fitting before any work: --init
(an expert, a Wav2Lip generator, a LatentSync U-Net), --syncnet (Wav2Lip's lip-sync expert, a StableSyncNet),
the files `curate train latentsync` needs from the models folder, and `expert_file`: the weights file a
file, checkpoint folder or run folder names. Each problem is a RunError naming the flag and what fixes it.
"""

from __future__ import annotations

from pathlib import Path

from curate.errors import RunError


def expert_file(checkpoint: Path) -> Path:
    """The expert weights a CKPT argument names: a file; a checkpoint folder; or a run folder (its best
    checkpoint, else its last)."""
    from training.checkpoints import best_checkpoint, latest_checkpoint

    checkpoint = Path(checkpoint)
    if checkpoint.is_file():
        return checkpoint
    if not checkpoint.is_dir():
        raise RunError(f"{checkpoint} does not exist")
    folder = checkpoint
    if (checkpoint / "checkpoints").is_dir():
        folder = best_checkpoint(checkpoint) or latest_checkpoint(checkpoint)
        if folder is None:
            raise RunError(f"{checkpoint} has no checkpoint yet")
    found = sorted(p for p in folder.iterdir() if p.suffix in (".pt", ".pth") and p.name != "train_state.pt")
    if not found:
        raise RunError(f"{folder} holds no expert checkpoint (.pt / .pth)")
    return found[0]


def checked_init(init: Path, arch: str) -> str:
    """--init: an expert file of this arch that loads strictly, checked before any work."""
    from networks.syncnet.experts import load_expert

    if not Path(init).is_file():
        hint = {"stable": "stable-syncnet", "wav2lip": "wav2lip-expert"}[arch]
        raise RunError(f"--init: {init} does not exist (the official {arch} expert is fetched with "
                       f"`curate models download {hint}`)")
    try:
        load_expert(init, arch=arch)
    except Exception as exc:  # noqa: BLE001 - whatever stops it loading, it is not this expert
        raise RunError(f"--init: cannot load {init} as a {arch} expert: {str(exc).splitlines()[0]}") from None
    return str(Path(init).resolve())


def checked_expert(path: Path | None) -> str:
    """--syncnet: Wav2Lip's lip-sync expert (its 5-frame SyncNet_color), loaded strictly before any work: a
    file, a checkpoint folder, or a run folder (its best checkpoint, else its last)."""
    from networks.syncnet.experts import load_expert

    if path is None:
        raise RunError("--syncnet EXPERT is required: the lip-sync expert the generator learns sync from (Wav2Lip's "
                       "lipsync_expert.pth: `curate models download wav2lip-expert`, or train one with `curate train "
                       "syncnet --arch wav2lip`)")
    if not Path(path).exists():
        raise RunError(f"--syncnet: {path} does not exist (the official expert is fetched with `curate models "
                       "download wav2lip-expert`)")
    path = expert_file(path)    # a run folder of `curate train syncnet --arch wav2lip`: its best checkpoint
    try:
        load_expert(path, arch="wav2lip")
    except Exception as exc:  # noqa: BLE001 - whatever stops it loading, it is not the expert this needs
        raise RunError(f"--syncnet: cannot load {path} as Wav2Lip's lip-sync expert (5 frames, 96 x 96 faces, the "
                       f"layout of lipsync_expert.pth): {str(exc).splitlines()[0]}") from None
    return str(Path(path).resolve())


def checked_generator(path: Path, size: int) -> str:
    """--init: a Wav2Lip generator of the configured size that loads strictly, checked before any work."""
    from networks.wav2lip import load_generator

    if not Path(path).is_file():
        raise RunError(f"--init: {path} does not exist")
    try:
        generator = load_generator(path)
    except Exception as exc:  # noqa: BLE001 - whatever stops it loading, it is not a generator
        raise RunError(f"--init: cannot load {path} as a Wav2Lip generator: {str(exc).splitlines()[0]}") from None
    if generator.size != size:
        raise RunError(f"--init: {path} is a generator of size {generator.size}, not model.size {size}")
    return str(Path(path).resolve())


def latentsync_weights(args, config) -> dict:
    """The files `curate train latentsync` needs, verified: the VAE and Whisper (the `latentsync` models), and
    for the pixel losses the stage uses, the expert (--syncnet, else `stable-syncnet`), LPIPS and TREPA. All the
    missing ones are named in one error, each with its folder and the command that fetches it."""
    from curate.config import load_config
    from curate.models import LATENTSYNC_UNET_FILE, ModelError, require

    settings = load_config(None).models
    terms = () if args.prepare else config.loss.pixel_terms
    needs = [("latentsync", (LATENTSYNC_UNET_FILE, "config.json", "diffusion_pytorch_model.safetensors")
              if args.prepare else (LATENTSYNC_UNET_FILE,))]
    needs += [(name, ()) for name in ("lpips", "trepa") if name in terms]
    if "sync" in terms and args.syncnet is None:
        needs.append(("stable-syncnet", ()))
    found, problems = {}, []
    for name, skip in needs:
        try:
            found[name] = require(name, settings, skip=skip)
        except ModelError as exc:
            problems.append(str(exc))
    if problems:
        raise RunError("; ".join(problems) + (" (or --syncnet EXPERT)" if any("stable_syncnet" in p for p in problems)
                                              else ""))
    weights = {"whisper": str(found["latentsync"][0])}
    if not args.prepare:
        weights["vae"] = str(found["latentsync"][-1])
    if "lpips" in found:
        weights["lpips"] = tuple(str(path) for path in found["lpips"])
    if "trepa" in found:
        from networks.videomae import TrepaFileError, config_of, read_videomae_file

        weights["trepa"] = str(found["trepa"][0])
        try:
            weights["trepa_config"] = config_of(read_videomae_file(weights["trepa"]), config.trepa.num_heads,
                                                config.trepa.img_size)
        except (TrepaFileError, ValueError) as exc:
            raise RunError(f"trepa: {exc}") from None
    if "sync" in terms:
        weights["expert"] = _checked_stable_expert(args.syncnet or found["stable-syncnet"][0])
    return weights


def _checked_stable_expert(path: Path) -> str:
    """--syncnet: a 16-frame StableSyncNet (stable_syncnet.pt, or ours: a file, checkpoint or run folder)."""
    from networks.syncnet.experts import framing_of, load_expert, read_checkpoint

    if not Path(path).exists():
        raise RunError(f"--syncnet: {path} does not exist (the official expert is fetched with `curate models "
                       "download stable-syncnet`)")
    path = expert_file(path)
    try:
        load_expert(path, arch="stable")
        frames = framing_of("stable", read_checkpoint(path).config).num_frames
    except Exception as exc:  # noqa: BLE001 - whatever stops it loading, it is not the expert this needs
        raise RunError(f"--syncnet: cannot load {path} as a StableSyncNet: {str(exc).splitlines()[0]}") from None
    if frames != 16:
        raise RunError(f"--syncnet: {path} looks at {frames} frames; LatentSync's sync loss takes 16")
    return str(Path(path).resolve())


def checked_unet_init(init: Path, unet, stage) -> str:
    """--init: a U-Net file (or a checkpoint or run folder of ours) that fits the stage's U-Net, checked on the
    meta device before any work; what the stage drops or starts afresh is said."""
    import torch

    from networks.latentsync_unet import LatentSyncUNet, UNetFileError
    from training.latentsync import starting_weights

    if not Path(init).exists():
        raise RunError(f"--init: {init} does not exist (the official U-Net is fetched with `curate models download "
                       "latentsync`)")
    path = expert_file(init)
    with torch.device("meta"):
        model = LatentSyncUNet(unet)
    try:
        _, dropped, fresh = starting_weights(path, model)
    except UNetFileError as exc:
        raise RunError(f"--init: {exc}") from None
    if dropped:
        print(f"--init: {len(dropped)} motion-module tensors of {path.name} are not used: stage {stage.name} builds "
              f"{'none' if not stage.motion_modules else 'them in the decoder only'}")
    if fresh:
        print(f"--init: {len(fresh)} motion-module tensors are not in {path.name}: they start afresh (their output "
              "at zero, so the U-Net starts as the file's)")
    return str(path.resolve())
