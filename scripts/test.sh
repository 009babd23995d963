#!/usr/bin/env bash
# Builds lstm_fused into .venv (see env.sh) and runs the test suite against the installed package.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k packed -x`. The build includes the test-only ops
# (LSTM_FUSED_TESTING=1: the CUDA path emulated on the CPU, planners, path counters; setup.py).
export LSTM_FUSED_TESTING=1
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
# pytest (not `python -m pytest`, which would put the source folder first on sys.path) in importlib mode
# (pyproject.toml), so the installed package with its compiled _C is the one imported.
set +e
"$VENV/bin/pytest" "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "test.sh: pytest collected no tests" >&2
fi
exit "$rc"
