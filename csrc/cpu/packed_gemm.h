// A float GEMM with the right-hand matrix packed once and reused: the per-step recurrent products
// (h·W_hhᵀ, dG·W_hh, ...) multiply the same weights T times, so they are packed into 32-column panels
// at the start of a layer and every step runs an AVX-512 register-blocked kernel over them. MKL's sgemm
// on this class of AMD cores runs a generic AVX2 path at roughly half of what the cores reach; this kernel
// is the lever for the CPU speed targets.
//
// Deterministic by construction: every element of C is one fixed-order sum over k (in fixed k-blocks),
// computed by exactly one kernel call; threads only decide which (panel, row block) tiles they take.
#pragma once

#include <cstdint>
#include <memory>

namespace lstm_fused {

constexpr int64_t kPanelCols = 32;  // columns per packed panel: two 16-float AVX-512 vectors

// op(B) [k, n] packed as ceil(n/32) panels of [k][32] floats, zero-padded past n.
struct PackedMatrix {
  int64_t k = 0, n = 0;
  // Uninitialised on allocation (pack_b writes every element, padding included): zero-filling megabytes
  // first was a measurable part of a small-batch call. Not aligned: the kernel uses unaligned loads.
  std::unique_ptr<float[]> data;
  int64_t panels() const { return (n + kPanelCols - 1) / kPanelCols; }
  const float* panel(int64_t p) const { return data.get() + p * k * kPanelCols; }
};

// True when this CPU runs the AVX-512 kernel (checked once). Callers use BLAS otherwise.
bool packed_gemm_available();

// Packs op(B): B is [k, n] with row stride ldb, or with trans_b it is stored [n, k] (a weight [out, in]
// used as Wᵀ).
void pack_b(bool trans_b, int64_t k, int64_t n, const float* b, int64_t ldb, PackedMatrix& out);

// C[m, n] = op(A)[m, k]·op(B) (+ C when accumulate). A is [m, k] with row stride lda, or with trans_a it is
// stored [k, m]. Parallel over tiles with at::parallel_for when large enough.
void gemm_packed(bool trans_a, int64_t m, const float* a, int64_t lda, const PackedMatrix& b, bool accumulate,
                 float* c, int64_t ldc);

}  // namespace lstm_fused
