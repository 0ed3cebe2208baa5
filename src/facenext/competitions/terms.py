"""Every supported HW2P2 term as data: slugs, the folders its download unpacks to, classes, limits and metric.

Facts and their confidence come from ``shared/spec/competitions.md``. A term belongs to one family
(``facenext.competitions.families``), which knows how that kind of competition is laid out, scored and submitted;
a new term of a known family is one entry in ``TERMS``. Paths are relative to the competition's own folder, which is
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
    param_limit: int | None  # every model behind a submission together (ensembles included)
    family: str  # "identity", "pairs" or "combined" (see families.FAMILIES)
    ver_metric: str  # accuracy, auc or eer
    folders: tuple[str, ...] = ()  # folder names the download unpacks to: they identify the term of a found layout
    # Whether the classification test split ships a labels.txt (S25, F25, S26 yes; F26 no; None: not a clue). It tells
    # apart terms that unpack to the same folder (S26 and F26: hw2p2_data/) when neither a slug nor a marker does.
    test_labels: bool | None = None
    eer_in_percent: bool = False  # the leaderboard shows the EER in percent (S26: 3.37 means 0.0337)
    # The course's grading back-end reads the W&B run from a description "<tag>|WB=<entity>/<project>/<run_id>"
    # (facenext.grading); None: the term is not known to grade that way.
    grading_tag: str | None = None
    submission_format: str | None = None  # default format name; None: the sample submission or the user decides
    id_digits: int = 6  # zero padding of classification test ids (000000.jpg)
    cls_dir: str = ""  # classification folder (relative to the data root, searched up to two levels down)
    ver_dir: str = ""  # verification folder, likewise
    train: str = "train"
    dev: str = "dev"
    labels_file: str | None = None  # S25 on: split/images/* listed in split/labels.txt as `<file> <class_id>`
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
    pairs_csv: bool = False  # S22: CSV with a header (img_path1,img_path2,gt) instead of space-separated lines
    pair_dirs: tuple[str, str] | None = None  # S22: dev and test pair images in their own folders under ver_images

    @property
    def verification(self) -> str:
        """``identity`` (match unknown images to known identities) or ``pairs`` (score image pairs)."""
        return "identity" if self.family == "identity" else "pairs"

    @property
    def metric(self) -> str:
        """What the leaderboard ranks: ``accuracy``, ``auc``, ``eer`` or ``combined``."""
        return "combined" if self.family == "combined" else self.ver_metric


def _identity_term(
    key: str, title: str, slugs: tuple[str, ...], folder: str, ver_dir_override: str | None = None, **kw
) -> Term:
    return Term(
        key=key,
        title=title,
        slugs=slugs,
        family="identity",
        ver_metric="accuracy",
        cls_dir=f"{folder}-classification",
        ver_dir=ver_dir_override or f"{folder}-verification",
        folders=(f"{folder}-classification", f"{folder}-verification", *slugs),
        **kw,
    )


def _current_term(key: str, title: str, slugs: tuple[str, ...], folder: str, **kw) -> Term:
    """Spring 2025 on: ``cls_data/<split>/images`` + ``labels.txt``, ``ver_data/``, ``val_pairs.txt``, 8631 classes."""
    defaults = dict(
        num_classes=8631,
        param_limit=None,
        family="pairs",
        ver_metric="eer",
        submission_format="pairs",
        train="cls_data/train",
        dev="cls_data/dev",
        test="cls_data/test",
        labels_file="labels.txt",
        test_labels=True,
        cls_sample=None,
        ver_sample=None,
        no_match=None,
    )
    return Term(key=key, title=title, slugs=slugs, folders=(folder, *slugs), **{**defaults, **kw})


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
        # Fall 2024: one competition; the zip unpacks to 11-785-f24-hw2p2-verification/ (not the slug), with
        # cls_data/{train,dev} as identity folders, ver_data/ and the pair files.
        Term(
            key="f24",
            title="Fall 2024",
            slugs=("11785-hw-2-p-2-face-verification-fall-2024",),
            folders=("11-785-f24-hw2p2-verification", "11785-hw-2-p-2-face-verification-fall-2024"),
            num_classes=8631,
            param_limit=None,
            family="pairs",
            ver_metric="eer",
            submission_format="pairs",
            train="cls_data/train",
            dev="cls_data/dev",
            test=None,
            cls_sample=None,
            ver_sample=None,
            no_match=None,
        ),
        # Spring 2022: doubly nested folders, pair verification in CSV files scored by ROC AUC. Where the CSVs lie
        # (beside the inner verification/ folder) and that their paths are relative to that folder is a guess.
        Term(
            key="s22",
            title="Spring 2022",
            slugs=("11-785-s22-hw2p2-classification", "11-785-s22-hw2p2-verification"),
            num_classes=7000,
            param_limit=35_000_000,
            family="pairs",
            ver_metric="auc",
            submission_format="pairs",
            cls_dir="classification",
            ver_dir="verification",
            train="classification/train",
            dev="classification/dev",
            test="classification/test",
            ver_sample=None,
            no_match=None,
            ver_images="verification",
            val_pairs="verification_dev.csv",
            test_pairs="verification_test.csv",
            pair_header=("id", "match"),
            pairs_csv=True,
            pair_dirs=("dev", "test"),
        ),
        # Fall 2022: classification/ nested in the competition folder; every unknown image matches a known identity
        # (no n000000). The format of dev_identities.csv (id,label as verification_dev.csv) is a guess.
        _identity_term(
            "f22",
            "Fall 2022",
            ("11-785-f22-hw2p2-classification", "11-785-f22-hw2p2-verification"),
            "11-785-f22-hw2p2",
            num_classes=7000,
            param_limit=None,
            train="classification/train",
            dev="classification/dev",
            test="classification/test",
            ver_dir_override="verification",
            ver_dev_labels="dev_identities.csv",
            no_match=None,
        ),
        _current_term("s25", "Spring 2025", ("11785-hw-2-p-2-face-verification-spring-2025",), "HW2p2_S25"),
        _current_term("f25", "Fall 2025", ("11785-hw-2-p-2-face-verification-fall-2025",), "hw2p2_puru_aligned"),
        _current_term(
            "s26",
            "Spring 2026",
            ("11785-hw-2-p-2-face-verification-spring-2026",),
            "hw2p2_data",
            param_limit=30_000_000,
            eer_in_percent=True,
        ),
        # Fall 2026: one competition for both tasks, scored 0.5 x accuracy + 0.5 x (1 - EER). Its CSV columns were
        # not found: no default format (the sample submission, predict.submission_format or --format decides).
        _current_term(
            "f26",
            "Fall 2026",
            ("hw-2-p-2-fall-2026-student-competition", "hw-2-p-2-fall-2026-slack-competition"),
            "hw2p2_data",
            param_limit=30_000_000,
            family="combined",
            submission_format=None,
            test_labels=False,
            grading_tag="",  # the stored F26 back-end config sets no tag: the prefix is "|WB=" (--tag overrides)
        ),
    )
}

DEFAULT_TERM = "f23"


def get_term(key: str) -> Term:
    try:
        return TERMS[key.lower()]
    except KeyError:
        raise KeyError(f"unknown term {key!r}: choose one of {', '.join(TERMS)}") from None


def term_of_slug(slug: str) -> Term | None:
    """The term whose competition (or late-submission twin) has this Kaggle slug."""
    return next((t for t in TERMS.values() if slug in t.slugs), None)


def numbered_name(index: int, term: Term) -> str:
    """The file name of the ``index``-th classification test image, as the competition names it."""
    return f"{index:0{term.id_digits}d}.jpg"
