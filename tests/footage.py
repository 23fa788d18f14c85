"""Test media made on the spot: FFmpeg (the imageio-ffmpeg binary) with argument lists, never a shell."""

from __future__ import annotations

import hashlib
import struct
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared"
TALKING_HEADS = SHARED / "data" / "talking-heads"
KITCHEN = TALKING_HEADS / "man_kitchen_1080x1920_25fps.mp4"
SOFA = TALKING_HEADS / "man_sofa_1080x1920_30fps.mp4"
GARDEN = TALKING_HEADS / "woman_garden_1080x1920_25fps.mp4"


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def ffmpeg(*args: str | Path) -> None:
    """Run ffmpeg; the last argument is the output file, whose folder is made first."""
    Path(args[-1]).parent.mkdir(parents=True, exist_ok=True)
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *map(str, args)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"ffmpeg failed: {' '.join(cmd)}\n{result.stderr}")


def unseekable_mkv(path: Path, seconds: float) -> Path:
    """Matroska written to a pipe, as live recorders do: no duration in its header."""
    cmd = [ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
           f"testsrc2=size=320x240:rate=25:duration={seconds}", "-f", "lavfi", "-i", f"sine=duration={seconds}",
           *x264(), "-c:a", "aac", "-f", "matroska", "pipe:1"]
    with open(path, "wb") as out:
        subprocess.run(cmd, stdout=out, check=True)
    return path


def x264(crf: int = 20) -> list[str]:
    return ["-c:v", "libx264", "-preset", "ultrafast", "-crf", str(crf), "-pix_fmt", "yuv420p"]


def synthetic(path: Path, seconds: float, fps: str = "25", size: str = "320x240", sample_rate: int = 16000,
              channels: int = 1, video: bool = True, audio: bool = True) -> Path:
    """A moving test pattern with a tone: lavfi testsrc2 and sine."""
    args: list[str] = []
    if video:
        args += ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={fps}:duration={seconds}"]
    if audio:
        layout = "mono" if channels == 1 else "stereo"
        args += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate={sample_rate}:duration={seconds}",
                 "-af", f"aformat=channel_layouts={layout}"]
    if video:
        args += x264()
    if audio:
        args += ["-c:a", "aac", "-b:a", "96k"]
    ffmpeg(*args, path)
    return path


def av_markers(path: Path, seconds: float, fps: str, sample_rate: int, channels: int, marks: list[float]) -> Path:
    """Moving pattern with a white box flashing and a 1 kHz beep starting at the same instants (`marks`).

    The box covers a small corner of the picture, so the shot detector does not take the flash for a cut.
    """
    flash = "+".join(f"between(t,{m},{m + 0.2})" for m in marks)
    beep = "+".join(f"between(t,{m},{m + 0.2})" for m in marks)
    layout = "mono" if channels == 1 else "stereo"
    ffmpeg(
        "-f", "lavfi", "-i", f"testsrc2=size=320x240:rate={fps}:duration={seconds}",
        "-f", "lavfi", "-i",
        f"aevalsrc=exprs='0.8*sin(2*PI*1000*t)*gt({beep},0)':sample_rate={sample_rate}:duration={seconds}",
        "-vf", f"drawbox=x=0:y=0:w=48:h=48:color=white:t=fill:enable='{flash}'",
        "-af", f"aformat=channel_layouts={layout}",
        *x264(10), "-c:a", "pcm_s16le" if path.suffix in (".mov", ".mkv") else "aac", "-b:a", "192k",
        path,
    )
    return path


def hard_cut(path: Path, first: Path, first_s: float, second: Path, second_s: float, size: str = "360x640") -> Path:
    """Two real videos back to back: a hard cut at `first_s` seconds."""
    width, height = size.split("x")
    ffmpeg(
        "-t", str(first_s), "-i", first, "-t", str(second_s), "-i", second,
        "-filter_complex",
        f"[0:v]scale={width}:{height},fps=25,setsar=1[v0];[1:v]scale={width}:{height},fps=25,setsar=1[v1];"
        "[0:a]aresample=44100[a0];[1:a]aresample=44100[a1];[v0][a0][v1][a1]concat=n=2:v=1:a=1[v][a]",
        "-map", "[v]", "-map", "[a]", *x264(), "-c:a", "aac", path,
    )
    return path


def downscaled(path: Path, source: Path, size: str = "360x640", seconds: float | None = None, extra: list[str] | None = None) -> Path:
    """A real video made small, so tests run fast; `extra` adds output options (e.g. -r 30000/1001)."""
    args = ["-i", source]
    if seconds is not None:
        args += ["-t", str(seconds)]
    ffmpeg(*args, "-vf", f"scale={size.replace('x', ':')}", *(extra or []), *x264(), "-c:a", "aac", path)
    return path


