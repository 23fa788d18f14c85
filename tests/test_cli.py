"""The command line: clear errors before any work, a dry run that does nothing, a summary at the end."""

import subprocess
import sys

import pytest

from curate.cli import main


def test_missing_input_folder(tmp_path, capsys):
    assert main(["run", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "out")]) == 2
    assert f"input folder {tmp_path / 'nope'} does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_output_that_cannot_be_written(tmp_path, capsys):
    (tmp_path / "raw").mkdir()
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    assert main(["run", "--input", str(tmp_path / "raw"), "--output", str(blocker / "out")]) == 2
    assert "cannot write to output folder" in capsys.readouterr().err
    # the output itself a file: said so, and the file is left as it was
    assert main(["run", "--input", str(tmp_path / "raw"), "--output", str(blocker)]) == 2
    assert capsys.readouterr().err == f"curate: error: output {blocker} is a file, not a folder\n"
    assert blocker.read_text() == "a file where a folder should be"


def test_skip_of_a_stage_that_does_not_exist_names_the_flag_and_the_value(tmp_path, capsys):
    (tmp_path / "raw").mkdir()
    assert main(["run", "--input", str(tmp_path / "raw"), "--output", str(tmp_path / "out"), "--skip", "synk"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("curate: error: --skip synk: not a stage that can be left out") and "did you mean 'sync'" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "out").exists()


def test_bad_config_names_the_key(tmp_path, capsys):
    (tmp_path / "raw").mkdir()
    config = tmp_path / "my.yaml"
    config.write_text("stages:\n  shots:\n    adaptive_treshold: 3\n")
    assert main(["run", "--input", str(tmp_path / "raw"), "--output", str(tmp_path / "out"), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'stages.shots.adaptive_treshold'" in err and "did you mean 'stages.shots.adaptive_threshold'" in err
    assert not (tmp_path / "out").exists()


def test_dry_run_lists_the_work_and_writes_nothing(tmp_path, capsys, talking_heads):
    out = tmp_path / "out"
    assert main(["run", "--input", str(talking_heads), "--output", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "3 sources found, 0 unchanged, 3 would be processed" in printed
    assert "man_sofa_1080x1920_30fps.mp4  (new)" in printed
    assert not out.exists()


def test_missing_weights_are_named_at_once_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CURATE_MODELS_DIR", str(tmp_path / "models"))
    (tmp_path / "raw").mkdir()
    out = tmp_path / "out"
    assert main(["run", "--input", str(tmp_path / "raw"), "--output", str(out)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    # every missing file in one message, and the one --skip that gets past all of them
    assert error.startswith("curate: error: ")
    assert f"syncnet_v2.model is missing in {tmp_path / 'models'}" in error
    assert f"koniq_pretrained.pkl is missing in {tmp_path / 'models'}" in error
    assert "curate models download syncnet" in error and "curate models download hyperiqa" in error
    assert error.endswith("--skip sync,quality")
    assert not out.exists()
    # a dry run says so too, and still lists the work
    assert main(["run", "--input", str(tmp_path / "raw"), "--output", str(out), "--dry-run"]) == 0
    assert "a run would stop: syncnet_v2.model is missing" in capsys.readouterr().out
    # and the --skip it names gets past all of them
    assert main(["run", "--input", str(tmp_path / "raw"), "--output", str(out), "--skip", "sync,quality"]) == 0


def test_second_run_on_the_same_output_is_refused(tmp_path, capsys):
    from curate.lock import OutputLock

    (tmp_path / "raw").mkdir()
    out = tmp_path / "out"
    out.mkdir()
    with OutputLock(out):
        assert main(["run", "--input", str(tmp_path / "raw"), "--output", str(out), "--skip", "sync,quality"]) == 2
    assert "another curate run (pid" in capsys.readouterr().err
    with OutputLock(out):  # released on exit, so the next run may take it
        pass


def test_console_script_help_runs_without_ray():
    result = subprocess.run([sys.executable, "-m", "curate.cli", "run", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "--address" in result.stdout and "--dry-run" in result.stdout


def test_empty_input_folder_is_a_clean_run(tmp_path, capsys, ray_cluster):
    (tmp_path / "raw").mkdir()
    assert main(["run", "--input", str(tmp_path / "raw"), "--output", str(tmp_path / "out"), "--no-progress",
                 "--skip", "sync", "--skip", "quality"]) == 0
    printed = capsys.readouterr()
    assert "sources in: 0" in printed.out
    assert f"curate: warning: no videos in {tmp_path / 'raw'} (looked for .mp4 .mkv" in printed.err
    assert (tmp_path / "out" / "manifests" / "runs.parquet").exists()


@pytest.mark.parametrize("command", ["rejects", "filelist", "report"])
def test_every_option_of_the_results_commands_says_what_it_does(command, capsys):
    """`curate COMMAND --help` explains each option (defaults included where there is one)."""
    from curate.cli import parser_of_commands

    sub = parser_of_commands()._subparsers._group_actions[0].choices[command]
    for action in sub._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"curate {command} {action.option_strings[0]} has no help text"
            if action.default not in (None, False):
                assert "default" in action.help, f"curate {command} {action.option_strings[0]} hides its default"
