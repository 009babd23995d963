#!/usr/bin/env bash
# Builds lstm_fused into .venv (see env.sh) and runs the benchmark against nn.LSTM on the present device
# (CUDA if available, else CPU). Extra arguments go to benchmarks/bench_lstm.py (e.g. --quick).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
exec "$PY" benchmarks/bench_lstm.py "$@"
