#include "cpu/packed_gemm.h"

#include <algorithm>

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define LF_HAVE_AVX512_KERNEL 1
#define LF_AVX512 __attribute__((target("avx512f,avx512vl,fma")))
#else
#define LF_HAVE_AVX512_KERNEL 0
#endif

namespace lstm_fused {

bool packed_gemm_available() {
#if LF_HAVE_AVX512_KERNEL
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");
  return ok;
#else
  return false;
#endif
}

#if LF_HAVE_AVX512_KERNEL
namespace {

// In-register transpose of a 16×16 float block (r[i] = row i in, column i out): 32-bit, then 64-bit
// interleaves, then two rounds of 128-bit lane shuffles.
LF_AVX512 inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
    r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
    r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
    r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xdd);
    t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xdd);
  }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
  }
}

// A full panel of a transposed operand: dst[kk][j] = w[j][kk] for 32 rows j of w (row stride ldw). Scalar, this
// strided gather was ~90% of packing a weight, and packing ~18% of a batch-1, H-512 inference call.
LF_AVX512 void pack_panel_transposed(const float* w, int64_t ldw, int64_t k, float* dst) {
  const int64_t k16 = k / 16 * 16;
  for (int64_t kk = 0; kk < k16; kk += 16)
    for (int64_t half = 0; half < kPanelCols; half += 16) {
      __m512 r[16];
      for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(w + (half + i) * ldw + kk);
      transpose16(r);
      for (int i = 0; i < 16; ++i) _mm512_storeu_ps(dst + (kk + i) * kPanelCols + half, r[i]);
    }
  for (int64_t kk = k16; kk < k; ++kk)
    for (int64_t j = 0; j < kPanelCols; ++j) dst[kk * kPanelCols + j] = w[j * ldw + kk];
}

}  // namespace
#endif

void pack_b(bool trans_b, int64_t k, int64_t n, const float* b, int64_t ldb, PackedMatrix& out) {
  out.k = k;
  out.n = n;
  out.data.reset(new float[out.panels() * k * kPanelCols]);
  at::parallel_for(0, out.panels(), 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      float* dst = out.data.get() + p * k * kPanelCols;
      const int64_t j0 = p * kPanelCols, jn = std::min(kPanelCols, n - j0);
#if LF_HAVE_AVX512_KERNEL
      if (trans_b && jn == kPanelCols && packed_gemm_available()) {
        pack_panel_transposed(b + j0 * ldb, ldb, k, dst);
        continue;
      }
#endif
      for (int64_t kk = 0; kk < k; ++kk) {
        for (int64_t j = 0; j < jn; ++j)
          dst[kk * kPanelCols + j] = trans_b ? b[(j0 + j) * ldb + kk] : b[kk * ldb + j0 + j];
        for (int64_t j = jn; j < kPanelCols; ++j) dst[kk * kPanelCols + j] = 0.0f;  // columns past n
      }
    }
  });
}

#if LF_HAVE_AVX512_KERNEL
namespace {

// k is cut into blocks so a panel block ([kKBlock][32] floats, 64 KB) stays in L2 while every row block
// of A passes over it; C accumulates block after block in a fixed order.
constexpr int64_t kKBlock = 512;
constexpr int64_t kRowBlock = 8;  // rows of C per micro-kernel call (16 accumulators)

// C[MR rows, 32 cols] (=|+=) A[MR, kb]·P[kb, 32]. With few rows, kU independent accumulator sets over
// interleaved k keep enough FMAs in flight to hide their latency; they are summed in a fixed order.
template <int MR, int kU>
LF_AVX512 void micro_kernel(int64_t kb, const float* a, int64_t a_rs, int64_t a_ks, const float* p, float* c,
                            int64_t ldc, bool accumulate, __mmask16 m0, __mmask16 m1) {
  __m512 acc[kU][MR][2];
  for (int u = 0; u < kU; ++u)
    for (int r = 0; r < MR; ++r) acc[u][r][0] = acc[u][r][1] = _mm512_setzero_ps();
  int64_t kk = 0;
  for (; kk + kU <= kb; kk += kU) {
    for (int u = 0; u < kU; ++u) {
      const __m512 b0 = _mm512_loadu_ps(p + (kk + u) * kPanelCols);
      const __m512 b1 = _mm512_loadu_ps(p + (kk + u) * kPanelCols + 16);
      for (int r = 0; r < MR; ++r) {
        const __m512 av = _mm512_set1_ps(a[r * a_rs + (kk + u) * a_ks]);
        acc[u][r][0] = _mm512_fmadd_ps(av, b0, acc[u][r][0]);
        acc[u][r][1] = _mm512_fmadd_ps(av, b1, acc[u][r][1]);
      }
    }
  }
  for (; kk < kb; ++kk) {
    const __m512 b0 = _mm512_loadu_ps(p + kk * kPanelCols);
    const __m512 b1 = _mm512_loadu_ps(p + kk * kPanelCols + 16);
    for (int r = 0; r < MR; ++r) {
      const __m512 av = _mm512_set1_ps(a[r * a_rs + kk * a_ks]);
      acc[0][r][0] = _mm512_fmadd_ps(av, b0, acc[0][r][0]);
      acc[0][r][1] = _mm512_fmadd_ps(av, b1, acc[0][r][1]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    __m512 s0 = acc[0][r][0], s1 = acc[0][r][1];
    for (int u = 1; u < kU; ++u) {
      s0 = _mm512_add_ps(s0, acc[u][r][0]);
      s1 = _mm512_add_ps(s1, acc[u][r][1]);
    }
    float* cr = c + r * ldc;
    if (accumulate) {
      s0 = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, cr), s0);
      s1 = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, cr + 16), s1);
    }
    _mm512_mask_storeu_ps(cr, m0, s0);
    _mm512_mask_storeu_ps(cr + 16, m1, s1);
  }
}

