#!/usr/bin/env bash
# The GPU checks of a session that is lent a GPU machine, in one call (device time is short): the environment,
# `make gpu-check` (benchmarks/gpu.md), the kill-and-resume and CUDA-correctness tests run on CUDA, and the demo
# end to end on CUDA. Runs under the machine's own python3 and torch; packages it lacks travel as wheels in .whl/.
# Everything lands in $OUT (default /tmp/gpu-session).
set -u
OUT=${OUT:-/tmp/gpu-session}
source "$(dirname "$0")/gpu_env.sh"
{
  nvidia-smi
  nproc
  python3 -c "import torch, torchvision, timm, albumentations, cv2, numpy, sys; print(sys.version); print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__, 'albumentations', albumentations.__version__, 'cv2', cv2.__version__, 'numpy', numpy.__version__); print(torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))"
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
timeout "${GPU_CHECK_S:-330}" python3 scripts/gpu_check.py --out "$OUT/gpu.md" >"$OUT/gpu_check.log" 2>&1
echo "gpu-check exit $?" | tee -a "$OUT/gpu_check.log"
tail -n 5 "$OUT/gpu_check.log"
# Deterministic cuBLAS, so that the kill-and-resume test can ask for bit-identical weights on CUDA too.
export CUBLAS_WORKSPACE_CONFIG=:4096:8
timeout "${TESTS_S:-120}" python3 -m pytest -q -p no:cacheprovider -p no:randomly \
  tests/test_engine.py::test_killed_and_stopped_runs_resume_to_the_same_weights tests/test_gpu_correctness.py \
  >"$OUT/pytest_cuda.log" 2>&1
echo "pytest exit $?" | tee -a "$OUT/pytest_cuda.log"
tail -n 15 "$OUT/pytest_cuda.log"
timeout "${DEMO_S:-100}" python3 -m facenext demo --term f26 >"$OUT/demo_f26.log" 2>&1
echo "demo exit $?" | tee -a "$OUT/demo_f26.log"
tail -n 12 "$OUT/demo_f26.log"
