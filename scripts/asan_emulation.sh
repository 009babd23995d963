#!/usr/bin/env bash
# The CUDA path's CPU emulation under AddressSanitizer: builds lstm_fused with LSTM_FUSED_ASAN=1 and the test-only
# ops into its own venv (.venv-asan, CPU torch) and runs the emulation tests with the ASan runtime preloaded, so a
# kernel's write or read past a buffer the driver allocated (the per-step buffers, the workspace, the outputs)
# stops the run with a report instead of passing unnoticed. Extra arguments go to pytest. CI runs it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export LSTM_FUSED_VENV="${LSTM_FUSED_ASAN_VENV:-$ROOT/.venv-asan}"
export LSTM_FUSED_TESTING=1 LSTM_FUSED_ASAN=1
source "$ROOT/scripts/env.sh"
cd "$ROOT"
LIBASAN="$(gcc -print-file-name=libasan.so)"
# Python and torch are not instrumented: leaks at exit and their allocator pairing are not ours to report.
export ASAN_OPTIONS="detect_leaks=0:alloc_dealloc_mismatch=0:new_delete_type_mismatch=0:halt_on_error=1:abort_on_error=0"
LD_PRELOAD="$LIBASAN" "$VENV/bin/pytest" -q -p no:logging tests/test_cuda_emulation.py tests/test_persistent_emulation.py "$@"
