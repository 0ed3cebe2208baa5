"""User errors: one line on stderr that says what to do, exit status 2, no traceback, nothing overwritten."""

import pytest

from .conftest import ROOT, assert_user_error, facenext, facenext_process, run_with_weights


def test_missing_data_folder(tmp_path):
    result = facenext("train", ROOT / "configs" / "demo.yaml", "--out", tmp_path / "run", f"data.root={tmp_path}/nope")
    assert_user_error(result, "does not exist", "make download")


def test_folder_without_a_competition(tmp_path):
    (tmp_path / "stuff").mkdir()
    result = facenext("train", ROOT / "configs" / "demo.yaml", "--out", tmp_path / "run", f"data.root={tmp_path}")
    assert_user_error(result, "no competition found")


@pytest.mark.parametrize(("override", "words"), [("train.epochz=3", ["train.epochz"]), ("train.epochs=x", ["int"])])
def test_bad_config_values(tmp_path, override, words):
    assert_user_error(facenext("train", ROOT / "configs" / "demo.yaml", override), *words)


def test_missing_config_file(tmp_path):
    assert_user_error(facenext("train", tmp_path / "nope.yaml"), "not found")
    # the same through the real console entry point: its exit status and stderr, not main's return value
    assert_user_error(facenext_process("train", tmp_path / "nope.yaml", timeout=120), "not found")


def test_a_file_that_is_not_a_checkpoint_is_refused(trained_run, tmp_path):
    run = run_with_weights(trained_run, tmp_path / "run", b"this is not a checkpoint")
    assert_user_error(facenext("predict", run, "--out", tmp_path / "out"), "not a FaceNext checkpoint")
    assert not (tmp_path / "out" / "submission.csv").exists()


def test_a_pickle_that_runs_code_is_refused(trained_run, tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    run = run_with_weights(trained_run, tmp_path / "run", pickle.dumps({"model": Evil()}))
    result = facenext("predict", run, "--out", tmp_path / "out")
    assert_user_error(result, "not a FaceNext checkpoint")
    assert "pwned" not in result.stdout


def test_not_a_run_folder(tmp_path):
    assert_user_error(facenext("predict", tmp_path), "not a training run")


def test_tta_merge_and_weight_options_are_the_ones_the_library_reads():
    import argparse

    from facenext.cli import build_parser
    from facenext.inference import MERGES, TTA_HELP
    from facenext.run import WEIGHTS

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    for command in ("predict", "verify"):
        options = {a.dest: a for a in commands[command]._actions}
        assert options["tta"].help.startswith(TTA_HELP)  # the help names exactly what parse_tta accepts
        assert options["weights"].choices is WEIGHTS
    assert {a.dest: a for a in commands["predict"]._actions}["merge"].choices is MERGES
