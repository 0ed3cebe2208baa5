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

from facenext.combined import recorded_format
from facenext.competitions import get_term
from facenext.config import load_config
from facenext.data.layout import find_layout
from facenext.data.sample import write_sample_competition
from facenext.errors import UserError
from facenext.kernel import (
    _competitions,
    build_bundle,
    kaggle_username,
    kernel_metadata,
    notebook_script,
    wandb_overrides,
)
from facenext.submission import check_submission, classification_ids
from facenext.submission import test_pair_count as pair_count

from .conftest import CONFIG, ROOT, STEMS_SAMPLE, TINY_MODEL, TINY_TRAIN, assert_user_error, facenext, run, unzipped

SLUG = "my-comp"
F26 = "hw-2-p-2-fall-2026-student-competition"
F26_CONFIG = str(ROOT / "configs" / "f26_lean_convnext.yaml")
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
    assert "facenext/competitions/terms.yaml" in names  # the shipped terms are package data
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


@pytest.mark.parametrize(("gpus", "term"), [(1, "f26"), (2, "f23")])
def test_notebook_runs_in_a_simulated_kaggle(bundle, tmp_path, gpus, term):
    kaggle = tmp_path / "kaggle"
    shutil.copytree(bundle["toolkit"], kaggle / "input" / "facenext-toolkit")
    slug = F26 if term == "f26" else SLUG
    write_sample_competition(kaggle / "input" / slug, term, identities=4, images_per_identity=10, size=48)
    script = Path(bundle["notebook"]) / "notebook.py"
    if term == "f26":  # today's term: an F26 config's notebook, the bundle's toolkit
        script = tmp_path / "notebook.py"
        overrides = [*TINY_MODEL, *TINY_TRAIN, "train.epochs=2"]
        script.write_text(notebook_script(Path(F26_CONFIG).read_text(), overrides, [slug], "f26_lean_convnext"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env.update(FACENEXT_KAGGLE_ROOT=str(kaggle), KAGGLE_KERNEL_RUN_TYPE="Batch", PYTHONPATH="")
    # The GPU count the notebook sees; the processes then train on the CPU (gloo), as torchrun runs them on GPUs.
    env.update(FACENEXT_KAGGLE_GPUS=str(gpus), CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(
        [sys.executable, script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    working, name = kaggle / "working", "f26_lean_convnext" if term == "f26" else "demo"
    submission = working / "submission.csv"
    rows = submission.read_text().splitlines()
    layout = find_layout(kaggle / "input", term)
    if term == "f26":  # the combined file: every test image, then every test pair, checked against the data
        ids, _ = classification_ids(layout)
        assert rows[0] == "ID,Label" and len(rows) - 1 == len(ids) + pair_count(layout)
        assert check_submission(submission, layout, fmt=recorded_format(submission)).name == "cls+ver-rows"
        assert (working / "submissions" / name / "pair_scores.npz").is_file()  # verified
        assert "grading needs a W&B run: this notebook logged no W&B run (its internet is off)" in result.stdout
        assert "facenext kernel CONFIG --wandb" in result.stdout and "|WB=ENTITY/PROJECT/RUN_ID" in result.stdout
    else:
        tests = sorted(p.name for p in (kaggle / "input" / SLUG).rglob("test/*") if p.is_file())
        assert rows[0] == "id,label" and len(rows) - 1 == len(tests) > 0
        assert (working / "submissions" / name / "verification_submission.csv").is_file()  # the sample has both
        assert "grading" not in result.stdout  # F23 is not graded by a W&B reference
    assert f"+ facenext check-submission {submission}" in result.stdout
    assert (working / "runs" / name / "summary.json").is_file()
    assert f"using FaceNext from {kaggle / 'temp' / 'facenext' / 'facenext'}" in result.stdout  # the wheel's copy
    workers = max(1, (os.cpu_count() or 1) // gpus)
    under = " under torchrun" if gpus > 1 else ""
    assert f"session: {gpus} GPU(s), {os.cpu_count()} CPUs: training in {gpus} process(es){under}, {workers}" in (
        result.stdout
    )
    summary = json.loads((working / "runs" / name / "summary.json").read_text())
    assert summary["processes"] == gpus and summary["complete"]
    if term == "f23":  # the notebook's worker count (F26: TINY_TRAIN's data.num_workers=0 wins, as overrides do)
        assert f"num_workers: {workers}" in (working / "runs" / name / "config.yaml").read_text()


def test_wandb_notebook_logs_with_the_key_from_kaggle_secrets():
    assert wandb_overrides([], True) == (True, ["train.log_to=[wandb]"])
    assert wandb_overrides(["tensorboard"], True) == (True, ["train.log_to=[tensorboard,wandb]"])
    assert wandb_overrides(["wandb"], False) == (True, [])  # the config logs to W&B already
    assert wandb_overrides([], False) == (False, [])
    config = load_config(F26_CONFIG, wandb_overrides(["tensorboard"], True)[1])
    assert config.train.log_to == ["tensorboard", "wandb"]
    assert kernel_metadata("tester", "s", "S t", [F26], internet=True)["enable_internet"] is True
    code = notebook_script("data: {}", [], [F26], "run", wandb=True, tag="HW2P2")
    compile(code, "notebook.py", "exec")
    assert "WANDB = True" in code and "TAG = 'HW2P2'" in code and 'SECRET = "WANDB_API_KEY"' in code
    assert "UserSecretsClient().get_secret(SECRET)" in code and "connect_wandb()" in code
    assert "WANDB = False" in notebook_script("data: {}", [], [F26], "run")


def test_f26_notebook_attaches_one_copy_of_the_data():
    # the late-submission twin holds the same hw2p2_data/: two copies under /kaggle/input are ambiguous
    assert _competitions(load_config(F26_CONFIG), None) == [F26]
    assert _competitions(load_config(CONFIG, ["data.term=f23"]), None) == list(get_term("f23").slugs)  # two tasks


def test_kernel_refuses_a_tag_with_spaces():
    assert_user_error(facenext("kernel", CONFIG, "--tag", "HW2 P2", "--user", "tester"), "--tag", "no spaces")


def test_f26_notebook_whose_config_disagrees_with_the_sample_stops_before_training_with_a_fix_it_can_follow(
    bundle, tmp_path
):
    kaggle = tmp_path / "kaggle"
    shutil.copytree(bundle["toolkit"], kaggle / "input" / "facenext-toolkit")
    data = unzipped(kaggle / "input" / F26, "f26")
    (data.parent / "sample_submission.csv").write_text(STEMS_SAMPLE)  # stems and pairs 1..N: not cls+ver-rows
    script = tmp_path / "notebook.py"
    script.write_text(notebook_script(Path(F26_CONFIG).read_text(), TINY, [F26], "f26_lean_convnext"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env.update(FACENEXT_KAGGLE_ROOT=str(kaggle), KAGGLE_KERNEL_RUN_TYPE="Batch", PYTHONPATH="", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(
        [sys.executable, script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
    )
    assert result.returncode != 0
    error = result.stderr.strip().splitlines()[-1]
    assert "sample_submission.csv in the download decides" in error and "in this notebook's config" in error
    assert "facenext kernel CONFIG predict.submission_format=sample" in error and "--format" not in error
    assert not (kaggle / "working" / "runs").exists()  # stopped before hours of training
