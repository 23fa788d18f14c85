"""The README's main job, as a newcomer runs it: `curate run` on the shared talking-head videos."""

import subprocess

import numpy as np

from footage import read_manifest, read_clip


def test_curate_the_shared_talking_heads(readme_run):
    out = readme_run["out"]
    assert "sources in: 3" in readme_run["stdout"] and "clips out:  5" in readme_run["stdout"]

    sources = read_manifest(out, "sources")
    assert (sources.status == "ok").all()
    assert sources.set_index("source_id").fps.to_dict() == {
        "man_kitchen_1080x1920_25fps.mp4": 25.0, "man_sofa_1080x1920_30fps.mp4": 30.0,
        "woman_garden_1080x1920_25fps.mp4": 25.0,
    }
    clips = read_manifest(out, "clips")
    assert (clips.status == "kept").all() and (clips.n_frames == 250).all()
    assert (clips.face_status == "done").all() and (clips.face_backend == "dlib").all()
    for clip in clips.itertuples():
        frames, audio, facts = read_clip(out / clip.path)
        assert (len(frames), len(audio)) == (250, 160000)
        assert (facts["width"], facts["height"], facts["fps"]) == (256, 256, 25.0)
        arrays = np.load(out / clip.landmarks_path)
        assert arrays["landmarks_source"].shape == arrays["landmarks_aligned"].shape == (250, 68, 2)
        assert arrays["matrices"].shape == (250, 2, 3) and arrays["present"].all()


def test_rerunning_the_readme_job_does_nothing(readme_run):
    again = subprocess.run(readme_run["command"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "0 processed now, 3 unchanged" in again.stdout
