import hashlib
import re

import numpy as np
import pandas as pd
from PIL import Image

from facenext.competitions import get_term
from facenext.data.layout import find_layout, list_classes, list_images
from facenext.data.sample import write_sample_competition

from .conftest import ORL, needs_orl


def tree_digest(root):
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_f23_layout_is_complete_and_named_like_the_competition(sample):
    layout = find_layout(sample)
    assert layout.term.key == "f23"
    classes = list_classes(layout.train)
    assert len(classes) == 8 and all(re.fullmatch(r"n0\d{5}", c) for c in classes)
    assert list_classes(layout.dev) == classes
    test_files = list_images(layout.test)
    assert test_files == [f"{i:06d}.jpg" for i in range(len(test_files))]
    assert pd.read_csv(layout.cls_sample, dtype=str)["id"].tolist() == test_files
    with Image.open(layout.test / test_files[0]) as img:
        assert img.format == "JPEG" and img.mode == "RGB" and img.size == (64, 64)

    known = list_classes(layout.known)
    assert all(len(list_images(layout.known / k)) == 1 for k in known)
    assert not set(known) & set(classes), "verification identities are not classification identities"
    dev_labels = pd.read_csv(layout.ver_dev_labels, dtype=str)
    assert len(dev_labels) == len(list_images(layout.unknown_dev))
    assert "n000000" in set(dev_labels["label"])
    assert set(dev_labels["label"]) - {"n000000"} <= set(known)
    sample_ver = pd.read_csv(layout.ver_sample)
    assert sample_ver["id"].tolist() == list(range(len(list_images(layout.unknown_test))))


def test_same_seed_same_bytes_other_seed_other_faces(tmp_path):
    kwargs = dict(identities=3, images_per_identity=5, size=32)
    write_sample_competition(tmp_path / "a", seed=7, **kwargs)
    write_sample_competition(tmp_path / "b", seed=7, **kwargs)
    write_sample_competition(tmp_path / "c", seed=8, **kwargs)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    assert tree_digest(tmp_path / "a") != tree_digest(tmp_path / "c")
    assert not list(tmp_path.glob("*.partial"))


def test_images_of_one_identity_vary(sample):
    layout = find_layout(sample)
    folder = layout.train / list_classes(layout.train)[0]
    images = [np.asarray(Image.open(folder / f), dtype=float) for f in list_images(folder)]
    assert min(np.abs(a - b).mean() for i, a in enumerate(images) for b in images[i + 1 :]) > 5


def test_f24_pairs_layout(sample_f24):
    layout = find_layout(sample_f24)
    assert layout.term.key == "f24" and layout.test is None
    val = pd.read_csv(layout.val_pairs, sep=" ", header=None, names=["a", "b", "y"])
    assert set(val["y"]) == {0, 1}
    test = pd.read_csv(layout.test_pairs, sep=" ", header=None)
    assert test.shape[1] == 2
    for name in pd.concat([val["a"], val["b"], test[0], test[1]]):
        assert (layout.ver_images / name).is_file()  # bare names relative to ver_data/, as S25 on


def test_s23_uses_five_digit_test_ids(tmp_path):
    write_sample_competition(tmp_path / "s23", "s23", identities=3, images_per_identity=5, size=32)
    layout = find_layout(tmp_path / "s23")
    assert layout.term == get_term("s23")
    assert list_images(layout.test)[0] == "00000.jpg"


@needs_orl
def test_from_a_folder_per_identity_dataset(tmp_path):
    summary = write_sample_competition(tmp_path / "orl", source_folder=ORL, seed=0)
    layout = find_layout(tmp_path / "orl")
    assert summary["classes"] == 30 and summary["known_identities"] == 8
    assert set(list_classes(layout.train)) <= {f"s{i}" for i in range(1, 41)}
    assert summary["train_images"] == 180 and summary["test_images"] == 60
    with Image.open(
        next((layout.train / "s1").iterdir()) if (layout.train / "s1").exists() else layout.test / "000000.jpg"
    ) as img:
        assert img.mode == "RGB" and img.size == (92, 112)
