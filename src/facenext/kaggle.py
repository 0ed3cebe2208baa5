"""Download competitions and upload submissions through the real ``kaggle`` client, with one-line errors.

The client is imported lazily: ``import kaggle`` authenticates at import time and calls ``exit(1)`` without
credentials, so :func:`find_credentials` checks for them first and turns their absence into a :class:`UserError`.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import stat
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import UserError
from .io import write_json
from .run import RunDir

logger = logging.getLogger(__name__)

# Where a Kaggle notebook mounts its inputs; FACENEXT_KAGGLE_ROOT stands in for it in tests only.
KAGGLE_ROOT = Path(os.environ.get("FACENEXT_KAGGLE_ROOT") or "/kaggle")
COMPLETE = ".complete"  # written last: a competition folder without it is never trusted
SETTINGS = "https://www.kaggle.com/settings"
WHERE_CREDENTIALS = (
    f"create a token at {SETTINGS} -> API -> Create New Token and save it as ~/.kaggle/kaggle.json (chmod 600), "
    "or set KAGGLE_USERNAME and KAGGLE_KEY"
)
SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def in_kaggle_notebook() -> bool:
    return os.environ.get("KAGGLE_KERNEL_RUN_TYPE") is not None


def config_dir() -> Path:
    return Path(os.environ.get("KAGGLE_CONFIG_DIR") or Path.home() / ".kaggle")


def _warn_if_readable(path: Path) -> None:
    """Other users could read the key: say how to fix it (the client's own warning goes to stdout)."""
    if os.name != "nt" and path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH):
        logger.warning(f"facenext: warning: {path} is readable by other users: run `chmod 600 {path}`")


