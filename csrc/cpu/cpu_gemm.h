// Row-major GEMM on raw pointers for the CPU kernels: C[m,n] = alpha·op(A)·op(B) + beta·C.
// float/double go straight to the BLAS that libtorch_cpu exports (MKL's sgemm_/dgemm_) when it is there,
// skipping the ~1 µs dispatcher cost per call that dominates the per-step GEMMs at small sizes; otherwise,
// and for sizes past 32-bit BLAS ints, they go through at::addmm on views of the same memory.
#pragma once

#include <cstdint>

namespace lstm_fused {

// A is [m,k] (lda) or, with trans_a, stored as [k,m]; B is [k,n] (ldb) or, with trans_b, stored [n,k].
// beta == 0 ignores C's previous contents (it may be uninitialised).
template <typename scalar_t>
void gemm_rowmajor(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, scalar_t alpha, const scalar_t* a,
                   int64_t lda, const scalar_t* b, int64_t ldb, scalar_t beta, scalar_t* c, int64_t ldc);

}  // namespace lstm_fused
