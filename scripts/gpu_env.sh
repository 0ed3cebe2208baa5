# Sourced by the scripts run on a lent GPU machine (gpu_session.sh, gpu_recipes.sh): makes $OUT, installs the wheels
# of packages the machine's python lacks (carried in .whl/) and puts this checkout's src/ first on the path.
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1