def with_cover_art(path: Path, source: Path, work: Path) -> Path:
    """`source` with a cover picture as its first video stream, as music and phone apps write them."""
    cover = work / "cover.png"
    ffmpeg("-f", "lavfi", "-i", "color=c=red:size=64x64", "-frames:v", "1", cover)
    ffmpeg("-i", cover, "-i", source, "-map", "0", "-map", "1", "-c", "copy", "-c:v:0", "png",
           "-disposition:v:0", "attached_pic", "-disposition:v:1", "0", path)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256(p) for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def volatile(frame):
    """A manifest without the columns that measure time: they differ between two honest runs."""
    return frame.drop(columns=[c for c in frame.columns
                               if c.startswith("cpu_") or c in ("wall_s", "generation", "fingerprints")])


def read_manifest(out: Path, name: str):
    """A manifest of an output folder as pandas: the current view of sources or clips, or the runs."""
    import pandas as pd

    from manifests.dataset import current_table

    if name == "runs":
        return pd.read_parquet(Path(out) / "manifests" / "runs.parquet")
    return current_table(Path(out), name).to_pandas()


def assert_same_run(out: Path, reference: Path) -> None:
    """Two output folders hold the same result: sources and clips manifests (timings aside) and clip files."""
    import pandas as pd

    for name in ("sources", "clips"):
        pd.testing.assert_frame_equal(volatile(read_manifest(out, name)),
                                      volatile(read_manifest(reference, name)))
    assert tree_hashes(out / "clips") == tree_hashes(reference / "clips")
    assert not list(out.rglob("*.partial"))


def read_clip(path: Path) -> tuple[list[np.ndarray], np.ndarray, dict]:
    """Frames (RGB), mono int16 audio and stream facts of a written clip."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        audio = container.streams.audio[0]
        facts = {
            "fps": float(video.average_rate), "width": video.codec_context.width,
            "height": video.codec_context.height, "sample_rate": audio.codec_context.sample_rate,
            "channels": audio.codec_context.channels, "audio_codec": audio.codec_context.name,
            "video_codec": video.codec_context.name, "pix_fmt": video.codec_context.pix_fmt,
        }
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video)]
    with av.open(str(path)) as container:
        samples = np.concatenate([frame.to_ndarray().reshape(-1) for frame in container.decode(audio=0)])
    return frames, samples, facts


# -- hostile files: real media with lying headers, made by patching bytes or muxing packets by hand ----------

_MP4_PARENTS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts"}


def mp4_boxes(data: bytes, start: int = 0, end: int | None = None, path: tuple = ()):
    """(path of box types, offset, header size, size) of every box in an MP4, depth first; the sample
    entries inside stsd (avc1, mp4a) are listed too."""
    end = len(data) if end is None else end
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", data[pos + 8:pos + 16])[0], 16
        elif size == 0:
            size = end - pos
        yield path + (kind,), pos, header, size
        if kind in _MP4_PARENTS:
            yield from mp4_boxes(data, pos + header, pos + size, path + (kind,))
        elif kind == b"stsd":
            yield from mp4_boxes(data, pos + header + 8, pos + size, path + (kind,))
        pos += size


def _track_boxes(data: bytes):
    """The boxes of each track, with the track's handler ('vide', 'soun') and media timescale."""
    tracks = []
    for path, pos, header, size in mp4_boxes(data):
        if path[-1] == b"trak":
            tracks.append({"boxes": {}})
        elif tracks and len(path) > 2 and path[1] == b"trak":
            tracks[-1]["boxes"][path[-1]] = (pos + header, size - header)
    for track in tracks:
        body, _ = track["boxes"][b"hdlr"]
        track["handler"] = data[body + 8:body + 12].decode()
        body, _ = track["boxes"][b"mdhd"]
        track["timescale"] = struct.unpack(">I", data[body + (20 if data[body] == 1 else 12):][:4])[0]
    return tracks


def _set_duration(data: bytearray, body: int, seconds: float, timescale: int, v1_at: int, v0_at: int) -> None:
    if data[body] == 1:
        struct.pack_into(">Q", data, body + v1_at, round(seconds * timescale))
    else:
        struct.pack_into(">I", data, body + v0_at, round(seconds * timescale))


