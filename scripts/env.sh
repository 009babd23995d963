# Sourced by the other scripts: makes .venv (CPU torch 2.13.0 from the local wheel) if needed and builds and
# installs lstm_fused from this tree into it. Override the venv with LSTM_FUSED_VENV, torch with TORCH_SPEC.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LSTM_FUSED_VENV:-$ROOT/.venv}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
PY="$VENV/bin/python"
if [ ! -x "$PY" ]; then
  python3 -m venv "$VENV"
fi
if ! "$PY" -c "import torch, ninja, pytest, numpy, onnx, onnxscript, onnxruntime" >/dev/null 2>&1; then
  # onnx, onnxscript, onnxruntime: test extras (the ONNX export tests run the exported graphs).
  "$PY" -m pip install -q --disable-pip-version-check "$TORCH_SPEC" setuptools wheel ninja pytest numpy expecttest \
    onnx onnxscript onnxruntime
fi
# --no-build-isolation: compile against the torch installed above, not one pulled into a build env.
MAX_JOBS="${MAX_JOBS:-2}" "$PY" -m pip install -q --disable-pip-version-check --no-build-isolation "$ROOT"