def _read_kaggle_json(path: Path) -> bool:
    """True when ``path`` holds a username and a key; the values are never printed."""
    _warn_if_readable(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        raise UserError(f"{path} is not valid JSON: download it again ({WHERE_CREDENTIALS})") from None
    return isinstance(data, dict) and bool(data.get("username")) and bool(data.get("key"))


def find_credentials() -> str:
    """Name where the client will find credentials (never their value), in the client's own order of preference."""
    env = os.environ
    if in_kaggle_notebook() and env.get("KAGGLE_API_V1_TOKEN") and Path(env["KAGGLE_API_V1_TOKEN"]).is_file():
        return "KAGGLE_API_V1_TOKEN"
    if env.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN"
    if (Path.home() / ".kaggle" / "access_token").is_file():
        return "~/.kaggle/access_token"
    if env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME/KAGGLE_KEY"
    path = config_dir() / "kaggle.json"
    if path.is_file():
        if _read_kaggle_json(path):
            return str(path)
        raise UserError(f"{path} lacks a username or key: {WHERE_CREDENTIALS}")
    raise UserError(f"no Kaggle credentials found: {WHERE_CREDENTIALS}")


def authenticated_api() -> Any:
    """A ``KaggleApi`` that has authenticated; credentials are checked before the client is imported."""
    find_credentials()
    from kaggle.api.kaggle_api_extended import KaggleApi

    api = KaggleApi()
    # authenticate() prints help and calls exit(1) when it finds nothing usable (e.g. an expired token).
    try:
        with _quiet_client(), _mapped_errors("", "authenticate with"):
            api.authenticate()
    except SystemExit:
        raise UserError(f"Kaggle did not accept the credentials: {WHERE_CREDENTIALS}") from None
    return api


@contextlib.contextmanager
def _quiet_client() -> Iterator[None]:
    """The client prints progress and its own errors on stdout; ours are the one-line messages."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _status(error: Exception) -> int | None:
    """HTTP status of a client error; the API also reports errors as a JSON ``code`` in a 200 response."""
    response = getattr(error, "response", None)
    if response is None:
        return None
    if response.status_code >= 400:
        return response.status_code
    with contextlib.suppress(Exception):
        return int(response.json()["code"])
    return None


def _http_message(status: int | None, slug: str, action: str, error: Exception, kind: str = "competition") -> str:
    if status == 401:
        return f"Kaggle refused the credentials (401): {WHERE_CREDENTIALS}"
    if status in (403, 404) and kind != "competition":
        return (
            f"Kaggle could not {action} {kind} {slug} ({status}): check the name and that it belongs to the account "
            "of your credentials (attached competitions also need their rules accepted on the website)"
        )
    if status == 403:
        return (
            f"Kaggle refused access to {slug} (403): accept the competition's rules at "
            f"https://www.kaggle.com/competitions/{slug}/rules (signed in as the account of your credentials)"
        )
    if status == 404:
        return f"competition {slug} not found on Kaggle (404): check the slug"
    return f"Kaggle could not {action} {slug or 'Kaggle'} (HTTP {status}): {str(error)[:200]}; retry later"


@contextlib.contextmanager
def _mapped_errors(slug: str, action: str, kind: str = "competition") -> Iterator[None]:
    """Turn the client's exceptions (requests errors) into one-line UserErrors that say what to do."""
    import requests

    try:
        yield
    except requests.exceptions.HTTPError as e:
        raise UserError(_http_message(_status(e), slug, action, e, kind)) from None
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
        raise UserError(
            f"cannot reach Kaggle to {action} {slug or 'Kaggle'} ({type(e).__name__}): "
            "check the internet connection (and any proxy), then retry"
        ) from None


def _check_slug(slug: str) -> None:
    # The slug becomes a folder name: refuse anything that could point elsewhere.
    if not SLUG.match(slug):
        raise UserError(
            f"{slug!r} is not a competition slug (letters, digits, - and _), e.g. 11785-hw2p2-face-recognition"
        )


def _check_member(info: zipfile.ZipInfo, archive: Path) -> None:
    """Refuse entries that would land outside the destination (absolute, ``..``, drive letters) or are symlinks."""
    name = info.filename.replace("\\", "/")
    parts = PurePosixPath(name).parts
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in parts:
        raise UserError(f"refusing {archive.name}: entry {info.filename!r} points outside the folder; report it")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise UserError(f"refusing {archive.name}: entry {info.filename!r} is a symbolic link; report it")


def safe_extract(archive: Path, dest: Path) -> int:
    """Extract every entry under ``dest`` after checking all of them; returns the number of files."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for info in members:
                _check_member(info, archive)
            dest.mkdir(parents=True)
            for info in members:
                zf.extract(info, dest)  # reading checks each entry's CRC: a damaged file raises here
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise UserError(f"{archive.name} is truncated or damaged ({e}): re-run with --force") from None
    return sum(not m.is_dir() for m in members)


def _fetch_zip(api: Any, slug: str, folder: Path) -> Path:
    """Download the competition's zip into ``folder`` with the client and return its path."""
    quiet = not sys.stderr.isatty()  # a progress bar helps a person, not a log file
    with _mapped_errors(slug, "download"), contextlib.redirect_stdout(sys.stderr):
        try:
            api.competition_download_files(slug, path=str(folder), force=True, quiet=quiet)
        except ValueError as e:  # the client's size check after an interrupted transfer
            raise UserError(f"download of {slug} was interrupted ({e}): re-run with --force") from None
    archives = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    if not archives:
        raise UserError(f"Kaggle sent no file for {slug}: retry, or check the competition's Data page")
    return archives[0]


def download(slug: str, out_dir: str | Path = "data", force: bool = False, kaggle_root: Path = KAGGLE_ROOT) -> Path:
    """Make ``out_dir/<slug>`` hold the competition's files (or use a notebook's mounted input); return the folder.

    The zip is extracted into ``<slug>.partial`` and renamed, and the ``.complete`` marker is written last, so an
    interrupted download never leaves a folder that looks complete; a completed one is not downloaded again.
    """
    _check_slug(slug)
    mounted = Path(kaggle_root) / "input" / slug
    if in_kaggle_notebook() and mounted.is_dir():
        logger.info(f"{slug}: using the notebook's input {mounted} (nothing downloaded)")
        return mounted
    out_dir = Path(out_dir)
    target, partial = out_dir / slug, out_dir / f"{slug}.partial"
    if (target / COMPLETE).is_file() and not force:
        logger.info(f"{slug}: already downloaded in {target} (skipped; --force downloads it again)")
        return target
    api = authenticated_api()
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(partial, ignore_errors=True)
    try:
        with tempfile.TemporaryDirectory(prefix=f".{slug}.download.", dir=out_dir) as tmp:
            archive = _fetch_zip(api, slug, Path(tmp))
            files = safe_extract(archive, partial)
            size = archive.stat().st_size
        _replace(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    write_json(target / COMPLETE, {"slug": slug, "files": files, "zip_bytes": size}, indent=None)
    logger.info(f"{slug}: {files} files ({size / 1e6:.1f} MB zip) extracted to {target}")
    return target


def _replace(partial: Path, target: Path) -> None:
    if target.exists():
        (target / COMPLETE).unlink(missing_ok=True)  # first stop it looking complete, then remove it
        shutil.rmtree(target)
    partial.rename(target)


def _check_against_data(path: Path, competition: str, data_root: Path | None, fmt: str | None = None) -> Any:
    """Check the submission against the competition's files in ``data_root``; returns the layout checked against.

    The slug names the term (and, for a term with two competitions, which file it is); for another slug (a sample,
    a new term) the file is checked against whatever single competition the data root holds. Without a local copy
    of the competition nothing can be checked: refused (``--no-check`` uploads unchecked).
    """
    from .combined import recorded_format
    from .competitions import term_of_slug
    from .data.layout import AmbiguousData, find_layout
    from .submission import check_submission

    term = term_of_slug(competition)
    try:
        if data_root is None:
            raise UserError("no data folder given")
        layout = find_layout(data_root, term.key if term else "auto")
    except AmbiguousData:
        raise  # several competitions could be meant: say which to check against
    except UserError as e:
        where = f"under {data_root}" if data_root is not None else "(no --data)"
        reason = str(e).split(":")[0]
        raise UserError(
            f"cannot check {path} before uploading it: no copy of {competition} {where} ({reason}); pass --data DIR "
            f"(where `facenext download {competition}` put it), or --no-check to upload it unchecked"
        ) from None
    kind = layout.family.kind_of_slug(layout.term, competition)  # None: guessed from the file
    check_submission(path, layout, kind, fmt=fmt or recorded_format(path))
    return layout


def _check_models(path: Path, term: Any, runs_root: str | Path) -> int | None:
    """The parameters of the models behind ``path`` together, refused over the term's limit or unknown under it."""
    from .limits import check_limit, runs_behind_file

    if term.param_limit is None:
        return None
    limit = f"the {term.key.upper()} limit of {term.param_limit / 1e6:g} M (all models of a submission together)"
    behind = runs_behind_file(path, runs_root)
    if not behind:
        raise UserError(
            f"nothing records the models behind {path}, so {limit} cannot be checked: submit a file that `facenext "
            f"predict`, `verify` or `ensemble` wrote (its {path.with_suffix('.json').name} names the runs), or pass "
            "--no-check to upload it unchecked"
        )
    hint = f"pass --runs DIR (the folder holding them; {runs_root} was searched), or --no-check to upload it unchecked"
    counts = [run.count() for run in behind]
    return check_limit([run.path for run in behind], term, str(path), counts=counts, unknown_hint=hint)


def default_message(file: str | Path, runs_root: str | Path = "runs") -> str:
    """The runs behind ``file`` and their dev accuracy, e.g. ``FaceNext: a (dev 0.9120), b (dev 0.9050)``.

    The runs come from the ensemble summary written next to the file (``submission.json``: its ``runs``); a file
    written by ``facenext predict`` sits in ``submissions/<run>/``, so its folder names the run in ``runs_root``.
    """
    from .limits import runs_behind

    path = Path(file)
    runs = runs_behind(path, runs_root)
    if not runs:
        return f"FaceNext {path.name}"
    return "FaceNext: " + ", ".join(RunDir(r).label() for r in runs)


def _submission_row(item: Any) -> dict[str, Any]:
    date = item.date
    status = getattr(item.status, "name", str(item.status)).lower()
    return {
        "ref": item.ref,
        "date": date.strftime("%Y-%m-%d %H:%M") if hasattr(date, "strftime") else str(date or ""),
        "description": item.description or "",
        "status": status,
        "public_score": item.public_score or None,
        "private_score": item.private_score or None,
        "error": item.error_description or None,
    }


def list_submissions(competition: str, api: Any = None) -> list[dict[str, Any]]:
    """The competition's submissions, newest first, as dicts (ref, date, description, status, scores, error)."""
    _check_slug(competition)
    api = api or authenticated_api()
    with _quiet_client(), _mapped_errors(competition, "list the submissions of"):
        items = api.competition_submissions(competition) or []
    return [_submission_row(item) for item in items if item is not None]


def print_submissions(competition: str, tag: str | None = None) -> list[dict[str, Any]]:
    """Print the competition's submissions as a table (date, status, public, private, W&B run, description), scores
    in the leaderboard's unit. ``*`` marks the one the course's back-end grades (the best by the term's score and
    direction); the W&B run column (where the term grades by one, or ``tag`` is given) is what the back-end reads
    from each description, and a warning says when the graded one names none."""
    from .competitions import term_of_slug
    from .grading import graded_submission, leaderboard_value, parse_grading_description, score_caption, term_tag

    term = term_of_slug(competition)
    tag = term_tag(term, tag)
    rows = list_submissions(competition)
    if not rows:
        logger.info(f"{competition}: no submissions yet")
        return rows
    graded = graded_submission(rows, term)
    for row in rows:
        read = parse_grading_description(row["description"], tag) if tag is not None else None
        row["graded_run"] = "/".join(read) if read else None
    marked, with_run = term is not None, tag is not None  # the mark needs a known direction, the run a known tag
    table = [(*([""] if marked else []), "date", "status", "public", "private", *(["W&B run"] if with_run else []))]
    for i, r in enumerate(rows):
        scores = (leaderboard_value(r["public_score"], term), leaderboard_value(r["private_score"], term))
        run = [r["graded_run"] or "-"] if with_run else []
        table.append((*(["*" if i == graded else ""] if marked else []), r["date"], r["status"], *scores, *run))
    logger.info(
        f"{competition}: {score_caption(term)}" + ("; * marks the submission the course grades" if marked else "")
    )
    widths = [max(len(str(row[i])) for row in table) for i in range(len(table[0]))]
    descriptions = ["description", *(r["description"] for r in rows)]
    for row, description in zip(table, descriptions, strict=True):
        logger.info("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)) + "  " + description)
    if graded is not None and tag is not None and rows[graded]["graded_run"] is None:
        best = rows[graded]
        best_score = leaderboard_value(best["private_score"] or best["public_score"], term)
        logger.warning(
            f"facenext: warning: the submission the course grades ({best['date']}, score {best_score}) names no W&B "
            f"run in its description (it must be exactly {tag}|WB=ENTITY/PROJECT/RUN_ID): grading will fail; submit "
            f"its file again with `facenext submit FILE --competition {competition} --wandb ENTITY/PROJECT/RUN_ID`",
        )
    return rows


def follow_submission(api: Any, competition: str, ref: Any, wait: float, interval: float) -> dict[str, Any] | None:
    """Poll the submission ``ref`` until it is no longer pending or ``wait`` seconds have passed; its last row."""
    deadline = time.monotonic() + wait
    while True:
        rows = list_submissions(competition, api)
        row = next((r for r in rows if ref and r["ref"] == ref), rows[0] if rows else None)
        if (row is not None and row["status"] != "pending") or time.monotonic() + interval > deadline:
            return row
        time.sleep(interval)


def submit(
    file: str | Path,
    competition: str,
    message: str | None = None,
    data_root: str | Path | None = "data",
    dry_run: bool = False,
    wait: float = 600,
    poll_interval: float = 10,
    tag: str | None = None,
    wandb_run: str | None = None,
    runs_root: str | Path = "runs",
    fmt: str | None = None,
    no_check: bool = False,
) -> dict:
    """Check ``file`` and, unless ``dry_run``, upload it to ``competition`` and follow it until it is scored (at most
    ``wait`` seconds; 0 does not wait); returns a summary (also printed). ``message`` defaults to
    :func:`default_message`.

    The file is checked against the competition's files under ``data_root`` and the models behind it (its record,
    ``<file>.json``) must fit the term's parameter limit together; what cannot be checked (no local copy of the
    competition, models that cannot be counted) is refused, unless ``no_check``: then nothing is checked but the
    file's own reading (a CSV with unique ids), and the output says so.

    The description is ``message`` exactly as given; else the grading reference
    ``<tag>|WB=<entity>/<project>/<run_id>`` and nothing else, when ``wandb_run`` is given or a run behind the file
    logged to W&B (``tag``: the term's unless given); else :func:`default_message`. Where the term grades by a W&B
    reference and the back-end's rule reads none from the description, one warning line says so before uploading
    (see ``facenext.grading``).
    """
    from .competitions import term_of_slug
    from .grading import check_tag, leaderboard_value, submission_description
    from .limits import runs_behind
    from .submission import read_submission

    _check_slug(competition)
    path = Path(file)
    frame = read_submission(path)
    runs = runs_behind(path, runs_root)
    check_tag(tag)
    summary: dict[str, Any] = {"file": str(path), "competition": competition, "rows": len(frame)}
    summary["checked_against_data"] = not no_check
    if no_check:
        state = "NOT checked against the competition's files or parameter limit (--no-check)"
        term = term_of_slug(competition)
    else:
        layout = _check_against_data(path, competition, Path(data_root) if data_root else None, fmt)
        term = term_of_slug(competition) or layout.term
        summary["parameters"] = parameters = _check_models(path, term, runs_root)
        state = "OK"
        if parameters is not None:
            limit = f"{term.key.upper()} limit of {term.param_limit / 1e6:g} M"
            logger.info(f"{path}: its models have {parameters / 1e6:.2f} M parameters together, within the {limit}")
    default = default_message(path, runs_root) if message is None else ""
    message, warning = submission_description(message, tag, wandb_run, runs, term, default)
    summary["description"] = message
    if warning:
        logger.warning(f"facenext: warning: {warning}")
    if dry_run:
        logger.info(
            f"{path}: {len(frame)} rows {state}; dry run, nothing uploaded to {competition} (description {message!r})"
        )
        return {**summary, "uploaded": False}
    api = authenticated_api()
    with _quiet_client(), _mapped_errors(competition, "submit to"):
        response = api.competition_submit(str(path), message, competition, quiet=True)
    if response.message == api.COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE:
        raise UserError(f"uploading {path} to {competition} failed: check the connection and retry")
    unchecked = " unchecked (--no-check)" if no_check else ""
    logger.info(f"{path}: {len(frame)} rows submitted{unchecked} to {competition} as {message!r}: {response.message}")
    summary = {**summary, "uploaded": True, "message": response.message, "ref": response.ref}
    if wait <= 0:
        logger.info(
            f"not waiting for the score: `facenext submissions {competition}` shows it once Kaggle has scored it"
        )
        return summary
    row = follow_submission(api, competition, response.ref, wait, poll_interval)
    status = row["status"] if row else "pending"
    summary.update(status=status, public_score=row and row["public_score"], private_score=row and row["private_score"])
    if status == "complete":
        logger.info(f"{competition}: scored, public score {leaderboard_value(row['public_score'], term)}")
    elif status == "error":
        detail = row.get("error") or "no detail given"
        raise UserError(f"Kaggle could not score {path} on {competition}: {detail}; fix the file and submit again")
    else:
        logger.info(
            f"{competition}: still {status} after {wait:g} s: run `facenext submissions {competition}` later to see "
            "the score"
        )
    return summary