def mp4_claim_duration(data: bytes, seconds: float, video_media_s: float | None = None) -> bytes:
    """Every duration an MP4's header states (mvhd, tkhd, mdhd, the edit lists) set to `seconds`; with
    `video_media_s`, the video track's own mdhd says that instead. The samples are left as they are."""
    data = bytearray(data)
    movie_scale = None
    for path, pos, header, size in mp4_boxes(bytes(data)):
        if path[-1] == b"mvhd":
            body = pos + header
            movie_scale = struct.unpack(">I", data[body + (20 if data[body] == 1 else 12):][:4])[0]
            _set_duration(data, body, seconds, movie_scale, 24, 16)
    for track in _track_boxes(bytes(data)):
        boxes = track["boxes"]
        _set_duration(data, boxes[b"tkhd"][0], seconds, movie_scale, 28, 20)
        media_s = video_media_s if video_media_s is not None and track["handler"] == "vide" else seconds
        _set_duration(data, boxes[b"mdhd"][0], media_s, track["timescale"], 24, 16)
        if b"elst" in boxes:
            body = boxes[b"elst"][0]
            version, count = data[body], struct.unpack(">I", data[body + 4:body + 8])[0]
            for i in range(count):
                entry = body + 8 + i * (20 if version == 1 else 12)
                struct.pack_into(">Q" if version == 1 else ">I", data, entry, round(seconds * movie_scale))
    return bytes(data)


def mp4_stretch_video(data: bytes, seconds: float) -> bytes:
    """The video track's sample table (stts) rewritten so that its frames span `seconds`: each frame lasts
    seconds / frames. Header durations are not touched."""
    data = bytearray(data)
    for track in _track_boxes(bytes(data)):
        if track["handler"] != "vide":
            continue
        body, _ = track["boxes"][b"stts"]
        count = struct.unpack(">I", data[body + 4:body + 8])[0]
        entries = [struct.unpack(">II", data[body + 8 + 8 * i:body + 16 + 8 * i]) for i in range(count)]
        delta = round(seconds * track["timescale"] / sum(n for n, _ in entries))
        for i in range(count):
            struct.pack_into(">I", data, body + 12 + 8 * i, delta)
    return bytes(data)


def mp4_picture_size(data: bytes, width: int, height: int, keep_parameter_sets: bool = True) -> bytes:
    """The video track's header (tkhd) and sample entry (avc1) made to state `width` x `height`; unless
    `keep_parameter_sets`, the SPS in avcC is zeroed too, so the stream itself cannot tell its size either."""
    data = bytearray(data)
    for track in _track_boxes(bytes(data)):
        if track["handler"] != "vide":
            continue
        body, size = track["boxes"][b"tkhd"]
        struct.pack_into(">II", data, body + size - 8, width << 16, height << 16)
        body, _ = track["boxes"][b"avc1"]
        struct.pack_into(">HH", data, body + 24, width, height)
        if not keep_parameter_sets:
            at = data.index(b"avcC", body)
            sps_length = struct.unpack(">H", data[at + 10:at + 12])[0]
            data[at + 12:at + 12 + sps_length] = bytes(sps_length)
    return bytes(data)


def mkv_claim_duration(data: bytes, seconds: float) -> bytes:
    """A Matroska file's Segment Info Duration (an 8-byte float in TimestampScale units, ms) set to `seconds`."""
    data = bytearray(data)
    info = data.index(b"\x15\x49\xa9\x66")          # Info
    at = data.index(b"\x44\x89\x88", info)          # Duration, 8 bytes
    struct.pack_into(">d", data, at + 3, seconds * 1000.0)
    return bytes(data)


def tiny_packets(path: Path, packets: int, flood: str, work: Path) -> Path:
    """Matroska with `packets` tiny packets, muxed by hand: flood='video' gives 2x2 grey raw frames at
    25,000 fps beside a normal AAC track; flood='audio' gives one-sample PCM packets at 16 kHz beside normal
    64x64 H.264."""
    if flood == "video":
        rate, payload = 25_000, bytes([128] * 4)
        seconds = packets / rate
        ffmpeg("-f", "lavfi", "-i", f"sine=duration={seconds}:sample_rate=16000", "-c:a", "aac", work / "tiny_packets_other.mkv")
    else:
        rate, payload = 16_000, b"\x00\x10"
        seconds = packets / rate
        ffmpeg("-f", "lavfi", "-i", f"testsrc2=size=64x64:rate=25:duration={seconds}", *x264(), work / "tiny_packets_other.mkv")
    with av.open(str(work / "tiny_packets_other.mkv")) as source, av.open(str(path), "w", format="matroska") as out:
        other = source.streams[0]
        other_out = out.add_stream_from_template(other)
        if flood == "video":
            tiny = out.add_stream("rawvideo", rate=rate)
            tiny.width, tiny.height, tiny.pix_fmt = 2, 2, "gray"
        else:
            tiny = out.add_stream("pcm_s16le", rate=rate, layout="mono")
        time_base = Fraction(1, rate)
        # the other stream's packets, with their times in ticks of the tiny stream, to interleave by time
        others = [(int(p.pts * other.time_base * rate), p) for p in source.demux(other) if p.size]
        next_other = 0
        for i in range(packets):
            while next_other < len(others) and others[next_other][0] <= i:
                packet = others[next_other][1]
                packet.stream = other_out
                out.mux(packet)
                next_other += 1
            packet = av.Packet(payload)
            packet.stream, packet.pts, packet.dts, packet.time_base = tiny, i, i, time_base
            out.mux(packet)
        for _, packet in others[next_other:]:
            packet.stream = other_out
            out.mux(packet)
    return path


