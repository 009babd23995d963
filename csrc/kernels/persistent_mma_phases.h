// Tensor-core variant of the persistent steps for float16 / bfloat16 (kernels/persistent_phases.h has the plan, the
// shared memory and the float path). Per step a block multiplies its resident slice by the staged left
// operand with warp-level MMAs (K padded to 16 with zero weights, float accumulation):
//   forward:  C[4·kj gate rows, rows] = W_slice · h_{t-1}ᵀ in 32×8×16 tiles: 4 gate rows × 8 units fill M,
//             the batch pads only to 8 (a batch of 1 wastes 7 of 8 columns, not 15 of 16);
//   backward: C[kj units, rows] = W_hhᵀ_slice · dG_laterᵀ in 8×32×16 tiles: 8 units fill M; bfloat16 only
//             (dG, float in memory, is rounded to bfloat16 for the MMA; float16 keeps the float path).
// With few output tiles the warps split K and their partial tiles are summed in a fixed order, so results do
// not depend on timing.
//
// The warp-level work is one function of (plan, unit index): on the GPU it runs nvcuda::wmma on shared memory,
// on the CPU (emulation) the same tile arithmetic in loops, so tiling, padding and the reduction are tested
// without a GPU; only the fragment-level instructions themselves are not.
#pragma once

#if defined(__CUDACC__)
#include <mma.h>
#endif

#include <c10/util/Half.h>  // header-only: the storage type's name for kNarrowRange

#include "kernels/block_exec.h"
#include "kernels/persistent_phases.h"

