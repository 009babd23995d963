// Tensor-core variant of the persistent forward step for float16 / bfloat16 (lstm_persistent.h has the plan,
// the shared memory and the float path). Per step a block computes C = W_slice · h_{t-1}ᵀ with warp-level
// 32×8×16 MMAs: M = the 4·kj gate rows of its units (W_hh resident in shared memory, one 32-row tile per 8
// units), N = batch rows padded to 8 (the MMA's narrow side, so a batch of 1 wastes 7 of 8 columns, not 15
// of 16), K = P padded to 16 with zero weights; float accumulation. With few output tiles the warps split
// K and their partial tiles are summed in a fixed order, so results do not depend on timing.
//
// The warp-level work is one function of (plan, unit index): on the GPU it runs nvcuda::wmma on shared memory,
// on the CPU (emulation) the same tile arithmetic in loops, so tiling, padding and the reduction are tested
// without a GPU; only the fragment-level instructions themselves are not.
#pragma once

#if defined(__CUDACC__)
#include <mma.h>
#endif

#include "lstm_persistent.h"

namespace lstm_fused {
namespace persistent {

constexpr int kWarps = kThreads / 32;
constexpr int kTileM = 32, kTileN = 8, kTileK = 16;

// The tensor-core plan of a forward launch, or !ok when its slice and the whole staged h_{t-1} (T) do not fit.
inline Plan make_mma_plan(int64_t H, int64_t K, int64_t B, int64_t D, const DeviceLimits& dev) {
  Plan p;
  const int64_t per_dir = dev.sms / D;
  if (B < 1 || H < 1 || K < 1 || per_dir < 1) {
    p.why = per_dir < 1 ? "fewer multiprocessors than directions" : "an empty batch or layer";
    return p;
  }
  p.kj = round_up((H + per_dir - 1) / per_dir, kTileM / 4);  // 4 gate rows per unit fill 32-row tiles
  p.nb = (H + p.kj - 1) / p.kj;
  p.mma = true;
  p.mt = 4 * p.kj / kTileM;
  p.K = K;
  p.kp = round_up(K, kTileK);
  p.ldw = p.kp + 8;  // a multiple of 8 elements (the MMA loads' stride unit), off the 32-bank period
  p.kc = p.kp;
  p.ldl = p.kp + 8;
  p.rows_pad = round_up(B, kTileN);
  const size_t elem = 2;
  p.w_bytes = align_region(size_t(4 * p.kj * p.ldw) * elem);
  p.left_bytes = align_region(size_t(p.rows_pad * p.ldl) * elem);
  const int64_t tiles = p.mt * (p.rows_pad / kTileN);
  p.red_bytes = align_region(size_t(tiles > kWarps ? tiles : kWarps) * kTileM * kTileN * sizeof(float));
  p.smem = p.w_bytes + p.left_bytes + p.red_bytes;
  p.ok = int64_t(p.smem) + kStaticSmem <= dev.smem;
  if (!p.ok) p.why = "shared memory";
  return p;
}

// Whether a recurrence in storage type T has the tensor-core path: the forward in float16 / bfloat16.
template <typename R, typename T>
constexpr bool kHasMmaPath = sizeof(T) == 2 && R::NG == 4;

// The forward plan: tensor cores where the device has them (sm_80+) and their layout fits, else the float path.
template <typename T, typename A>
inline Plan forward_plan(int64_t H, int64_t P, int64_t B, int64_t D, const DeviceLimits& dev) {
  if (sizeof(T) == 2 && dev.tensor_cores) {
    const Plan p = make_mma_plan(H, P, B, D, dev);
    if (p.ok) return p;
  }
  return make_plan(4, H, P, B, D, sizeof(T), sizeof(A), dev);
}

// A step's output tiles and how many warps share each one's k range (a power of two; units = tiles · splitk
// ≤ kWarps unless there are more tiles than warps).
struct MmaTiling {
  int64_t tiles = 0, splitk = 1, units = 0;
};
LF_HOST_DEVICE MmaTiling mma_tiling(const Plan& pl, int64_t rows) {
  MmaTiling m;
  m.tiles = pl.mt * ((rows + kTileN - 1) / kTileN);
  m.splitk = kWarps;
  while (m.splitk > 1 && (m.tiles * m.splitk > kWarps || m.splitk > pl.kp / kTileK)) m.splitk /= 2;
  m.units = m.tiles * m.splitk;
  return m;
}

template <typename T>
struct MmaSmem {
  T* w;        // [4·kj, ldw] resident slice (as in Smem)
  T* left;     // [rows_pad, ldl] h_{t-1} in its storage type, all of K
  float* red;  // [units, 32, 8] each unit's partial C tile
};
template <typename T>
LF_HOST_DEVICE MmaSmem<T> carve_mma(const Plan& pl, unsigned char* base) {
  return {reinterpret_cast<T*>(base), reinterpret_cast<T*>(base + pl.w_bytes),
          reinterpret_cast<float*>(base + pl.w_bytes + pl.left_bytes)};
}

// Phase 1: h_{t-1} rows [0, round_up(rows, 8)) × [0, kp), zero outside its rows and K.
template <typename R, typename T>
LF_HOST_DEVICE void mma_stage_left(const Plan& pl, const typename R::Step& p, int tid, const MmaSmem<T>& s) {
  const int rows = static_cast<int>((p.rows + kTileN - 1) / kTileN * kTileN), kp = static_cast<int>(pl.kp);
  const int64_t n = R::left_rows(p), K = R::K(p);
  for (int e = tid; e < rows * kp; e += kThreads) {
    const int b = e / kp, k = e % kp;
    s.left[b * pl.ldl + k] = (b < n && k < K) ? R::left_raw(p, b, k) : T(0.0f);
  }
}

#if defined(__CUDACC__)
template <typename T>
struct WmmaType;
template <>
struct WmmaType<c10::Half> {
  using type = __half;
};
template <>
struct WmmaType<c10::BFloat16> {
  using type = __nv_bfloat16;
};
#endif

// Phase 2, per warp: unit u's partial tile C[32, 8] = Σ over its k steps of A[32, 16] · B[16, 8], where A is
// rows m0.. of the slice (row-major) and B(k, n) = h[n0 + n, k] (column-major with stride ldl).
template <typename T>
LF_HOST_DEVICE void mma_unit(const Plan& pl, const MmaTiling& mt, int64_t u, const MmaSmem<T>& s) {
  const int64_t tile = u / mt.splitk, kpart = u % mt.splitk;
  const int64_t m0 = (tile % pl.mt) * kTileM, n0 = (tile / pl.mt) * kTileN;
  const T* a = s.w + m0 * pl.ldw;
  const T* b = s.left + n0 * pl.ldl;
  float* c = s.red + u * kTileM * kTileN;
  const int64_t ksteps = pl.kp / kTileK;
#if defined(__CUDA_ARCH__)
#if __CUDA_ARCH__ >= 800
  namespace wmma = nvcuda::wmma;
  using W = typename WmmaType<T>::type;
  wmma::fragment<wmma::accumulator, kTileM, kTileN, kTileK, float> acc;
  wmma::fill_fragment(acc, 0.0f);
  for (int64_t ks = kpart; ks < ksteps; ks += mt.splitk) {
    wmma::fragment<wmma::matrix_a, kTileM, kTileN, kTileK, W, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, kTileM, kTileN, kTileK, W, wmma::col_major> fb;
    wmma::load_matrix_sync(fa, reinterpret_cast<const W*>(a + ks * kTileK), static_cast<unsigned>(pl.ldw));
    wmma::load_matrix_sync(fb, reinterpret_cast<const W*>(b + ks * kTileK), static_cast<unsigned>(pl.ldl));
    wmma::mma_sync(acc, fa, fb, acc);
  }
  wmma::store_matrix_sync(c, acc, kTileN, wmma::mem_row_major);
#else
  __trap();  // the host never plans the tensor-core path below sm_80 (see GpuRunner)
#endif
#else
  float acc[kTileM][kTileN] = {};
  for (int64_t ks = kpart; ks < ksteps; ks += mt.splitk)
    for (int m = 0; m < kTileM; ++m)
      for (int n = 0; n < kTileN; ++n)
        for (int kk = 0; kk < kTileK; ++kk)
          acc[m][n] += static_cast<float>(a[m * pl.ldw + ks * kTileK + kk]) *
                       static_cast<float>(b[n * pl.ldl + ks * kTileK + kk]);
  for (int m = 0; m < kTileM; ++m)
    for (int n = 0; n < kTileN; ++n) c[m * kTileN + n] = acc[m][n];
#endif
}

// Phase 3: one thread per (unit, row) sums its 4 gate rows' partial tiles in k-part order and runs the cell.
template <typename R, typename T>
LF_HOST_DEVICE void mma_reduce_epilogue(const Plan& pl, const typename R::Step& p, const MmaTiling& mt, int64_t bx,
                                        int tid, const MmaSmem<T>& s) {
  const int64_t kj = pl.kj;
  for (int64_t e = tid; e < kj * p.rows; e += kThreads) {
    const int64_t jl = e % kj, b = e / kj, j = bx * kj + jl;
    if (j >= R::units(p)) continue;
    float sum[R::NG];
    for (int g = 0; g < R::NG; ++g) {
      const int64_t m = g * kj + jl, tile = (b / kTileN) * pl.mt + m / kTileM;
      const int64_t at = (m % kTileM) * kTileN + b % kTileN;
      float acc = 0.0f;
      for (int64_t kp = 0; kp < mt.splitk; ++kp) acc += s.red[(tile * mt.splitk + kp) * kTileM * kTileN + at];
      sum[g] = acc;
    }
    R::epilogue(p, b, j, sum);
  }
}

}  // namespace persistent
}  // namespace lstm_fused
