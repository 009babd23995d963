// lstm_fused_testing::gemm exposes the CPU GEMM the kernels use (the packed AVX-512 one for float when the CPU has
// it, else BLAS) so tests can check it at odd sizes and both transposes, and benchmarks can time it alone.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cpu/cpu_gemm.h"

namespace lstm_fused {
namespace {

at::Tensor gemm_cpu(const at::Tensor& a, const at::Tensor& b, bool trans_a, bool trans_b) {
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2, "lstm_fused_testing::gemm: expected 2-D operands");
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "lstm_fused_testing::gemm: dtypes differ");
  const at::Tensor ac = a.contiguous(), bc = b.contiguous();
  // a is stored [m, k] (or [k, m] with trans_a); b is stored [k, n] (or [n, k] with trans_b).
  const int64_t m = trans_a ? ac.size(1) : ac.size(0), k = trans_a ? ac.size(0) : ac.size(1);
  const int64_t n = trans_b ? bc.size(0) : bc.size(1);
  TORCH_CHECK((trans_b ? bc.size(1) : bc.size(0)) == k, "lstm_fused_testing::gemm: inner sizes differ");
  at::Tensor c = at::empty({m, n}, a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "lstm_fused_testing::gemm", [&] {
    const GemmOperand<scalar_t> op(trans_b, k, n, bc.const_data_ptr<scalar_t>(), bc.size(1));
    gemm<scalar_t>(trans_a, m, ac.const_data_ptr<scalar_t>(), ac.size(1), op, false, c.data_ptr<scalar_t>(), n);
  });
  return c;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(lstm_fused_testing, m) {
  m.def("gemm(Tensor a, Tensor b, bool trans_a, bool trans_b) -> Tensor");
}

TORCH_LIBRARY_IMPL(lstm_fused_testing, CPU, m) { m.impl("gemm", &gemm_cpu); }

}  // namespace lstm_fused
