"""Real faces: a competition built from ORL, trained from scratch on the CPU, must beat eigenfaces + SVM."""

import json

import numpy as np
import pytest
from PIL import Image
from sklearn.decomposition import PCA
from sklearn.svm import SVC

from facenext.cli import main
from facenext.data.datasets import image_folder
from facenext.data.layout import find_layout, list_classes

from .conftest import ORL, ROOT, needs_orl

pytestmark = needs_orl


def eigenfaces_accuracy(layout) -> float:
    """The classic baseline on the same split: PCA (60 whitened components) + RBF SVM on greyscale pixels."""
    classes = list_classes(layout.train)

    def pixels(folder):
        paths, labels = image_folder(folder, classes)
        return np.stack([np.asarray(Image.open(p).convert("L"), float).ravel() / 255 for p in paths]), np.array(labels)

    (x_train, y_train), (x_dev, y_dev) = pixels(layout.train), pixels(layout.dev)
    pca = PCA(60, whiten=True, random_state=0).fit(x_train)
    svm = SVC(C=10).fit(pca.transform(x_train), y_train)
    return float((svm.predict(pca.transform(x_dev)) == y_dev).mean())


@pytest.fixture(scope="module")
def orl(tmp_path_factory):
    out = tmp_path_factory.mktemp("orl") / "competition"
    assert main(["sample-data", str(out), "--from", str(ORL)]) == 0
    return out


def test_lean_convnext_beats_eigenfaces_on_orl(orl, tmp_path):
    run = tmp_path / "run"
    args = ["train", str(ROOT / "configs" / "demo.yaml"), "--out", str(run), f"data.root={orl}"]
    assert main([*args, "train.epochs=30", "train.batch_size=16"]) == 0
    ours = json.loads((run / "summary.json").read_text())["best_dev_acc"]
    baseline = eigenfaces_accuracy(find_layout(orl))
    print(f"ORL dev accuracy: lean ConvNeXt {ours:.3f}, eigenfaces + SVM {baseline:.3f}")
    assert baseline > 0.8, "the split itself is sound"
    assert ours >= baseline

    assert main(["verify", str(run), "--out", str(tmp_path / "verify")]) == 0
    verified = json.loads((tmp_path / "verify" / "verify.json").read_text())
    assert verified["dev_accuracy"] >= 0.6, "unseen ORL identities are matched far above chance"
    assert main(["verify", str(run), "--out", str(tmp_path / "verify"), "--gallery", "known"]) == 0
    known_only = json.loads((tmp_path / "verify" / "verify.json").read_text())
    print(f"ORL known/unknown dev accuracy: {verified['dev_accuracy']:.3f} with the dev photos in the gallery (each")
    print(f"  left out of it when scored), {known_only['dev_accuracy']:.3f} against the known photos alone")
    assert verified["dev_accuracy"] >= known_only["dev_accuracy"]