def audio_jump(path: Path, source: Path, at_s: float, jump_s: float) -> Path:
    """`source` remuxed (MP4) with every audio packet from `at_s` on moved `jump_s` seconds later: a hole in
    the audio that its timestamps claim, as a broken recorder or a hostile file writes it."""
    with av.open(str(source)) as src, av.open(str(path), "w", format="mp4") as out:
        outputs = {s.index: out.add_stream_from_template(s) for s in src.streams if s.type in ("video", "audio")}
        for packet in src.demux():
            if packet.dts is None or packet.stream.index not in outputs:
                continue
            if packet.stream.type == "audio" and packet.pts * packet.time_base >= at_s:
                shift = int(jump_s / packet.time_base)
                packet.pts, packet.dts = packet.pts + shift, packet.dts + shift
            packet.stream = outputs[packet.stream.index]
            out.mux(packet)
    return path


# -- clips to train the lip-sync experts on --------------------------------------------------------------------

def speech_envelope(frames: int, seed: int) -> np.ndarray:
    """Per-frame loudness of syllable-like bursts (3-8 frames of sound, 2-7 of pause), 0..1."""
    rng = np.random.default_rng(seed)
    envelope = np.zeros(frames)
    at = int(rng.integers(0, 4))
    while at < frames:
        length = int(rng.integers(3, 9))
        burst = rng.uniform(0.4, 1.0) * np.sin(np.linspace(0, np.pi, length + 2)[1:-1])
        envelope[at:at + length] = burst[:max(0, min(length, frames - at))]
        at += length + int(rng.integers(2, 8))
    return envelope


def talking_clip(path: Path, seconds: float, seed: int, size: int = 128, audio_delay_frames: int = 0,
                 audio_seconds: float | None = None) -> np.ndarray:
    """An aligned-face clip as the curation writes it (H.264 + FLAC through the project's writer), whose mouth
    opens with the loudness of its voice: a flat face, a dark ellipse at LatentSync's mouth height, a voiced
    tone in syllables. The sound can be delayed by whole frames, or cut shorter. Returns the per-frame
    loudness the mouth follows."""
    from stages.settings import WriteParams
    from stages.write import ClipWriter

    fps, rate = 25, 16000
    frames = int(round(seconds * fps))
    envelope = speech_envelope(frames, seed)
    rng = np.random.default_rng(seed + 1000)
    heard = np.concatenate([np.zeros(audio_delay_frames), envelope])[:frames]
    t = np.arange(frames * rate // fps) / rate
    pitch = 110 + 60 * rng.random()
    voice = np.sin(2 * np.pi * pitch * t) + 0.6 * np.sin(2 * np.pi * 2.6 * pitch * t) + 0.3 * np.sin(2 * np.pi * 5.1 * pitch * t)
    audio = np.repeat(heard, rate // fps) * voice * 9000 + rng.normal(0, 120, len(t))
    if audio_seconds is not None:
        audio = audio[:int(audio_seconds * rate)]
    yy, xx = np.mgrid[0:size, 0:size] / size
    skin = np.array([205, 160, 138]) * rng.uniform(0.75, 1.1)
    pictures = []
    for k in range(frames):
        picture = np.empty((size, size, 3), np.float32)
        picture[:] = skin
        mouth = ((xx - 0.5) / 0.17) ** 2 + ((yy - 0.72) / (0.015 + 0.09 * envelope[k])) ** 2 <= 1
        picture[mouth] = (70, 25, 35)
        picture += rng.normal(0, 3, picture.shape)
        pictures.append(av.VideoFrame.from_ndarray(np.clip(picture, 0, 255).astype(np.uint8), format="rgb24"))
    ClipWriter(WriteParams(), fps, rate).write(Path(path), pictures, np.clip(audio, -32768, 32767).astype(np.int16))
    return envelope
