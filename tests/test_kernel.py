"""`facenext kernel`: the notebook bundle, pushing it with the real kaggle client (fake server), following it, and
running its script in a simulated Kaggle layout (a temporary folder standing for /kaggle)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from slugify import slugify

from facenext.data.sample import write_sample_competition
from facenext.errors import UserError
from facenext.kernel import build_bundle, kaggle_username

from .conftest import CONFIG, assert_user_error
from .test_kaggle import run

SLUG = "my-comp"
TINY = ["train.epochs=2", "data.image_size=48"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bundle")
    return build_bundle(CONFIG, out, [SLUG], "tester", TINY)


def test_kernel_metadata(bundle):
    notebook = Path(bundle["notebook"])
    meta = json.loads((notebook / "kernel-metadata.json").read_text())
    assert meta["id"] == "tester/facenext-demo" == bundle["kernel"]
    assert isinstance(meta["title"], str) and len(meta["title"]) >= 5
    assert slugify(meta["title"]) == meta["id"].split("/")[1]  # the client warns when the title does not match
    assert (notebook / meta["code_file"]).is_file()
    assert (meta["language"], meta["kernel_type"]) == ("python", "script")
    assert meta["is_private"] is True and meta["enable_gpu"] is True and meta["enable_internet"] is False
    assert meta["competition_sources"] == [SLUG]
    assert meta["dataset_sources"] == ["tester/facenext-toolkit"]
    for key in ("dataset_sources", "competition_sources", "kernel_sources", "model_sources"):
        assert isinstance(meta[key], list) and all(isinstance(v, str) for v in meta[key])
    code = (notebook / meta["code_file"]).read_text()
    compile(code, meta["code_file"], "exec")  # valid Python
    # The schedule is planned to complete inside the session; the config sets no budget of its own.
    assert 'OVERRIDES = ["train.budget=11h", "train.epochs=2"' in code and bundle["budget"] == "11h"


def test_toolkit_dataset(bundle):
    toolkit = Path(bundle["toolkit"])
    meta = json.loads((toolkit / "dataset-metadata.json").read_text())
    assert meta["id"] == "tester/facenext-toolkit"
    assert 6 <= len(meta["title"]) <= 50 and 6 <= len(meta["id"].split("/")[1]) <= 50  # the client's limits
    assert len(meta["licenses"]) == 1 and meta["licenses"][0]["name"]
    with zipfile.ZipFile(toolkit / bundle["wheel"]) as wheel:
        names = wheel.namelist()
    assert "facenext/kernel.py" in names and "facenext/cli.py" in names
    assert any(n.endswith("entry_points.txt") for n in names)


def test_config_default_competitions_and_username(tmp_path, monkeypatch):
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path))
    with pytest.raises(UserError, match="--user"):
        kaggle_username()
    (tmp_path / "kaggle.json").write_text(json.dumps({"username": "alice", "key": "k"}))
    assert kaggle_username() == "alice"


def test_push_creates_the_dataset_then_the_notebook(fake, tmp_path):
    out = tmp_path / "bundle"
    result = run(fake.env(tmp_path), "kernel", CONFIG, "--out", out, "--competition", SLUG, "--push", *TINY)
    assert result.returncode == 0, result.stderr
    names = [path.rsplit("/", 1)[-1] for _, path, _ in fake.requests]
    assert names.index("CreateDataset") < names.index("SaveKernel")
    create = json.loads(fake.calls("CreateDataset")[0])
    assert (create["ownerSlug"], create["slug"]) == ("tester", "facenext-toolkit")
    assert create["files"] == [{"token": "blob-facenext-0.1.0-py3-none-any.whl"}]
    uploaded = [body for method, path, body in fake.requests if method == "PUT"]
    assert uploaded == [next(out.glob("toolkit/*.whl")).read_bytes()]
    save = json.loads(fake.calls("SaveKernel")[0])
    assert save["slug"] == "tester/facenext-demo" and save["enableGpu"] is True
    assert save.get("enableInternet", False) is False  # false may be left out of the body as the default
    assert save["datasetDataSources"] == ["tester/facenext-toolkit"] and save["competitionDataSources"] == [SLUG]
    assert save["text"] == (out / "notebook" / "notebook.py").read_text()
    assert "https://www.kaggle.com/code/tester/facenext-demo" in result.stdout

    fake.requests.clear()  # the dataset exists now: the second push makes a new version
    result = run(fake.env(tmp_path), "kernel", CONFIG, "--out", out, "--competition", SLUG, "--push", *TINY)
    assert result.returncode == 0, result.stderr
    assert fake.calls("CreateDataset") == [] and len(fake.calls("CreateDatasetVersion")) == 1
    assert len(fake.calls("SaveKernel")) == 1


def test_push_bad_credentials_401(fake, tmp_path):
    fake.fail["GetDatasetStatus"] = 401
    result = run(fake.env(tmp_path), "kernel", CONFIG, "--out", tmp_path / "b", "--competition", SLUG, "--push")
    assert_user_error(result, "401", "kaggle.json")
    assert fake.calls("SaveKernel") == []


def test_push_server_error_500(fake, tmp_path):
    fake.fail["SaveKernel"] = 500
    result = run(fake.env(tmp_path), "kernel", CONFIG, "--out", tmp_path / "b", "--competition", SLUG, "--push")
    assert_user_error(result, "500", "retry")


def test_kernel_status(fake, tmp_path):
    fake.kernel_status = "RUNNING"
    result = run(fake.env(tmp_path), "kernel-status", "tester/facenext-demo")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "tester/facenext-demo: running"
    body = json.loads(fake.calls("GetKernelSessionStatus")[0])
    assert (body["userName"], body["kernelSlug"]) == ("tester", "facenext-demo")
    fake.kernel_status = "COMPLETE"
    result = run(fake.env(tmp_path), "kernel-status", "tester/facenext-demo")
    assert "complete" in result.stdout and "kernel-output" in result.stdout


def test_kernel_status_bad_name(fake, tmp_path):
    assert_user_error(run(fake.env(tmp_path), "kernel-status", "no-slash"), "USER/SLUG")
    assert fake.requests == []


def test_kernel_output_fetches_files(fake, tmp_path):
    fake.outputs = {"submission.csv": b"id,label\n0.jpg,1\n"}
    out = tmp_path / "out"
    result = run(fake.env(tmp_path), "kernel-output", "tester/facenext-demo", "-p", out)
    assert result.returncode == 0, result.stderr
    assert (out / "submission.csv").read_bytes() == b"id,label\n0.jpg,1\n"
    assert (out / "facenext-demo.log").is_file()


@pytest.mark.parametrize("gpus", [1, 2])
def test_notebook_runs_in_a_simulated_kaggle(bundle, tmp_path, gpus):
    kaggle = tmp_path / "kaggle"
    shutil.copytree(bundle["toolkit"], kaggle / "input" / "facenext-toolkit")
    write_sample_competition(kaggle / "input" / SLUG, identities=4, images_per_identity=10, size=48)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env.update(FACENEXT_KAGGLE_ROOT=str(kaggle), KAGGLE_KERNEL_RUN_TYPE="Batch", PYTHONPATH="")
    # The GPU count the notebook sees; the processes then train on the CPU (gloo), as torchrun runs them on GPUs.
    env.update(FACENEXT_KAGGLE_GPUS=str(gpus), CUDA_VISIBLE_DEVICES="")
    script = Path(bundle["notebook"]) / "notebook.py"
    result = subprocess.run(
        [sys.executable, script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    working = kaggle / "working"
    rows = (working / "submission.csv").read_text().splitlines()
    tests = sorted(p.name for p in (kaggle / "input" / SLUG).rglob("test/*") if p.is_file())
    assert rows[0] == "id,label" and len(rows) - 1 == len(tests) > 0
    assert (working / "runs" / "demo" / "summary.json").is_file()
    assert (working / "submissions" / "demo" / "verification_submission.csv").is_file()  # the sample has both
    assert f"using FaceNext from {kaggle / 'temp' / 'facenext' / 'facenext'}" in result.stdout  # the wheel's copy
    workers = max(1, (os.cpu_count() or 1) // gpus)
    under = " under torchrun" if gpus > 1 else ""
    assert f"session: {gpus} GPU(s), {os.cpu_count()} CPUs: training in {gpus} process(es){under}, {workers}" in (
        result.stdout
    )
    summary = json.loads((working / "runs" / "demo" / "summary.json").read_text())
    assert summary["processes"] == gpus and summary["complete"]
    assert f"num_workers: {workers}" in (working / "runs" / "demo" / "config.yaml").read_text()
