"""Data: every term's layout, robust decoding, check-data, the decoded cache and preview, on real files."""

from __future__ import annotations

import os
import pickle

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from facenext.cli import main
from facenext.competitions import TERMS as KNOWN_TERMS
from facenext.config import load_config
from facenext.data.cache import attach_cache, build_cache
from facenext.data.check import check_data
from facenext.data.datasets import FaceImages, image_folder, load_rgb
from facenext.data.layout import find_layout, list_classes, list_images, read_labels
from facenext.data.sample import write_sample_competition
from facenext.data.transforms import BatchToModel, FaceAugment, _about_centre, colour_matrix, train_transform
from facenext.engine.loaders import load_data
from facenext.errors import UserError

from .conftest import ROOT, TINY_MODEL, TINY_TRAIN

TERMS = list(KNOWN_TERMS)  # every shipped term (terms.yaml)
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
DEMO = str(ROOT / "configs" / "demo.yaml")


def small(path, term, identities=3, images=5, size=32, seed=0):
    write_sample_competition(path, term, identities=identities, images_per_identity=images, size=size, seed=seed)
    return path


@pytest.mark.parametrize("term", TERMS)
def test_every_layout_is_written_detected_and_loads(tmp_path, term):
    root = small(tmp_path / term, term)
    assert main(["sample-data", str(tmp_path / "cli"), "--term", term, "--identities", "2", "--size", "16"]) == 0
    assert find_layout(tmp_path / "cli").term.key == term
    layout = find_layout(root)  # auto-detected among every term
    assert layout.term.key == term
    classes = list_classes(layout.train)
    assert len(classes) == 3
    train_paths, train_labels = image_folder(layout.train, classes)
    dev_paths, dev_labels = image_folder(layout.dev, classes)
    assert len(train_paths) == 9 and sorted(set(train_labels)) == [0, 1, 2]  # 5 images: 3 train, 1 dev, 1 test
    assert len(dev_paths) == 3 and sorted(dev_labels) == [0, 1, 2]
    assert all(p.is_file() for p in train_paths + dev_paths)
    report = check_data(root)
    assert report.problems == []
    assert [s.name for s in report.splits][:2] == ["train", "dev"]
    if term != "f24":
        assert len(list_images(layout.test)) == 3
    if term in ("s25", "f25", "s26", "f26"):  # `<image_file> <class_id>`, file names relative to images/
        lines = (layout.train / "labels.txt").read_text().splitlines()
        assert len(lines) == 9 and all(line.startswith("train_") and line.split()[1].isdigit() for line in lines)
        assert {class_id for _, class_id in read_labels(layout.train)} == set(classes) == {"0", "1", "2"}
        assert (layout.test_labels is not None) == (term != "f26")  # F26's test split has no labels.txt
        assert not any(p.is_dir() for p in layout.train.iterdir() if p.name != "images")
    if term == "s22":
        val = pd.read_csv(layout.val_pairs)
        assert list(val.columns) == ["img_path1", "img_path2", "gt"] and set(val["gt"]) == {0, 1}
        assert list(pd.read_csv(layout.test_pairs).columns) == ["img_path1", "img_path2"]
        assert all((layout.val_pairs.parent / p).is_file() for p in val["img_path1"])
        assert val["img_path1"].str.startswith("verification/dev/").all()
        answers = pd.read_csv(root / "answers" / "verification_test_pairs.csv")
        assert list(answers.columns) == ["id", "match"]
    if term == "f22":
        truth = pd.read_csv(layout.ver_dev_labels, dtype=str)["label"]
        assert layout.ver_dev_labels.name == "dev_identities.csv"
        assert set(truth) <= set(list_classes(layout.known)) and "n000000" not in set(truth)


