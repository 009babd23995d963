#!/usr/bin/env bash
# The CUDA path's CPU emulation under AddressSanitizer: builds lstm_fused with LSTM_FUSED_ASAN=1 and the test-only
# ops into its own venv (.venv-asan, CPU torch) and runs the emulation tests with the ASan runtime preloaded, so a
# kernel's write or read past a buffer the driver allocated (the per-step buffers, the workspace, the outputs)
# stops the run with a report instead of passing unnoticed. The zoneout and layer-norm op tests run too: masks read
# through strides, workspace rows the layer norm's row passes index (its module tests with torch.compile and export,
# which spawn compilers, are left out). Extra arguments go to pytest. CI runs it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export LSTM_FUSED_VENV="${LSTM_FUSED_ASAN_VENV:-$ROOT/.venv-asan}"
export LSTM_FUSED_TESTING=1 LSTM_FUSED_ASAN=1
source "$ROOT/scripts/env.sh"
cd "$ROOT"
# The ASan runtime first, then libstdc++ (else ASan cannot find the real __cxa_throw and every C++ exception, such
# as a TORCH_CHECK the tests provoke, aborts). Python and torch are not instrumented: leaks at exit and their
# allocator pairing are not ours to report. Reports go to stderr and to $ASAN_LOG.<pid> (pytest captures stderr).
ASAN_LOG="${ASAN_LOG:-$ROOT/build/asan_report}"
mkdir -p "$(dirname "$ASAN_LOG")"
rm -f "$ASAN_LOG".*
export ASAN_OPTIONS="detect_leaks=0:alloc_dealloc_mismatch=0:new_delete_type_mismatch=0:halt_on_error=1:log_path=$ASAN_LOG"
set +e
LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so.6)" \
  "$VENV/bin/pytest" -q -p no:logging tests/test_cuda_emulation.py tests/test_persistent_emulation.py \
  tests/test_zoneout.py tests/test_layer_norm.py -k "not compile_torchscript_and_export" "$@"
rc=$?
set -e
if compgen -G "$ASAN_LOG.*" > /dev/null; then
  cat "$ASAN_LOG".* >&2
  exit 1
fi
exit "$rc"