using MicroFn = void (*)(int64_t, const float*, int64_t, int64_t, const float*, float*, int64_t, bool, __mmask16,
                         __mmask16);

// Row counts 1..8; small ones interleave k over several accumulator sets.
const MicroFn kMicro[kRowBlock + 1] = {nullptr,
                                       micro_kernel<1, 4>,
                                       micro_kernel<2, 2>,
                                       micro_kernel<3, 2>,
                                       micro_kernel<4, 1>,
                                       micro_kernel<5, 1>,
                                       micro_kernel<6, 1>,
                                       micro_kernel<7, 1>,
                                       micro_kernel<8, 1>};

// One tile: rows [r0, r1) of C against one panel, over all of k.
LF_AVX512 void tile(bool trans_a, int64_t r0, int64_t r1, const float* a, int64_t lda, const PackedMatrix& b,
                    int64_t panel, bool accumulate, float* c, int64_t ldc) {
  const int64_t a_rs = trans_a ? 1 : lda, a_ks = trans_a ? lda : 1;
  const int64_t j0 = panel * kPanelCols, jn = std::min(kPanelCols, b.n - j0);
  const __mmask16 m0 = static_cast<__mmask16>(jn >= 16 ? 0xFFFF : (1u << jn) - 1);
  const __mmask16 m1 = static_cast<__mmask16>(jn <= 16 ? 0 : (jn >= 32 ? 0xFFFF : (1u << (jn - 16)) - 1));
  const float* pp = b.panel(panel);
  for (int64_t k0 = 0; k0 < b.k; k0 += kKBlock) {
    const int64_t kb = std::min(kKBlock, b.k - k0);
    const bool acc = accumulate || k0 > 0;
    for (int64_t r = r0; r < r1; r += kRowBlock) {
      const int64_t mr = std::min(kRowBlock, r1 - r);
      kMicro[mr](kb, a + r * a_rs + k0 * a_ks, a_rs, a_ks, pp + k0 * kPanelCols, c + r * ldc + j0, ldc, acc, m0, m1);
    }
  }
}

constexpr int64_t kRowsPerTask = 64;
constexpr int64_t kMacsPerThread = int64_t(1) << 16;  // below this, one thread does the whole product

}  // namespace

void gemm_packed(bool trans_a, int64_t m, const float* a, int64_t lda, const PackedMatrix& b, bool accumulate,
                 float* c, int64_t ldc) {
  if (m == 0 || b.n == 0) return;
  if (b.k == 0) {
    if (!accumulate)
      for (int64_t i = 0; i < m; ++i) std::fill(c + i * ldc, c + i * ldc + b.n, 0.0f);
    return;
  }
  // Row tasks of equal height (a multiple of the micro-kernel's 8 rows, at most 64): with 96 rows, two of 48
  // rather than 64 + 32, which left one of two threads idle a third of the time. Heights depend on m only.
  const int64_t row_tasks = (m + kRowsPerTask - 1) / kRowsPerTask;
  const int64_t rows_per_task = ((m + row_tasks - 1) / row_tasks + kRowBlock - 1) / kRowBlock * kRowBlock;
  const int64_t tasks = row_tasks * b.panels();
  const int64_t macs_per_task = std::min(m, rows_per_task) * kPanelCols * b.k;
  const int64_t grain = std::max<int64_t>(1, kMacsPerThread / std::max<int64_t>(1, macs_per_task));
  // A stored transposed ([k, m], as dGᵀ in a weight gradient) is read 8 floats per k step, each k step in
  // another row of memory; copied once per row task into a k-major block of its own rows, the same reads are
  // sequential. Worth it when the block meets several panels; skipped when the copy would pass 16 MB per thread
  // (k beyond 64k rows of a sequence), which then reads A in place as before.
  const bool copy_a = trans_a && b.panels() > 1 && b.k * rows_per_task <= (int64_t(4) << 20);
  at::parallel_for(0, tasks, grain, [&](int64_t t0, int64_t t1) {
    std::vector<float> a_rows;  // copy_a: [k, rows] this row task's columns of A
    int64_t copied_rt = -1;
    for (int64_t t = t0; t < t1; ++t) {
      // Row-block major: a block of A stays in cache while it meets every panel (B is the smaller operand
      // and stays in L2), instead of A streaming from memory once per panel.
      const int64_t rt = t / b.panels(), panel = t % b.panels();
      const int64_t r0 = rt * rows_per_task, r1 = std::min(m, r0 + rows_per_task), rows = r1 - r0;
      if (rows <= 0) continue;
      if (!copy_a) {
        tile(trans_a, r0, r1, a, lda, b, panel, accumulate, c, ldc);
        continue;
      }
      if (rt != copied_rt) {
        a_rows.resize(b.k * rows);
        for (int64_t kk = 0; kk < b.k; ++kk) std::copy(a + kk * lda + r0, a + kk * lda + r1, a_rows.data() + kk * rows);
        copied_rt = rt;
      }
      // Rows counted from r0 in 8-row blocks, as before (r0 is a multiple of 8): the same sums.
      tile(true, 0, rows, a_rows.data(), rows, b, panel, accumulate, c + r0 * ldc, ldc);
    }
  });
}
#else
void gemm_packed(bool, int64_t, const float*, int64_t, const PackedMatrix&, bool, float*, int64_t) {
  TORCH_INTERNAL_ASSERT(false, "lstm_fused: packed GEMM called on a CPU without the AVX-512 kernel");
}
#endif

}  // namespace lstm_fused