namespace lstm_fused {
namespace persistent {

constexpr int kWarps = kThreads / 32;
constexpr int kTileK = 16;

// MMA tile of a recurrence with NG slice rows per unit: M along the slice rows, N along the batch rows.
template <int NG>
struct MmaShape;
template <>
struct MmaShape<4> {
  static constexpr int M = 32, N = 8;
};
template <>
struct MmaShape<1> {
  static constexpr int M = 8, N = 32;
};

// Row stride (elements) of a tensor-core operand in shared memory holding k columns (a multiple of 16): the PTX ISA
// wants every fragment row to start on the fragment's size (32 bytes for 16×16 half tiles), so the stride is a
// multiple of 16 elements; 16 or 32 past k keeps consecutive rows off one bank period (128 bytes), which
// would serialise a warp's row loads.
inline int64_t mma_stride(int64_t k) {
  const int64_t ld = k + kTileK;
  return ld % 64 == 0 ? ld + kTileK : ld;
}

// The tensor-core plan of a launch (ng = NG: 4 forward, 1 backward), or !ok when its slice and a 16-wide k
// chunk of the staged left operand (in the storage type) do not fit.
inline Plan make_mma_plan(int ng, int64_t H, int64_t K, int64_t B, int64_t D, const DeviceLimits& dev) {
  const int tile_m = ng == 4 ? MmaShape<4>::M : MmaShape<1>::M, tile_n = ng == 4 ? MmaShape<4>::N : MmaShape<1>::N;
  Plan p;
  const int64_t per_dir = dev.sms / D;
  if (B < 1 || H < 1 || K < 1 || per_dir < 1) {
    p.why = per_dir < 1 ? "fewer multiprocessors than directions" : "an empty batch or layer";
    return p;
  }
  p.kj = round_up((H + per_dir - 1) / per_dir, tile_m / ng);  // whole M tiles of slice rows
  p.nb = (H + p.kj - 1) / p.kj;
  p.mma = true;
  p.mt = ng * p.kj / tile_m;
  p.K = K;
  p.kp = round_up(K, kTileK);
  p.ldw = mma_stride(p.kp);
  p.rows_pad = round_up(B, tile_n);
  const size_t elem = 2;
  p.w_bytes = align_region(size_t(ng * p.kj * p.ldw) * elem);
  const int64_t tiles = p.mt * (p.rows_pad / tile_n);
  p.red_bytes = align_region(size_t(tiles > kWarps ? tiles : kWarps) * tile_m * tile_n * sizeof(float));
  // The widest k chunk (a multiple of 16, at most kp) whose staged rows fit beside the slice and partials.
  const int64_t budget = dev.smem - dev.static_smem - int64_t(p.w_bytes + p.red_bytes) - 128;
  const int64_t fit = budget > 0 ? (budget / (p.rows_pad * int64_t(elem)) - 2 * kTileK) / kTileK * kTileK : 0;
  p.kc = fit < p.kp ? fit : p.kp;
  if (p.kc < kTileK) {
    p.why = "the recurrent weights and one staged k chunk do not fit in shared memory";
    return p;
  }
  p.ldl = mma_stride(p.kc);
  p.left_bytes = align_region(size_t(p.rows_pad * p.ldl) * elem);
  p.smem = p.w_bytes + p.left_bytes + p.red_bytes;
  p.ok = int64_t(p.smem) + dev.static_smem <= dev.smem;
  if (!p.ok) p.why = "shared memory";
  return p;
}

// Storage types whose range is too narrow for gradients (see choose_plan).
template <typename T>
constexpr bool kNarrowRange = false;
template <>
constexpr bool kNarrowRange<c10::Half> = true;

// Whether a recurrence in storage type T has the tensor-core path: float16 / bfloat16.
template <typename R, typename T>
constexpr bool kHasMmaPath = sizeof(T) == 2;

// A launch's plan: tensor cores for half types where the device has them (sm_80+) and their layout fits, else
// the float path. ng: 4 forward (K = P), 1 backward (K = G).
template <typename T, typename A>
inline Plan choose_plan(int ng, int64_t H, int64_t K, int64_t B, int64_t D, const DeviceLimits& dev) {
  // float16's range (±65504, subnormal below 6e-5) cannot hold dG safely (loss-scaled gradients overflow, small
  // ones flush), so its backward stays on the float path; bfloat16 has float's range.
  if (sizeof(T) == 2 && dev.tensor_cores && !(ng == 1 && kNarrowRange<T>)) {
    const Plan p = make_mma_plan(ng, H, K, B, D, dev);
    if (p.ok) return p;
  }
  return make_plan(ng, H, K, B, D, sizeof(T), sizeof(A), dev);
}

// A step's output tiles and how many warps share each one's k range (a power of two; units = tiles · splitk
// ≤ kWarps unless there are more tiles than warps).
struct MmaTiling {
  int64_t tiles = 0, splitk = 1, units = 0;
};
template <int NG>
LF_HOST_DEVICE MmaTiling mma_tiling(const Plan& pl, int64_t rows) {
  constexpr int N = MmaShape<NG>::N;
  MmaTiling m;
  m.tiles = pl.mt * ((rows + N - 1) / N);
  m.splitk = kWarps;
  while (m.splitk > 1 && (m.tiles * m.splitk > kWarps || m.splitk > pl.kp / kTileK)) m.splitk /= 2;
  m.units = m.tiles * m.splitk;
  return m;
}

template <typename T>
struct MmaSmem {
  T* w;        // [NG·kj, ldw] resident slice (as in Smem)
  T* left;     // [rows_pad, ldl] h_{t-1} or dG_later in the storage type, all of K
  float* red;  // [units, M, N] each unit's partial C tile
};
template <typename T>
LF_HOST_DEVICE MmaSmem<T> carve_mma(const Plan& pl, unsigned char* base) {
  return {reinterpret_cast<T*>(base), reinterpret_cast<T*>(base + pl.w_bytes),
          reinterpret_cast<float*>(base + pl.w_bytes + pl.left_bytes)};
}

// Phase 1: the left operand's rows [0, round_up(rows, N)) × [k0, k0 + kc), zero outside its rows and K.
template <typename R, typename T>
LF_HOST_DEVICE void mma_stage_left(const Plan& pl, const typename R::Step& p, int64_t k0, int tid,
                                   const MmaSmem<T>& s) {
  constexpr int N = MmaShape<R::NG>::N;
  const int rows = static_cast<int>((p.rows + N - 1) / N * N), kc = static_cast<int>(pl.kc);
  const int64_t n = R::left_rows(p), K = R::K(p);
  for (int e = tid; e < rows * kc; e += kThreads) {
    const int b = e / kc, kk = e % kc;
    const int64_t k = k0 + kk;
    s.left[b * pl.ldl + kk] = (b < n && k < K) ? R::left_raw(p, b, k) : T(0.0f);
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

// A warp's accumulator tile C[M, N]: a tensor-core fragment on the GPU, the plain tile on the CPU.
// Tensor cores exist in code compiled for sm_80+; older architectures' code keeps the plain tile and never runs
// the tensor-core path (GpuRunner plans it only for kernels compiled for sm_80+).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define LF_WMMA 1
#else
#define LF_WMMA 0
#endif

template <int NG>
struct MmaAcc {
  static constexpr int M = MmaShape<NG>::M, N = MmaShape<NG>::N;
#if LF_WMMA
  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, M, N, kTileK, float> f;
#else
  float f[M][N];
#endif
};

template <int NG>
LF_HOST_DEVICE void mma_zero(MmaAcc<NG>& acc) {
#if LF_WMMA
  nvcuda::wmma::fill_fragment(acc.f, 0.0f);
#else
  for (auto& row : acc.f)
    for (float& v : row) v = 0.0f;
#endif
}

// Phase 2, per warp: adds to unit u's tile C[M, N] its share of the k steps of the staged chunk
// [k0, k0 + kc): A[M, 16] is slice rows m0.. (row-major), B(k, n) = left[n0 + n, k - k0] (column-major, ldl).
template <int NG, typename T>
LF_HOST_DEVICE void mma_accumulate(const Plan& pl, const MmaTiling& mt, int64_t u, int64_t k0, const MmaSmem<T>& s,
                                   MmaAcc<NG>& acc) {
  constexpr int M = MmaShape<NG>::M, N = MmaShape<NG>::N;
  const int64_t tile = u / mt.splitk, kpart = u % mt.splitk;
  const int64_t m0 = (tile % pl.mt) * M, n0 = (tile / pl.mt) * N;
  const T* a = s.w + m0 * pl.ldw;
  const T* b = s.left + n0 * pl.ldl;
  const int64_t ks_end = (k0 + pl.kc < pl.kp ? k0 + pl.kc : pl.kp) / kTileK;
  // The chunk's k steps are dealt to the parts round-robin; every step lands in exactly one part.
  int64_t ks = k0 / kTileK + kpart;
#if defined(__CUDA_ARCH__)
#if LF_WMMA
  namespace wmma = nvcuda::wmma;
  using W = typename WmmaType<T>::type;
  for (; ks < ks_end; ks += mt.splitk) {
    wmma::fragment<wmma::matrix_a, M, N, kTileK, W, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, M, N, kTileK, W, wmma::col_major> fb;
    wmma::load_matrix_sync(fa, reinterpret_cast<const W*>(a + ks * kTileK), static_cast<unsigned>(pl.ldw));
    wmma::load_matrix_sync(fb, reinterpret_cast<const W*>(b + (ks * kTileK - k0)), static_cast<unsigned>(pl.ldl));
    wmma::mma_sync(acc.f, fa, fb, acc.f);
  }
#else
  (void)a, (void)b, (void)ks, (void)ks_end;
  __trap();  // never planned: GpuRunner enables tensor cores only for kernels compiled for sm_80+
#endif
#else
  hardware_rule(pl.ldw % kTileK == 0 && pl.ldl % kTileK == 0, "tensor-core operand rows must start on 32 bytes: "
                "ldw and ldl must be multiples of 16 elements");
  for (int64_t k = ks; k < ks_end; k += mt.splitk)
    hardware_rule(reinterpret_cast<uintptr_t>(a + k * kTileK) % 32 == 0 &&
                      reinterpret_cast<uintptr_t>(b + (k * kTileK - k0)) % 32 == 0,
                  "a tensor-core fragment load is not 32-byte aligned");
  for (; ks < ks_end; ks += mt.splitk)
    for (int m = 0; m < M; ++m)
      for (int n = 0; n < N; ++n)
        for (int kk = 0; kk < kTileK; ++kk)
          acc.f[m][n] += static_cast<float>(a[m * pl.ldw + ks * kTileK + kk]) *
                         static_cast<float>(b[n * pl.ldl + ks * kTileK - k0 + kk]);
#endif
}

// Phase 3, per warp: park unit u's tile for the reduction.
template <int NG, typename T>
LF_HOST_DEVICE void mma_store(int64_t u, const MmaSmem<T>& s, const MmaAcc<NG>& acc) {
  constexpr int M = MmaShape<NG>::M, N = MmaShape<NG>::N;
  float* c = s.red + u * M * N;
#if LF_WMMA
  nvcuda::wmma::store_matrix_sync(c, acc.f, N, nvcuda::wmma::mem_row_major);
#else
  hardware_rule(reinterpret_cast<uintptr_t>(c) % 32 == 0, "a tensor-core accumulator store is not 32-byte aligned");
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) c[m * N + n] = acc.f[m][n];
#endif
}

// Phase 4: one thread per (unit, row) sums its NG slice rows' partial tiles in k-part order and runs the cell.
template <typename R, typename T>
LF_HOST_DEVICE void mma_reduce_epilogue(const Plan& pl, const typename R::Step& p, const MmaTiling& mt, int64_t bx,
                                        int tid, const MmaSmem<T>& s) {
  constexpr int M = MmaShape<R::NG>::M, N = MmaShape<R::NG>::N;
  const int64_t kj = pl.kj;
  for (int64_t e = tid; e < kj * p.rows; e += kThreads) {
    const int64_t jl = e % kj, b = e / kj, j = bx * kj + jl;
    if (j >= R::units(p)) continue;
    float sum[R::NG];
    for (int g = 0; g < R::NG; ++g) {
      const int64_t m = g * kj + jl, tile = (b / N) * pl.mt + m / M;
      const int64_t at = (m % M) * N + b % N;
      float acc = 0.0f;
      for (int64_t kp = 0; kp < mt.splitk; ++kp) acc += s.red[(tile * mt.splitk + kp) * M * N + at];
      sum[g] = acc;
    }
    R::epilogue(p, b, j, sum);
  }
}

}  // namespace persistent
}  // namespace lstm_fused
