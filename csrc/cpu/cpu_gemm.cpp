#include "cpu/cpu_gemm.h"

#include <climits>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

// Weak: resolved against libtorch_cpu's exported BLAS when it has one, null otherwise (then at::addmm).
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc) __attribute__((weak));
// The C-convention entry (by value); the lower-case export is the Fortran one, which takes a pointer.
int MKL_Set_Num_Threads_Local(int nt) __attribute__((weak));
}

namespace lstm_fused {
namespace {

bool fits_blas_int(std::initializer_list<int64_t> v) {
  for (int64_t x : v)
    if (x > INT_MAX) return false;
  return true;
}

template <typename scalar_t>
void gemm_aten(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, scalar_t alpha, const scalar_t* a,
               int64_t lda, const scalar_t* b, int64_t ldb, scalar_t beta, scalar_t* c, int64_t ldc) {
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<scalar_t>::value);
  auto A = trans_a ? at::from_blob(const_cast<scalar_t*>(a), {k, m}, {lda, 1}, opts).t()
                   : at::from_blob(const_cast<scalar_t*>(a), {m, k}, {lda, 1}, opts);
  auto B = trans_b ? at::from_blob(const_cast<scalar_t*>(b), {n, k}, {ldb, 1}, opts).t()
                   : at::from_blob(const_cast<scalar_t*>(b), {k, n}, {ldb, 1}, opts);
  auto C = at::from_blob(c, {m, n}, {ldc, 1}, opts);
  C.addmm_(A, B, beta, alpha);
}

// Fortran BLAS is column-major: the row-major C = op(A)·op(B) is the column-major Cᵀ = op(B)ᵀ·op(A)ᵀ.
template <typename scalar_t, typename F>
void gemm_fortran(F fn, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, scalar_t alpha,
                  const scalar_t* a, int64_t lda, const scalar_t* b, int64_t ldb, scalar_t beta, scalar_t* c,
                  int64_t ldc) {
  const char ta = trans_b ? 'T' : 'N';
  const char tb = trans_a ? 'T' : 'N';
  const int mi = static_cast<int>(n), ni = static_cast<int>(m), ki = static_cast<int>(k);
  const int la = static_cast<int>(ldb), lb = static_cast<int>(lda), lc = static_cast<int>(ldc);
  fn(&ta, &tb, &mi, &ni, &ki, &alpha, b, &la, a, &lb, &beta, c, &lc);
}

// One block of C on the calling thread only.
template <typename scalar_t>
void gemm_block(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, scalar_t alpha, const scalar_t* a,
                int64_t lda, const scalar_t* b, int64_t ldb, scalar_t beta, scalar_t* c, int64_t ldc) {
  const bool small = fits_blas_int({m, n, k, lda, ldb, ldc});
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (small && sgemm_) return gemm_fortran(sgemm_, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  } else if constexpr (std::is_same_v<scalar_t, double>) {
    if (small && dgemm_) return gemm_fortran(dgemm_, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }
  gemm_aten(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

// Restores MKL's thread count when a block is done.
struct SingleThreadedBlas {
  int prev = 0;
  SingleThreadedBlas() { prev = MKL_Set_Num_Threads_Local ? MKL_Set_Num_Threads_Local(1) : 0; }
  ~SingleThreadedBlas() {
    if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(prev);
  }
};

// Below this many multiply-adds one call on one thread is fastest (a block split costs ~1-2 µs per call).
constexpr int64_t kSplitMacs = int64_t(1) << 18;
constexpr int64_t kMaxBlocks = 16;

}  // namespace

// Determinism: a multi-threaded BLAS may split the k-sum differently with the thread count. Here C is cut
// into blocks whose boundaries depend only on (m, n, k), each computed by a single-threaded BLAS call over
// the whole k, and threads only choose which blocks they run: results are bitwise identical across runs
// and thread counts (with the exported MKL, whose per-call thread count can be pinned; the at::addmm
// fallback used where it is missing makes no such promise).
template <typename scalar_t>
void gemm_rowmajor(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, scalar_t alpha, const scalar_t* a,
                   int64_t lda, const scalar_t* b, int64_t ldb, scalar_t beta, scalar_t* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {  // BLAS would still scale C by beta; do it here so beta == 0 clears garbage
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == scalar_t(0) ? scalar_t(0) : beta * c[i * ldc + j];
    return;
  }
  const int64_t macs = m * n * k;
  const bool split_rows = m >= n;
  const int64_t dim = split_rows ? m : n;
  int64_t blocks = macs < kSplitMacs ? 1 : std::min<int64_t>(kMaxBlocks, std::max<int64_t>(1, dim / 32));
  const int64_t step = (dim + blocks - 1) / blocks;
  blocks = (dim + step - 1) / step;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    SingleThreadedBlas guard;
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t s0 = blk * step, len = std::min(step, dim - s0);
      if (split_rows) {  // rows [s0, s0+len) of op(A) and C
        const scalar_t* a_blk = trans_a ? a + s0 : a + s0 * lda;
        gemm_block(trans_a, trans_b, len, n, k, alpha, a_blk, lda, b, ldb, beta, c + s0 * ldc, ldc);
      } else {  // columns [s0, s0+len) of op(B) and C
        const scalar_t* b_blk = trans_b ? b + s0 * ldb : b + s0;
        gemm_block(trans_a, trans_b, m, len, k, alpha, a, lda, b_blk, ldb, beta, c + s0, ldc);
      }
    }
  });
}

template void gemm_rowmajor<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t,
                                   const float*, int64_t, float, float*, int64_t);
template void gemm_rowmajor<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t,
                                    const double*, int64_t, double, double*, int64_t);

}  // namespace lstm_fused
