"""Command line: argument parsing only; every sub-command calls one library function."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .competitions import DEFAULT_TERM, KINDS
from .competitions.terms import TERMS, TERMS_ENV, add_terms_file, add_terms_from_env, describe_terms, restored_terms
from .config import AUTO, GALLERIES, KNOWN_ONLY, MERGES, TTA_HELP, WITH_DEV
from .console import log_to_console
from .errors import UserError
from .io import DISK_FULL
from .run import WEIGHTS


def _neighbours(text: str) -> int | str:
    """--expand / --rerank: a number of neighbours, or auto (anything else is refused with the config's message)."""
    try:
        return int(text)
    except ValueError:
        return text


def _sample_data(args: argparse.Namespace) -> None:
    from .data.sample import write_sample_competition

    summary = write_sample_competition(
        args.out, args.term, args.source, args.identities, args.images_per_identity, args.size, args.seed
    )
    print(", ".join(f"{k} {v}" for k, v in summary.items()))


def _check_data(args: argparse.Namespace) -> None:
    from .data.check import check_command

    check_command(args.data, args.term)


def _preview(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .config import load_config
    from .data.preview import write_preview

    config = load_config(args.config, args.overrides)
    write_preview(config, args.out or Path("runs") / Path(args.config).stem / "preview.png", args.n)


def _train(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .config import load_config
    from .data.layout import find_layout

    # Check the config and the data before importing torch and timm (seconds), so mistakes are reported at once.
    config = load_config(args.config, args.overrides)
    find_layout(config.data.root, config.data.term)
    from .engine.train import train

    train(config, args.out or Path("runs") / Path(args.config).stem)


def _info(args: argparse.Namespace) -> None:
    from .config import load_config
    from .info import print_info

    print_info(load_config(args.config, args.overrides))


def _predict(args: argparse.Namespace) -> None:
    from .predict import predict

    predict(args.run, args.split, args.tta, args.out, args.weights, args.data, args.merge, args.fill, args.format)


def _ensemble(args: argparse.Namespace) -> None:
    from .ensemble import ensemble, ensemble_verification

    if args.verification:
        if args.weights != "equal" or args.fit_limit or args.format:
            raise UserError(
                "--verification averages scores with equal weights: drop --weights, --fit-limit and --format "
                "(make: WEIGHTS, FIT_LIMIT)"
            )
        ensemble_verification(
            args.runs, args.out or "submissions/verification_submission.csv", args.predictions, args.data
        )
        return
    out = args.out or "submissions/submission.csv"
    ensemble(args.runs, out, args.predictions, args.weights, args.folds, args.data, args.fit_limit, args.format)


def _check_submission(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .combined import recorded_format
    from .data.layout import find_layout
    from .submission import check_submission

    fmt = args.format or recorded_format(args.file)
    source = (
        f"--format {fmt}" if args.format else f"the format {fmt} recorded in {Path(args.file).with_suffix('.json')}"
    )
    layout = find_layout(args.data, args.term)
    checked = check_submission(Path(args.file), layout, args.kind, args.num_classes, fmt=fmt, fmt_source=source)
    print(f"{args.file}: ok ({checked.name} format)")


def _verify(args: argparse.Namespace) -> None:
    from .verification import verify

    verify(
        args.run, args.out, args.tta, args.weights, args.data, cache=not args.no_cache, fmt=args.format,
        expand_k=args.expand, rerank=args.rerank, gallery=args.gallery,
    )  # fmt: skip


def _terms(args: argparse.Namespace) -> None:
    print("\n".join(describe_terms()))


def _average(args: argparse.Namespace) -> None:
    from .engine.average import average_checkpoints

    average_checkpoints(args.run, args.top_k)


def _demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(args.config, args.data, args.run, args.submissions, args.overrides, args.term)


def _download(args: argparse.Namespace) -> None:
    from .kaggle import download

    download(args.slug, args.out, args.force)


def _submit(args: argparse.Namespace) -> None:
    from .kaggle import submit

    submit(
        args.file,
        args.competition,
        args.message,
        args.data,
        args.dry_run,
        args.wait,
        args.poll_interval,
        tag=args.tag,
        wandb_run=args.wandb,
        runs_root=args.runs,
        fmt=args.format,
        no_check=args.no_check,
    )


def _submissions(args: argparse.Namespace) -> None:
    from .kaggle import print_submissions

    print_submissions(args.slug, args.tag)


def _kernel(args: argparse.Namespace) -> None:
    from .kernel import build_bundle, push

    bundle = build_bundle(
        args.config, args.out, args.competition, args.user, args.overrides, wandb=args.wandb, tag=args.tag
    )
    if args.push:
        push(bundle)


def _kernel_status(args: argparse.Namespace) -> None:
    from .kernel import kernel_status

    kernel_status(args.kernel)


def _kernel_output(args: argparse.Namespace) -> None:
    from .kernel import kernel_output

    kernel_output(args.kernel, args.path)


TAG_HELP = (
    "the grading back-end's tag: the description must be exactly TAG|WB=ENTITY/PROJECT/RUN_ID (default: the "
    "term's; F26: empty, i.e. |WB=...)"
)
FORMAT_HELP = (
    "F26 submission format: cls+ver-rows (assumed, see README) or sample; a *sample_submission*.csv in the download "
    "always decides (a format that writes another file is refused); else this, else predict.submission_format"
)


def build_parser() -> argparse.ArgumentParser:
    term_keys = ", ".join(TERMS)
    parser = argparse.ArgumentParser(prog="facenext", description="HW2P2 face classification and verification.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sample-data", help="write a complete sample competition")
    p.add_argument("out", help="folder to write (replaced if it exists)")
    p.add_argument("--from", dest="source", help="build from a folder-per-identity dataset instead of synthetic faces")
    p.add_argument(
        "--term", default=DEFAULT_TERM, help=f"competition layout: {DEFAULT_TERM} (default) or one of {term_keys}"
    )
    p.add_argument("--identities", type=int, default=30, help="classification identities (synthetic data)")
    p.add_argument("--images-per-identity", type=int, default=30, help="images per identity (synthetic data)")
    p.add_argument(
        "--size", type=int, help="image side in pixels (synthetic default 112; --from keeps the source size)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_sample_data)

    p = sub.add_parser("check-data", help="what a competition folder holds, and anything broken in it")
    p.add_argument("data", help="data folder (a data root or the competition folder)")
    p.add_argument("--term", default="auto", help="competition term (default: found from the layout)")
    p.set_defaults(func=_check_data)

    p = sub.add_parser("preview", help="a PNG grid of augmented training images beside their originals")
    p.add_argument("config", help="YAML config, e.g. configs/f23_lean_convnext.yaml")
    p.add_argument("--out", help="PNG file (default runs/<config name>/preview.png)")
    p.add_argument("--n", type=int, default=16, help="number of images (default 16)")
    p.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. data.augment=light")
    p.set_defaults(func=_preview)

    p = sub.add_parser("train", help="train (or resume) a run")
    p.add_argument("config", help="YAML config, e.g. configs/f23_lean_convnext.yaml")
    p.add_argument("--out", help="run folder (default runs/<config name>)")
    p.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. train.epochs=3")
    p.set_defaults(func=_train)

    p = sub.add_parser("info", help="a config's model: parameters, MACs, embedding size, competition limits")
    p.add_argument("config", help="YAML config, e.g. configs/f23_lean_convnext.yaml")
    p.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. data.image_size=224")
    p.set_defaults(func=_info)

    p = sub.add_parser("predict", help="classify dev or test images with a run")
    p.add_argument("run", help="run folder")
    p.add_argument("--split", choices=("dev", "test"), default="test")
    p.add_argument(
        "--tta",
        help=f"{TTA_HELP} (default: the run's predict.tta)",
    )
    p.add_argument("--merge", choices=MERGES, default="prob", help="how views merge (default prob)")
    p.add_argument("--weights", choices=WEIGHTS, default="best")
    p.add_argument("--out", help="output folder (default submissions/<run name>)")
    p.add_argument("--data", help="data root (default: the run's data.root)")
    p.add_argument("--fill", action="store_true", help="unreadable test images get the most common prediction")
    p.add_argument("--format", help=FORMAT_HELP)
    p.set_defaults(func=_predict)

    p = sub.add_parser("ensemble", help="combine the test outputs of runs into one submission")
    p.add_argument("runs", nargs="+", help="run folders")
    p.add_argument(
        "--verification",
        action="store_true",
        help="average the runs' `verify` scores into the verification submission (every term but F26)",
    )
    p.add_argument(
        "--out", help="default submissions/submission.csv (--verification: submissions/verification_submission.csv)"
    )
    p.add_argument("--predictions", default="submissions", help="folder holding each run's predictions")
    p.add_argument(
        "--weights", choices=("equal", "fit"), default="equal", help="fit: non-negative weights fitted on dev logits"
    )
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds that test fitted weights on dev")
    p.add_argument("--data", help="data root (default: the first run's data.root)")
    p.add_argument(
        "--fit-limit",
        action="store_true",
        help="use the subset of the runs with the best cross-validated dev score that fits the parameter limit",
    )
    p.add_argument("--format", help=FORMAT_HELP)
    p.set_defaults(func=_ensemble)

    p = sub.add_parser("check-submission", help="check a submission file against the competition's data")
    p.add_argument("file", help="submission CSV")
    p.add_argument("--data", default="data", help="data root holding the competition (default data)")
    p.add_argument("--term", default="auto", help="competition term (default: found from the layout)")
    p.add_argument("--kind", choices=KINDS, help="default: guessed from the file")
    p.add_argument("--format", help=FORMAT_HELP)
    p.add_argument("--num-classes", type=int, help="default: the number of train identity folders")
    p.set_defaults(func=_check_submission)

    p = sub.add_parser("verify", help="verification: dev metrics and the test submission")
    p.add_argument("run", help="run folder")
    p.add_argument("--tta", help=f"{TTA_HELP} (default: the run's verify.tta)")
    p.add_argument("--weights", choices=WEIGHTS, default="best")
    p.add_argument("--out", help="output folder (default submissions/<run name>)")
    p.add_argument("--data", help="data root (default: the run's data.root)")
    p.add_argument("--no-cache", action="store_true", help="embed every image again (ignore OUT/embeddings_*.npz)")
    p.add_argument("--format", help=FORMAT_HELP)
    p.add_argument(
        "--expand",
        type=_neighbours,
        help=f"query expansion: neighbours averaged into each embedding, 0 for off, {AUTO} to choose on dev "
        "(default: verify.expand)",
    )
    p.add_argument(
        "--rerank",
        type=_neighbours,
        help=f"k-reciprocal re-ranking: its k1, 0 for off, {AUTO} to choose on dev (default: verify.rerank)",
        metavar="K1",
    )
    p.add_argument(
        "--gallery",
        choices=GALLERIES,
        help=f"identity matching against the {KNOWN_ONLY} photos, or {WITH_DEV}: with unknown_dev's labelled photos "
        "too, dev scored leaving each photo out (default: verify.gallery)",
    )
    p.set_defaults(func=_verify)

    p = sub.add_parser("average", help="average a run's top-k epoch weights into averaged.pt")
    p.add_argument("run", help="run folder")
    p.add_argument("--top-k", type=int, help="average the k best epochs (default: all kept, train.keep_top_k)")
    p.set_defaults(func=_average)

    p = sub.add_parser("demo", help="sample data -> train -> predict -> verify, with a summary")
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--data", default="data/sample")
    p.add_argument("--run", default="runs/demo")
    p.add_argument("--submissions", default="submissions")
    p.add_argument("--term", default=DEFAULT_TERM, help=f"{DEFAULT_TERM} (default) or one of {term_keys}")
    p.add_argument("overrides", nargs="*", help="key.path=value config overrides")
    p.set_defaults(func=_demo)

    p = sub.add_parser("download", help="download and extract a competition's files with the kaggle client")
    p.add_argument("slug", help="competition slug, e.g. 11785-hw2p2-face-recognition")
    p.add_argument("--out", default="data", help="data root; files go to OUT/SLUG (default data)")
    p.add_argument("--force", action="store_true", help="download again even if already complete")
    p.set_defaults(func=_download)

    p = sub.add_parser("submit", help="check a submission file, then upload it to Kaggle")
    p.add_argument("file", help="submission CSV")
    p.add_argument("--competition", required=True, help="competition slug")
    p.add_argument("--message", help="submission description (default: the runs behind the file, dev scores)")
    p.add_argument("--data", default="data", help="data root used to check the file (default data)")
    p.add_argument("--dry-run", action="store_true", help="check the file only; upload nothing")
    p.add_argument(
        "--no-check",
        action="store_true",
        help="upload without checking the file against the competition's data (--data) and the parameter limit",
    )
    p.add_argument("--wait", type=float, default=600, help="seconds to wait for the score (default 600; 0: none)")
    p.add_argument("--poll-interval", type=float, default=10, help="seconds between score checks (default 10)")
    p.add_argument("--tag", help=TAG_HELP)
    p.add_argument(
        "--wandb",
        help="ENTITY/PROJECT/RUN_ID: the description becomes TAG|WB=ENTITY/PROJECT/RUN_ID, nothing else (default: "
        "the W&B run the file's run logged to)",
    )
    p.add_argument(
        "--runs", default="runs", help="folder of the run folders, where runs behind the file are also looked for"
    )
    p.add_argument("--format", help=FORMAT_HELP + " or the format recorded beside the file")
    p.set_defaults(func=_submit)

    p = sub.add_parser("submissions", help="list a competition's past submissions with their scores")
    p.add_argument("slug", help="competition slug")
    p.add_argument("--tag", help=TAG_HELP)
    p.set_defaults(func=_submissions)

    p = sub.add_parser("kernel", help="build a Kaggle notebook (and toolkit dataset) that trains CONFIG; --push it")
    p.add_argument("config", help="YAML config, e.g. configs/f23_lean_convnext.yaml")
    p.add_argument("--out", help="bundle folder (default kernels/facenext-<config name>)")
    p.add_argument(
        "--competition", action="append", help="competition slug to attach (repeatable; default: the term's slugs)"
    )
    p.add_argument("--user", help="Kaggle username (default: from the credentials)")
    p.add_argument("--push", action="store_true", help="push the toolkit dataset and the notebook to Kaggle")
    p.add_argument(
        "--wandb",
        action="store_true",
        help="log the run to W&B (internet on; the key from the Kaggle secret WANDB_API_KEY) so that the notebook "
        "prints the grading description",
    )
    p.add_argument("--tag", help=TAG_HELP)
    p.add_argument("overrides", nargs="*", help="key.path=value overrides baked into the notebook")
    p.set_defaults(func=_kernel)

    p = sub.add_parser("terms", help="the known terms: key, title, family, classes, limit, score, slugs, source")
    p.set_defaults(func=_terms)

    p = sub.add_parser("kernel-status", help="status of a pushed notebook's latest run")
    p.add_argument("kernel", help="USER/SLUG")
    p.set_defaults(func=_kernel_status)

    p = sub.add_parser("kernel-output", help="download a notebook's output files and log")
    p.add_argument("kernel", help="USER/SLUG")
    p.add_argument("-p", "--path", help="folder for the files (default kernels/<slug>/output)")
    p.set_defaults(func=_kernel_output)
    for command in sub.choices.values():
        command.add_argument(
            "--terms",
            metavar="FILE",
            action="append",
            help=f"YAML file of your own terms (also data.terms_file, ${TERMS_ENV}; README: A new term)",
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    log_to_console()  # the library logs; the terminal shows its lines as plain text (once, however often main runs)
    parser = build_parser()
    # Overrides may come before or after options (`train CONFIG --out X a=b`): collect the ones argparse left over.
    args, extra = parser.parse_known_args(argv)
    if extra and (not hasattr(args, "overrides") or any(a.startswith("-") or "=" not in a for a in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        with restored_terms():  # the terms a command adds do not outlive it (main may run again in this process)
            add_terms_from_env()
            for path in args.terms or []:
                add_terms_file(path)
            args.func(args)
    except UserError as e:
        print(f"facenext: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("facenext: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno not in DISK_FULL:
            raise
        print(
            f"facenext: error: disk full ({e.strerror}{f': {e.filename}' if e.filename else ''}): "
            "free some space and re-run",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
