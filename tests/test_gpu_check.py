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
    # fp16 forced on the CPU, with a NaN loss, an inf loss, NaN pixels and an overflow injected at known steps.
    fp16 = "## fp16 with injected bad steps"
    assert cells(text, fp16, "non-finite loss")[1:] == ["3", "3"]
    assert cells(text, fp16, "for an overflow")[1] == "1"
    assert cells(text, fp16, "loss scale after (from 65536)")[1:3] == ["32768", "32768 (halved per overflow only)"]
    assert cells(text, fp16, "moved the weights")[1] == "0 / 0 / 0"
    assert cells(text, fp16, "every loss non-finite")[1] == "every loss of epoch 1 was non-finite"
    assert cells(text, fp16, "from scale 8")[1].startswith("the fp16 loss scale fell to 0.0312")


def test_a_non_finite_step_fails_loudly_and_writes_nothing(gpu_check, tmp_path, capsys):
    out = tmp_path / "gpu.md"
    assert gpu_check.main(["--device", "cpu", "--out", str(out), "--lr", "1e30"]) == 1
    assert "gpu-check: FAILED: non-finite" in capsys.readouterr().err
    assert not out.exists()


GOOD_FP16 = {
    "initial_scale": 65536.0, "scale": 32768.0, "non_finite": 3, "overflow": 1, "train_loss": 2.0,
    "moved": {"weights": 0, "BatchNorm statistics": 0, "EMA": 0}, "finite_model": True, "finite_ema": True,
    "all_bad_stop": "every loss of epoch 1 was non-finite: lower train.lr", "collapse_stop": "loss scale fell to 0.5",
}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "failure"),
    [
        ({}, None),
        ({"overflow": 2, "scale": 16384.0}, None),  # a genuine overflow besides the injected one
        # What the GradScaler did before: every non-finite loss halved the scale as if it were an overflow.
        ({"scale": 4096.0}, "loss scale 4096 after 1 overflows and 3 non-finite losses from 65536: expected 32768"),
        ({"non_finite": 4}, "4 non-finite steps counted, 3 injected"),
        ({"moved": {"weights": 0, "BatchNorm statistics": 1, "EMA": 1}}, "the EMA moved across 1 skipped steps"),
        ({"finite_ema": False}, "non-finite weights, EMA or training loss"),
        ({"all_bad_stop": "did not stop"}, "a run with no finite loss: did not stop"),
        ({"collapse_stop": "loss scale fell to 0.5 (but wrote last.pt)"}, "a collapsing loss scale"),
    ],
)
def test_the_fp16_check_fails_on_any_trace_of_a_bad_step(gpu_check, change, failure):
    failures = gpu_check.fp16_failures({**GOOD_FP16, **change})
    assert failures == [] if failure is None else any(failure in f for f in failures), failures
