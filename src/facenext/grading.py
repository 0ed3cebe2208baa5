"""The course's grading back-end, as FaceNext must satisfy it: which Kaggle submission it grades, and how it reads
the W&B run to grade from that submission's description.

The back-end (its ``kaggle_validate.py``, see ``shared/spec/competitions.md``) strips a submission's description and
accepts it only if it **starts with** ``<tag>|WB=``; what follows, stripped, must split on ``/`` into exactly three
non-empty parts, ``entity/project/run_id``. So the description must be exactly ``<tag>|WB=<entity>/<project>/<run_id>``:
text before it makes the submission untracked, text after it ends up inside the run id. The tag is the assignment's
(``Term.grading_tag``; F26's stored config sets none, so its prefix is ``|WB=``). :func:`parse_grading_description`
is that rule, and every other part of FaceNext (``submit``, ``submissions``, the Kaggle notebook) goes through it.

The back-end grades the student's best submission by the term's score and direction (private score when present);
:func:`graded_submission` picks it. :func:`leaderboard_value` shows a score in its leaderboard's unit (S26: EER in
percent).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .competitions import Term
from .errors import UserError
from .run import RunDir

WANDB_RUN = re.compile(r"[^/\s|]+/[^/\s|]+/[^/\s|]+")  # what --wandb accepts: entity/project/run_id, no spaces
HOW_TO_SUBMIT = "pass --wandb ENTITY/PROJECT/RUN_ID, or the starter notebook's KAGGLE_SUBMISSION_MESSAGE as --message"


def parse_grading_description(text: str, tag: str) -> tuple[str, str, str] | None:
    """(entity, project, run_id) that the grading back-end reads from a submission's description, or None when it
    reads none (the submission is then untracked). The back-end's rule, exactly as it states it."""
    text = (text or "").strip()
    prefix = f"{tag}|WB="
    if not text.startswith(prefix):
        return None
    parts = text[len(prefix) :].strip().split("/")
    if len(parts) != 3 or not all(parts):
        return None
    return parts[0], parts[1], parts[2]


def check_tag(tag: str | None) -> str | None:
    """``tag`` when the back-end can match it (no whitespace, no ``|``; empty is the F26 default); else one line."""
    if tag is not None and (re.search(r"\s", tag) or "|" in tag):
        raise UserError(f"--tag {tag!r} must hold no spaces and no '|' (e.g. HW2P2, or '' for an empty tag)")
    return tag


def term_tag(term: Term | None, tag: str | None = None) -> str | None:
    """The tag the back-end matches: ``tag`` (``--tag``) when given, else the term's; None where the term is not
    known to grade by a W&B reference."""
    if tag is not None:
        return check_tag(tag)
    return term.grading_tag if term is not None else None


def grading_description(wandb_run: str, tag: str | None) -> str:
    """``<tag>|WB=<entity>/<project>/<run_id>``: the whole description, nothing before or after it."""
    if not WANDB_RUN.fullmatch(wandb_run):
        raise UserError(f"--wandb {wandb_run!r} must look like ENTITY/PROJECT/RUN_ID (no spaces)")
    return f"{check_tag(tag) or ''}|WB={wandb_run}"


def runs_wandb(runs: Sequence[Path]) -> list[str]:
    """The distinct W&B runs (``entity/project/run_id``) that the given run folders logged to (their wandb.json)."""
    found = (RunDir(run).wandb_run() for run in runs)
    return list(dict.fromkeys(path for path in found if path is not None))


def submission_description(
    message: str | None,
    tag: str | None,
    wandb_run: str | None,
    runs: Sequence[Path],
    term: Term | None,
    default: str,
) -> tuple[str, str | None]:
    """(the description to send, a one-line warning or None).

    ``message`` goes out exactly as given. Otherwise a W&B run (``wandb_run``, else the one the runs behind the file
    logged to) makes the description the grading reference and nothing else; otherwise ``default``. The warning says
    when the term grades by a W&B reference and the back-end would read no run (or a mangled one) from it.
    """
    given_tag, tag = check_tag(tag), term_tag(term, tag)
    if message is not None and wandb_run is not None:
        raise UserError("--message and --wandb both set the description: pass one (--message is sent as given)")
    logged = runs_wandb(runs)
    if message is not None:
        description = message
    elif wandb_run is not None or len(logged) == 1:
        description = grading_description(wandb_run or logged[0], tag)
    elif len(logged) > 1 and tag is not None:
        raise UserError(f"{len(logged)} runs behind the file logged to W&B ({', '.join(logged)}): {HOW_TO_SUBMIT}")
    elif given_tag is not None:
        raise UserError(f"--tag needs the W&B run it refers to: {HOW_TO_SUBMIT}")
    else:
        description = default
    return description, None if tag is None else description_warning(description, tag, logged)


