"""Every supported HW2P2 term: slugs, folder layout, submission format and metric.

Facts come from ``shared/spec/competitions.md``. Paths are relative to the competition's own folder, which is
found anywhere up to two levels below the data root (see ``facenext.data.layout``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Term:
    key: str
    title: str
    slugs: tuple[str, ...]
    num_classes: int
    param_limit: int | None
    verification: str  # "identity": match unknown images to known identities; "pairs": score image pairs
    ver_metric: str  # accuracy, auc or eer
    id_digits: int = 6  # zero padding of classification test ids (000000.jpg)
    cls_dir: str = ""  # classification folder (relative to the data root, searched up to two levels down)
    ver_dir: str = ""  # verification folder, likewise
    train: str = "train"
    dev: str = "dev"
    test: str | None = "test"
    cls_sample: str | None = "classification_sample_submission.csv"
    # identity matching
    known: str = "known"
    unknown_dev: str = "unknown_dev"
    unknown_test: str = "unknown_test"
    ver_dev_labels: str = "verification_dev.csv"
    ver_sample: str | None = "verification_sample_submission.csv"
    no_match: str | None = "n000000"  # label of an unknown image that matches no known identity
    # pair scoring
    ver_images: str = "ver_data"
    val_pairs: str = "val_pairs.txt"
    test_pairs: str = "test_pairs.txt"
    pair_header: tuple[str, str] = ("ID", "Label")


def _identity_term(key: str, title: str, slugs: tuple[str, ...], folder: str, **kw) -> Term:
    return Term(
        key=key,
        title=title,
        slugs=slugs,
        verification="identity",
        ver_metric="accuracy",
        cls_dir=f"{folder}-classification",
        ver_dir=f"{folder}-verification",
        **kw,
    )


TERMS: dict[str, Term] = {
    t.key: t
    for t in (
        _identity_term(
            "f23",
            "Fall 2023",
            ("11-785-f23-hw2p2-classification", "11-785-f23-hw2p2-verification"),
            "11-785-f23-hw2p2",
            num_classes=7001,
            param_limit=21_000_000,
        ),
        _identity_term(
            "s24",
            "Spring 2024",
            ("11785-hw2p2-face-recognition", "11785-hw2p2-face-verification"),
            "11-785-s24-hw2p2",
            num_classes=7001,
            param_limit=18_000_000,
        ),
        _identity_term(
            "s23",
            "Spring 2023",
            ("11-785-s23-hw2p2-classification", "11-785-s23-hw2p2-verification"),
            "11-785-s23-hw2p2",
            num_classes=7000,
            param_limit=None,
            id_digits=5,
        ),
        Term(
            key="f24",
            title="Fall 2024",
            slugs=("11785-hw-2-p-2-face-verification-fall-2024",),
            num_classes=8631,
            param_limit=None,
            verification="pairs",
            ver_metric="eer",
            cls_dir="11785-hw-2-p-2-face-verification-fall-2024",
            ver_dir="11785-hw-2-p-2-face-verification-fall-2024",
            train="cls_data/train",
            dev="cls_data/dev",
            test=None,
            cls_sample=None,
            ver_sample=None,
            no_match=None,
        ),
    )
}

DEFAULT_TERM = "f23"


def get_term(key: str) -> Term:
    try:
        return TERMS[key.lower()]
    except KeyError:
        raise KeyError(f"unknown term {key!r}: choose one of {', '.join(TERMS)}") from None


def numbered_name(index: int, term: Term) -> str:
    """The file name of the ``index``-th classification test image, as the competition names it."""
    return f"{index:0{term.id_digits}d}.jpg"
