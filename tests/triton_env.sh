#!/usr/bin/env bash
# Builds .venv-triton: the Python environment the Triton Python-backend stub runs in.
#
# The `tritonserver` binary shipped in the nvidia-pytriton wheel runs model.py in
# a stub process that embeds CPython. The stub links libpython3.11 dynamically
# and its bindings need NumPy < 2, while the main .venv has NumPy 2. So the stub
# gets its own small venv (NumPy < 2 + onnxruntime) made from the same shared
# CPython as .venv; tests/triton_server.py puts its bin/ first on PATH so the
# embedded interpreter finds it. Idempotent: reruns only when the stamp is stale.
set -euo pipefail
cd "$(dirname "$0")/.."
MAIN_PY=${MAIN_PY:-.venv/bin/python}
DEST=${TRITON_STUB_ENV:-.venv-triton}
REQS='numpy>=1.24,<2 onnxruntime>=1.18'
STAMP="$DEST/.trapkit-stamp"
# One builder at a time when several test runs start together.
exec 9>"${TMPDIR:-/tmp}/trapkit-triton-env.lock"
flock 9
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$REQS" ]]; then
    exit 0
fi
# The base interpreter of .venv (a venv of a venv is not allowed to be re-based).
BASE_PY=$("$MAIN_PY" -c 'import sys, os; print(os.path.join(sys.base_prefix, "bin", "python3"))')
"$BASE_PY" -c 'import sysconfig, sys; sys.exit(0 if sysconfig.get_config_var("Py_ENABLE_SHARED") else "the Triton stub needs a CPython built with --enable-shared (pyenv: PYTHON_CONFIGURE_OPTS=--enable-shared)")'
rm -rf "$DEST"
"$BASE_PY" -m venv "$DEST"
"$DEST/bin/python" -m pip install -q --disable-pip-version-check $REQS
echo "$REQS" > "$STAMP"
echo "built $DEST for the Triton Python backend stub"
