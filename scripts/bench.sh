#!/usr/bin/env bash
# Builds lstm_fused into .venv (see env.sh) and runs the benchmark suite against nn.LSTM/nn.GRU on the present device
# (CUDA if available, else CPU). Extra arguments go to benchmarks/suite.py (e.g. --quick).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
"$PY" -c "import matplotlib" >/dev/null 2>&1 || "$PY" -m pip install -q --disable-pip-version-check matplotlib ||
  echo "bench.sh: matplotlib could not be installed; the suite runs without plots" >&2
cd "$ROOT"
exec "$PY" benchmarks/suite.py "$@"
