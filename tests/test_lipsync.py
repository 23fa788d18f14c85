"""`curate lipsync` end to end on real talking heads made small: the frames the audio covers, the input's audio,
only the mouth changed, frames without the face untouched, any frame rate and rotation, audio longer and shorter
than the video, the face chosen among two, the preview strip beside the output, and every bad input a clear
error that writes nothing.

The generator is Wav2Lip's architecture with seeded random weights: what it draws is no mouth, but the pipeline
around it is the one the trained and official models run through, and what changes where is exactly measurable.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from footage import GARDEN, SOFA, ffmpeg, x264

pytestmark = pytest.mark.usefixtures("talking_heads")

SIZE = "540x960"


@pytest.fixture(scope="module")
def generator_file(tmp_path_factory) -> Path:
    from networks.wav2lip import Wav2Lip, official_layout

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "wav2lip.pth"
    torch.save(official_layout(Wav2Lip(), 0, 0), path)
    return path


@pytest.fixture(scope="module")
def model(generator_file):
    from lipsync.models import Wav2LipModel

    return Wav2LipModel.from_file(generator_file, torch.device("cpu"), batch_size=16)


def render(model, video, audio, out, **options):
    from lipsync.pipeline import Options, lipsync

    return lipsync(video, audio, out, model, Options(crf=0, preset="ultrafast", **options))


def frames_of(path: Path) -> list[np.ndarray]:
    """Upright RGB frames, at 25 fps for the inputs here (nearest frame, as the pipeline reads them)."""
    from lipsync.media import VideoReader

    reader = VideoReader(path)
    frames = []
    for _, frame in reader.frames():
        picture = frame.to_ndarray(format="rgb24")
        turns = (reader.rotation // 90) % 4
        frames.append(np.ascontiguousarray(np.rot90(picture, turns)) if turns else picture)
    return frames


def lower_face_box(frame: np.ndarray, margin: int = 12) -> tuple[slice, slice]:
    """Where the mouth region can be, found independently of the pipeline: dlib on the input frame."""
    from lipsync.paste import LOWER_FACE
    from faces.landmarks import get_backend

    backend = get_backend("dlib")
    grey = frame.mean(2).astype(np.uint8)
    boxes = backend.detect(grey)
    assert boxes, "the test video's face is not found"
    points = backend.landmarks(grey, boxes[0])[LOWER_FACE]
    (x0, y0), (x1, y1) = points.min(0).astype(int) - margin, points.max(0).astype(int) + margin
    return slice(max(y0, 0), y1), slice(max(x0, 0), x1)


def difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).max(2)


def outside(shape, box) -> np.ndarray:
    mask = np.ones(shape[:2], bool)
    mask[box] = False
    return mask


# codec round trip (yuv420p -> RGB -> yuv420p, lossless x264): what an untouched pixel may move by
TOLERANCE = 10


def assert_only_the_mouth_changed(result: np.ndarray, source: np.ndarray) -> None:
    box = lower_face_box(source)
    diff = difference(result, source)
    rest = diff[outside(diff.shape, box)]
    assert np.percentile(rest, 99.9) <= TOLERANCE
    assert diff[box].mean() > max(3.0, 5 * rest.mean()), (diff[box].mean(), rest.mean())   # the model's mouth


@pytest.fixture(scope="module")
def previewed(model, work, tmp_path_factory):
    """1.6 s of speech over the 2 s video, with the preview strip (which leaves the video as it is)."""
    out = tmp_path_factory.mktemp("previewed") / "out.mp4"
    return out, render(model, work / "kitchen.mp4", work / "speech.wav", out, preview=True)


def test_the_output_has_the_audios_frames_its_sound_and_only_the_mouth_changed(previewed, work):
    out, summary = previewed
    assert summary.frames == 40 and summary.without_face == 0 and not summary.looped   # 1.6 s at 25 fps
    source, result = frames_of(work / "kitchen.mp4"), frames_of(out)
    assert len(result) == 40 and result[0].shape == source[0].shape
    for k in (0, 20, 39):
        assert_only_the_mouth_changed(result[k], source[k])

    # the sound is the input's, at its own rate and channels (AAC from the WAV), as long as the video
    with av.open(str(out)) as container:
        stream = container.streams.audio[0]
        assert (stream.codec_context.name, stream.codec_context.sample_rate, stream.codec_context.channels) == \
            ("aac", 44100, 2)
        decoded = np.concatenate([f.to_ndarray() for f in container.decode(stream)], axis=1)
    with av.open(str(work / "speech.wav")) as container:
        original = np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)
    original = original.reshape(-1, 2).T.astype(np.float32) / 32768 if original.shape[0] == 1 else original
    assert abs(decoded.shape[1] - 1.6 * 44100) < 2048 + 1024
    # AAC's priming delay: align, then the waveforms agree
    a, b = original[0, :60000], decoded[0, :62048]
    lag = int(np.argmax(np.correlate(b[:8000], a[:4000], mode="valid")))
    n = min(a.size, b.size - lag) - 1
    correlation = np.corrcoef(a[:n], b[lag:lag + n])[0, 1]
    assert correlation > 0.99, correlation


def test_aac_audio_is_copied_untouched_and_a_shorter_video_plays_back_and_forth(model, work, tmp_path):
    out = tmp_path / "out.mp4"
    summary = render(model, work / "kitchen.mp4", work / "speech_long.m4a", out)
    assert summary.looped and summary.audio_mode == "copy" and summary.video_frames == 50
    assert summary.preview is None and sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]   # no strip
    assert summary.frames == 80                       # 3.2 s of audio, from a 2 s video
    source, result = frames_of(work / "kitchen.mp4"), frames_of(out)
    assert len(result) == 80
    # frames 50.. are the video backwards: output 50 + j shows source 48 - j
    for j in (0, 10, 29):
        assert_only_the_mouth_changed(result[50 + j], source[48 - j])
    with av.open(str(out)) as a, av.open(str(work / "speech_long.m4a")) as b:
        mine = [bytes(p) for p in a.demux(a.streams.audio[0]) if p.size]
        theirs = [bytes(p) for p in b.demux(b.streams.audio[0]) if p.size]
    assert len(mine) >= 0.95 * len(theirs) and mine == theirs[:len(mine)]


def test_the_model_on_its_own_thread_gives_the_same_video(model, work, tmp_path):
    """What a GPU run does (the model a batch behind, on a thread): the same frames as one thread, back and
    forth included, and the model's time still counted."""
    one, two = tmp_path / "one.mp4", tmp_path / "two.mp4"
    render(model, work / "kitchen.mp4", work / "speech_long.m4a", one, overlap=False)
    summary = render(model, work / "kitchen.mp4", work / "speech_long.m4a", two, overlap=True)
    assert summary.frames == 80 and summary.looped and summary.seconds["model"] > 0
    first, second = frames_of(one), frames_of(two)
    assert len(first) == len(second) == 80
    assert all(np.array_equal(a, b) for a, b in zip(first, second))


