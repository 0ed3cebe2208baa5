"""Parameter limits that hold: the models behind a submission, counted together, against the term's limit.

Every run records its parameter count in ``summary.json`` (``parameters``); a run without one is counted from its
checkpoint. The runs behind a submission come from the ensemble's summary beside the file (``<file>.json``:
``runs``), or, for a file that ``predict``/``verify`` wrote in ``submissions/<run>/``, from its folder's name.
"""

from __future__ import annotations

from pathlib import Path

from .competitions import Term
from .errors import UserError
from .run import RunDir
from .submission import submission_record

BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def run_parameters(run: str | Path) -> int | None:
    """The parameter count a run recorded (summary.json), else counted from its best or last checkpoint; None when
    the folder holds neither."""
    folder = RunDir(run)
    recorded = folder.parameters()
    if recorded is not None:
        return recorded
    for name in ("best", "last"):
        if folder.weights_file(name).is_file():
            from .checkpoint import load_checkpoint

            state = load_checkpoint(folder.weights_file(name))["model"]
            return sum(v.numel() for k, v in state.items() if not k.endswith(BUFFERS) and v.is_floating_point())
    return None


def runs_behind(file: str | Path, runs_root: str | Path = "runs") -> list[Path]:
    """The run folders whose models made ``file`` (empty when nothing says)."""
    path = Path(file)
    runs = submission_record(path).get("runs")
    if isinstance(runs, list) and runs:
        return [Path(r) for r in runs]
    candidate = RunDir(Path(runs_root) / path.parent.name)
    if candidate.summary_file.is_file() or candidate.weights_file("best").is_file():
        return [candidate.path]
    return []


FIT_HINT = "`facenext ensemble --fit-limit` picks the best subset that fits"


def check_limit(runs: list[Path], term: Term, what: str = "the submission", hint: str = FIT_HINT) -> int:
    """The runs' parameters together; a one-line UserError (ending in ``hint``) when they exceed the term's limit."""
    found = {Path(r).name: run_parameters(r) for r in runs}
    unknown = [name for name, n in found.items() if n is None]
    if unknown and term.param_limit is not None:
        print(f"note: {', '.join(unknown)}: no summary.json or checkpoint, parameters not counted against the limit")
    counts = {name: n for name, n in found.items() if n is not None}
    total = sum(counts.values())
    limit = term.param_limit
    if limit is not None and total > limit:
        each = ", ".join(f"{name} {n / 1e6:.2f} M" for name, n in counts.items())
        raise UserError(
            f"{what} comes from {len(counts)} model(s) with {total / 1e6:.2f} M parameters together ({each}), over the "
            f"{term.key.upper()} limit of {limit / 1e6:g} M for all models of a submission: drop runs ({hint})"
        )
    return total


def limit_margin(parameters: int, term: Term) -> str:
    """``12.10 M of 21 M (8.90 M left)`` for ``info``."""
    if term.param_limit is None:
        return f"{parameters / 1e6:.2f} M (no limit known for {term.key.upper()})"
    left = term.param_limit - parameters
    state = f"{left / 1e6:.2f} M left" if left >= 0 else f"OVER by {-left / 1e6:.2f} M"
    return f"{parameters / 1e6:.2f} M of {term.param_limit / 1e6:g} M ({state}; ensembles count every model)"
