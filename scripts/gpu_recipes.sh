#!/usr/bin/env bash
# Recipe sweeps (scripts/recipes.py) on a lent GPU machine, in one call: the sample's verification grid and round 3
# of the ablations side by side, 16 trials at a time (one CPU core each, sharing the GPU), for SWEEP_S seconds.
# Finished trials are in $OUT/*.jsonl whatever the time limit cut; merge them with `recipes.py report`. To go on
# with a cut sweep in a later call, put its *.jsonl in .gpu-results/ (carried): finished trials are skipped.
# VERIFY_JOBS=0 skips the verification grid.
# Needs ORL in .orl/ (copied from ../shared/data/orl_faces: the machine has no ../shared) and, where the machine's
# python lacks albumentations, its wheels in .whl/.
set -u
OUT=${OUT:-/tmp/gpu-recipes}
source "$(dirname "$0")/gpu_env.sh"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/env.txt"
pids=()
sweep() {  # grid, jobs; in a process group of its own, so that the pool workers the time limit leaves can be killed
  setsid timeout "${SWEEP_S:-520}" python3 scripts/recipes.py run --grid "$1" --jobs "$2" --orl .orl \
    --work "/tmp/work-$1" --results "$OUT/$1.jsonl" >"$OUT/$1.log" 2>&1 &
  pids+=("$!")
}
compgen -G ".gpu-results/*.jsonl" >/dev/null && cp .gpu-results/*.jsonl "$OUT/"
[ "${VERIFY_JOBS:-5}" -gt 0 ] && sweep verify "${VERIFY_JOBS:-5}"
sweep round3 "${ROUND3_JOBS:-11}"
wait
for pid in "${pids[@]}"; do kill -9 -- "-$pid" 2>/dev/null; done
tail -n 4 "$OUT"/*.log
wc -l "$OUT"/*.jsonl