def test_labels_txt_class_ids_are_the_indices(tmp_path):
    split = tmp_path / "train"
    (split / "images").mkdir(parents=True)
    for k in range(5):
        Image.new("RGB", (8, 8), (k * 40, 0, 0)).save(split / "images" / f"{k}.png")
    (split / "labels.txt").write_text("".join(f"{k}.png {label}\n" for k, label in enumerate([10, 2, 0, 2, 1])))
    classes = list_classes(split)
    assert classes == [str(i) for i in range(11)]  # index k is class id k, ids without images included
    paths, labels = image_folder(split, classes)
    assert labels == [10, 2, 0, 2, 1] and paths[0] == split / "images" / "0.png"


@pytest.mark.parametrize("term", ["s25", "s22"])
def test_train_one_epoch_on_other_layouts_with_a_corrupt_image(tmp_path, term, capsys):
    root = small(tmp_path / term, term, identities=4, images=8, size=48)
    layout = find_layout(root)
    broken = image_folder(layout.train, list_classes(layout.train))[0][2]
    broken.write_bytes(broken.read_bytes()[:200])  # a truncated JPEG
    run = tmp_path / "run"
    args = ["train", DEMO, "--out", str(run), f"data.root={root}", "train.epochs=1", *TINY_MODEL, *TINY_TRAIN]
    assert main(args) == 0
    metrics = pd.read_csv(run / "metrics.csv")
    assert len(metrics) == 1 and np.isfinite(metrics["train_loss"]).all()
    assert f"skipping unreadable image {broken}" in capsys.readouterr().err


def _save(img, path, **kw):
    img.save(path, **kw)
    return path


def test_load_rgb_converts_every_mode(tmp_path):
    ramp = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1))  # 16x16, values 0..240
    grey = _save(Image.fromarray(ramp, "L"), tmp_path / "grey.png")
    grey16 = _save(Image.fromarray(ramp.astype(np.uint16) * 257), tmp_path / "grey16.png")
    rgba = np.dstack([ramp, 255 - ramp, np.full_like(ramp, 7), np.full_like(ramp, 128)])
    rgba_path = _save(Image.fromarray(rgba, "RGBA"), tmp_path / "rgba.png")
    cmyk_img = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    cmyk = _save(cmyk_img, tmp_path / "cmyk.jpg", quality=95)
    palette_img = Image.fromarray(np.dstack([ramp, ramp, ramp])).quantize(16)
    palette = _save(palette_img, tmp_path / "p.png", transparency=0)
    binary = _save(Image.fromarray(ramp > 100), tmp_path / "one.png")

    for path in (grey, grey16, rgba_path, cmyk, palette, binary):
        image = load_rgb(path)
        assert image.dtype == np.uint8 and image.shape == (16, 16, 3), path
    assert (load_rgb(grey)[:, :, 1] == ramp).all()
    assert np.abs(load_rgb(grey16)[:, :, 0].astype(int) - ramp).max() <= 1  # scaled, not clipped to 255
    assert (load_rgb(rgba_path)[:, :, :3] == rgba[:, :, :3]).all()
    red = load_rgb(cmyk).reshape(-1, 3).mean(0)
    assert red[0] > 200 and red[1] < 60 and red[2] < 60
    with Image.open(palette) as img:
        assert img.mode == "P" and "transparency" in img.info
    assert np.abs(load_rgb(palette)[:, :, 0].astype(int) - ramp).max() <= 8
    assert set(np.unique(load_rgb(binary))) == {0, 255}


def test_corrupt_image_is_replaced_deterministically_and_counted(tmp_path, capsys):
    root = small(tmp_path / "f23", "f23", identities=3, images=6, size=32)
    layout = find_layout(root)
    paths, labels = image_folder(layout.train, list_classes(layout.train))
    paths[1].write_bytes(b"not an image at all")
    paths[5].write_bytes(paths[5].read_bytes()[:150])
    dataset = FaceImages(paths, labels, train_transform("seed", 32, MEAN), 32)
    samples = [dataset[(0, 0, i)] for i in range(len(dataset))]  # no crash
    assert dataset.bad == {paths[1], paths[5]}
    assert [label for _, label in samples] == [labels[2 if i == 1 else 6 if i == 5 else i] for i in range(len(paths))]
    again = dataset[(0, 0, 1)]
    assert torch.equal(again[0], samples[1][0])
    err = capsys.readouterr().err
    assert err.count("skipping unreadable image") == 2 and str(paths[1]) in err  # one line per bad file