def test_a_frame_without_the_face_is_written_unchanged(model, work, tmp_path):
    video = tmp_path / "gap.mp4"
    # the speaker, then from 1.2 s the upper half of the picture (the head) covered: no face to find
    ffmpeg("-i", work / "kitchen.mp4", "-vf", "drawbox=x=0:y=0:w=iw:h=ih/2:color=black:t=fill:enable='gte(t,1.2)'",
           *x264(12), "-c:a", "copy", video)
    out = tmp_path / "out.mp4"
    summary = render(model, video, work / "speech.wav", out)
    assert summary.frames == 40 and summary.without_face == 10   # frames 30..39 are the pattern
    source, result = frames_of(video), frames_of(out)
    for k in range(30, 40):
        assert np.percentile(difference(result[k], source[k]), 99.9) <= TOLERANCE, k
    assert_only_the_mouth_changed(result[10], source[10])


@pytest.mark.parametrize("kind", ["30fps", "rotated"])
def test_30fps_and_rotated_inputs(model, work, tmp_path, kind):
    video = tmp_path / f"{kind}.mp4"
    if kind == "30fps":
        ffmpeg("-i", SOFA, "-t", "1.2", "-vf", f"scale={SIZE.replace('x', ':')}", *x264(12), "-c:a", "aac", video)
    else:   # stored lying on its side with the display rotation that stands it up, as phones write it
        lying = tmp_path / "lying.mp4"
        ffmpeg("-i", work / "kitchen.mp4", "-t", "1.2", "-vf", "transpose=clock", *x264(12), "-c:a", "copy", lying)
        ffmpeg("-display_rotation", "90", "-i", lying, "-c", "copy", video)
    out = tmp_path / "out.mp4"
    summary = render(model, video, work / "speech.wav", out)
    assert summary.frames == 40 and summary.looped   # 1.2 s of video for 1.6 s of audio
    source, result = frames_of(video), frames_of(out)
    assert result[0].shape == source[0].shape and source[0].shape[0] > source[0].shape[1]   # upright portrait
    assert len(source) == 30                                                              # 25 fps timeline
    for k in (5, 25):
        assert_only_the_mouth_changed(result[k], source[k])


