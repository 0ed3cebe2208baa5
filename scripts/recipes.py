"""Recipe experiments on few images per identity (benchmarks/recipes.md): every variant x dataset x seed.

Datasets (written once under --work):
- ``orl70``: ORL's 40 identities, 7 images each to train and 3 to evaluate, split at random per ``split seed``.
  Variants are chosen on split seeds 100-102 ("selection"); the chosen recipe is reported on seeds 0-4 ("report"),
  so no choice is made on the splits the headline numbers come from.
- ``sample``: the built-in synthetic competition of ``make demo`` (30 classification identities with 18/6/6
  images, 15 verification identities): classification dev accuracy and known/unknown matching on unknown_dev.
- ``orlver``: ORL as an F23 competition (30 classification identities, 10 for verification), for the losses and
  embeddings comparisons (pair EER and known/unknown accuracy on people never trained on).
- ``celeba``: real in-the-wild faces (../shared/data/celeba_faces, 253 people, 112 px) as an F23 competition per split
  seed (``celeba_split``): 158 people classified (15 training photos each), the other 95 never trained on, for
  known/unknown matching and for F24-style pairs (``answers/pairs_unknown_{dev,test}.txt``). One run gives all three
  test numbers (``celeba_metrics``); ``eigenfaces`` measures the classic baseline on the same splits.

Each trial trains ``configs/studio_cpu.yaml`` (``configs/faces_cpu.yaml`` until issue 26; a variant's ``@config``
replaces it) with the variant's overrides and appends one JSON line to --results as soon as it ends; a trial already
in the file is skipped, so an interrupted sweep continues where it stopped and sweeps from several machines can share
one file. Trials run in parallel processes (--jobs) with --threads each.

    python scripts/recipes.py run --grid ablations --jobs 2 --results benchmarks/recipes.jsonl
    python scripts/recipes.py report benchmarks/recipes.jsonl --out benchmarks/recipes_tables.md
    python scripts/recipes.py eigenfaces --results benchmarks/celeba.jsonl         # every celeba split, minutes
    python scripts/recipes.py run --grid celeba --splits report --split-seeds 0 1 2 --results benchmarks/celeba.jsonl
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import shutil
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

ORL = ROOT.parent / "shared" / "data" / "orl_faces"
CELEBA = ROOT.parent / "shared" / "data" / "celeba_faces"
CONFIG = ROOT / "configs" / "studio_cpu.yaml"  # faces_cpu.yaml until issue 26: the rows below were run on it
SELECTION_SPLITS = (100, 101, 102)
REPORT_SPLITS = (0, 1, 2, 3, 4)
TRAIN_SEEDS = (0, 1, 2)
# (query expansion k, re-ranking k1) settings measured after each verification trial, besides plain cosine
SETTINGS = ((3, 0), (5, 0), (10, 0), (0, 5), (0, 10), (0, 14))

# Round 1: one factor at a time around where the recipe started (lean_micro at 96 px, the seed's augmentation preset,
# 100 epochs), which configs/faces_cpu.yaml no longer is: the start is spelled out so that the rows stay reproducible.
START = ["data.image_size=96", "data.augment=seed", "train.epochs=100", "train.budget=null"]
_ROUND1: dict[str, list[str]] = {
    "base": [],
    "augment randaug": ["data.augment=randaug"],
    "augment light": ["data.augment=light"],
    "augment none": ["data.augment=none"],
    "mixup 0.2": ["train.mixup=0.2"],
    "cutmix 1.0 (p 0.5)": ["train.cutmix=1.0", "train.mix_prob=0.5"],
    "EMA": ["train.ema=true", "train.ema_decay=0.999"],
    "drop path 0": ["model.drop_path_rate=0.0"],
    "drop path 0.2": ["model.drop_path_rate=0.2"],
    "label smoothing 0": ["train.label_smoothing=0.0"],
    "weight decay 0.01": ["train.weight_decay=0.01"],
    "weight decay 0.1": ["train.weight_decay=0.1"],
    "lr 1e-3": ["train.lr=1e-3"],
    "lr 6e-3": ["train.lr=6e-3"],
    "epochs 50": ["train.epochs=50"],
    "epochs 200": ["train.epochs=200"],
    "narrower (lean_nano)": ["model.name=lean_nano"],
    "64 px": ["data.image_size=64"],
    "112 px": ["data.image_size=112"],
}
ABLATIONS = {name: [*START, *overrides] for name, overrides in _ROUND1.items()}
# Round 2: the factors not yet measured, around round 1's winner (light augmentation).
LIGHT = ["data.augment=light"]
THEN = "--then"  # separates a two-stage variant's stages: the second starts from the first run's weights
_ROUND2: dict[str, list[str]] = {
    "light": LIGHT,
    "light, 64 px": [*LIGHT, "data.image_size=64"],
    "light, 64 px, 200 epochs": [*LIGHT, "data.image_size=64", "train.epochs=200"],
    "light, EMA": [*LIGHT, "train.ema=true", "train.ema_decay=0.999"],
    "light, label smoothing 0": [*LIGHT, "train.label_smoothing=0.0"],
    "light, drop path 0.2": [*LIGHT, "model.drop_path_rate=0.2"],
    "light, weight decay 0.1": [*LIGHT, "train.weight_decay=0.1"],
}
ROUND2 = {name: [*START, *overrides] for name, overrides in _ROUND2.items()}
# Losses (issue 17 item 3), on people never trained on, with the demo's small model at 64 px for 40 epochs (about
# 2 minutes a trial on one core: two CPU cores were what there was). The two-stage recipe trains cross-entropy for
# 70% of the epochs, then fine-tunes with ArcFace (from the CE run's weights and class centres) for the other 30% at
# a third of the learning rate: 40 epochs in all, as the others.
VER = [*LIGHT, "model.name=lean_nano", "data.image_size=64", "train.epochs=40", "train.budget=null"]
ARC = ["train.loss=arcface"]
LOSSES: dict[str, list[str]] = {
    "cross-entropy": VER,
    "ArcFace": [*VER, *ARC],
    "CosFace": [*VER, "train.loss=cosface"],
    "cross-entropy, then ArcFace": [*VER, "train.epochs=28", THEN, *ARC, "train.epochs=12", "train.lr=1e-3"],
}
# Embeddings (item 4), under ArcFace (the losses grid's winner for verification): the classifier's input is the
# embedding, so each is trained as it is used. The pooled features are the losses grid's ArcFace rows.
EMBEDDINGS: dict[str, list[str]] = {
    "ArcFace, projection to 128": [*VER, *ARC, "model.embed_dim=128"],
    "ArcFace, BatchNorm neck": [*VER, *ARC, "model.neck=bn"],
}
# Round 3: the factors rounds 1 and 2 left unmeasured, one at a time around the recipe itself (configs/faces_cpu.yaml
# for a fixed 100 epochs instead of its 5-minute budget, so that GPU and CPU trials train the same schedule), with
# ArcFace as one more row: its ORL 70/30 accuracy decides whether the recipe could train with it by default.
AROUND = ["train.budget=null", "train.epochs=100"]
_ROUND3: dict[str, list[str]] = {
    "recipe (100 epochs)": [],
    "ArcFace": ARC,
    "EMA": ["train.ema=true", "train.ema_decay=0.999"],
    "label smoothing 0": ["train.label_smoothing=0.0"],
    "drop path 0.2": ["model.drop_path_rate=0.2"],
    "weight decay 0.01": ["train.weight_decay=0.01"],
    "weight decay 0.1": ["train.weight_decay=0.1"],
    "epochs 50": ["train.epochs=50"],
    "epochs 200": ["train.epochs=200"],
    "narrower (lean_nano)": ["model.name=lean_nano"],
    "wider and deeper (lean)": ["model.name=lean"],
    "96 px": ["data.image_size=96"],
    "112 px": ["data.image_size=112"],
    "drop path 0": ["model.drop_path_rate=0.0"],
    "lr 1e-3": ["train.lr=1e-3"],
    "lr 6e-3": ["train.lr=6e-3"],
    "erasing (p 0.3)": ["data.erase=0.3"],
}
ROUND3 = {name: [*AROUND, *overrides] for name, overrides in _ROUND3.items()}
# The sample's verification goal (0.85 known/unknown accuracy): ArcFace with more epochs, pixels and width.
VERIFY: dict[str, list[str]] = {
    "ArcFace, 30 epochs": [*AROUND, *ARC, "train.epochs=30"],
    "ArcFace, 50 epochs": [*AROUND, *ARC, "train.epochs=50"],
    "ArcFace, 100 epochs": [*AROUND, *ARC],
    "ArcFace, 300 epochs": [*AROUND, *ARC, "train.epochs=300"],
    "ArcFace, 96 px": [*AROUND, *ARC, "data.image_size=96"],
    "ArcFace, lean": [*AROUND, *ARC, "model.name=lean"],
    "ArcFace, lean, 96 px, 300 epochs": [*AROUND, *ARC, "model.name=lean", "data.image_size=96", "train.epochs=300"],
}
# The headline (docs/recipes.md): the demo's config against the recipe, on ORL's report splits (no choice was made
# on them) and the sample; the recipe with ArcFace, the verification winner, on the sample. The demo config runs as
# it is (with the decoded cache, which changes its speed, not its samples).
HEADLINE: dict[str, list[str]] = {
    "configs/demo.yaml": ["@configs/demo.yaml", "data.cache=true"],
    "configs/faces_cpu.yaml": [],
}
HEADLINE_VER: dict[str, list[str]] = {"configs/faces_cpu.yaml, train.loss=arcface": ARC}
# Real faces (issue 26): the recipe before it for 20 minutes (as the issue measured it), the first round's choice and
# the recipe chosen here; all three numbers from one run.
FACES = "@configs/faces_cpu.yaml"  # a variant that trains from configs/faces_cpu.yaml instead of --config
# Earlier faces_cpu.yaml files, pinned: the file changed in round 4 (lr 1e-3, GDC pool) and after round 5 (label
# smoothing 0; null is the loss's own default, 0.1 under cross-entropy and 0 under a margin loss). A selection variant
# named "configs/faces_cpu.yaml, ..." before round 4's GDC rows trains from round 3's file, "(round 4)" from round 4's.
FACES_ROUND4 = [FACES, "train.label_smoothing=null"]
FACES_ROUND3 = [*FACES_ROUND4, "train.lr=3e-3", "model.pool=avg"]
FACES_ROUND5 = [FACES, "train.label_smoothing=0"]  # round 4's file without label smoothing: the file since round 5


def then_arcface(first: list[str], lr: str) -> list[str]:
    """The two-stage recipe within 20 minutes: ``first`` for 15, then ArcFace from its weights for 5 at ``lr``."""
    return [*first, "train.budget=15m", THEN, *ARC, "train.budget=5m", f"train.lr={lr}", "train.warmup_epochs=1"]


BN_NECK = [*FACES_ROUND3, "model.drop_path_rate=0.1", "train.weight_decay=0.05"]  # the first round's faces_cpu.yaml
CELEBA_GRID: dict[str, list[str]] = {
    "studio_cpu.yaml (faces_cpu.yaml before issue 26), 20 min": ["train.budget=20m"],
    # the first round's choice (112 px, BN neck), before drop path and weight decay were raised
    "faces_cpu.yaml, first round (drop path 0.1, weight decay 0.05)": BN_NECK,
    "faces_cpu.yaml, round 3 (lr 3e-3, average pool)": FACES_ROUND3,  # its report rows were "configs/faces_cpu.yaml"
    # its report rows were "configs/faces_cpu.yaml" until round 5 took label smoothing off
    "faces_cpu.yaml, round 4 (lr 1e-3, GDC pool, label smoothing 0.1)": FACES_ROUND4,
    # the recipe chosen on celeba's selection splits (round 5); its report rows ran as "configs/faces_cpu.yaml, no
    # label smoothing" (FACES_ROUND5) before the file took the change
    "configs/faces_cpu.yaml": [FACES],
    # the old recipe again, on the machine the new one was measured on: it ran 112 px epochs a quarter slower than
    # the first round's, and a time budget turns speed into epochs
    "studio_cpu.yaml, 20 min, beside the new faces_cpu.yaml": ["train.budget=20m"],
    # round 7: the file, trained on the dev split's photos too (data.train_on_dev)
    "configs/faces_cpu.yaml, trained on the dev photos too": [FACES, "data.train_on_dev=true"],
}
# Issue 26 item 2: one factor at a time around the best so far on a selection split, screened with 10-minute runs
# and settled with 20-minute ones, then rounds 2 and 3 around that choice: the variants measured
# (benchmarks/recipes.md), no others.
TEN = ["train.budget=10m"]
CELEBA_SELECT: dict[str, list[str]] = {
    "recipe, 10 min": TEN,
    "seed augmentation, 10 min": [*TEN, "data.augment=seed"],
    "96 px, 10 min": [*TEN, "data.image_size=96"],
    "wild augmentation, 10 min": [*TEN, "data.augment=wild"],
    "112 px, 10 min": [*TEN, "data.image_size=112"],
    "96 px, ArcFace, 10 min": [*TEN, "data.image_size=96", *ARC],
    "112 px, CosFace, 10 min": [*TEN, "data.image_size=112", "train.loss=cosface"],
    "112 px, ArcFace margin 0.3, 10 min": [*TEN, "data.image_size=112", *ARC, "train.margin=0.3"],
    "112 px, EMA, 10 min": [*TEN, "data.image_size=112", "train.ema=true", "train.ema_decay=0.999"],
    "112 px, wild augmentation, crops from 0.8, 10 min": [
        *TEN,
        "data.image_size=112",
        "data.augment=wild",
        "data.crop_scale=0.8",
    ],
    "112 px, 20 min": ["train.budget=20m", "data.image_size=112"],
    "112 px, mixup 0.2, 20 min": ["train.budget=20m", "data.image_size=112", "train.mixup=0.2"],
    "112 px, BN neck, 20 min": ["train.budget=20m", "data.image_size=112", "model.neck=bn"],
    "112 px, wild augmentation, crops from 0.8, 20 min": [
        "train.budget=20m",
        "data.image_size=112",
        "data.augment=wild",
        "data.crop_scale=0.8",
    ],
    # round 2, around the first round's choice (112 px, BN neck, 20 min), which over-fits: train accuracy 0.97, dev
    # 0.38 (BN_NECK pins the drop path and weight decay that configs/faces_cpu.yaml had then). Its first entry is
    # "112 px, BN neck, 20 min" run again beside the round: machines differ in speed, and with it the epochs that fit
    # into 20 minutes.
    "BN neck (the first round's choice), beside round 2": BN_NECK,
    "BN neck, drop path 0.3": [*BN_NECK, "model.drop_path_rate=0.3"],
    "BN neck, lean_nano": [*BN_NECK, "model.name=lean_nano"],
    "BN neck, erasing 0.25": [*BN_NECK, "data.erase=0.25"],
    "BN neck, drop path 0.5": [*BN_NECK, "model.drop_path_rate=0.5"],
    "BN neck, drop path 0.3, weight decay 0.2": [*BN_NECK, "model.drop_path_rate=0.3", "train.weight_decay=0.2"],
    # round 2, last: the two-stage loss on the recipe chosen (configs/faces_cpu.yaml: drop path 0.3, weight decay 0.2)
    "configs/faces_cpu.yaml, 15 min then ArcFace 5 min": then_arcface(FACES_ROUND3, "1e-3"),
}
# round 3 (benchmarks/recipes.md): the margin loss's scale, never varied before (the rule's 44 for 158 classes), in
# the two-stage recipe; with the first round's choice, the new recipe, drop path 0.5 and the two-stage one on
# splits 101-102
CELEBA_SELECT |= {
    f"configs/faces_cpu.yaml, 15 min then ArcFace scale {scale} 5 min": [
        *CELEBA_SELECT["configs/faces_cpu.yaml, 15 min then ArcFace 5 min"],
        f"model.cosine_scale={scale}",
    ]
    for scale in (32, 64)
}
# round 4 (issue 26 item 4, the targets): what the first three rounds left alone, around configs/faces_cpu.yaml
CELEBA_SELECT |= {
    "configs/faces_cpu.yaml, lr 1e-3": [*FACES_ROUND3, "train.lr=1e-3"],
    "configs/faces_cpu.yaml, lr 5e-4": [*FACES_ROUND3, "train.lr=5e-4"],
    "configs/faces_cpu.yaml, 144 px (the crops enlarged)": [*FACES_ROUND3, "data.image_size=144"],
    # around lr 1e-3, the best of the three on split 100 and better than 3e-3 on split 101 too
    "configs/faces_cpu.yaml, lr 1e-3, GDC pool": [*FACES_ROUND3, "train.lr=1e-3", "model.pool=gdc"],
    "configs/faces_cpu.yaml, lr 1e-3, no label smoothing": [*FACES_ROUND3, "train.lr=1e-3", "train.label_smoothing=0"],
}
# round 5: around round 4's file (lr 1e-3, GDC pool), each variant beside that file again on the same split: this
# machine's speed changed between sessions, and the budget turns speed into epochs
CELEBA_SELECT |= {
    "configs/faces_cpu.yaml (round 4), again beside round 5": FACES_ROUND4,
    "configs/faces_cpu.yaml (round 4), no label smoothing": FACES_ROUND5,
}
# round 6: around round 5's choice (round 4's file without label smoothing)
CELEBA_SELECT |= {
    "configs/faces_cpu.yaml (round 5), again beside round 6": FACES_ROUND5,
    # the runs still end with dev accuracy rising: twice the updates per epoch, at the same learning rate
    "configs/faces_cpu.yaml (round 5), batch 16": [*FACES_ROUND5, "train.batch_size=16"],
    "configs/faces_cpu.yaml (round 5), drop path 0.2": [*FACES_ROUND5, "model.drop_path_rate=0.2"],
    # the second stage's lr a third of the first's, as round 2's 1e-3 was of 3e-3
    "configs/faces_cpu.yaml (round 5), 15 min then ArcFace 5 min": then_arcface(FACES_ROUND5, "3e-4"),
}
# round 7: what round 1 measured on another recipe at 10 minutes (EMA) or round 2 on one split (weight decay 0.05),
# around round 5's file at 20
CELEBA_SELECT |= {
    "configs/faces_cpu.yaml (round 5), EMA 0.999": [*FACES_ROUND5, "train.ema=true", "train.ema_decay=0.999"],
    "configs/faces_cpu.yaml (round 5), weight decay 0.05": [*FACES_ROUND5, "train.weight_decay=0.05"],
    # the final run of a competition: the dev split's labelled photos (about 5 a person) trained on too
    "configs/faces_cpu.yaml (round 5), trained on the dev photos too": [*FACES_ROUND5, "data.train_on_dev=true"],
}
# round 8: a wider model, the one width not tried (round 2's narrower lean_nano lost); it trains at about half the
# speed (49 against 90 images/s on one thread), so about half the epochs fit into the budget
CELEBA_SELECT |= {
    "configs/faces_cpu.yaml (round 5), again beside round 8": FACES_ROUND5,
    "configs/faces_cpu.yaml (round 5), 1.5x wider (48-96-192-384)": [*FACES_ROUND5, "model.dims=[48,96,192,384]"],
}
GRIDS = {
    "celeba": (CELEBA_GRID, ("celeba",)),
    "celeba_select": (CELEBA_SELECT, ("celeba",)),
    "headline": (HEADLINE, ("orl70", "sample")),
    "headline_ver": (HEADLINE_VER, ("sample",)),
    "ablations": (ABLATIONS, ("orl70", "sample")),
    "round2": (ROUND2, ("orl70", "sample")),
    "losses": (LOSSES, ("sample", "orlver")),
    "embeddings": (EMBEDDINGS, ("sample", "orlver")),
    "round3": (ROUND3, ("orl70", "sample")),
    "verify": (VERIFY, ("sample",)),
}


# --- datasets ---------------------------------------------------------------------------------------------------
def orl70(out: Path, split_seed: int, orl: Path) -> Path:
    """ORL with 7 training and 3 evaluation images per identity (the classic 70/30 protocol), drawn by ``split_seed``.

    The F23 layout needs a verification part too: a token one from the evaluation images (never used here)."""
    from facenext.competitions import get_term
    from facenext.data.sample import Split, folder_source, write_split_competition

    source = folder_source(orl, None, split_seed)
    rng = np.random.default_rng(split_seed)
    train, dev = {}, {}
    for name, makers in source.images.items():
        order = rng.permutation(len(makers))
        train[name] = [makers[i] for i in order[:7]]
        dev[name] = [makers[i] for i in order[7:]]
    few = list(dev)[:3]
    split = Split(
        train=train,
        dev=dev,
        test=[(n, m) for n in few for m in dev[n]],
        known={n: dev[n][0] for n in few},
        unknown_dev=[(n, dev[n][1]) for n in few],
        unknown_test=[(n, dev[n][2]) for n in few],
    )
    write_split_competition(out, get_term("f23"), split, split_seed)
    return out


# Real faces (issue 26): F23-style classification and known/unknown matching, and F24-style pairs, from one split.
CELEBA_CLASSES = 158  # people classified (as issue 26 measured): the other 95 are never trained on
CELEBA_TRAIN = 15  # training photos per classified person; the rest of theirs are split between dev and test
CELEBA_MIN_EVAL = 5  # a classified person keeps at least this many photos for dev and test (202 people have 20+)
PAIR_FILES = {"unknown_dev": "pairs_unknown_dev.txt", "unknown_test": "pairs_unknown_test.txt"}


def celeba_split(source, seed: int, classes: int = CELEBA_CLASSES, per_class: int = CELEBA_TRAIN):
    """A ``Split`` of a folder-per-identity source (identities already shuffled by ``seed``), and the identity of
    each ``unknown_dev`` and ``unknown_test`` image (for the pairs: people never known are ``n000000`` in the
    competition's own labels).

    The first ``classes`` people with at least ``per_class + CELEBA_MIN_EVAL`` photos are classified: ``per_class``
    photos to train, the rest halved between dev and test. Everyone else is for verification, never trained on: a
    fifth of them are never in ``known/`` (their photos must be answered with no match), the others have one
    ``known/`` photo; the rest of their photos are halved between ``unknown_dev`` and ``unknown_test``."""
    from facenext.data.sample import Split

    rng = np.random.default_rng(seed)
    photos = {name: [makers[i] for i in rng.permutation(len(makers))] for name, makers in source.images.items()}
    eligible = [n for n, m in photos.items() if len(m) >= per_class + CELEBA_MIN_EVAL]
    if len(eligible) < classes:
        raise SystemExit(f"only {len(eligible)} people have {per_class + CELEBA_MIN_EVAL}+ photos: {classes} wanted")
    classified = eligible[:classes]
    verification = [n for n in photos if n not in classified]
    split = Split({}, {}, [], {}, [], [])
    for name in classified:
        rest = photos[name][per_class:]
        split.train[name] = photos[name][:per_class]
        split.dev[name] = rest[: len(rest) // 2]
        split.test += [(name, m) for m in rest[len(rest) // 2 :]]
    never_known = set(verification[: max(1, len(verification) // 5)])
    for name in verification:
        mine = photos[name]
        if name not in never_known:
            split.known[name], mine = mine[0], mine[1:]
        split.unknown_dev += [(name, m) for m in mine[: len(mine) // 2]]
        split.unknown_test += [(name, m) for m in mine[len(mine) // 2 :]]
    for items in (split.test, split.unknown_dev, split.unknown_test):  # flat folders: no identity in the order
        items[:] = [items[i] for i in rng.permutation(len(items))]
    owners = {part: [n for n, _ in getattr(split, part)] for part in PAIR_FILES}
    return split, owners


def pair_list(owners: list[str], rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """F24-style pairs of a split's images (by position): every genuine pair, and as many impostor pairs drawn at
    random without repeats; shuffled."""
    by_owner: dict[str, list[int]] = defaultdict(list)
    for i, owner in enumerate(owners):
        by_owner[owner].append(i)
    genuine = [(a, b, 1) for idx in by_owner.values() for j, a in enumerate(idx) for b in idx[j + 1 :]]
    impostor: set[tuple[int, int]] = set()
    while len(impostor) < len(genuine):
        a, b = sorted(int(i) for i in rng.choice(len(owners), 2, replace=False))
        if owners[a] != owners[b]:
            impostor.add((a, b))
    pairs = genuine + [(a, b, 0) for a, b in sorted(impostor)]
    return [pairs[i] for i in rng.permutation(len(pairs))]


def celeba(out: Path, split_seed: int, folder: Path = CELEBA, classes: int = CELEBA_CLASSES) -> Path:
    """The celeba competition of ``split_seed`` at 112 px (F23 layout), with its pair lists beside the answer keys:
    ``answers/pairs_unknown_<dev|test>.txt``, lines ``<image> <image> <1 genuine | 0 impostor>``, file names in the
    split's flat folder. The photos are re-encoded as they are (112 x 112 crops): no resizing."""
    from facenext.competitions import get_term
    from facenext.data.sample import folder_source, write_split_competition

    split, owners = celeba_split(folder_source(folder, None, split_seed), split_seed, classes)
    write_split_competition(out, get_term("f23"), split, split_seed)
    rng = np.random.default_rng([split_seed, 24])
    for part, file_name in PAIR_FILES.items():
        # write_split_competition names a flat split's images by position: 000000.jpg, 000001.jpg, ...
        lines = [f"{a:06d}.jpg {b:06d}.jpg {y}\n" for a, b, y in pair_list(owners[part], rng)]
        (out / "answers" / file_name).write_text("".join(lines))
    return out


def read_pair_list(data: Path, part: str) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """A celeba split's pairs: the distinct images (file names, sorted), each pair's two positions among them, and
    the labels."""
    rows = [line.split() for line in (data / "answers" / PAIR_FILES[part]).read_text().splitlines()]
    files = sorted({f for a, b, _ in rows for f in (a, b)})
    where = {f: i for i, f in enumerate(files)}
    first = np.array([where[a] for a, _, _ in rows])
    second = np.array([where[b] for _, b, _ in rows])
    return files, first, second, np.array([int(y) for _, _, y in rows])


def dataset(work: Path, name: str, split: int, orl: Path = ORL) -> Path:
    from facenext.data.sample import write_sample_competition

    out = work / "data" / (f"{name}_{split}" if name != "sample" else name)
    if out.exists():
        return out
    if name == "orl70":
        return orl70(out, split, orl)
    if name == "celeba":
        return celeba(out, split)
    if name == "sample":
        write_sample_competition(out)  # make demo's competition: 30 + 15 identities, 30 images each, 112 px
    elif name == "orlver":
        write_sample_competition(out, source_folder=orl, seed=split)
    else:
        raise SystemExit(f"unknown dataset {name}")
    return out


# --- trials -----------------------------------------------------------------------------------------------------
def trial_key(t: dict) -> str:
    return f"{t['grid']}|{t['dataset']}|{t['split']}|{t['variant']}|{t['seed']}"


def plan_trials(
    grid: str,
    variants: dict[str, list[str]],
    datasets: tuple[str, ...],
    splits: str,
    seeds: tuple[int, ...] = TRAIN_SEEDS,
) -> list[dict]:
    orl_splits = SELECTION_SPLITS if splits == "selection" else REPORT_SPLITS
    trials = []
    for variant, overrides in variants.items():
        for name in datasets:
            # ORL: a new split and a new initialisation each time, so the spread covers both
            pairs = [(0, s) for s in seeds] if name == "sample" else [(s, s) for s in orl_splits]
            for split, seed in pairs:
                trials.append(
                    dict(grid=grid, dataset=name, split=split, seed=seed, variant=variant, overrides=overrides)
                )
    return trials


def last_epoch(run: Path) -> dict:
    import pandas as pd

    row = pd.read_csv(run / "metrics.csv").iloc[-1]
    return {"last_dev_acc": float(row["dev_acc"]), "last_ema_dev_acc": float(row.get("ema_dev_acc", math.nan))}


def run_name(t: dict) -> str:
    """The trial's folder under ``runs/``: one folder, even for a variant named after a config (``configs/x.yaml``)."""
    name = trial_key(t).replace("|", "_").replace(" ", "-").replace("/", "-")
    return name.replace("(", "").replace(")", "")


def split_stages(overrides: list[str]) -> list[list[str]]:
    """The overrides of each stage: ``common... THEN second...`` gives [common, common + second]."""
    if THEN not in overrides:
        return [overrides]
    at = overrides.index(THEN)
    return [overrides[:at], [*overrides[:at], *overrides[at + 1 :]]]


def with_extra(overrides: list[str], extra: list[str]) -> list[str]:
    """``overrides`` with ``extra`` last in every stage (after a two-stage variant's first stage too)."""
    if THEN not in overrides:
        return [*overrides, *extra]
    at = overrides.index(THEN)
    return [*overrides[:at], *extra, *overrides[at:], *extra]


def run_trial(t: dict, work: str, config: str, threads: int) -> dict:
    """Train (and verify, where the dataset has a verification part) one trial; its result as a flat dict."""
    import torch

    from facenext.cli import main as facenext

    torch.set_num_threads(threads)
    work_dir = Path(work)
    data = dataset(work_dir, t["dataset"], t["split"])
    run = work_dir / "runs" / run_name(t)
    cache = f"data.cache_dir={work_dir / 'cache'}"
    overrides = [f"data.root={data}", cache, f"train.seed={t['seed']}", "train.plot=false", *t["overrides"]]
    run.mkdir(parents=True, exist_ok=True)
    # "@configs/x.yaml" in a variant trains from that config instead of --config
    config = next((str(ROOT / o[1:]) for o in overrides if o.startswith("@")), config)
    overrides = [o for o in overrides if not o.startswith("@")]
    stages = split_stages(overrides)
    tic = time.perf_counter()
    with open(run / "log.txt", "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        code, last = 0, None
        for i, stage in enumerate(stages):
            out = run if i == len(stages) - 1 else run / f"stage{i + 1}"
            start = [f"train.init_from={last}"] if last else []
            code = code or facenext(["train", config, "--out", str(out), *stage, *start])
            last = out
        train_s = time.perf_counter() - tic
    verified = None
    if code == 0 and t["dataset"] == "celeba":
        verified = celeba_metrics(run, data)
        code = 0 if verified is not None else 1
    elif code == 0 and t["dataset"] != "orl70":
        verified = verification_metrics(run)
        code = 0 if verified is not None else 1
    result = {**t, "key": trial_key(t), "exit": code, "wall_s": round(time.perf_counter() - tic, 1)}
    if code != 0:
        return result
    summary = json.loads((run / "summary.json").read_text())
    result.update(
        train_s=round(train_s, 1),
        epochs=summary["epochs"],
        parameters=summary["parameters"],
        device=summary["device_name"],
        best_dev_acc=summary["best_dev_acc"],
        **last_epoch(run),
        **(verified or {"ver_dev_acc": None, "ver_pair_eer": None, "ver_pair_auc": None}),
    )
    return result


def setting_suffix(expand: int, rerank: int) -> str:
    return (f"_qe{expand}" if expand else "") + (f"_rr{rerank}" if rerank else "")


def verification_metrics(run: Path) -> dict | None:
    """Verification dev metrics with plain cosine (``ver_*``; whatever the config's verify settings) and with each
    of ``SETTINGS`` (``ver_*_qe<k>``, ``ver_*_rr<k1>``; both suffixes where both are set); None when verify fails. The
    embeddings are computed once and cached; the plain run goes last, so verify.json is left as it writes it."""
    from facenext.cli import main as facenext

    metrics: dict = {}
    for expand, rerank in (*SETTINGS, (0, 0)):
        args = ["verify", str(run), "--out", str(run / "verify"), "--expand", str(expand), "--rerank", str(rerank)]
        args += ["--gallery", "known"]  # as these rows were measured: expansion and re-ranking need it
        with open(run / "log.txt", "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            code = facenext(args)
        if code != 0:
            return None
        verified = json.loads((run / "verify" / "verify.json").read_text())
        suffix = setting_suffix(expand, rerank)
        metrics[f"ver_dev_acc{suffix}"] = verified.get("dev_accuracy")
        metrics[f"ver_pair_eer{suffix}"] = verified.get("dev_pair_eer")
    metrics["ver_pair_auc"] = verified.get("dev_pair_auc")
    return metrics


def reverify(args: argparse.Namespace) -> None:
    """The metrics of ``SETTINGS`` for finished verification trials that lack some, appended to --out (``report``
    merges the files by trial). Trials of ``--grids`` (verified with their config's verify settings) are measured
    again in full, their plain metrics with plain cosine."""
    for r in read_results([Path(args.results), Path(args.out)]):
        lacking = any(f"ver_dev_acc{setting_suffix(*s)}" not in r for s in SETTINGS)
        if r.get("ver_dev_acc") is None or not (lacking or r["grid"] in args.grids):
            continue
        run = Path(args.work) / "runs" / run_name(r)
        verified = verification_metrics(run) if run.is_dir() else None  # trials of another machine are not here
        if verified is None:
            continue
        r.update(verified)
        with Path(args.out).open("a") as f:
            f.write(json.dumps(r) + "\n")
        print(r["key"], {k: v for k, v in r.items() if "_qe" in k or "_rr" in k}, flush=True)


# --- real faces: one run's three test numbers, and eigenfaces on the same splits --------------------------------
def pair_numbers(features: dict[str, dict[str, np.ndarray]], data: Path) -> dict:
    """Pair EER and AUC on the dev and test pair lists, with plain cosine and with the scoring that the dev pairs
    choose (verify's own choice, ``facenext.verification.choice``: the best on dev, kept only if it holds out of bag).
    ``features``: each split's normalised embeddings by file name."""
    from facenext.verification.choice import PairOutcome, ScoringSetting, choose
    from facenext.verification.metrics import roc
    from facenext.verification.similarity import Scoring

    lists = {}
    for part in PAIR_FILES:
        files, first, second, labels = read_pair_list(data, part)
        lists[part] = (np.stack([features[part][f] for f in files]), first, second, labels)
    x, a, b, y = lists["unknown_dev"]
    choice = choose(ScoringSetting(), lambda s: PairOutcome(s.pairs(x, a, b), y), "dev pairs 1 - EER")
    numbers: dict = {
        "pair_auto_chosen": choice.scoring.describe(),
        "pair_auto_best_on_dev": choice.best,
        "pairs_test": len(lists["unknown_test"][3]),
    }
    for name, scoring in (("plain", Scoring(0, 0)), ("auto", choice.scoring)):
        for part, (x, a, b, y) in lists.items():
            curve = roc(scoring.pairs(x, a, b), y)
            where = part.removeprefix("unknown_")
            numbers[f"pair_{where}_eer_{name}"], numbers[f"pair_{where}_auc_{name}"] = curve.eer, curve.auc
    return numbers


def cached_features(npz: Path) -> dict[str, np.ndarray]:
    """The embeddings ``verify`` cached for one split, by file name (a split's flat folder has unique names)."""
    with np.load(npz, allow_pickle=False) as cached:
        return {Path(p).name: v for p, v in zip(cached["paths"].tolist(), cached["vectors"], strict=True)}


def celeba_metrics(run: Path, data: Path) -> dict | None:
    """The test numbers of a celeba run, each through the CLI as a user gets it: classification accuracy
    (``predict``), known/unknown accuracy (``verify`` with plain cosine, then with its default scoring, chosen on
    dev), and the pairs' EER and AUC from the embeddings that verify cached. None when a command fails."""
    from facenext.cli import main as facenext
    from facenext.demo import score_against_answers

    answers, out = data / "answers", run / "verify"

    def cli(args: list[str]) -> int:
        with open(run / "log.txt", "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            return facenext(args)

    if cli(["predict", str(run), "--split", "test", "--out", str(run / "predict")]) != 0:
        return None
    numbers: dict = {
        "cls_test_acc": score_against_answers(run / "predict" / "submission.csv", answers / "classification_test.csv")
    }
    known = ["--gallery", "known"]
    for name, flags in (("plain", ["--expand", "0", "--rerank", "0", *known]), ("auto", known)):
        if cli(["verify", str(run), "--out", str(out), *flags]) != 0:
            return None
        verified = json.loads((out / "verify.json").read_text())
        numbers[f"ver_dev_acc_{name}"] = verified.get("dev_accuracy")
        numbers[f"ver_test_acc_{name}"] = score_against_answers(
            out / "verification_submission.csv", answers / "verification_test.csv"
        )
    scoring = verified["scoring"]
    numbers.update(ver_auto_chosen=scoring["chosen"], ver_auto_best_on_dev=scoring["best_on_dev"])
    numbers.update(ver_auto_reason=scoring["reason"], ver_auto_oob_gain=scoring["out_of_bag_gain"])
    features = {part: cached_features(out / f"embeddings_{part}.npz") for part in PAIR_FILES}
    gallery = dev_gallery_metrics(run, data)
    return None if gallery is None else {**numbers, **pair_numbers(features, data), **gallery}


def dev_gallery_metrics(run: Path, data: Path) -> dict | None:
    """Known/unknown accuracy with unknown_dev's labelled photos in the gallery (``verify --gallery known+dev``, the
    default since issue 26's seventh session), from the embeddings in ``run/verify``, into ``run/verify_gallery``."""
    from facenext.cli import main as facenext
    from facenext.demo import score_against_answers

    out = run / "verify_gallery"
    out.mkdir(exist_ok=True)
    for cached in (run / "verify").glob("embeddings_*.npz"):
        shutil.copy2(cached, out / cached.name)  # the same weights and TTA: verify takes them without embedding
    with open(run / "log.txt", "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        if facenext(["verify", str(run), "--out", str(out), "--gallery", "known+dev"]) != 0:
            return None
    verified = json.loads((out / "verify.json").read_text())
    submission = out / "verification_submission.csv"
    return {
        "ver_dev_acc_dev_gallery": verified["dev_accuracy"],
        "ver_test_acc_dev_gallery": score_against_answers(submission, data / "answers" / "verification_test.csv"),
    }


def tuned_accuracies(
    gallery: np.ndarray, labels: list[str], dev_similarity: np.ndarray, dev_labels: np.ndarray,
    test: np.ndarray, answers: np.ndarray, no_match: str,
) -> tuple[float, float]:  # fmt: skip
    """Known/unknown accuracy against ``gallery``: on dev at the threshold tuned on dev's similarities to it, and
    on test at that threshold."""
    from facenext.verification.identity import best_matches, best_threshold, identity_labels

    predicted, best = best_matches(dev_similarity, labels)
    threshold, dev_accuracy = best_threshold(best, predicted, dev_labels, no_match)
    return dev_accuracy, float((identity_labels(test @ gallery.T, labels, threshold, no_match) == answers).mean())


def sparse_dev(args: argparse.Namespace) -> None:
    """The dev gallery at an F23 download's density (360 dev photos for 960 known people): each draw keeps one dev
    photo for a random third of the people, and as large a share of the no-match photos; known/unknown test accuracy
    against the known photos alone and with the kept photos in the gallery, each threshold tuned on the kept ones."""
    import pandas as pd

    from facenext.data.layout import find_layout
    from facenext.verification.identity import dev_truth, normalised, with_dev_photos

    gains = []
    for r in read_results([Path(args.results)]):
        run = trial_folder(r, Path(args.work)) if r["variant"] == args.variant and "best_dev_acc" in r else None
        if run is None:
            continue
        data = dataset(Path(args.work), r["dataset"], r["split"])
        layout, features = find_layout(data), {}
        for part in ("known", "unknown_dev", "unknown_test"):
            with np.load(run / "verify" / f"embeddings_{part}.npz") as cached:
                features[part] = (cached["paths"].tolist(), cached["vectors"])
        paths, known = features["known"]
        names = sorted({Path(p).parent.name for p in paths})
        sums = np.zeros((len(names), known.shape[1]), dtype=np.float32)
        np.add.at(sums, [names.index(Path(p).parent.name) for p in paths], known)
        dev, test = features["unknown_dev"][1], features["unknown_test"][1]
        truth = dev_truth(layout, [Path(p).name for p in features["unknown_dev"][0]])
        answers = pd.read_csv(data / "answers" / "verification_test.csv", dtype=str)["label"].to_numpy()
        no_match = layout.term.no_match

        for seed in range(args.draws):
            rng = np.random.default_rng(seed)
            people = [np.flatnonzero(truth == p) for p in np.unique(truth[truth != no_match])]
            kept = [int(rng.choice(photos)) for photos in people if rng.random() < 1 / 3]
            strangers = np.flatnonzero(truth == no_match)
            share = len(strangers) / (len(truth) - len(strangers))
            kept += rng.choice(strangers, size=max(1, int(share * len(kept))), replace=False).tolist()
            kept = np.sort(kept)
            alone = normalised(sums)
            joined = with_dev_photos(sums, names, dev[kept], truth[kept], no_match)
            tests = (test, answers, no_match)
            before = tuned_accuracies(alone, names, dev[kept] @ alone.T, truth[kept], *tests)[1]
            after = tuned_accuracies(joined.gallery, joined.labels, joined.dev_similarity, truth[kept], *tests)[1]
            gains.append((len(kept), before, after))
    kept, before, after = (np.array(v) for v in zip(*gains, strict=True))
    print(
        f"{len(gains)} draws, {kept.mean():.0f} dev photos kept on average: known/unknown {before.mean():.3f} against "
        f"the known photos alone, {after.mean():.3f} with the kept dev photos (gain {np.mean(after - before):+.3f}, "
        f"from {np.min(after - before):+.3f} to {np.max(after - before):+.3f}, positive in "
        f"{np.mean(after > before):.0%}, negative in {np.mean(after < before):.0%})"
    )


def trial_folder(r: dict, work: Path) -> Path | None:
    """The run folder behind a finished trial: its own name's, or, for a trial renamed after it ran (a report
    variant named after the file it then trained), the folder of its split whose best dev accuracy is the trial's."""
    runs = work / "runs"
    for run in [runs / run_name(r), *sorted(runs.glob(f"{r['grid']}_{r['dataset']}_{r['split']}_*"))]:
        summary = run / "summary.json"
        if summary.is_file() and json.loads(summary.read_text()).get("best_dev_acc") == r.get("best_dev_acc"):
            return run
    return None


def add_dev_gallery(args: argparse.Namespace) -> None:
    """Finished celeba trials (``--results``, rewritten in place) gain the dev-gallery numbers
    (``dev_gallery_metrics``) where their run folder is here and lacks them."""
    path = Path(args.results)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for r in rows:
        if r.get("exit") != 0 or "ver_test_acc_dev_gallery" in r or "best_dev_acc" not in r:
            continue
        run = trial_folder(r, Path(args.work))
        if run is None or not (run / "verify").is_dir():
            continue
        found = dev_gallery_metrics(run, dataset(Path(args.work), r["dataset"], r["split"]))
        if found is not None:
            r.update(found)
            plain, joined = r["ver_test_acc_plain"], found["ver_test_acc_dev_gallery"]
            print(f"{r['key']}: known/unknown {plain:.3f} plain, {joined:.3f} with the dev photos", flush=True)
    rewrite_results(path, rows)


def rewrite_results(path: Path, rows: list[dict]) -> None:
    """The results file with ``rows`` in place of its lines, replaced whole (``atomic_write``): an interrupted
    rewrite leaves the previous file."""
    from facenext.io import atomic_write

    atomic_write(path, lambda tmp: tmp.write_text("".join(json.dumps(r) + "\n" for r in rows)))


# Eigenfaces' settings, chosen on selection split 100: colour beat greyscale (0.268 against 0.230 classification,
# dev pair EER 0.401 against 0.410), 100 whitened components beat 50 and 150 and unwhitened ones, C=10 beat 1 and tied
# 100; 56 px (112 halved) classified as 32 px did, and better than a tighter crop.
EIGEN_PX = 56
EIGEN_COMPONENTS = 100
EIGEN_C = 10.0


def eigenfaces_key(split: int, px: int, components: int, c: float) -> dict:
    """An eigenfaces trial's identity in the results file, before anything is computed."""
    variant = f"eigenfaces ({px} px RGB, PCA {components} whitened, RBF SVM C={c:g})"
    t = dict(grid="celeba", dataset="celeba", split=split, seed=0, variant=variant, overrides=[])
    return {**t, "key": trial_key(t)}


def eigenfaces_trial(data: Path, split: int, px: int, components: int, c: float) -> dict:
    """Eigenfaces on a celeba split: PCA (whitened) of the training photos' pixels (RGB) and an RBF SVM classify
    the test photos; PCA embeddings and cosine match ``unknown_test`` against ``known/`` at the threshold tuned on
    ``unknown_dev`` (``facenext.verification.identity``), then with unknown_dev's labelled photos in the gallery
    (``with_dev_photos``, verify's default), and score the pair lists."""
    import pandas as pd
    from PIL import Image
    from sklearn.decomposition import PCA
    from sklearn.svm import SVC

    from facenext.data.datasets import image_folder
    from facenext.data.layout import find_layout, list_classes, list_images
    from facenext.submission import verification_ids
    from facenext.verification.identity import dev_truth, known_sums, normalised, with_dev_photos

    tic = time.perf_counter()
    layout = find_layout(data)
    no_match = layout.term.no_match

    def pixels(paths: list[Path]) -> np.ndarray:
        small = [Image.open(p).convert("RGB").resize((px, px), Image.BILINEAR) for p in paths]
        return np.stack([np.asarray(g, np.float32).ravel() / 255 for g in small])

    classes = list_classes(layout.train)
    train_paths, train_labels = image_folder(layout.train, classes)
    pca = PCA(components, whiten=True, random_state=0).fit(x_train := pixels(train_paths))
    svm = SVC(C=c).fit(pca.transform(x_train), train_labels)
    cls_answers = pd.read_csv(data / "answers" / "classification_test.csv", dtype={"id": str})
    predicted = svm.predict(pca.transform(pixels([layout.test / f for f in cls_answers["id"]])))

    class Embed:  # what known_gallery asks of verify's embedding cache: normalised embeddings of some images
        @staticmethod
        def get(_split: str, paths: list[Path]) -> np.ndarray:
            z = pca.transform(pixels(paths))
            return z / np.linalg.norm(z, axis=1, keepdims=True)

    sums, names = known_sums(Embed, layout)
    gallery = normalised(sums)
    dev_files = list_images(layout.unknown_dev)
    dev_x = Embed.get("unknown_dev", [layout.unknown_dev / f for f in dev_files])
    truth = dev_truth(layout, dev_files)
    ids, test_files = verification_ids(layout)
    test_x = Embed.get("unknown_test", [layout.unknown_test / f for f in test_files])
    ver_answers = pd.read_csv(data / "answers" / "verification_test.csv", dtype=str).set_index("id")["label"]
    tests = (test_x, ver_answers.loc[ids].to_numpy(), no_match)
    plain = tuned_accuracies(gallery, names, dev_x @ gallery.T, truth, *tests)
    joined = with_dev_photos(sums, names, dev_x, truth, no_match)  # verify's default gallery, dev left out
    with_dev = tuned_accuracies(joined.gallery, joined.labels, joined.dev_similarity, truth, *tests)
    features = {
        "unknown_dev": dict(zip(dev_files, dev_x, strict=True)),
        "unknown_test": dict(zip(test_files, test_x, strict=True)),
    }
    t = eigenfaces_key(split, px, components, c)
    return {
        **t,
        "exit": 0,
        "cls_test_acc": float((predicted == cls_answers["label"].to_numpy()).mean()),
        "ver_dev_acc_plain": plain[0],
        "ver_test_acc_plain": plain[1],
        "ver_dev_acc_dev_gallery": with_dev[0],
        "ver_test_acc_dev_gallery": with_dev[1],
        **pair_numbers(features, data),
        "train_s": round(time.perf_counter() - tic, 1),
        "device": "cpu",
    }


def eigenfaces(args: argparse.Namespace) -> None:
    """Eigenfaces on each celeba split (built under --work if absent), one JSON line each in --results: appended, or
    in place of a row measured before the dev gallery."""
    path = Path(args.results)
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    for split in args.split_seeds:
        key = eigenfaces_key(split, args.px, args.components, args.c)["key"]
        at = next((i for i, row in enumerate(rows) if row["key"] == key), None)
        if at is not None and "ver_test_acc_dev_gallery" in rows[at]:
            continue
        data = dataset(Path(args.work).resolve(), "celeba", split)
        r = eigenfaces_trial(data, split, args.px, args.components, args.c)
        if at is None:
            rows.append(r)
        else:  # a row from before the dev gallery, measured again in its place (eigenfaces is deterministic)
            rows[at] = r
        rewrite_results(path, rows)
        print(
            f"split {split}: classification {r['cls_test_acc']:.3f}, known/unknown {r['ver_test_acc_plain']:.3f} "
            f"({r['ver_test_acc_dev_gallery']:.3f} with the dev photos), "
            f"pair EER {r['pair_test_eer_plain']:.3f} (AUC {r['pair_test_auc_plain']:.3f}) in {r['train_s']} s",
            flush=True,
        )


SUBMISSION = "verification_submission.csv"  # what `verify` writes for a run


def ensemble_groups(runs: list[dict], size: int, every: bool) -> list[list[dict]]:
    """Groups of ``size`` runs (seed order): disjoint ones (no run in two groups), or ``every`` combination."""
    if every:
        return [list(group) for group in itertools.combinations(runs, size)]
    return [runs[at : at + size] for at in range(0, len(runs) - size + 1, size)]


def ensembles(args: argparse.Namespace) -> None:
    """Verification ensembles of a grid's finished trials: each variant's runs, verified once with
    ``--expand``/``--rerank``, averaged by ``facenext ensemble --verification`` in groups of ``--size`` (disjoint,
    or with ``--all`` every combination); one JSON line per group, appended to --out."""
    from facenext.cli import main as facenext
    from facenext.demo import score_against_answers
    from facenext.ensemble import ensemble_verification
    from facenext.errors import UserError

    trials = [r for r in read_results([Path(args.results)]) if r["grid"] == args.grid and r.get("ver_dev_acc")]
    setting = f"e{args.expand}_r{args.rerank}"
    scored = Path(args.work) / "ensembles" / setting
    scored.mkdir(parents=True, exist_ok=True)
    by_variant: dict[tuple, list[dict]] = defaultdict(list)
    for r in trials:
        by_variant[(r["dataset"], r["split"], r["variant"])].append(r)
    done, verified = done_keys(Path(args.out)), set()
    flags = ["--expand", str(args.expand), "--rerank", str(args.rerank), "--gallery", "known"]
    for (data, split, variant), rs in by_variant.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        answers = dataset(Path(args.work), data, split) / "answers" / "verification_test.csv"
        if len(rs) < args.size:
            print(f"{args.grid} {data} {split} {variant}: {len(rs)} run(s), fewer than --size {args.size}", flush=True)
        for group in ensemble_groups(rs, args.size, args.all):
            seeds = [r["seed"] for r in group]
            key = f"ensemble|{args.grid}|{data}|{split}|{variant}|{seeds}|{setting}" + ("|all" if args.all else "")
            if key in done:
                continue
            runs = [Path(args.work) / "runs" / run_name(r) for r in group]
            with open(scored.parent / "log.txt", "a") as log, contextlib.redirect_stdout(log):
                for run in (r for r in runs if r not in verified):
                    if facenext(["verify", str(run), "--out", str(scored / run.name), *flags]) == 0:
                        verified.add(run)
                name = "".join(c if c.isalnum() or c in "._=-" else "_" for c in key)
                try:
                    summary = ensemble_verification(runs, scored / f"{name}.csv", scored)
                except UserError as e:  # a member whose verify failed has no scores: named here
                    print(f"{key}: {e}", file=sys.stderr)
                    continue
            line = dict(key=key, exit=0, grid=args.grid, dataset=data, split=split, variant=variant, members=seeds)
            line.update(
                every=args.all,
                expand=args.expand,
                rerank=args.rerank,
                ver_dev_acc=summary.get("dev_accuracy"),
                ver_pair_eer=summary.get("dev_pair_eer"),
                member_dev_acc=summary.get("dev_accuracy_runs", []),
                # the sample's answer key: test accuracy, on images nothing was chosen on (None without a key)
                ver_test_acc=score_against_answers(scored / f"{name}.csv", answers),
                member_test_acc=[score_against_answers(scored / r.name / SUBMISSION, answers) for r in runs],
                train_s=sum(r["train_s"] for r in group),
                device=group[0]["device"],
            )
            with Path(args.out).open("a") as f:
                f.write(json.dumps(line) + "\n")
            print(f"{variant} seeds {seeds}: {line['ver_dev_acc']:.3f} (members {line['member_dev_acc']})", flush=True)


def read_results(files: list[Path]) -> list[dict]:
    """The successful trials of every file, merged by trial: a later line adds to (and overrides) an earlier one."""
    merged: dict[str, dict] = {}
    for path in files:
        if path.exists():
            for r in map(json.loads, path.read_text().splitlines()):
                if r.get("exit") == 0:
                    merged[r["key"]] = {**merged.get(r["key"], {}), **r}
    return list(merged.values())


def done_keys(results: Path) -> set[str]:
    if not results.exists():
        return set()
    return {r["key"] for r in map(json.loads, results.read_text().splitlines()) if r.get("exit") == 0}


def exit_with_parent(parent: int, every_s: float = 2.0) -> None:
    """A trial worker's initializer: the worker ends when the script that started it ends, even by ``kill``.

    Killing the script alone leaves its spawned workers training on, unseen (they are not named after the script),
    into run folders that the next launch of the same trial writes too, and on cores the next runs need.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        os._exit(1)  # checkpoints are written to a temporary file and renamed: none is left half-written

    threading.Thread(target=watch, daemon=True).start()


def trial_pool(jobs: int, every_s: float = 2.0) -> ProcessPoolExecutor:
    """Worker processes for trials, each a fresh interpreter (spawn), each ending with this one."""
    return ProcessPoolExecutor(
        jobs, get_context("spawn"), initializer=exit_with_parent, initargs=(os.getpid(), every_s)
    )


def run_grid(args: argparse.Namespace) -> None:
    variants, datasets = GRIDS[args.grid]
    if args.variants:
        variants = {k: v for k, v in variants.items() if k in args.variants}
    if args.datasets:
        datasets = tuple(args.datasets)
    work, results = Path(args.work).resolve(), Path(args.results)
    todo = [
        t
        for t in plan_trials(args.grid, variants, datasets, args.splits, tuple(args.seeds))
        if trial_key(t) not in done_keys(results) and (not args.split_seeds or t["split"] in args.split_seeds)
    ]
    # Datasets first, in this process: parallel trials must not write the same folder.
    for name, split in sorted({(t["dataset"], t["split"]) for t in todo}):
        dataset(work, name, split, Path(args.orl))
    print(f"{len(todo)} trials to run, {args.jobs} at a time", flush=True)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    tic = time.perf_counter()
    with trial_pool(args.jobs) as pool:
        todo = [{**t, "overrides": with_extra(t["overrides"], args.extra)} for t in todo]
        futures = [pool.submit(run_trial, t, str(work), args.config, args.threads) for t in todo]
        for i, future in enumerate(as_completed(futures), 1):
            r = future.result()
            with results.open("a") as f:
                f.write(json.dumps(r) + "\n")
            metric = f"acc {r.get('last_dev_acc', math.nan):.3f}"
            if r.get("ver_dev_acc") is not None:
                metric += f" ver {r['ver_dev_acc']:.3f} eer {r['ver_pair_eer']:.3f}"
            print(
                f"[{time.perf_counter() - tic:6.0f} s] {i}/{len(todo)} {r['key']}: {metric} ({r['wall_s']} s)",
                flush=True,
            )


# --- report -----------------------------------------------------------------------------------------------------
def mean_sd(values: list[float]) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "-"
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{np.mean(values):.3f} ± {sd:.3f}"


def short_device(name: str) -> str:
    return "H200" if "H200" in name else ("CPU" if name.startswith("cpu") else name)


def report(args: argparse.Namespace) -> None:
    """One Markdown table per grid and dataset: mean ± standard deviation over the trials, in the grid's order."""
    rows = read_results([Path(f) for f in args.results])
    ensembled = [r for r in rows if "members" in r]
    real = [r for r in rows if r["dataset"] == "celeba"]
    rows = [r for r in rows if "members" not in r and r["dataset"] != "celeba"]
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        report_split = r["dataset"] == "orl70" and r["split"] < 100
        groups[(r["grid"], r["dataset"] + (" (report splits)" if report_split else ""), r["variant"])].append(r)
    order = {(g, v): i for i, (g, v) in enumerate((g, v) for g, (variants, _) in GRIDS.items() for v in variants)}
    text = []
    for grid, dataset in dict.fromkeys((g, d) for g, d, _ in groups):
        variants = sorted((v for g, d, v in groups if (g, d) == (grid, dataset)), key=lambda v: order.get((grid, v), 0))
        ver = any(groups[(grid, dataset, v)][0].get("ver_dev_acc") is not None for v in variants)
        ema = any(
            not math.isnan(r.get("last_ema_dev_acc", math.nan)) for v in variants for r in groups[(grid, dataset, v)]
        )
        head = "| variant | runs | dev accuracy (last epoch) |" + (" EMA weights |" if ema else "")
        if ver:
            head += " known/unknown accuracy | expansion k=3 | k=5 | re-ranking k1=5 | k1=10 | k1=14 | pair EER |"
            head += " EER k1=10 |"
        head += " train time |"
        lines = [f"### {grid}: {dataset}", "", head, "|" + "---|" * head.count(" |")]
        for v in variants:
            rs = groups[(grid, dataset, v)]
            cells = [v, str(len(rs)), mean_sd([r["last_dev_acc"] for r in rs])]
            if ema:
                cells.append(mean_sd([r.get("last_ema_dev_acc") for r in rs]))
            if ver:
                keys = [f"ver_dev_acc{s}" for s in ("", "_qe3", "_qe5", "_rr5", "_rr10", "_rr14")]
                keys += ["ver_pair_eer", "ver_pair_eer_rr10"]
                cells += [mean_sd([r.get(k) for r in rs]) for k in keys]
            secs = np.mean([r["train_s"] for r in rs])
            devices = "+".join(sorted({short_device(r["device"]) for r in rs}))
            cells.append(f"{secs:.0f} s ({devices}, {np.mean([r['epochs'] for r in rs]):.0f} ep)")
            lines.append("| " + " | ".join(cells) + " |")
        text.append("\n".join(lines) + "\n")
    if ensembled:
        text.append(ensemble_table(ensembled))
    if real:
        text.append(celeba_tables(real))
    out = "\n".join(text)
    print(out)
    if args.out:
        Path(args.out).write_text(out)


def celeba_tables(rows: list[dict]) -> str:
    """Real faces: one table per kind of split (selection, report), a row per variant and split, then each variant's
    mean ± standard deviation. Test numbers only (nothing was chosen on test); `auto` is verify's default scoring,
    chosen on dev (its choice in brackets), beside plain cosine, both against the known photos; "dev gallery" adds
    unknown_dev's labelled photos to them (verify's default since issue 26's seventh session; "-" where the run's
    folder was gone by then). Variants with two runs or more get a mean row."""

    def num(r: dict, key: str) -> str:
        return f"{r[key]:.3f}" if r.get(key) is not None else "-"

    def chosen(r: dict, key: str) -> str:
        return f" ({r[key]})" if r.get(key) else ""

    head = "| variant | split | classification | known/unknown, plain cosine | known/unknown, auto (chosen) |"
    head += " known/unknown, dev gallery | pair EER, plain | pair EER, auto (chosen) | pair AUC, plain | train time |"
    text = []
    for kind, splits in (("report", REPORT_SPLITS), ("selection", SELECTION_SPLITS)):
        mine = sorted((r for r in rows if r["split"] in splits), key=lambda r: (r["variant"], r["split"], r["seed"]))
        if not mine:
            continue
        lines = [f"### celeba: {kind} splits", "", head, "|" + "---|" * head.count(" |")]
        for r in mine:
            cells = [r["variant"], str(r["split"]), num(r, "cls_test_acc"), num(r, "ver_test_acc_plain")]
            cells += [num(r, "ver_test_acc_auto") + chosen(r, "ver_auto_chosen"), num(r, "ver_test_acc_dev_gallery")]
            cells += [num(r, "pair_test_eer_plain"), num(r, "pair_test_eer_auto") + chosen(r, "pair_auto_chosen")]
            epochs = f", {r['epochs']} ep" if r.get("epochs") else ""
            cells += [num(r, "pair_test_auc_plain"), f"{r['train_s']:.0f} s ({short_device(r['device'])}{epochs})"]
            lines.append("| " + " | ".join(cells) + " |")
        for variant in dict.fromkeys(r["variant"] for r in mine):
            rs = [r for r in mine if r["variant"] == variant]
            if len(rs) < 2:
                continue  # its one run is the row above: a spread of one is not a spread
            keys = ["cls_test_acc", "ver_test_acc_plain", "ver_test_acc_auto", "ver_test_acc_dev_gallery"]
            keys.append("pair_test_eer_plain")
            keys += ["pair_test_eer_auto", "pair_test_auc_plain"]
            cells = [f"**{variant}**", f"mean of {len(rs)}", *(mean_sd([r.get(k) for r in rs]) for k in keys), ""]
            lines.append("| " + " | ".join(cells) + " |")
        text.append("\n".join(lines) + "\n")
    text.append(auto_table(rows))
    return "\n".join(text)


def auto_table(rows: list[dict]) -> str:
    """Whether verify's scoring chosen on dev held on test: for each run, what was chosen and its gain over plain
    cosine on dev (where it was chosen) and on test (known/unknown accuracy: higher is better; pair EER: lower)."""

    def gain(r: dict, better: str, worse: str, sign: int = 1) -> str:
        return f"{sign * (r[better] - r[worse]):+.3f}" if r.get(better) is not None else "-"

    head = "| variant | split | known/unknown: chosen | gain on dev | gain on test | pairs: chosen | EER gain on dev |"
    head += " EER gain on test |"
    lines = ["### celeba: verify's auto scoring, chosen on dev, on test", "", head, "|" + "---|" * head.count(" |")]
    for r in sorted(rows, key=lambda r: (r["variant"], r["split"] >= 100, r["split"])):
        cells = [r["variant"], str(r["split"]), r.get("ver_auto_chosen", "-")]
        cells += [gain(r, "ver_dev_acc_auto", "ver_dev_acc_plain"), gain(r, "ver_test_acc_auto", "ver_test_acc_plain")]
        cells += [r["pair_auto_chosen"], gain(r, "pair_dev_eer_plain", "pair_dev_eer_auto")]
        cells.append(gain(r, "pair_test_eer_plain", "pair_test_eer_auto"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def ensemble_table(rows: list[dict]) -> str:
    """Verification ensembles: each (variant, size, scoring) row over its disjoint groups, beside their members."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        kind = "every combination" if r.get("every") else "disjoint"
        groups[(r["grid"], r["dataset"], r["variant"], len(r["members"]), r["expand"], r["rerank"], kind)].append(r)
    head = "| variant | runs per ensemble | scoring | ensembles | known/unknown accuracy | its runs alone | pair EER |"
    head += " test accuracy | its runs alone (test) |"
    lines = ["### verification ensembles", "", head + " train time |", "|" + "---|" * (head.count(" |") + 1)]
    for (grid, data, variant, size, expand, rerank, kind), rs in sorted(groups.items()):
        scoring = ", ".join([f"expansion k={expand}"] * bool(expand) + [f"re-ranking k1={rerank}"] * bool(rerank))
        members = [a for r in rs for a in r["member_dev_acc"]]
        cells = [f"{grid}: {data}, {variant}", str(size), scoring or "plain cosine", f"{len(rs)} ({kind})"]
        cells += [mean_sd([r["ver_dev_acc"] for r in rs]), mean_sd(members), mean_sd([r["ver_pair_eer"] for r in rs])]
        tests = [a for r in rs for a in r.get("member_test_acc", [])]
        cells += [mean_sd([r.get("ver_test_acc") for r in rs]), mean_sd(tests)]
        cells.append(f"{np.mean([r['train_s'] for r in rs]):.0f} s ({short_device(rs[0]['device'])}, all runs)")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(required=True)
    p = sub.add_parser("run")
    p.add_argument("--grid", default="ablations", choices=sorted(GRIDS))
    p.add_argument("--variants", nargs="*", help="only these variants of the grid")
    p.add_argument("--datasets", nargs="*", help="only these datasets")
    p.add_argument("--splits", default="selection", choices=["selection", "report"])
    p.add_argument("--seeds", nargs="+", type=int, default=list(TRAIN_SEEDS), help="training seeds on the sample")
    p.add_argument("--split-seeds", nargs="*", type=int, help="only these of --splits (ORL, celeba)")
    p.add_argument("--config", default=str(CONFIG))
    p.add_argument("--orl", default=str(ORL), help="the ORL faces, one folder per identity")
    p.add_argument("--work", default=str(ROOT / "runs" / "recipes"))
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "recipes.jsonl"))
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--extra", nargs="*", default=[], help="overrides added to every trial (smoke runs)")
    p.set_defaults(func=run_grid)
    p = sub.add_parser("reverify", help="add query-expansion metrics to finished trials")
    p.add_argument("--work", default=str(ROOT / "runs" / "recipes"))
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "recipes.jsonl"))
    p.add_argument("--out", required=True, help="where the updated trials are appended")
    p.add_argument("--grids", nargs="*", default=[], help="grids whose plain metrics are measured again (k=0)")
    p.set_defaults(func=reverify)
    p = sub.add_parser("dev-gallery", help="add known/unknown with the dev photos in the gallery to celeba trials")
    p.add_argument("--work", default=str(ROOT / "runs" / "recipes"))
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "celeba.jsonl"))
    p.set_defaults(func=add_dev_gallery)
    p = sub.add_parser("sparse-dev", help="the dev gallery at an F23 download's density, on celeba runs")
    p.add_argument("--work", default=str(ROOT / "runs" / "recipes"))
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "celeba.jsonl"))
    p.add_argument("--variant", default="configs/faces_cpu.yaml")
    p.add_argument("--draws", type=int, default=20)
    p.set_defaults(func=sparse_dev)
    p = sub.add_parser("ensembles", help="verification ensembles of a grid's trials, in disjoint groups")
    p.add_argument("--grid", default="headline_ver", choices=sorted(GRIDS))
    p.add_argument("--size", type=int, default=2, help="runs per ensemble")
    p.add_argument("--all", action="store_true", help="every combination of --size runs, not disjoint groups")
    p.add_argument("--expand", type=int, default=0)
    p.add_argument("--rerank", type=int, default=10)
    p.add_argument("--work", default=str(ROOT / "runs" / "recipes"))
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "recipes.jsonl"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "recipe_ensembles.jsonl"))
    p.set_defaults(func=ensembles)
    p = sub.add_parser("eigenfaces", help="the eigenfaces baseline on celeba splits")
    splits = [*SELECTION_SPLITS, *REPORT_SPLITS]
    p.add_argument("--split-seeds", nargs="+", type=int, default=splits, help="default: selection and report")
    p.add_argument("--px", type=int, default=EIGEN_PX)
    p.add_argument("--components", type=int, default=EIGEN_COMPONENTS)
    p.add_argument("--c", type=float, default=EIGEN_C, help="the SVM's C")
    p.add_argument("--work", default=str(ROOT / "runs" / "recipes"))
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "celeba.jsonl"))
    p.set_defaults(func=eigenfaces)
    p = sub.add_parser("report")
    p.add_argument("results", nargs="+")
    p.add_argument("--out")
    p.set_defaults(func=report)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
