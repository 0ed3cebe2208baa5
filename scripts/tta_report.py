"""Dev accuracy without TTA, with each TTA, and for ensembles of three runs, on the sample and ORL competitions.

python scripts/tta_report.py --out benchmarks/tta_ensemble.md
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

from facenext.config import load_config
from facenext.data.sample import write_sample_competition
from facenext.engine.train import train
from facenext.ensemble import ensemble
from facenext.predict import predict

ROOT = Path(__file__).resolve().parents[1]
ORL = ROOT.parent / "shared" / "data" / "orl_faces"
TTAS = ("none", "flip", "five@0.9", "ten@0.9", "scales@0.9,1.0,1.1", "flip+five@0.9")
SEEDS = (0, 1, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/tta_ensemble.md")
    parser.add_argument("--work", default="runs/tta_report")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--image-size", type=int, default=48)
    args = parser.parse_args()
    work = Path(args.work)
    competitions = {"synthetic sample (30 identities)": work / "sample", "ORL (30 identities)": work / "orl"}
    if not (work / "sample").exists():
        write_sample_competition(work / "sample")
        write_sample_competition(work / "orl", source_folder=ORL)
    header = "| competition | run | " + " | ".join(TTAS) + " |"
    rows = [header, "|---|---|" + "---:|" * len(TTAS)]
    ensembles = [
        "| competition | single runs (flip) | ensemble, equal weights | ensemble, fitted weights | CV gain of fit |",
        "|---|---|---:|---:|---:|",
    ]
    for name, data in competitions.items():
        runs = []
        for seed in SEEDS:
            run = work / "runs" / f"{data.name}_seed{seed}"
            overrides = [f"data.root={data}", f"train.epochs={args.epochs}", f"data.image_size={args.image_size}"]
            train(load_config(ROOT / "configs" / "demo.yaml", [*overrides, f"train.seed={seed}"]), run)
            accs = [predict(run, "dev", tta, work / "tta" / tta / run.name)["dev_acc"] for tta in TTAS]
            rows.append(f"| {name} | seed {seed} | " + " | ".join(f"{a:.3f}" for a in accs) + " |")
            out = work / "predictions" / run.name
            predict(run, "dev", "flip", out)
            predict(run, "test", "flip", out)
            runs.append(run)
        equal = ensemble(runs, work / f"{data.name}_equal.csv", work / "predictions", "equal")
        fit = ensemble(runs, work / f"{data.name}_fit.csv", work / "predictions", "fit")
        singles = ", ".join(f"{a:.3f}" for a in equal["dev_acc_runs"].values())
        ensembles.append(
            f"| {name} | {singles} | {equal['dev_acc_equal']:.3f} | {fit['dev_acc_fit']:.3f} | "
            f"{fit['cv']['acc_gain']:+.3f} |"
        )
        (work / f"{data.name}_summary.json").write_text(json.dumps({"equal": equal, "fit": fit}, indent=2))
    lines = [
        "# Test-time augmentation and ensembles",
        "",
        f"- {datetime.date.today()}, `python scripts/tta_report.py` on a 2-core CPU: `lean_nano` (configs/demo.yaml) "
        f"at {args.image_size} px, {args.epochs} epochs, seeds {', '.join(map(str, SEEDS))}; dev accuracy, "
        "views merged by mean probability",
        "",
        *rows,
        "",
        "Ensembles of the three seeds (flip TTA each):",
        "",
        *ensembles,
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
