"""The recipe experiments' script (benchmarks/recipes.md): its ORL protocol and its two-stage trials."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time

import pytest

from facenext.data.layout import find_layout, list_classes, list_images

from .conftest import CELEBA, ORL, ROOT, needs_celeba, needs_orl


@pytest.fixture(scope="module")
def recipes():
    spec = importlib.util.spec_from_file_location("recipes", ROOT / "scripts" / "recipes.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["recipes"] = module
    spec.loader.exec_module(module)
    return module


def identities(folder):
    return {name: set(list_images(folder / name)) for name in list_classes(folder)}


@needs_orl
def test_orl70_splits_every_identity_seven_to_three_and_by_seed(recipes, tmp_path):
    layouts = [find_layout(recipes.orl70(tmp_path / f"orl{seed}", seed, ORL)) for seed in (0, 1)]
    train, dev = identities(layouts[0].train), identities(layouts[0].dev)
    assert len(train) == len(dev) == 40
    assert {len(v) for v in train.values()} == {7} and {len(v) for v in dev.values()} == {3}
    # The same source image never lands on both sides: compare the bytes, since file names are renumbered.
    for name in train:
        seen = {(layouts[0].train / name / f).read_bytes() for f in train[name]}
        assert not seen & {(layouts[0].dev / name / f).read_bytes() for f in dev[name]}
    other = identities(layouts[1].dev)
    first = {(layouts[0].dev / n / f).read_bytes() for n in dev for f in dev[n]}
    second = {(layouts[1].dev / n / f).read_bytes() for n in other for f in other[n]}
    assert first != second, "another split seed draws other evaluation images"


def test_a_two_stage_trial_shares_the_first_stage_overrides(recipes):
    overrides = ["data.root=x", "train.epochs=42", recipes.THEN, "train.loss=arcface", "train.epochs=18"]
    first, second = recipes.split_stages(overrides)
    assert first == ["data.root=x", "train.epochs=42"]
    assert second == ["data.root=x", "train.epochs=42", "train.loss=arcface", "train.epochs=18"]
    assert recipes.split_stages(["a=1"]) == [["a=1"]]
    # a smoke run's extra overrides reach both stages, after each stage's own
    smoke = recipes.split_stages(recipes.with_extra(overrides, ["train.epochs=1"]))
    assert [stage[-1] for stage in smoke] == ["train.epochs=1", "train.epochs=1"]
    trials = recipes.plan_trials("losses", recipes.LOSSES, ("sample", "orlver"), "selection")
    assert len(trials) == len(recipes.LOSSES) * 2 * 3 and len({recipes.trial_key(t) for t in trials}) == len(trials)


def test_verification_ensembles_group_runs_disjointly_or_in_every_combination(recipes):
    runs = [{"seed": s} for s in range(9)]
    disjoint = recipes.ensemble_groups(runs, 2, every=False)
    assert [[r["seed"] for r in g] for g in disjoint] == [[0, 1], [2, 3], [4, 5], [6, 7]]  # no run twice
    assert len(recipes.ensemble_groups(runs, 3, every=True)) == 84  # 9 choose 3
    assert recipes.ensemble_groups(runs[:1], 2, every=False) == []


@needs_celeba
def test_celeba_split_trains_some_people_and_keeps_the_others_for_verification(recipes, tmp_path):
    import pandas as pd

    # 30 of the 253 people (links, nothing copied): 10 classified, 20 for verification, 4 of them never known
    subset = tmp_path / "faces"
    subset.mkdir()
    people = sorted(p.name for p in CELEBA.iterdir() if p.is_dir())[:30]
    for name in people:
        (subset / name).symlink_to(CELEBA / name)
    photos = {name: len(list_images(CELEBA / name)) for name in people}
    data = recipes.celeba(tmp_path / "competition", 7, folder=subset, classes=10)
    layout = find_layout(data)

    train, dev, known = identities(layout.train), identities(layout.dev), identities(layout.known)
    assert len(train) == 10 and {len(f) for f in train.values()} == {15} and set(dev) == set(train)
    assert all(photos[n] >= 20 for n in train), "classified people keep 5+ photos for dev and test"
    assert len(known) == 16 and {len(f) for f in known.values()} == {1} and not set(known) & set(train)
    test = pd.read_csv(data / "answers" / "classification_test.csv")
    evaluated = len(test) + sum(map(len, dev.values()))
    assert evaluated == sum(photos[n] for n in train) - 150, "every other photo of theirs is in dev or test"
    unknown = len(list_images(layout.unknown_dev)) + len(list_images(layout.unknown_test))
    assert unknown == sum(photos.values()) - sum(photos[n] for n in train) - 16, "every photo is used once"

    truth = pd.read_csv(data / "answers" / "verification_test.csv", dtype=str)["label"]
    assert (truth == "n000000").sum() > 0 and set(truth) - {"n000000"} == set(known)
    files, first, second, labels = recipes.read_pair_list(data, "unknown_test")
    assert set(files) == set(list_images(layout.unknown_test)) and labels.mean() == 0.5
    assert len(set(zip(first, second, strict=True))) == len(labels), "no pair twice"
    owner = truth.to_numpy()[[int(f.removesuffix(".jpg")) for f in files]]  # test ids are the files' positions
    a, b = owner[first], owner[second]
    both_known = (a != "n000000") & (b != "n000000")
    assert (a == b)[labels == 1].all(), "a genuine pair is one person"
    assert (a != b)[both_known & (labels == 0)].all(), "an impostor pair is two people"
    assert len(pd.read_csv(data / "answers" / "verification_test.csv")) == len(list_images(layout.unknown_test))

    # the eigenfaces baseline measures every number of a trial on such a split, the dev gallery's among them
    r = recipes.eigenfaces_trial(data, 7, px=16, components=10, c=10.0)
    assert r["cls_test_acc"] > 0.2, "10 people: chance is 0.1"
    numbers = ["ver_dev_acc_plain", "ver_test_acc_plain", "ver_dev_acc_dev_gallery", "ver_test_acc_dev_gallery"]
    assert all(0 <= r[k] <= 1 for k in numbers) and r["pairs_test"] == len(labels)
    assert r["ver_dev_acc_dev_gallery"] < 1, "each dev photo is scored without itself in the gallery"


def test_a_trial_named_after_a_config_runs_in_one_folder(recipes):
    trial = {"grid": "g", "dataset": "celeba", "split": 100, "variant": "configs/faces_cpu.yaml (x), 15 min", "seed": 1}
    assert recipes.run_name(trial) == "g_celeba_100_configs-faces_cpu.yaml-x,-15-min_1"


def test_every_grid_is_named_variants_of_overrides(recipes):
    # Two module-level names once collided and left a grid pointing at a plain list of overrides.
    for grid, (variants, datasets) in recipes.GRIDS.items():
        assert isinstance(variants, dict) and variants, grid
        for name, overrides in variants.items():
            assert isinstance(overrides, list), (grid, name)
            assert all(o == recipes.THEN or o.startswith("@") or "=" in o for o in overrides), (grid, name)
        assert recipes.plan_trials(grid, variants, datasets, "selection"), grid


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads process states from /proc (Linux)")
def test_a_trial_worker_ends_when_the_script_that_started_it_is_killed(tmp_path):
    # A script with run_grid's pool of one worker, and a trial that would outlive any test: kill the script (SIGKILL,
    # so nothing of it runs after) and its worker must go too.
    script = tmp_path / "grid.py"
    script.write_text(
        "import os, sys, time\n"
        f"sys.path.insert(0, {str(ROOT / 'scripts')!r})\n"
        "import recipes\n"
        "if __name__ == '__main__':\n"
        "    pool = recipes.trial_pool(1, every_s=0.1)\n"
        "    print(pool.submit(os.getpid).result(), flush=True)\n"
        "    pool.submit(time.sleep, 600)\n"
        "    time.sleep(600)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    script_proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    with script_proc:
        worker = int(script_proc.stdout.readline())
        assert pid_alive(worker)
        script_proc.kill()
    deadline = time.monotonic() + 30
    while pid_alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    outlived = pid_alive(worker)
    if outlived:
        os.kill(worker, 9)  # not left sleeping for ten minutes after a failure
    assert not outlived, "the worker outlived the script that started it"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a worker that has exited but not been reaped yet (its parent is gone, so init reaps it) counts as ended
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:  # reaped between the two looks
        return False
