"""pipeline.yaml is the documented default, validated with errors that name the key."""

from pathlib import Path

import pytest

from curate.config import STAGE_ORDER, Config, ConfigError, config_from_dict, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_pipeline_yaml_is_exactly_the_built_in_default():
    assert load_config(ROOT / "pipeline.yaml") == Config()


def test_pipeline_yaml_lists_stages_in_run_order():
    import yaml

    stages = yaml.safe_load((ROOT / "pipeline.yaml").read_text())["stages"]
    assert tuple(stages) == STAGE_ORDER


@pytest.mark.parametrize("data, words", [
    ({"stages": {"shots": {"adaptive_treshold": 3}}}, ["stages.shots.adaptive_treshold", "stages.shots.adaptive_threshold"]),
    ({"stagez": {}}, ["unknown key 'stagez'", "did you mean 'stages'"]),
    ({"stages": {"clips": {"min_seconds": 12}}}, ["stages.clips", "below min_seconds"]),
    ({"run": {"num_cpus": 0}}, ["run.num_cpus"]),
    ({"stages": {"write": {"audio_codec": "mp3"}}}, ["stages.write.audio_codec"]),
    ({"stages": {"resample": {"fps": 24}}}, ["stages.resample", "whole number of samples per frame"]),
    ({"inputs": {"extensions": ["mp4"]}}, ["inputs", ".mp4"]),
    ([1, 2], ["top level must be a mapping"]),
    # a stage's section written at the top level, as a shorthand might: the full key is suggested
    ({"write": {"crf": 20}}, ["unknown key 'write'", "did you mean 'stages.write'?"]),
    ({"quality": {"min_score": 30}}, ["did you mean 'stages.quality'?"]),
    ({"quality": {"batch_frames": 4}}, ["did you mean 'resources.quality'?"]),
])
def test_bad_values_are_named(data, words):
    with pytest.raises(ConfigError) as error:
        config_from_dict(data, source="my.yaml")
    message = str(error.value)
    assert message.startswith("my.yaml: ")
    for word in words:
        assert word in message


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty) == Config()


def test_a_partial_file_keeps_the_other_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("stages:\n  clips:\n    max_seconds: 8\n")
    config = load_config(path)
    assert config.stages.clips.max_seconds == 8
    assert config.stages.clips.min_seconds == 5
    assert config.stages.shots == Config().stages.shots


def test_changing_a_stage_changes_its_fingerprint_and_later_ones_only():
    base = Config().stage_fingerprints()
    changed = config_from_dict({"stages": {"shots": {"adaptive_threshold": 3.0}}}).stage_fingerprints()
    assert [stage for stage in STAGE_ORDER if base[stage] != changed[stage]] == list(STAGE_ORDER[2:])
    # resources and run settings do not change what is computed
    other = config_from_dict({"run": {"max_retries": 0}, "resources": {"source_pass": {"num_cpus": 2}}})
    assert other.stage_fingerprints() == base
    # a skipped stage has a fingerprint of its own, so turning it back on redoes it and what follows
    skipped = config_from_dict({"run": {"skip": ["face"]}}).stage_fingerprints()
    assert [stage for stage in STAGE_ORDER if base[stage] != skipped[stage]] == ["face", "speech", "write", "sync",
                                                                                 "quality", "duplicates"]
    # a sync threshold changes the clip stages only: the source pass keeps its fingerprint
    stricter = config_from_dict({"stages": {"sync": {"min_confidence": 4}}}).stage_fingerprints()
    assert [stage for stage in STAGE_ORDER if base[stage] != stricter[stage]] == ["sync", "quality", "duplicates"]
    # and a quality threshold the quality stage alone
    stricter = config_from_dict({"stages": {"quality": {"min_score": 50}}}).stage_fingerprints()
    assert [stage for stage in STAGE_ORDER if base[stage] != stricter[stage]] == ["quality", "duplicates"]
    # and the duplicates stage's distances that stage alone: no clip is scored again for them
    looser = config_from_dict({"stages": {"duplicates": {"max_audio_distance": 20}}}).stage_fingerprints()
    assert [stage for stage in STAGE_ORDER if base[stage] != looser[stage]] == ["duplicates"]


def test_the_docs_config_keys_and_example_are_valid():
    """A key the README or a page of docs/ names (`stages.clips.max_seconds`, `resources.sync`...) is one a
    config file takes, and the configuration page's example file loads."""
    import re

    import yaml

    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    text = "\n".join(page.read_text() for page in pages)
    # `models.py` is a module's file, not a key
    keys = {key for key in re.findall(r"`((?:stages|resources|run|inputs|models)(?:\.[a-z_0-9]+)+)", text)
            if not key.endswith(".py")}
    assert "stages.clips.max_seconds" in keys and "stages.quality.min_score" in keys
    # pipeline.yaml's keys, and a trainer's `resources:` (`resources.max_failures`), which the training pages name:
    # its documented defaults, kept equal to the code by a test of their own
    trainer = yaml.safe_load((ROOT / "configs/syncnet-stable.yaml").read_text())
    configs = [Config().model_dump(), {"resources": trainer["resources"]}]

    def takes(node, key):
        for part in key.split("."):
            if not (isinstance(node, dict) and part in node):
                return False
            node = node[part]
        return True

    for key in keys:
        assert any(takes(config, key) for config in configs), f"the docs name {key}, which a config does not take"
    section = (ROOT / "docs/configuration.md").read_text()
    example = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    config = config_from_dict(yaml.safe_load(example))
    assert config.stages.clips.max_seconds == 8 and config.stages.quality.min_score == 45