def test_check_data_reports_every_problem(tmp_path, capsys):
    root = small(tmp_path / "f23", "f23", identities=3, images=5, size=32)
    assert main(["check-data", str(root)]) == 0
    out = capsys.readouterr().out
    assert "term f23" in out and "3 identities, 9 images" in out and "32x32 RGB" in out and "no problems" in out

    layout = find_layout(root)
    classes = list_classes(layout.train)
    for name in ("a.jpg", "b.jpg"):
        (layout.train / classes[0] / name).write_bytes(b"\xff\xd8broken")
    (layout.train / classes[1] / "notes.txt").write_text("hello")
    (layout.train / "n099999").mkdir()
    (layout.dev / "n088888").mkdir()
    Image.new("RGB", (32, 32)).save(layout.dev / "n088888" / "x.jpg")
    assert main(["check-data", str(root), "--term", "f23"]) == 2
    captured = capsys.readouterr()
    assert "2 unreadable images" in captured.out and "a.jpg" in captured.out
    assert "1 identity folders hold no images: n099999" in captured.out
    assert "1 files that are not images" in captured.out and "notes.txt" in captured.out
    assert "dev: 1 identities missing from train: n088888" in captured.out
    assert len(captured.err.strip().splitlines()) == 1 and "4 problems" in captured.err


def test_decoded_cache_matches_decoding_and_rebuilds_on_change(tmp_path, capsys):
    root = small(tmp_path / "f23", "f23", identities=3, images=6, size=64)
    layout = find_layout(root)
    paths, labels = image_folder(layout.train, list_classes(layout.train))
    paths[3].write_bytes(b"garbage")
    tf = train_transform("seed", 48, MEAN)
    plain = FaceImages(paths, labels, tf, 48)
    cached = FaceImages(paths, labels, tf, 48)
    cache = attach_cache(cached, tmp_path / "cache")
    assert cache.array.shape == (len(paths), 48, 48, 3) and cache.bad == {3}
    for i in range(len(paths)):
        a, b = plain[(1, 2, i)], cached[(1, 2, i)]
        assert torch.equal(a[0], b[0]) and a[1] == b[1]
    assert cached.bad == {paths[3]}
    assert len(pickle.dumps(cached)) - len(pickle.dumps(plain)) < 1000  # workers get the path, not the pixels
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(files) == 2 and not [f for f in files if ".tmp" in f]

    before = cache.array_path.stat().st_mtime_ns
    assert build_cache(paths, 48, tmp_path / "cache").array_path.stat().st_mtime_ns == before  # reused
    Image.new("RGB", (64, 64), (255, 0, 0)).save(paths[0], format="JPEG")
    os.utime(paths[0], ns=(1, 1))
    rebuilt = build_cache(paths, 48, tmp_path / "cache")
    assert rebuilt.array_path == cache.array_path
    assert rebuilt.get(0)[:, :, 0].mean() > 240 and rebuilt.get(0)[:, :, 1].mean() < 15
    capsys.readouterr()


def test_load_data_with_cache_config(tmp_path):
    root = small(tmp_path / "s25", "s25", identities=3, images=5, size=32)
    config = load_config(
        DEMO, [f"data.root={root}", "data.cache=true", f"data.cache_dir={tmp_path / 'c'}", "data.image_size=24"]
    )
    data = load_data(config)
    assert data.train.cache is not None and data.dev.cache is not None
    assert data.train.cache.array.shape == (9, 24, 24, 3) and data.dev.cache.array.shape == (3, 24, 24, 3)
    image, label = data.train[(0, 0, 4)]
    assert image.shape == (24, 24, 3) and image.dtype == torch.uint8 and label == data.train.labels[4]


