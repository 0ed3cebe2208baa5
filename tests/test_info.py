"""`facenext info`: parameters, MACs and competition limits of a config's model."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from facenext.cli import main


def write_config(tmp_path: Path, name: str, image_size: int, term: str = "f23") -> Path:
    path = tmp_path / f"{name}.yaml"
    config = {
        "data": {"root": str(tmp_path / "missing"), "term": term, "image_size": image_size},
        "model": {"name": name},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def run_info(capsys, *argv: str) -> str:
    assert main(["info", *argv]) == 0
    return capsys.readouterr().out


def number(out: str, label: str) -> int:
    match = re.search(rf"^{label}[^:]*: ([\d,]+)", out, re.MULTILINE)
    assert match, out
    return int(match.group(1).replace(",", ""))


def test_tiny_macs_match_the_paper(tmp_path, capsys):
    # ConvNeXt-T: 4.5 G multiply-accumulates ("FLOPs" in the paper) at 224 px with ImageNet's 1000 classes,
    # here taken from a competition folder with 1000 (empty) identity folders.
    train = tmp_path / "data" / "11-785-f23-hw2p2-classification" / "train"
    for i in range(1000):
        (train / f"n{i:06d}").mkdir(parents=True)
    config = write_config(tmp_path, "tiny", 224)
    out = run_info(capsys, str(config), f"data.root={tmp_path / 'data'}")
    assert "model: tiny" in out
    assert number(out, "classes") == 1000
    assert abs(number(out, "MACs") / 4.46e9 - 1) < 0.02


def test_lean_fits_every_limit(tmp_path, capsys):
    out = run_info(capsys, str(write_config(tmp_path, "lean", 112)))
    assert number(out, "parameters") == 12_101_901
    assert number(out, "classes") == 7001
    assert number(out, "embedding size") == 400
    assert "warning" not in out


def test_wide_model_exceeds_f23_limit(tmp_path, capsys):
    out = run_info(capsys, str(write_config(tmp_path, "tiny", 64)))
    assert number(out, "parameters") > 21_000_000
    assert re.search(r"warning: .*F23.* 21 M", out)


def test_classes_come_from_the_competition(sample, tmp_path, capsys):
    config = write_config(tmp_path, "lean_nano", 64)
    out = run_info(capsys, str(config), f"data.root={sample}")
    assert number(out, "classes") == 8