def test_audio_shorter_than_the_video_cuts_it(model, work, tmp_path):
    speech = tmp_path / "short.wav"
    ffmpeg("-i", work / "speech.wav", "-t", "0.6", speech)
    out = tmp_path / "out.mp4"
    summary = render(model, work / "kitchen.mp4", speech, out)
    assert summary.frames == 15 and len(frames_of(out)) == 15 and not summary.looped


def test_two_faces_the_flag_chooses_which_one_speaks(model, work, tmp_path):
    video = tmp_path / "two.mp4"
    ffmpeg("-i", work / "kitchen.mp4", "-t", "0.8", "-filter_complex", "[0:v]split[a][b];[b]hflip[c];[a][c]hstack",
           *x264(12), "-c:a", "aac", video)
    source = frames_of(video)[10]
    half = source.shape[1] // 2
    rows, cols = lower_face_box(source[:, half:])
    mouths = {1: lower_face_box(source[:, :half]), 2: (rows, slice(cols.start + half, cols.stop + half))}
    for face, other in ((1, 2), (2, 1)):
        out = tmp_path / f"face{face}.mp4"
        summary = render(model, video, work / "speech.wav", out, face=face)
        assert summary.faces_seen == 2
        diff = difference(frames_of(out)[10], source)
        assert diff[mouths[face]].mean() > 5 * diff[mouths[other]].mean(), face
        assert np.percentile(diff[mouths[other]], 99.9) <= TOLERANCE, face
    from lipsync.media import LipsyncError

    with pytest.raises(LipsyncError, match="--face 3: the first frame with faces has 2"):
        render(model, video, work / "speech.wav", tmp_path / "face3.mp4", face=3)
    assert not (tmp_path / "face3.mp4").exists()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_bad_inputs_are_one_clear_error_and_write_nothing(model, work, tmp_path, generator_file):
    from lipsync.media import LipsyncError
    from lipsync.models import Wav2LipModel

    faceless = tmp_path / "inputs" / "pattern.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=1", "-f", "lavfi", "-i",
           "sine=duration=1", *x264(), "-c:a", "aac", faceless)
    silent = tmp_path / "inputs" / "silent.mp4"
    ffmpeg("-i", work / "kitchen.mp4", "-an", "-c", "copy", silent)
    junk = tmp_path / "inputs" / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "out.mp4"
    cases = [
        (faceless, work / "speech.wav", "no face found in any frame"),
        (work / "kitchen.mp4", silent, "has no audio stream"),
        (junk, work / "speech.wav", "is not a readable media file"),
        (work / "kitchen.mp4", junk, "is not a readable media file"),
        (tmp_path / "missing.mp4", work / "speech.wav", "does not exist"),
    ]
    for video, audio, message in cases:
        with pytest.raises(LipsyncError, match=message) as caught:
            render(model, video, audio, out)
        assert "\n" not in str(caught.value)
        assert _leftovers(out_dir) == [], (message, _leftovers(out_dir))

    # a checkpoint of another model: the expert's layout is not a generator's
    from golden import stand_in_state_dict
    from networks.syncnet.wav2lip_expert import Wav2LipExpert

    expert = tmp_path / "lipsync_expert.pth"
    torch.save({"state_dict": stand_in_state_dict(Wav2LipExpert()), "global_step": 0}, expert)
    with pytest.raises(LipsyncError, match="lipsync_expert.pth"):
        Wav2LipModel.from_file(expert, torch.device("cpu"))


