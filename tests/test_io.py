"""The one atomic write: a failed writer, a failed check or a full disk never replace a good file."""

import contextlib
import resource
import signal

import pandas as pd
import pytest

from facenext.errors import UserError
from facenext.io import atomic_write, previous_path, read_json, write_csv, write_json, write_text


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_write_replaces_the_file_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    write_text(path, "one")
    write_text(path, "two")
    assert path.read_text() == "two"
    assert leftovers(path.parent) == [] and not previous_path(path).exists()


def test_a_failing_writer_keeps_the_previous_file(tmp_path):
    path = tmp_path / "a.txt"
    write_text(path, "good")

    def half_then_fail(tmp):
        tmp.write_text("half")
        raise RuntimeError("writer crashed")

    with pytest.raises(RuntimeError, match="writer crashed"):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "good" and leftovers(tmp_path) == []


def test_a_failed_validation_renames_nothing(tmp_path):
    path, new = tmp_path / "a.csv", tmp_path / "new.csv"
    write_csv(path, pd.DataFrame({"id": [0, 1], "label": [3, 4]}))
    seen = []

    def refuse(tmp):
        seen.append(pd.read_csv(tmp)["label"].tolist())  # the check sees the complete file
        raise UserError("bad labels")

    for target in (path, new):
        with pytest.raises(UserError, match="bad labels"):
            write_csv(target, pd.DataFrame({"id": [0, 1], "label": [7, 8]}), validate=refuse)
    assert seen == [[7, 8], [7, 8]]
    assert pd.read_csv(path)["label"].tolist() == [3, 4]
    assert not new.exists() and leftovers(tmp_path) == []


def test_keep_previous_keeps_the_replaced_file_as_prev(tmp_path):
    path = tmp_path / "last.pt"
    for content in (b"epoch 1", b"epoch 2", b"epoch 3"):
        atomic_write(path, lambda tmp, c=content: tmp.write_bytes(c), keep_previous=True)
    assert path.read_bytes() == b"epoch 3"
    assert previous_path(path) == tmp_path / "last.pt.prev" and previous_path(path).read_bytes() == b"epoch 2"
    assert leftovers(tmp_path) == []


@contextlib.contextmanager
def file_size_limit(limit_bytes):
    """Lower this process's soft file-size limit; past it writes fail with EFBIG, as on a full disk."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error instead of a kill
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def test_a_full_disk_is_a_user_error_and_keeps_the_previous_file(tmp_path):
    path = tmp_path / "summary.json"
    write_json(path, {"epochs": 1})
    with file_size_limit(1000), pytest.raises(UserError) as error:
        write_json(path, {"epochs": 2, "history": list(range(1000))})
    assert str(error.value).startswith(f"disk full while writing {path}")
    assert "the previous summary.json is intact" in str(error.value)
    assert read_json(path) == {"epochs": 1} and leftovers(tmp_path) == []


def test_json_and_csv_helpers(tmp_path):
    write_json(tmp_path / "a.json", {"x": [1, 2]})
    write_json(tmp_path / "b.json", ["p", "q"], indent=None)
    assert (tmp_path / "a.json").read_text().endswith("\n")
    assert (tmp_path / "b.json").read_text() == '["p", "q"]\n'
    assert read_json(tmp_path / "a.json") == {"x": [1, 2]}
    write_csv(tmp_path / "m.csv", [{"epoch": 1, "loss": 0.5}, {"epoch": 2}], columns=["epoch", "loss"])
    assert (tmp_path / "m.csv").read_text().splitlines() == ["epoch,loss", "1,0.5", "2,"]
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match=r"bad\.json is not readable JSON"):
        read_json(tmp_path / "bad.json")
    with pytest.raises(UserError, match="not found"):
        read_json(tmp_path / "missing.json")
