"""Parameter limits that hold: the models behind a submission, counted together, against the term's limit.

Every run records its parameter count in ``summary.json`` (``parameters``); a run without one (still training,
stopped) is counted from its config, as ``facenext info`` counts it, else from its checkpoint. Whatever writes a
submission records the runs behind it beside the file (``<file>.json``): each run's absolute path, a fingerprint of
its config and classes, and its parameter count, so that ``submit`` counts the same models from any folder, even
after the runs were moved. A file with no record that sits in ``submissions/<run>/`` is taken to come from that run.
Under a term's limit, a count that cannot be known is refused, never taken as zero.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .competitions import Term
from .errors import UserError
from .run import RunDir
from .submission import submission_record

BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _from_config(folder: RunDir) -> int | None:
    """The parameters of the model the run's config builds (``info``'s count); None when it cannot be built."""
    if not folder.is_run():
        return None
    from .models import count_parameters, model_from_config

    try:
        return count_parameters(model_from_config(folder.config(), len(folder.classes())))
    except UserError:
        return None


def _from_checkpoint(folder: RunDir) -> int | None:
    for name in ("best", "last"):
        if folder.weights_file(name).is_file():
            from .checkpoint import load_checkpoint

            state = load_checkpoint(folder.weights_file(name))["model"]
            return sum(v.numel() for k, v in state.items() if not k.endswith(BUFFERS) and v.is_floating_point())
    return None


def run_parameters(run: str | Path) -> int | None:
    """The parameter count a run recorded (summary.json), else counted from its config, else from its best or last
    checkpoint; None when the folder holds none of them."""
    folder = RunDir(run)
    recorded = folder.parameters()
    if recorded is not None:
        return recorded
    counted = _from_config(folder)
    return counted if counted is not None else _from_checkpoint(folder)


def run_fingerprint(run: str | Path) -> str | None:
    """Identifies a run wherever its folder lies: a hash of its config.yaml and classes.json (None: not a run)."""
    folder = RunDir(run)
    if not folder.is_run():
        return None
    digest = hashlib.sha256(folder.config_file.read_bytes() + b"\0" + folder.classes_file.read_bytes())
    return digest.hexdigest()[:16]


def runs_record(runs: list[str | Path], parameters: list[int | None] | None = None) -> dict[str, Any]:
    """What a submission's ``<file>.json`` records about the runs behind it: absolute paths, fingerprints and
    parameter counts (``parameters``: already counted, in the order of ``runs``)."""
    counts = parameters if parameters is not None else [run_parameters(r) for r in runs]
    return {
        "runs": [str(Path(r).resolve()) for r in runs],
        "run_fingerprints": [run_fingerprint(r) for r in runs],
        "run_parameters": counts,
    }


@dataclass(frozen=True)
class RunBehind:
    """One run behind a submission: as its record names it, the folder found for it from here (None: not found),
    and the parameter count recorded when the file was written (None: not recorded)."""

    recorded: str
    folder: Path | None
    parameters: int | None

    @property
    def path(self) -> Path:
        return self.folder or Path(self.recorded)

    def count(self) -> int | None:
        """The recorded count (the models that made the file), else the count of the folder found."""
        if self.parameters is not None:
            return self.parameters
        return run_parameters(self.folder) if self.folder is not None else None


def _looks_like_run(path: Path) -> bool:
    folder = RunDir(path)
    return path.is_dir() and (folder.is_run() or folder.summary_file.is_file() or folder.weights_file().is_file())


def _locate(recorded: str, fingerprint: str | None, runs_root: Path) -> Path | None:
    """The folder of a recorded run: its path (relative ones, from records written before paths were absolute,
    from here), else ``runs_root/<name>``; with a fingerprint, only a folder holding the same run."""
    path = Path(recorded)
    for candidate in (path, runs_root / path.name):
        if _looks_like_run(candidate) and (fingerprint is None or run_fingerprint(candidate) == fingerprint):
            return candidate.resolve()
    return None


def _entry(values: Any, i: int, kind: type) -> Any:
    value = values[i] if isinstance(values, list) and i < len(values) else None
    return value if isinstance(value, kind) and not isinstance(value, bool) else None


def runs_behind_file(file: str | Path, runs_root: str | Path = "runs") -> list[RunBehind]:
    """The runs whose models made ``file``, from its record (empty when nothing says)."""
    path, runs_root = Path(file), Path(runs_root)
    record = submission_record(path)
    runs = record.get("runs")
    if isinstance(runs, list) and runs:
        fingerprints, counts = record.get("run_fingerprints"), record.get("run_parameters")
        return [
            RunBehind(str(r), _locate(str(r), _entry(fingerprints, i, str), runs_root), _entry(counts, i, int))
            for i, r in enumerate(runs)
        ]
    candidate = runs_root / path.parent.name  # `predict` wrote submissions/<run>/ before it recorded the run
    if _looks_like_run(candidate):
        return [RunBehind(str(candidate), candidate.resolve(), None)]
    return []


def runs_behind(file: str | Path, runs_root: str | Path = "runs") -> list[Path]:
    """The run folders whose models made ``file`` (empty when nothing says); a run not found from here is given
    as recorded."""
    return [run.path for run in runs_behind_file(file, runs_root)]


FIT_HINT = "`facenext ensemble --fit-limit` picks the best subset that fits"
UNKNOWN_HINT = "pass run folders that `facenext train` wrote"


def _labels(runs: list[Path]) -> list[str]:
    """Each run's folder name, or its whole path where two runs share a name."""
    names = [Path(r).name for r in runs]
    return [name if names.count(name) == 1 else str(r) for name, r in zip(names, runs, strict=True)]


def known_parameters(
    runs: list[Path],
    term: Term,
    what: str = "the submission",
    counts: list[int | None] | None = None,
    unknown_hint: str = UNKNOWN_HINT,
) -> list[int]:
    """Each run's parameters (``counts``, else counted); under a limit, a one-line UserError when any is unknown:
    a model that cannot be counted could be any size. Without a limit, unknown counts are 0."""
    counts = counts if counts is not None else [run_parameters(r) for r in runs]
    unknown = [label for label, n in zip(_labels(runs), counts, strict=True) if n is None]
    if unknown and term.param_limit is not None:
        raise UserError(
            f"{what}: the parameters of {', '.join(unknown)} are unknown (no run folder with a summary.json, config "
            f"or checkpoint found), so the {term.key.upper()} limit of {term.param_limit / 1e6:g} M for all models "
            f"together cannot be checked: {unknown_hint}"
        )
    return [n or 0 for n in counts]


def check_limit(
    runs: list[Path],
    term: Term,
    what: str = "the submission",
    hint: str = FIT_HINT,
    counts: list[int | None] | None = None,
    unknown_hint: str = UNKNOWN_HINT,
) -> int:
    """The runs' parameters together; a one-line UserError (ending in ``hint``) when they exceed the term's limit,
    or (ending in ``unknown_hint``) when a run's count is unknown under a limit. Every run counts, also two with the
    same folder name."""
    known = known_parameters(runs, term, what, counts, unknown_hint)
    total = sum(known)
    limit = term.param_limit
    if limit is not None and total > limit:
        each = ", ".join(f"{label} {n / 1e6:.2f} M" for label, n in zip(_labels(runs), known, strict=True))
        raise UserError(
            f"{what} comes from {len(known)} model(s) with {total / 1e6:.2f} M parameters together ({each}), over the "
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
