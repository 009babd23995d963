// Row-major GEMM on raw pointers for the CPU kernels: C[m,n] = alpha·op(A)·op(B) + beta·C.
// float/double go straight to the BLAS that libtorch_cpu exports (MKL's sgemm_/dgemm_) when it is there,
// skipping the ~1 µs dispatcher cost per call that dominates the per-step GEMMs at small sizes; otherwise,
// and for sizes past 32-bit BLAS ints, they go through at::addmm on views of the same memory.
#pragma once

#include <cstdint>
#include <type_traits>

#include "cpu/packed_gemm.h"

namespace lstm_fused {

// A is [m,k] (lda) or, with trans_a, stored as [k,m]; B is [k,n] (ldb) or, with trans_b, stored [n,k].
// beta == 0 ignores C's previous contents (it may be uninitialised).
template <typename scalar_t>
void gemm_rowmajor(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, scalar_t alpha, const scalar_t* a,
                   int64_t lda, const scalar_t* b, int64_t ldb, scalar_t beta, scalar_t* c, int64_t ldc);

// The right-hand operand op(B) [k, n] of products a layer repeats (a weight, used every step): packed once
// for the AVX-512 kernel when the type is float and the CPU has it, else handed to BLAS as it is.
template <typename scalar_t>
struct GemmOperand {
  bool trans = false;  // B stored [n, k] (a weight [out, in] used as Wᵀ)
  int64_t k = 0, n = 0, ld = 0;
  const scalar_t* ptr = nullptr;
  bool packed = false;
  PackedMatrix pack;

  GemmOperand(bool trans_b, int64_t k_, int64_t n_, const scalar_t* b, int64_t ldb)
      : trans(trans_b), k(k_), n(n_), ld(ldb), ptr(b) {
    if constexpr (std::is_same_v<scalar_t, float>) {
      // Panels pad n up to a multiple of 32: for narrow operands (an input of 1 feature, say) that would
      // multiply the copy, so those stay with BLAS.
      const int64_t padded = (n_ + kPanelCols - 1) / kPanelCols * kPanelCols;
      if (packed_gemm_available() && 2 * padded <= 3 * n_) {
        pack_b(trans_b, k_, n_, b, ldb, pack);
        packed = true;
      }
    }
  }
};

// C[m, n] = op(A)·op(B) (+ C when accumulate).
template <typename scalar_t>
void gemm(bool trans_a, int64_t m, const scalar_t* a, int64_t lda, const GemmOperand<scalar_t>& b, bool accumulate,
          scalar_t* c, int64_t ldc) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (b.packed) return gemm_packed(trans_a, m, a, lda, b.pack, accumulate, c, ldc);
  }
  gemm_rowmajor<scalar_t>(trans_a, b.trans, m, b.n, b.k, scalar_t(1), a, lda, b.ptr, b.ld,
                          accumulate ? scalar_t(1) : scalar_t(0), c, ldc);
}

}  // namespace lstm_fused