def description_warning(description: str, tag: str, logged: Sequence[str] = ()) -> str | None:
    """One line when the grading back-end would read no run from ``description`` (or one with spaces in it, text that
    followed the reference); None when it reads a proper one. ``logged``: the W&B runs behind the file."""
    read = parse_grading_description(description, tag)
    wanted = f"exactly {tag}|WB=ENTITY/PROJECT/RUN_ID"
    other_tag = re.match(r"\s*(\S*?)\|WB=", description)
    if other_tag and other_tag.group(1) != tag:  # a reference under another tag: the course's may differ from ours
        hint = f"; if the course's tag is {other_tag.group(1)!r}, pass --tag {other_tag.group(1) or repr('')}"
    elif len(logged) == 1:
        hint = f"; the run behind the file logged to {logged[0]}: without --message the description is {tag}|WB="
        hint += logged[0]
    else:
        hint = f"; {HOW_TO_SUBMIT}"
    if read is None:
        return (
            f"the description {description!r} names no W&B run by the grading back-end's rule ({wanted}): "
            f"the course will not grade this submission{hint}"
        )
    if any(re.search(r"\s", part) for part in read):
        return (
            f"the grading back-end would read the W&B run {'/'.join(read)!r} from {description!r}: text after the "
            f"reference ends up in it ({wanted}){hint}"
        )
    return None


# --- which submission is graded, and in what unit its score shows --------------------------------------------------
def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def submission_score(row: dict[str, Any]) -> float | None:
    """The score the back-end ranks a submission by: its private score when present, else its public score."""
    private = _number(row.get("private_score"))
    return private if private is not None else _number(row.get("public_score"))


def graded_submission(rows: Sequence[dict[str, Any]], term: Term | None) -> int | None:
    """Index of the submission the back-end grades: the best scored one by the term's score and direction."""
    if term is None:
        return None
    scored = [(score, i) for i, row in enumerate(rows) if (score := submission_score(row)) is not None]
    if not scored:
        return None
    sign = 1 if term.lower_is_better else -1
    return min(scored, key=lambda item: (sign * item[0], item[1]))[1]


def leaderboard_value(value: Any, term: Term | None) -> str:
    """A Kaggle score as the term's leaderboard shows it: S26's EER in percent (Kaggle reports the fraction, which
    the back-end records x 100; a value above 1 cannot be a fraction and is already in percent)."""
    number = _number(value)
    if number is None:
        return str(value) if value not in (None, "") else "-"
    if term is not None and term.eer_in_percent and number <= 1:
        return f"{round(number * 100, 10):g}"
    return str(value)


def score_caption(term: Term | None) -> str:
    """What the score columns mean, for the term's leaderboard."""
    if term is None:
        return "scores as Kaggle reports them"
    metric = {"eer": "EER", "accuracy": "accuracy", "auc": "ROC AUC", "combined": "0.5 x accuracy + 0.5 x (1 - EER)"}
    unit = " in percent" if term.eer_in_percent else ""
    direction = "lower" if term.lower_is_better else "higher"
    return f"{term.key.upper()} scores: {metric[term.metric]}{unit}, {direction} is better"


def notebook_grading_lines(
    run: str | Path, term: Term | None, tag: str | None = None, wandb: bool = False
) -> list[str]:
    """What the Kaggle notebook prints at its end: the exact grading description when the run logged to W&B, else
    (where the term grades by a W&B reference) that grading needs a W&B run and how to attach one."""
    tag = term_tag(term, tag)
    logged = RunDir(run).wandb_run()
    if logged is not None:
        description = grading_description(logged, tag)
        return [
            "grading description (the Kaggle submission's description, exactly: nothing before or after it):",
            description,
        ]
    if tag is None:
        return []
    why = (
        "W&B logging was on but the run recorded no W&B run (no wandb.json): check the log above for wandb errors"
        if wandb
        else "this notebook logged no W&B run (its internet is off)"
    )
    return [
        f"grading needs a W&B run: {why}.",
        "To attach one: rebuild with `facenext kernel CONFIG --wandb` (internet on, your W&B key saved as the Kaggle "
        "secret WANDB_API_KEY), or train with train.log_to=[wandb] elsewhere; then submit with "
        "`facenext submit FILE --competition SLUG --wandb ENTITY/PROJECT/RUN_ID` (description "
        f"{tag}|WB=ENTITY/PROJECT/RUN_ID).",
    ]
