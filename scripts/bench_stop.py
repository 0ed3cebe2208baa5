"""How long a SIGTERM takes to become a recovery checkpoint under torchrun (2 gloo processes on the CPU).

Operational script, not library code. torchrun answers its own SIGTERM by signalling each worker's process group,
then kills whatever is left 30 s later: the recovery save must land inside those 30 s. Each trial trains a small
model on a synthetic competition under `torchrun --nproc_per_node=2`, waits for the first epoch's checkpoint plus a
random delay (so the signal lands anywhere in a later epoch), then sends SIGTERM

- to torchrun (`torchrun`: what a scheduler, Kaggle or `kill` does; every process and its DataLoader workers get
  it), or
- to one training process's group (`one rank`: the other process learns of it only from their agreement),

and records the seconds from the signal to `recovery.pt` on disk and to the end of torchrun. It also times the
per-step agreement itself (`any_rank_on_host`, a gloo all-reduce of three flags between the two processes).

    .venv/bin/python scripts/bench_stop.py --out benchmarks/stop.md      # a few minutes on 2 CPU cores
    .venv/bin/python scripts/bench_stop.py --src /tmp/old/src ...        # the same trials on another checkout
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "demo.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_args(data: Path, run: Path, args: argparse.Namespace) -> list[str]:
    return [
        "train", str(CONFIG), "--out", str(run), f"data.root={data}", f"data.image_size={args.image_size}",
        f"data.num_workers={args.workers}", "model.name=lean_nano", "model.depths=[1,1,2,1]",
        "train.batch_size=32", "train.epochs=100", f"train.log_every={args.log_every}", "train.plot=false",
        "train.keep_top_k=0",
    ]  # fmt: skip


def rank_pids(torchrun: int) -> dict[int, int]:
    children = [int(pid) for pid in Path(f"/proc/{torchrun}/task/{torchrun}/children").read_text().split()]
    ranks = {}
    for pid in children:
        environ = dict(e.split("=", 1) for e in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in e)
        ranks[int(environ["RANK"])] = pid
    return ranks


def trial(data: Path, run: Path, target: str, delay: float, args: argparse.Namespace) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(args.src)}
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}"]
    process = subprocess.Popen(
        [*launch, "-m", "facenext", *train_args(data, run, args)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    while not (run / "last.pt").exists():
        if process.poll() is not None:
            raise RuntimeError(process.stdout.read())
        time.sleep(0.01)
    time.sleep(delay)
    if target == "torchrun":
        sent = time.monotonic()
        os.kill(process.pid, signal.SIGTERM)
    else:
        group = os.getpgid(rank_pids(process.pid)[1])  # as torchrun signals a worker: its whole process group
        sent = time.monotonic()
        os.killpg(group, signal.SIGTERM)
    recovery, saved = run / "recovery.pt", None
    while process.poll() is None:
        if saved is None and recovery.exists():
            saved = time.monotonic() - sent
        time.sleep(0.002)
    ended = time.monotonic() - sent
    if saved is None and recovery.exists():
        saved = ended
    output = process.stdout.read()
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else {}
    state = torch.load(recovery, map_location="cpu", weights_only=True) if recovery.exists() else None
    step_s = state["epoch_stats"][3] / max(state["batch"], 1) if state else None
    return {
        "target": target,
        "saved_s": saved,
        "ended_s": ended,
        "stopped": summary.get("stopped"),
        "step": state["step"] if state else None,
        "step_s": step_s,
        # torchrun answers its own SIGTERM with a SignalException traceback; any other is a training process's.
        "crashed": output.count("Traceback (most recent call last)") > output.count("SignalException: Process"),
        "tail": output[-600:] if saved is None else "",
    }


def agreement_cost(rank: int, port: int, rounds: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    sys.path.insert(0, str(ROOT / "src"))
    from facenext.engine.distributed import any_rank_on_host, init_distributed

    torch.set_num_threads(1)
    ctx, _ = init_distributed(torch.device("cpu"))
    for _ in range(50):
        any_rank_on_host([False, False, False], ctx)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        any_rank_on_host([False, False, False], ctx)
        times.append(time.perf_counter() - start)
    if rank == 0:
        queue.put(statistics.median(times) * 1e6)


def measure_agreement(rounds: int = 2000) -> float:
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    queue, port = context.Queue(), free_port()
    processes = [context.Process(target=agreement_cost, args=(r, port, rounds, queue)) for r in range(2)]
    for p in processes:
        p.start()
    value = queue.get(timeout=120)
    for p in processes:
        p.join()
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6, help="per target")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="the facenext source tree to run")
    parser.add_argument("--label", default="this checkout")
    parser.add_argument("--out", type=Path, help="append a markdown section to this file")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from facenext.data.sample import write_sample_competition

    rng = random.Random(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "sample"
        write_sample_competition(data, "f23", identities=8, images_per_identity=40, size=args.image_size, seed=1)
        for i in range(args.trials):
            for target in ("torchrun", "one rank"):
                run = Path(tmp) / f"run_{target.replace(' ', '_')}_{i}"
                row = trial(data, run, target, rng.uniform(0, 2.0), args)
                print(json.dumps(row), flush=True)
                rows.append(row)
    agreement_us = measure_agreement() if args.src == ROOT / "src" else None
    report = render(rows, agreement_us, args)
    print(report)
    if args.out:
        with args.out.open("a") as f:
            f.write(report)


def render(rows: list[dict], agreement_us: float | None, args: argparse.Namespace) -> str:
    steps = [r["step_s"] for r in rows if r["step_s"]]
    step_text = f"median step {statistics.median(steps):.3f} s" if steps else "no step time (no recovery file)"
    lines = [
        f"\n## {args.label}\n",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}; Python {platform.python_version()}, "
        f"torch {torch.__version__}; {os.cpu_count()} CPU cores, shared",
        f"- 2 gloo processes (OMP_NUM_THREADS=1), lean_nano depths [1,1,2,1] at {args.image_size} px, batch 32 "
        f"(16 a process), {args.workers} DataLoader worker(s) a process, train.log_every={args.log_every}; "
        f"{step_text}; the recovery file's step: {', '.join(str(r['step']) for r in rows)}",
    ]
    if agreement_us is not None:
        lines.append(
            f"- the per-step agreement (`any_rank_on_host`, 3 flags, 2 processes): median {agreement_us:.0f} us"
        )
    lines += [
        "",
        "| SIGTERM to | trials | recovery.pt written | seconds to recovery.pt (median / max) | "
        "seconds to exit (median / max) | stopped as | tracebacks |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for target in ("torchrun", "one rank"):
        group = [r for r in rows if r["target"] == target]
        saved = [r["saved_s"] for r in group if r["saved_s"] is not None]
        ended = [r["ended_s"] for r in group]
        saved_text = f"{statistics.median(saved):.2f} / {max(saved):.2f}" if saved else "-"
        stopped = ", ".join(sorted({str(r["stopped"]) for r in group}))
        lines.append(
            f"| {target} | {len(group)} | {len(saved)} | {saved_text} | "
            f"{statistics.median(ended):.2f} / {max(ended):.2f} | {stopped} | {sum(r['crashed'] for r in group)} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
