"""Verification with cross-entropy features against margin-loss fine-tuning (ArcFace, CosFace).

For each competition: train a cross-entropy run, then continue it for the same number of epochs three ways
(cross-entropy again, as the fair baseline; ArcFace; CosFace, both through a cosine classifier started from the
cross-entropy weights), verify every run on the dev set and write a Markdown table. With --embeddings, ArcFace is
also fine-tuned with the two other verification embeddings: a BatchNorm neck and a 128-d projection.

    python scripts/margin_report.py --out benchmarks/verification_losses.md [--embeddings]
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
from pathlib import Path

from facenext.cli import main as facenext
from facenext.data.sample import write_sample_competition

ROOT = Path(__file__).resolve().parents[1]
ORL = ROOT.parent / "shared" / "data" / "orl_faces"
CONFIG = str(ROOT / "configs" / "demo.yaml")
FINE_TUNE = ["train.lr=1e-3", "train.warmup_epochs=0"]
HEADS = {
    "cross-entropy (continued)": [],
    "ArcFace (m 0.5)": ["train.loss=arcface"],
    "CosFace (m 0.35)": ["train.loss=cosface"],
}
EMBEDDINGS = {  # the neck and the projection start afresh; the backbone and the class centres from cross-entropy
    "ArcFace, BN neck": ["train.loss=arcface", "model.neck=bn"],
    "ArcFace, 128-d projection": ["train.loss=arcface", "model.embed_dim=128"],
}


def run(args: list[str]) -> None:
    if facenext(args) != 0:
        sys.exit(f"failed: facenext {' '.join(args)}")


def competitions(work: Path) -> dict[str, Path]:
    data = {"synthetic F23 layout (30 + 15 identities)": work / "sample", "ORL F23 layout (30 + 10)": work / "orl"}
    data["synthetic F24 pairs"] = work / "sample_f24"
    if not data["synthetic F23 layout (30 + 15 identities)"].exists():
        write_sample_competition(work / "sample")
        write_sample_competition(work / "orl", source_folder=ORL)
        write_sample_competition(work / "sample_f24", term="f24")
    return data


def verify(run_dir: Path) -> dict:
    run(["verify", str(run_dir), "--out", str(run_dir / "verify")])
    return json.loads((run_dir / "verify" / "verify.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/verification_losses.md")
    parser.add_argument("--work", default="runs/margin_report")
    parser.add_argument("--epochs", type=int, default=40, help="cross-entropy epochs")
    parser.add_argument("--fine-tune-epochs", type=int, default=15)
    parser.add_argument("--embeddings", action="store_true", help="also ArcFace with a BN neck and a projection")
    args = parser.parse_args()
    work = Path(args.work)
    rows = []
    for name, data in competitions(work).items():
        base = work / f"{data.name}_ce"
        run(["train", CONFIG, "--out", str(base), f"data.root={data}", f"train.epochs={args.epochs}"])
        results = {"cross-entropy": verify(base)}
        for head, overrides in {**HEADS, **(EMBEDDINGS if args.embeddings else {})}.items():
            out = work / f"{data.name}_{re.sub(r'[^a-z0-9]+', '_', head.lower()).strip('_')}"
            common = [f"data.root={data}", f"train.epochs={args.fine_tune_epochs}", f"train.init_from={base}"]
            run(["train", CONFIG, "--out", str(out), *common, *FINE_TUNE, *overrides])
            results[head] = verify(out)
        for head, summary in results.items():
            if "dev_accuracy" in summary:
                metric = f"accuracy {summary['dev_accuracy']:.3f} (threshold {summary['threshold']:.2f})"
            else:
                metric = f"EER {summary['dev_eer']:.3f}, AUC {summary['dev_auc']:.3f}"
            rows.append(f"| {name} | {head} | {metric} |")
    lines = [
        "# Verification: cross-entropy features against margin-loss fine-tuning",
        "",
        f"- {datetime.date.today()}, `python scripts/margin_report.py` on a 2-core CPU; model `lean_nano` at 64 px "
        f"(configs/demo.yaml), {args.epochs} cross-entropy epochs, then {args.fine_tune_epochs} more epochs "
        "from those weights with each head (lr 1e-3)",
        "- identity matching: dev accuracy on unknown_dev with the threshold for n000000 tuned there; "
        "pairs: EER (lower is better) and ROC AUC on val_pairs",
        "",
        "| competition | training | verification on dev |",
        "|---|---|---|",
        *rows,
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
