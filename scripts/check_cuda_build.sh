#!/usr/bin/env bash
# CUDA compile-and-link check for machines without a GPU (CI runs it from .ci/run):
#  1. ptxas report (registers, spills) of the step kernels for sm_80 and sm_90; fails on any spill;
#  2. builds and installs lstm_fused with its CUDA sources into a torch 2.14.1+cu130 venv (FORCE_CUDA=1), with the
#     test-only ops (LSTM_FUSED_TESTING=1), as the GPU check (gpu_check.sh) builds it;
#  3. imports it there and checks that every op has a CUDA kernel registered (and that the CPU kernels and the
#     CUDA path's CPU emulation run).
# Override the venv with LSTM_FUSED_CUDA_VENV, the toolkit with CUDA_HOME, the arches with TORCH_CUDA_ARCH_LIST.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LSTM_FUSED_CUDA_VENV:-$ROOT/.venv-cuda}"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0+PTX}"
PY="$VENV/bin/python"
[ -x "$PY" ] || python3 -m venv "$VENV"
if ! "$PY" -c "import torch, ninja; assert torch.version.cuda" >/dev/null 2>&1; then
  "$PY" -m pip install -q --disable-pip-version-check torch==2.14.1 setuptools wheel ninja numpy
fi
TORCH_INC="$("$PY" -c 'import torch.utils.cpp_extension as c; print(" ".join("-I" + p for p in c.include_paths()))')"

echo "-- ptxas report of the step kernels"
report="$(mktemp)"
for arch in 80 90; do
  for cu in "$ROOT"/csrc/cuda/*.cu; do
  "$CUDA_HOME/bin/nvcc" -c -std=c++20 -O3 --expt-relaxed-constexpr -gencode "arch=compute_$arch,code=sm_$arch" \
    -Xptxas -v $TORCH_INC -I"$ROOT/csrc" "$cu" -o /dev/null 2>&1 |
    grep -E "Compiling entry|registers|spill" | sed -E "s/'(_Z[^']*)'/\1/" | c++filt |
    sed -E 's/lstm_fused::cuda_step::\(anonymous namespace\)::|lstm_fused::cuda_step::|c10::|\(BwdStepParams<[^)]*\)|\(FwdStepParams<[^)]*\)//g' |
    tee -a "$report"
  done
done
if grep -E "[1-9][0-9]* bytes spill (stores|loads)" "$report"; then
  echo "check_cuda_build: a step kernel spills registers" >&2
  exit 1
fi

echo "-- building lstm_fused with CUDA from its sdist (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
# From the sdist, so a CUDA source or header missing from it fails here. The sdist is made from a copy of the
# checkout: setup.py run in the tree would leave build records there.
work="$(mktemp -d)"
(cd "$ROOT" && git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$work") 2>/dev/null ||
  cp -r "$ROOT"/{setup.py,pyproject.toml,MANIFEST.in,README.md,LICENSE,csrc,lstm_fused} "$work"
(cd "$work" && "$PY" setup.py -q sdist -d "$work/dist" > /dev/null)
FORCE_CUDA=1 LSTM_FUSED_TESTING=1 MAX_JOBS="${MAX_JOBS:-2}" "$PY" -m pip install -q --disable-pip-version-check --no-build-isolation \
  --force-reinstall --no-deps "$work"/dist/lstm_fused-*.tar.gz

echo "-- import and kernel registration"
cd "$(mktemp -d)"  # not the source tree: import the installed package
"$PY" - <<'PYEOF'
import torch
import lstm_fused

assert torch.version.cuda, "expected a CUDA build of torch"
assert lstm_fused.has_cuda_kernels(), "the extension was built without its CUDA kernels"
for op in ("lstm_layer_fwd", "lstm_layer_bwd", "lstm_stack_fwd", "lstm_stack_bwd", "gru_layer_fwd", "gru_layer_bwd"):
    for key in ("CPU", "CUDA"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"lstm_fused::{op}", key), (op, key)
# The CPU kernels of this build run.
ref = torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True)
m = lstm_fused.LSTM(3, 5, num_layers=2, bidirectional=True)
m.load_state_dict(ref.state_dict())
x = torch.randn(4, 2, 3)
torch.testing.assert_close(m(x)[0], ref(x)[0], rtol=1e-5, atol=1e-6)
# The CUDA driver emulated on the CPU (compiled here next to the CUDA binding) matches the CPU kernels.
args = [x, None, torch.zeros(1, 2, 5), torch.zeros(1, 2, 5), [m.weight_ih_l0], [m.weight_hh_l0], [m.bias_ih_l0],
        [m.bias_hh_l0], None, None, False, False]
with torch.no_grad():
    emu = torch.ops.lstm_fused_testing.emu_lstm_layer_fwd(*args)
    cpu = torch.ops.lstm_fused.lstm_layer_fwd(*args)
torch.testing.assert_close(emu[0], cpu[0], rtol=1e-5, atol=1e-6)
print(f"lstm_fused CUDA build OK: torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"GPU visible: {torch.cuda.is_available()}")
PYEOF
