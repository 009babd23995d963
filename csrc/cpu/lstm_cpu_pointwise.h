// Pointwise passes of one time step on the CPU over the flattened element range [begin, end) of
// rows × H. Torch-free: the binding splits the range across threads with at::parallel_for.
#pragma once

#include <algorithm>
#include <type_traits>

#include "../cell_math.h"
#include "../lstm_params.h"

namespace lstm_fused {

#if defined(__GNUC__)
#define LF_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define LF_ALWAYS_INLINE inline
#endif

// Row b's run of hidden units inside the flattened range [begin, end) of rows × H.
LF_ALWAYS_INLINE void row_run(int64_t b, int64_t begin, int64_t end, int64_t H, int64_t& j0, int64_t& j1) {
  j0 = std::max<int64_t>(begin - b * H, 0);
  j1 = std::min<int64_t>(end - b * H, H);
}

// kProj: the layer has a projection, so h goes to the projection input only (the state is written after
// the projection GEMM). A template flag keeps the inner loops branch-free, hence vectorisable.
template <typename scalar_t, bool kProj>
LF_ALWAYS_INLINE void lstm_fwd_rows(const LstmFwdStep<scalar_t>& p, int64_t begin, int64_t end) {
  const int64_t H = p.H;
  const scalar_t* __restrict bias = p.bias;
  for (int64_t b = begin / H; b * H < end; ++b) {
    int64_t j0, j1;
    row_run(b, begin, end, H, j0, j1);
    scalar_t* __restrict g = p.gates + b * p.ld_ws;
    scalar_t* __restrict cell = p.cells + b * p.ld_ws;
    scalar_t* __restrict cs = p.c_state + b * H;
    scalar_t* __restrict h = p.h_out + b * p.ld_h;
    scalar_t* __restrict hs = kProj ? nullptr : p.h_state + b * H;
#pragma GCC ivdep
    for (int64_t j = j0; j < j1; ++j) {
      LstmGates<scalar_t> pre{g[j] + bias[j], g[H + j] + bias[H + j], g[2 * H + j] + bias[2 * H + j],
                              g[3 * H + j] + bias[3 * H + j]};
      LstmGates<scalar_t> act;
      scalar_t c, hv;
      lstm_cell_forward(pre, cs[j], act, c, hv);
      g[j] = act.i;
      g[H + j] = act.f;
      g[2 * H + j] = act.g;
      g[3 * H + j] = act.o;
      cell[j] = c;
      cs[j] = c;
      h[j] = hv;
      if constexpr (!kProj) hs[j] = hv;
    }
  }
}

template <typename scalar_t>
LF_ALWAYS_INLINE void lstm_fwd_pointwise(const LstmFwdStep<scalar_t>& p, int64_t begin, int64_t end) {
  if (p.h_state)
    lstm_fwd_rows<scalar_t, false>(p, begin, end);
  else
    lstm_fwd_rows<scalar_t, true>(p, begin, end);
}

// Without a projection dh is the sum of two terms (recurrent + output gradient); with one it is a single
// term (already mapped back through W_hr) and o·tanh(c) is stored for W_hr's gradient.
template <typename scalar_t, bool kProj>
LF_ALWAYS_INLINE void lstm_bwd_rows(const LstmBwdStep<scalar_t>& p, int64_t begin, int64_t end) {
  const int64_t H = p.H;
  for (int64_t b = begin / H; b * H < end; ++b) {
    int64_t j0, j1;
    row_run(b, begin, end, H, j0, j1);
    const scalar_t* __restrict g = p.gates + b * p.ld_ws;
    const scalar_t* __restrict cell = p.cells + b * p.ld_ws;
    const scalar_t* __restrict cp = b < p.n_prev ? p.c_prev + b * p.ld_ws : p.c_init + b * H;
    const scalar_t* __restrict dh = p.dh + b * p.ld_dh;
    const scalar_t* __restrict dh2 = kProj ? nullptr : p.dh_extra + b * p.ld_dh_extra;
    scalar_t* __restrict dcs = p.dc_state + b * H;
    scalar_t* __restrict dg = p.dgates + b * 4 * H;
    scalar_t* __restrict r = kProj ? p.r_out + b * H : nullptr;
#pragma GCC ivdep
    for (int64_t j = j0; j < j1; ++j) {
      const LstmGates<scalar_t> act{g[j], g[H + j], g[2 * H + j], g[3 * H + j]};
      scalar_t dhv;
      if constexpr (kProj)
        dhv = dh[j];
      else
        dhv = dh[j] + dh2[j];
      LstmGates<scalar_t> dpre;
      scalar_t dc_prev;
      lstm_cell_backward(act, cell[j], cp[j], dhv, dcs[j], dpre, dc_prev);
      dg[j] = dpre.i;
      dg[H + j] = dpre.f;
      dg[2 * H + j] = dpre.g;
      dg[3 * H + j] = dpre.o;
      dcs[j] = dc_prev;
      if constexpr (kProj) r[j] = lstm_hidden_from_saved(act, cell[j]);
    }
  }
}

template <typename scalar_t>
LF_ALWAYS_INLINE void lstm_bwd_pointwise(const LstmBwdStep<scalar_t>& p, int64_t begin, int64_t end) {
  if (p.r_out)
    lstm_bwd_rows<scalar_t, true>(p, begin, end);
  else
    lstm_bwd_rows<scalar_t, false>(p, begin, end);
}

// Entry points compiled for several x86-64 levels (AVX-512, AVX2+FMA, baseline) and picked at load time,
// so the pointwise loops vectorise on the machine at hand without requiring AVX-512 from every user.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LF_CPU_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LF_CPU_MULTIVERSION
#endif

void lstm_fwd_pointwise_f32(const LstmFwdStep<float>& p, int64_t begin, int64_t end);
void lstm_bwd_pointwise_f32(const LstmBwdStep<float>& p, int64_t begin, int64_t end);

template <typename scalar_t>
void lstm_fwd_pointwise_dispatch(const LstmFwdStep<scalar_t>& p, int64_t begin, int64_t end) {
  if constexpr (std::is_same_v<scalar_t, float>)
    lstm_fwd_pointwise_f32(p, begin, end);
  else
    lstm_fwd_pointwise(p, begin, end);
}

template <typename scalar_t>
void lstm_bwd_pointwise_dispatch(const LstmBwdStep<scalar_t>& p, int64_t begin, int64_t end) {
  if constexpr (std::is_same_v<scalar_t, float>)
    lstm_bwd_pointwise_f32(p, begin, end);
  else
    lstm_bwd_pointwise(p, begin, end);
}

}  // namespace lstm_fused