def test_preview_png(tmp_path):
    root = small(tmp_path / "f23", "f23", identities=3, images=5, size=64)
    out = tmp_path / "p" / "preview.png"
    assert (
        main(
            [
                "preview",
                DEMO,
                "--out",
                str(out),
                "--n",
                "6",
                f"data.root={root}",
                "data.image_size=40",
                "data.augment=seed",
            ]
        )
        == 0
    )
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (4 * 2 * 40, 2 * 40)
        grid = np.asarray(img.convert("RGB")).astype(int)
    left, right = grid[:40, :40], grid[:40, 40:80]
    assert left.std() > 10 and np.abs(left - right).mean() > 1  # a real image, and augmentation changed it
    assert (grid[40:, 2 * 2 * 40 :] == 255).all()  # the unused cells of the last row stay white


@pytest.mark.parametrize("preset", ["seed", "randaug", "light", "wild", "none"])
def test_every_augmentation_preset_gives_uint8_images(preset):
    image = np.asarray(Image.new("RGB", (96, 96), (200, 120, 60))).copy()
    image[30:60, 20:50] = (20, 40, 220)  # something to move around
    transform = train_transform(preset, 48, MEAN)
    transform.set_random_seed(0)
    outputs = [transform(image=image)["image"] for _ in range(6)]
    assert all(o.shape == (48, 48, 3) and o.dtype == np.uint8 for o in outputs)
    changed = sum(not np.array_equal(outputs[0], o) for o in outputs[1:])
    assert (changed == 0) == (preset == "none")


def test_erasing_fills_with_the_mean_colour():
    white = np.full((32, 32, 3), 255, np.uint8)
    transform = train_transform("seed", 32, MEAN)
    fill = np.array([round(255 * m) for m in MEAN], np.uint8)
    erased = 0
    for seed in range(20):
        transform.set_random_seed(seed)
        out = transform(image=white)["image"]
        patch = (out == fill).all(axis=2)
        erased += patch.sum() >= 0.04 * 32 * 32  # a box of 5-10 % of the image, not a stray grey edge pixel
        assert patch.sum() <= 0.1 * 32 * 32 + 12
    assert 2 <= erased <= 12  # p=0.3 of 20


@pytest.mark.parametrize(
    ("preset", "erase", "expected"), [("light", None, (0, 0)), ("light", 1.0, (20, 20)), ("seed", 0.0, (0, 0))]
)
def test_data_erase_sets_the_chance_of_an_erased_box_whatever_the_preset(preset, erase, expected):
    white = np.full((32, 32, 3), 255, np.uint8)
    transform = train_transform(preset, 32, MEAN, erase=erase)
    fill = np.array([round(255 * m) for m in MEAN], np.uint8)
    erased = 0
    for seed in range(20):
        transform.set_random_seed(seed)
        erased += (transform(image=white)["image"] == fill).all(axis=2).sum() >= 0.04 * 32 * 32
    assert expected[0] <= erased <= expected[1]


@pytest.mark.parametrize(("crop_scale", "low", "high"), [(1.0, 0.95, 1.06), (0.5, 1.02, 1.45)])
def test_wild_crops_keep_between_crop_scale_and_all_of_the_image(crop_scale, low, high):
    """A centred square of a quarter of the image's area grows by 1/sqrt(kept share) in each crop: 1.0 keeps all of
    it (flips and colour aside), 0.5 zooms in by up to 1.41x."""
    image = np.zeros((64, 64, 3), np.uint8)
    image[16:48, 16:48] = 255
    transform = train_transform("wild", 64, MEAN, crop_scale=crop_scale)
    growth = []
    for seed in range(30):
        transform.set_random_seed(seed)
        bright = (transform(image=image)["image"].max(axis=2) > 100).sum()
        growth.append(np.sqrt(bright / (32 * 32)))
    assert low <= np.median(growth) and max(growth) <= high


def test_crop_scale_outside_0_to_1_is_refused():
    with pytest.raises(UserError, match=r"data\.crop_scale"):
        train_transform("wild", 32, MEAN, crop_scale=0.0)


def test_data_erase_outside_0_to_1_is_refused():
    with pytest.raises(UserError, match="between 0 and 1"):
        train_transform("light", 32, MEAN, erase=1.5)


