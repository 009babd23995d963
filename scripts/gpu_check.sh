#!/usr/bin/env bash
# The GPU check for a lent GPU machine (python3 there holds a CUDA torch). Two halves, each sized to fit one
# device command (run each with timeout_s ≈ 560; the second needs the first's install on the same warm machine):
#   bash scripts/gpu_check.sh build    build for the present GPU only (ptxas report), the CUDA tests
#   bash scripts/gpu_check.sh measure  compute-sanitizer (memcheck, racecheck, synccheck) on a small forward+
#                                      backward through the per-step, per-step GEMM, persistent and wavefront
#                                      paths, the quick suite against cuDNN and the per-step kernels, the
#                                      WikiText-2 LM when its data is there
#   bash scripts/gpu_check.sh          both (each half stops its steps at 500 s and 435 s at worst)
# Logs and results go to $OUT (default ./gpu_out).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$ROOT/gpu_out}"
mkdir -p "$OUT"
cd "$ROOT"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
PART="${1:-all}"
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
} 2>&1 | tee "$OUT/env.txt"
ARCH="$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')"

if [ "$PART" = all ] || [ "$PART" = build ]; then
echo "== build for sm_$ARCH" | tee "$OUT/build.log"
if [ -z "${CUDA_HOME:-}" ]; then
  if command -v nvcc >/dev/null; then CUDA_HOME="$(dirname "$(dirname "$(command -v nvcc)")")"; else CUDA_HOME=/usr/local/cuda; fi
fi
export CUDA_HOME
TORCH_CUDA_ARCH_LIST="$ARCH" FORCE_CUDA=1 LSTM_FUSED_TESTING=1 MAX_JOBS=16 LSTM_FUSED_PTXAS_VERBOSE=1 \
  timeout 200 "$PY" -m pip install -v --no-build-isolation --no-deps --no-index "$ROOT" >> "$OUT/build.log" 2>&1
rc=$?; echo "build rc=$rc" | tee -a "$OUT/build.log"
grep -E "registers|spill" "$OUT/build.log" | sort | uniq -c | head -20
[ $rc -eq 0 ] || exit $rc

echo "== CUDA tests"
# Not -x: one lease should report every failing test, not the first (the full log is in $OUT/tests.log).
# GPU-only files, then the concern files' cases on the "cuda" backend (helpers.on_backend: ids carry "cuda", the
# emulated backend's "emulated_cuda"). The emulation tests are left to the CPU (CI runs them).
(cd /tmp && LSTM_FUSED_TESTING=1 LSTM_FUSED_LARGE_TESTS=1 timeout 300 "$PY" -m pytest -q -p no:cacheprovider --import-mode=importlib --maxfail=30 -rf \
  --durations=8 "$ROOT/tests/test_cuda_persistent.py" "$ROOT/tests/test_cuda.py" "$ROOT/tests/test_autocast.py" \
  "$ROOT/tests/test_large_tensors.py::test_workspace_over_2_31_elements_cuda" \
  "$ROOT"/tests/test_{parity,packed,cells,gradients,lstm_variants,compile,errors,zoneout,regularisers,layer_norm}.py \
  -k "cuda and not emulated_cuda" \
  2>&1) | tee "$OUT/tests.log" | tail -45
fi
[ "$PART" = all ] || [ "$PART" = measure ] || exit 0

echo "== compute-sanitizer"
# Without PyTorch's caching allocator every tensor is its own allocation, so memcheck sees an access past a
# tensor's end (inside a cached block it would land in memory that is still valid).
for tool in memcheck racecheck synccheck; do
  (cd /tmp && PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 75 compute-sanitizer --tool "$tool" --error-exitcode 9 \
    "$PY" "$ROOT/scripts/sanitizer_case.py") \
    > "$OUT/sanitizer_$tool.log" 2>&1
  echo "$tool rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitizer_$tool.log" | tail -1)"
done

echo "== benchmark"
# Against cuDNN and our own per-step kernels (the Python loop baseline at T=512 would take minutes of the lease).
(cd /tmp && timeout 150 "$PY" "$ROOT/benchmarks/suite.py" --device cuda --quick --dtype float32,bfloat16 \
  --min-time 0.1 --baselines nn,step --out "$OUT") 2>/dev/null | tee "$OUT/bench.md"

echo "== end to end: WikiText-2 word-level LM (when ../shared/data is there)"
if [ -d "$ROOT/../shared/data/wikitext-2" ]; then
  (cd /tmp && timeout 60 "$PY" "$ROOT/benchmarks/word_lm.py" --device cuda --out "$OUT") 2>&1 | tail -8 | tee "$OUT/word_lm.md"
fi
