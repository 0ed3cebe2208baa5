"""Verification figures: the ROC curve, genuine/impostor score histograms, accuracy against the threshold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_write
from .metrics import genuine_impostor, roc


def _figure(size: tuple[float, float]) -> Any:
    from matplotlib.figure import Figure  # the object API draws with Agg, never a display

    return Figure(figsize=size)


def _save(path: Path, figure: Any) -> None:
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))


def plot_roc(path: Path, genuine: np.ndarray, impostor: np.ndarray, title: str) -> None:
    """ROC curve (log FAR axis) with the EER point marked."""
    curve = roc(*genuine_impostor(genuine, impostor))
    fig = _figure((5, 4.5))
    ax = fig.add_subplot()
    floor = 0.5 / max(len(impostor), 1)
    ax.plot(np.maximum(curve.fpr, floor), curve.tpr, label=f"AUC {curve.auc:.4f}")
    ax.plot([curve.eer], [1 - curve.eer], "o", label=f"EER {curve.eer:.4f}")
    ax.set_xscale("log")
    ax.set_xlim(floor, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    _save(path, fig)


def plot_histograms(path: Path, genuine: np.ndarray, impostor: np.ndarray, title: str) -> None:
    fig = _figure((6, 4))
    ax = fig.add_subplot()
    # cosine scores span [-1, 1]; re-ranked ones (1 - distance) [0, 1]
    lowest = min(float(np.min(genuine, initial=0.0)), float(np.min(impostor, initial=0.0)))
    bins = np.linspace(-1 if lowest < 0 else 0, 1, 81)
    ax.hist(impostor, bins=bins, density=True, alpha=0.6, label=f"impostor ({len(impostor)})")
    ax.hist(genuine, bins=bins, density=True, alpha=0.6, label=f"genuine ({len(genuine)})")
    ax.set_xlabel("similarity score")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend()
    _save(path, fig)


def plot_threshold_curve(path: Path, thresholds: np.ndarray, accuracy: np.ndarray, best: float) -> None:
    fig = _figure((6, 4))
    ax = fig.add_subplot()
    ax.plot(thresholds, accuracy)
    ax.axvline(best, color="gray", linestyle="--", label=f"tuned {best:.3f}")
    ax.set_xlabel("threshold (below: no match)")
    ax.set_ylabel("dev accuracy")
    ax.legend()
    ax.grid(alpha=0.3)
    _save(path, fig)


def write_score_figures(out: Path, genuine: np.ndarray, impostor: np.ndarray, name: str) -> dict[str, str]:
    """The dev ROC and score histograms (when both kinds of score exist); their paths for the summary."""
    if len(genuine) == 0 or len(impostor) == 0:
        return {}
    roc_png, hist_png = out / "verification_roc.png", out / "verification_scores.png"
    plot_roc(roc_png, genuine, impostor, f"ROC, {name} dev")
    plot_histograms(hist_png, genuine, impostor, f"genuine / impostor scores, {name} dev")
    return {"roc_png": str(roc_png), "scores_png": str(hist_png)}
