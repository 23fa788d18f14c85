"""The README's main job, as a newcomer runs it: `curate run` on the shared talking-head videos."""

import subprocess
import sys

import pandas as pd

from media import read_clip


def test_curate_the_shared_talking_heads(talking_heads, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "curate.cli", "run", "--input", str(talking_heads), "--output", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    assert "sources in: 3" in result.stdout and "clips out:  5" in result.stdout

    sources = pd.read_parquet(out / "manifests/sources.parquet")
    assert (sources.status == "ok").all()
    assert sources.set_index("source_id").fps.to_dict() == {
        "man_kitchen_1080x1920_25fps.mp4": 25.0, "man_sofa_1080x1920_30fps.mp4": 30.0,
        "woman_garden_1080x1920_25fps.mp4": 25.0,
    }
    clips = pd.read_parquet(out / "manifests/clips.parquet")
    assert (clips.status == "kept").all() and (clips.n_frames == 250).all()
    for path in clips.path:
        frames, audio, facts = read_clip(out / path)
        assert (len(frames), len(audio)) == (250, 160000)
        assert (facts["width"], facts["height"], facts["fps"]) == (256, 456, 25.0)

    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "0 processed now, 3 unchanged" in again.stdout
