"""A run folder (``runs/<name>/``): what training writes there and what every later stage reads from it.

The one place that knows the folder's files: ``config.yaml`` (the resolved config), ``classes.json``, ``data.json``
(a fingerprint of the training data), ``metrics.csv``, ``summary.json`` and the weights, named ``best``, ``last``,
``ema`` (the EMA copy kept inside ``last.pt``) and ``averaged``. Reading a run's summary or config does not import
torch; loading weights does.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .config import Config, config_from_dict
from .errors import UserError
from .io import read_json, write_csv, write_json, write_text

if TYPE_CHECKING:
    from torch import nn

WEIGHTS = ("best", "last", "ema", "averaged")
# ``ema`` has no file of its own: the EMA weights travel in last.pt under the key "ema".
WEIGHTS_FILES = {"best": "best.pt", "last": "last.pt", "ema": "last.pt", "averaged": "averaged.pt"}


def data_fingerprint(classes: Sequence[str], train_images: int) -> dict[str, Any]:
    """Identifies the training data cheaply: the class list (hashed, in order) and the number of train images."""
    digest = hashlib.sha256("\n".join(classes).encode()).hexdigest()
    return {"classes": len(classes), "classes_sha256": digest, "train_images": train_images}


class RunDir:
    """One run folder; the files are read when asked for, so a run that is still training can be inspected."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunDir) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def classes_file(self) -> Path:
        return self.path / "classes.json"

    @property
    def fingerprint_file(self) -> Path:
        return self.path / "data.json"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def summary_file(self) -> Path:
        return self.path / "summary.json"

    @property
    def top_dir(self) -> Path:
        return self.path / "top"

    @property
    def wandb_file(self) -> Path:
        return self.path / "wandb.json"

    # --- reading --------------------------------------------------------------------------------------------------
    def is_run(self) -> bool:
        return self.config_file.is_file() and self.classes_file.is_file()

    def _require(self) -> None:
        if not self.is_run():
            raise UserError(
                f"{self.path} is not a training run: train it first with `facenext train CONFIG --out {self.path}`"
            )

    def config(self) -> Config:
        """The resolved config the run was trained with."""
        self._require()
        try:
            values = yaml.safe_load(self.config_file.read_text())
        except yaml.YAMLError as e:
            raise UserError(f"{self.config_file} is not valid YAML: {str(e).splitlines()[0]}") from None
        return config_from_dict(values)

    def classes(self) -> list[str]:
        """The identities in the order of the model's outputs."""
        self._require()
        classes = read_json(self.classes_file)
        if not isinstance(classes, list):
            raise UserError(f"{self.classes_file} does not hold a list of identities: retrain the run")
        return classes

    def fingerprint(self) -> dict[str, Any] | None:
        """``data_fingerprint`` of the data the run was trained on; None for runs trained before it was written."""
        return read_json(self.fingerprint_file) if self.fingerprint_file.is_file() else None

    def summary(self) -> dict[str, Any] | None:
        """The summary of the last finished ``facenext train`` (None before one finished, or when unreadable)."""
        try:
            summary = read_json(self.summary_file)
        except UserError:
            return None
        return summary if isinstance(summary, dict) else None

    def best_dev_acc(self) -> float | None:
        summary = self.summary() or {}
        try:
            return float(summary["best_dev_acc"])
        except (KeyError, TypeError, ValueError):
            return None

    def label(self) -> str:
        """``name (dev 0.9123)`` when the run has a dev score, in the term's own metric where it is not accuracy
        (``name (dev EER 0.0412)``, ``name (dev score 0.8712)``), else its name."""
        summary = self.summary() or {}
        with contextlib.suppress(KeyError, TypeError, ValueError):
            if summary.get("score") == "dev_1-eer" and summary.get("best_dev_eer") is not None:
                return f"{self.name} (dev EER {float(summary['best_dev_eer']):.4f})"
            if summary.get("score") not in (None, "dev_acc") and summary.get("best_dev_score") is not None:
                return f"{self.name} ({summary['score'].replace('_', ' ')} {float(summary['best_dev_score']):.4f})"
        acc = self.best_dev_acc()
        return self.name if acc is None else f"{self.name} (dev {acc:.4f})"

    def parameters(self) -> int | None:
        """The parameter count the run recorded in its summary; None before a training finished."""
        with contextlib.suppress(KeyError, TypeError, ValueError):
            return int((self.summary() or {})["parameters"])
        return None

    def wandb_run(self) -> str | None:
        """``entity/project/run_id`` of the Weights & Biases run training logged to, when it did."""
        with contextlib.suppress(UserError, KeyError, TypeError):
            return str(read_json(self.wandb_file)["path"]) if self.wandb_file.is_file() else None
        return None

    def weights_file(self, weights: str = "best") -> Path:
        """The checkpoint holding ``weights`` (``best``, ``last``, ``ema`` or ``averaged``)."""
        if weights not in WEIGHTS:
            raise UserError(f"unknown weights {weights!r}: use one of {', '.join(WEIGHTS)}")
        return self.path / WEIGHTS_FILES[weights]

    def top_files(self) -> list[Path]:
        """The per-epoch checkpoints kept for averaging (``train.keep_top_k``), oldest epoch first."""
        return sorted(self.top_dir.glob("epoch_*.pt")) if self.top_dir.is_dir() else []

    def load_weights(self, weights: str = "best") -> dict[str, Any]:
        """The checkpoint of ``weights`` with those weights under ``"model"``; checked against classes.json."""
        from .checkpoint import load_checkpoint

        classes = self.classes()
        path = self.weights_file(weights)
        state = load_checkpoint(path)
        if weights == "ema":
            if state.get("ema") is None:
                raise UserError(f"{self.path} was trained without EMA (train.ema=false): use --weights best or last")
            state = {**state, "model": state["ema"]}
        if state.get("classes") != classes:
            raise UserError(f"{path} does not match {self.classes_file}: retrain the run")
        return state

    def load_model(self, weights: str = "best") -> nn.Module:
        """The run's model on the CPU in eval mode, built from its config and holding ``weights``."""
        from .models import model_from_config

        state = self.load_weights(weights)
        model = model_from_config(self.config(), len(self.classes()))
        try:
            model.load_state_dict(state["model"])
        except RuntimeError:
            raise UserError(
                f"{self.weights_file(weights)} holds weights of another architecture than its config.yaml"
            ) from None
        return model.eval()

    # --- writing (training) ---------------------------------------------------------------------------------------
    def write_config(self, config: Config) -> None:
        write_text(self.config_file, yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=None))

    def write_classes(self, classes: Sequence[str]) -> None:
        write_json(self.classes_file, list(classes), indent=None)  # thousands of names: one line

    def write_fingerprint(self, classes: Sequence[str], train_images: int) -> None:
        write_json(self.fingerprint_file, data_fingerprint(classes, train_images))

    def write_metrics(self, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
        write_csv(self.metrics_file, rows, columns)

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        write_json(self.summary_file, dict(summary))

    def write_wandb_run(self, path: str, url: str | None) -> None:
        """Where training logged, for the grading tag that ``facenext submit`` adds."""
        write_json(self.wandb_file, {"path": path, "url": url}, indent=None)


def load_run_config(run_dir: str | Path) -> tuple[Config, list[str]]:
    """The resolved config and class list a run was trained with."""
    run = RunDir(run_dir)
    return run.config(), run.classes()