def test_colour_matrix_is_torchvisions_jitter_in_any_order():
    """One colour matrix equals torchvision's brightness, contrast and saturation adjustments, whatever their order."""
    rng = np.random.default_rng(0)
    image = rng.integers(70, 180, (32, 32, 3), dtype=np.uint8)  # mid-range: no clipping in between
    tensor = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    adjust = {"b": TF.adjust_brightness, "c": TF.adjust_contrast, "s": TF.adjust_saturation}
    for b, c, s in [(1.16, 0.85, 1.1), (0.84, 1.15, 0.9), (1.0, 1.0, 1.0)]:
        ours = cv2.transform(image, colour_matrix(image, b, c, s))
        for order in ("bcs", "scb", "csb"):
            expected = tensor
            for op in order:
                expected = adjust[op](expected, {"b": b, "c": c, "s": s}[op])
            expected = (expected * 255).permute(1, 2, 0).numpy()
            assert np.abs(ours.astype(float) - expected).max() <= 1.0, (b, c, s, order)


def test_face_augment_geometry_matches_torchvision():
    image = np.zeros((64, 64, 3), np.uint8)
    image[10:30, 12:24] = (255, 200, 0)  # an off-centre block: any wrong direction or centre shows
    image[40:50, 30:60] = (0, 90, 255)
    flip_only = FaceAugment(flip=1.0)
    assert np.array_equal(
        flip_only.apply(image, **flip_only.get_params_dependent_on_data({"shape": image.shape}, {})), image[:, ::-1]
    )
    for angle, zoom, shift in [(30.0, 1.0, (0, 0)), (-18.0, 1.1, (6, -4))]:
        params = {"factors": (1.0, 1.0, 1.0), "matrix": _about_centre(angle, zoom, shift, 64, 64), "perspective": False}
        ours = FaceAugment().apply(image, **params).astype(float)
        theirs = TF.affine(
            torch.from_numpy(image).permute(2, 0, 1),
            -angle,  # torchvision's affine turns clockwise, its rotate (and OpenCV) counter-clockwise
            list(shift),
            zoom,
            [0.0, 0.0],
            interpolation=TF.InterpolationMode.BILINEAR,
        )
        theirs = theirs.permute(1, 2, 0).numpy().astype(float)
        # Same placement; the two bilinear kernels differ by a few levels at edges.
        assert np.abs(ours - theirs).mean() < 4 and np.abs(ours - theirs).max() < 140, (angle, zoom, shift)


def test_perspective_moves_corners_inwards_by_at_most_the_distortion():
    white = np.full((40, 40, 3), 255, np.uint8)
    augment = FaceAugment(flip=0.0, perspective=0.2, perspective_p=1.0)
    augment.set_random_seed(3)
    for _ in range(10):
        out = augment.apply(white, **augment.get_params_dependent_on_data({"shape": white.shape}, {}))
        corners = [out[0, 0], out[0, -1], out[-1, 0], out[-1, -1]]
        assert sum(int(c.max()) < 128 for c in corners) >= 3  # corners pulled in leave black behind
        assert (out[4:-4, 4:-4] == 255).all()  # 0.2 of half the side is 4 px: the middle is untouched


def test_batch_to_model_normalises_on_the_device_layout_intact():
    rng = np.random.default_rng(1)
    batch = torch.from_numpy(rng.integers(0, 256, (2, 8, 6, 3), dtype=np.uint8))
    batch[0, :2, :2] = torch.tensor([round(255 * m) for m in MEAN], dtype=torch.uint8)  # an erased patch
    expected = (batch.permute(0, 3, 1, 2).double() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(
        STD
    ).view(1, 3, 1, 1)
    for channels_last in (True, False):
        x = BatchToModel(MEAN, STD, "cpu", channels_last)(batch)
        assert x.shape == (2, 3, 8, 6) and x.dtype == torch.float32
        assert x.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        assert torch.allclose(x.double(), expected, atol=1e-5)
    assert x[0, :, :2, :2].abs().max() < 0.01  # the mean colour is zero, as torchvision's RandomErasing leaves it
