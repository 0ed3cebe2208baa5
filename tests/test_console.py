"""The library speaks through `logging`: the CLI shows its lines as plain text, and Python code can silence or
redirect each module (issue 25, item 4)."""

import logging

from facenext.console import ConsoleHandler
from facenext.predict import predict

from .conftest import facenext


def test_a_module_silenced_from_python_prints_none_of_its_lines(trained_run, tmp_path):
    out = tmp_path / "out"
    assert "dev accuracy" in facenext("predict", trained_run, "--split", "dev", "--out", out).stdout
    predict_log = logging.getLogger("facenext.predict")
    predict_log.setLevel(logging.WARNING)
    try:
        result = facenext("predict", trained_run, "--split", "dev", "--out", out)
    finally:
        predict_log.setLevel(logging.NOTSET)
    assert result.returncode == 0 and result.stdout == ""
    assert (out / "dev_logits.npz").is_file()  # silenced, not stopped


def test_a_notebook_handler_receives_the_records_of_a_library_call(trained_run, tmp_path):
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    package = logging.getLogger("facenext")
    handler = Keep()
    package.addHandler(handler)
    try:
        summary = predict(trained_run, "dev", out_dir=tmp_path / "out")
    finally:
        package.removeHandler(handler)
    lines = [r.getMessage() for r in records if r.name == "facenext.predict" and r.levelno == logging.INFO]
    assert len(lines) == 1 and f"dev accuracy {summary['dev_acc']:.4f}" in lines[0]


def test_the_cli_attaches_one_plain_handler_however_often_it_runs(sample):
    for _ in range(3):
        result = facenext("check-data", sample)
        assert result.returncode == 0 and result.stdout.count(f"under {sample}") == 1, result.stdout
    handlers = [h for h in logging.getLogger("facenext").handlers if isinstance(h, ConsoleHandler)]
    assert len(handlers) == 1