def curate_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "curate.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def test_the_command_single_and_batch(work, tmp_path, generator_file, monkeypatch, capsys):
    out = tmp_path / "one.mp4"
    # 3.2 s of speech over the 2 s video: played back and forth, its frames spooled past --bounce-memory-mb
    result = curate_cli("lipsync", work / "kitchen.mp4", work / "speech_long.m4a", "-o", out, "--checkpoint",
                        generator_file, "--no-progress", "--preset", "ultrafast", "--bounce-memory-mb", "1")
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}: 80 frames" in result.stdout and out.exists()
    assert "spooled to disk" in result.stdout, result.stdout
    assert not out.with_suffix(".preview.png").exists() and "preview" not in result.stdout

    faceless = tmp_path / "pattern.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=1", "-f", "lavfi", "-i",
           "sine=duration=1", *x264(), "-c:a", "aac", faceless)
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"video,audio,output\n{work / 'kitchen.mp4'},{work / 'speech.wav'},\n"
                     f"{faceless},{work / 'speech.wav'},nobody.mp4\n")
    result = curate_cli("lipsync", "--pairs", pairs, "--out", tmp_path / "batch", "--checkpoint", generator_file,
                        "--no-progress", "--preset", "ultrafast", "--preview")
    assert result.returncode == 1
    assert (tmp_path / "batch" / "kitchen__speech.mp4").exists() and not (tmp_path / "batch" / "nobody.mp4").exists()
    assert sorted(p.name for p in (tmp_path / "batch").iterdir()) == \
        ["kitchen__speech.mp4", "kitchen__speech.preview.png"]
    assert f"preview {tmp_path / 'batch' / 'kitchen__speech.preview.png'}: weight-free sync cue " in result.stdout
    assert "1 of 2 videos written, 1 failed" in result.stdout
    assert result.stderr.count("curate: error:") == 1 and "no face found" in result.stderr

    # no weights: the missing file, its folder and the command, before any work (in-process from here on)
    from curate.cli import main

    monkeypatch.setenv("CURATE_MODELS_DIR", str(tmp_path / "models"))
    assert main(["lipsync", str(work / "kitchen.mp4"), str(work / "speech.wav"), "-o", str(tmp_path / "x.mp4")]) == 2
    err = capsys.readouterr().err
    assert f"wav2lip.pth is missing in {tmp_path / 'models'}" in err and "curate models download wav2lip" in err
    assert not (tmp_path / "x.mp4").exists()
    for args, message in [((work / "kitchen.mp4", work / "speech.wav", "-o", work / "kitchen.mp4"), "is one of the inputs"),
                          ((work / "kitchen.mp4", tmp_path / "nope.wav", "-o", tmp_path / "y.mp4"), "does not exist"),
                          ((work / "kitchen.mp4",), "give VIDEO AUDIO -o OUT.mp4"),
                          ((work / "kitchen.mp4", work / "speech.wav", "-o", tmp_path / "z.mp4",
                            "--bounce-memory-mb", "-1"), "--bounce-memory-mb must be 0 or more")]:
        assert main(["lipsync", *map(str, args), "--checkpoint", str(generator_file)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("curate: error:") and message in err and err.count("\n") == 1, err


def test_the_preview_strip_shows_the_faces_given_and_generated_and_their_sync_cues(previewed, work):
    import cv2
    from PIL import Image

    out, summary = previewed
    preview = summary.preview
    assert preview.path == out.with_name("out.preview.png") and preview.path.is_file()
    assert preview.path.stat().st_size < 300_000
    picture = Image.open(preview.path)
    width, height = picture.size
    assert 8 * 96 < width < 1400 and 2 * 96 + 150 < height < 700, picture.size
    png = np.asarray(picture.convert("RGB")).astype(np.int16)
    # 8 frames evenly over the 40 written; the two scores finite, and in the summary
    assert preview.frames == [0, 6, 11, 17, 22, 28, 33, 39]
    assert np.isfinite(preview.input_cue.score) and np.isfinite(preview.generated_cue.score)
    assert preview.line() in summary.lines()
    assert f"{preview.generated_cue.score:.3f} generated" in preview.line()

    source, result = frames_of(work / "kitchen.mp4"), frames_of(out)

    def tile(box):
        x0, y0, x1, y1 = box
        return png[y0:y1, x0:x1]

    def cut(frame, crop, box):
        x0, y0, x1, y1 = crop
        size = (box[2] - box[0], box[3] - box[1])
        return cv2.resize(frame[y0:y1, x0:x1], size, interpolation=cv2.INTER_AREA).astype(np.int16)

    def error(a, b):
        return float(np.abs(a - b).mean())

    column, k = 4, preview.frames[4]
    crop, given, generated = preview.crops[column], tile(preview.tiles[0][column]), tile(preview.tiles[1][column])
    mouth_rows, mouth_cols = lower_face_box(source[k], margin=0)
    assert crop[0] <= mouth_cols.start and mouth_cols.stop <= crop[2] and crop[1] <= mouth_rows.start \
        and mouth_rows.stop <= crop[3], (crop, mouth_rows, mouth_cols)   # cut around the face
    # the first row is that input frame, the second the written one (256 colours: within a few levels)
    assert error(given, cut(source[k], crop, preview.tiles[0][column])) < 4
    assert error(given, cut(source[39], crop, preview.tiles[0][column])) > 12
    assert error(generated, cut(result[k], crop, preview.tiles[1][column])) < 4
    # and they differ in the mouth only
    rows = given.shape[0]
    assert error(given[:rows // 3], generated[:rows // 3]) < 1 and error(given[rows // 2:], generated[rows // 2:]) > 5


def test_a_video_whose_header_overstates_its_length_still_plays_back_and_forth(model, work, tmp_path):
    from footage import mp4_claim_duration

    short = tmp_path / "short.mp4"
    ffmpeg("-i", work / "kitchen.mp4", "-t", "1", "-c:v", "copy", "-c:a", "copy", short)
    claims = tmp_path / "claims.mp4"
    claims.write_bytes(mp4_claim_duration(short.read_bytes(), 30.0))   # 1 s of frames, a header saying 30
    out = tmp_path / "out.mp4"
    summary = render(model, claims, work / "speech.wav", out)
    assert summary.looped and summary.frames == 40 and len(frames_of(out)) == 40
    assert _leftovers(tmp_path) == sorted(["claims.mp4", "out.mp4", "short.mp4"])


def test_a_video_a_few_frames_shorter_than_the_audio_turns_back_without_a_spool(model, work, tmp_path):
    speech = tmp_path / "speech.wav"
    ffmpeg("-i", GARDEN, "-ss", "1", "-t", "2.12", "-vn", "-ar", "16000", "-ac", "1", speech)   # 53 frames
    out = tmp_path / "out.mp4"
    summary = render(model, work / "kitchen.mp4", speech, out)
    assert summary.looped and summary.video_frames == 50 and summary.frames == 53
    source, result = frames_of(work / "kitchen.mp4"), frames_of(out)
    for k, shown in ((50, 48), (51, 47), (52, 46)):
        assert_only_the_mouth_changed(result[k], source[shown])
