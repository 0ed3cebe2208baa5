"""`make gpu-check`'s script in its CPU smoke mode: every section of the report with numbers, and a loud failure."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from .conftest import ROOT


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclass looks its module up while being defined
    spec.loader.exec_module(module)
    return module


def cells(text: str, section: str, *words: str) -> list[str]:
    """The cells of the one table row of ``section`` that contains every word."""
    part = text.split(section, 1)[1].split("\n## ", 1)[0]
    found = [line for line in part.splitlines() if line.startswith("|") and all(w in line for w in words)]
    assert len(found) == 1, (section, words, found)
    return [cell.strip() for cell in found[0].strip("|").split("|")]


def value(cell: str) -> float:
    return float(cell.rstrip("x%h ").replace(",", ""))


def test_cpu_smoke_run_writes_every_section_with_numbers(gpu_check, tmp_path):
    out = tmp_path / "gpu.md"
    assert gpu_check.main(["--device", "cpu", "--out", str(out)]) == 0
    text = out.read_text()
    for size in (32, 48):
        assert value(cells(text, "## Summary", f"the seed's loop, {size} px")[1]) > 0
        assert value(cells(text, "## Summary", f"model alone, {size} px")[1]) > 0
        for loop in ("seed's loop", "in the workers", "on the GPU |", "seed model alone", "our model alone"):
            row = cells(text, "## Training", f"{size} px", loop)
            images, speedup, _, flops, share = (value(c) if c != "-" else None for c in row[2:])
            assert images > 0 and speedup > 0 and flops > 0 and share > 0, row
        assert "skipped" in cells(text, "## Training", f"{size} px", "torch.compile")[2]
        data = cells(text, "## Data path", f"{size} px")
        assert len(data) == 6 and all(value(c) > 0 for c in data[1:])
        inference = cells(text, "## Inference", f"{size} px")
        assert len(inference) == 4 and all(value(c) > 0 for c in inference[1:])
    assert "Not measured: one GPU here." in text
    for run in ("F23 recipe", "F26"):
        row = cells(text, "## Projected", run)
        assert value(row[2]) > 0 and value(row[3]) > 0 and row[4] == "-"  # seed's loop, ours; no second GPU
    assert value(cells(text, "## Summary", "F23 recipe")[1]) > 0


def test_a_non_finite_step_fails_loudly_and_writes_nothing(gpu_check, tmp_path, capsys):
    out = tmp_path / "gpu.md"
    assert gpu_check.main(["--device", "cpu", "--out", str(out), "--lr", "1e30"]) == 1
    assert "gpu-check: FAILED: non-finite" in capsys.readouterr().err
    assert not out.exists()
