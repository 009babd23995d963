// Pointwise passes of one GRU time step on the CPU over the flattened element range [begin, end) of
// rows × H (cell math in cell_math.h). Torch-free; the binding splits the range with at::parallel_for.
#pragma once

#include "cpu/lstm_cpu_pointwise.h"

namespace lstm_fused {

// kZoneout: h keeps part of its previous value (p.zo_h); a separate instantiation, so layers without zoneout run
// the code they ran before it existed.
template <typename scalar_t, bool kZoneout = false>
LF_ALWAYS_INLINE void gru_fwd_pointwise(const GruFwdStep<scalar_t>& p, int64_t begin, int64_t end) {
  const int64_t H = p.H;
  const scalar_t* __restrict bh = p.b_hh;
  for (int64_t b = begin / H; b * H < end; ++b) {
    int64_t j0, j1;
    row_run(b, begin, end, H, j0, j1);
    const scalar_t* __restrict xw = p.xw + b * 3 * H;
    const scalar_t* __restrict hh = p.hh + b * 3 * H;
    scalar_t* __restrict w = p.ws + b * p.ld_ws;
    scalar_t* __restrict hs = p.h_state + b * H;
    scalar_t* __restrict out = p.h_out + b * p.ld_h;
#pragma GCC ivdep
    for (int64_t j = j0; j < j1; ++j) {
      const GruGates<scalar_t> x{xw[j], xw[H + j], xw[2 * H + j]};
      const GruGates<scalar_t> h{hh[j] + bh[j], hh[H + j] + bh[H + j], hh[2 * H + j] + bh[2 * H + j]};
      GruGates<scalar_t> act;
      scalar_t hv;
      gru_cell_forward(x, h, hs[j], act, hv);
      if constexpr (kZoneout) hv = zoneout_forward(p.zo_h.at(b, j), hs[j], hv);
      w[j] = act.r;
      w[H + j] = act.z;
      w[2 * H + j] = act.n;
      w[3 * H + j] = h.n;
      hs[j] = hv;
      out[j] = hv;
    }
  }
}

template <typename scalar_t, bool kZoneout = false>
LF_ALWAYS_INLINE void gru_bwd_pointwise(const GruBwdStep<scalar_t>& p, int64_t begin, int64_t end) {
  const int64_t H = p.H;
  for (int64_t b = begin / H; b * H < end; ++b) {
    int64_t j0, j1;
    row_run(b, begin, end, H, j0, j1);
    const scalar_t* __restrict w = p.ws + b * p.ld_ws;
    const scalar_t* __restrict hp = b < p.n_prev ? p.h_prev + b * p.ld_hp : p.h0 + b * H;
    const scalar_t* __restrict go = p.gout + b * p.ld_gout;
    scalar_t* __restrict dhs = p.dh_state + b * H;
    scalar_t* __restrict dgx = p.dgx + b * 3 * H;
    scalar_t* __restrict dgh = p.dgh + b * 3 * H;
#pragma GCC ivdep
    for (int64_t j = j0; j < j1; ++j) {
      const GruGates<scalar_t> act{w[j], w[H + j], w[2 * H + j]};
      GruGates<scalar_t> dx, dhh;
      scalar_t direct, dhv = dhs[j] + go[j], carry = 0;
      if constexpr (kZoneout) dhv = zoneout_backward(p.zo_h.at(b, j), dhv, carry);
      gru_cell_backward(act, w[3 * H + j], hp[j], dhv, dx, dhh, direct);
      dgx[j] = dx.r;
      dgx[H + j] = dx.z;
      dgx[2 * H + j] = dx.n;
      dgh[j] = dhh.r;
      dgh[H + j] = dhh.z;
      dgh[2 * H + j] = dhh.n;
      if constexpr (kZoneout)
        dhs[j] = direct + carry;
      else
        dhs[j] = direct;
    }
  }
}

void gru_fwd_pointwise_f32(const GruFwdStep<float>& p, int64_t begin, int64_t end);
void gru_bwd_pointwise_f32(const GruBwdStep<float>& p, int64_t begin, int64_t end);
void gru_fwd_pointwise_zoneout_f32(const GruFwdStep<float>& p, int64_t begin, int64_t end);
void gru_bwd_pointwise_zoneout_f32(const GruBwdStep<float>& p, int64_t begin, int64_t end);

template <typename scalar_t>
void gru_fwd_pointwise_dispatch(const GruFwdStep<scalar_t>& p, int64_t begin, int64_t end) {
  if constexpr (std::is_same_v<scalar_t, float>)
    p.zoneout ? gru_fwd_pointwise_zoneout_f32(p, begin, end) : gru_fwd_pointwise_f32(p, begin, end);
  else
    p.zoneout ? gru_fwd_pointwise<scalar_t, true>(p, begin, end) : gru_fwd_pointwise(p, begin, end);
}

template <typename scalar_t>
void gru_bwd_pointwise_dispatch(const GruBwdStep<scalar_t>& p, int64_t begin, int64_t end) {
  if constexpr (std::is_same_v<scalar_t, float>)
    p.zoneout ? gru_bwd_pointwise_zoneout_f32(p, begin, end) : gru_bwd_pointwise_f32(p, begin, end);
  else
    p.zoneout ? gru_bwd_pointwise<scalar_t, true>(p, begin, end) : gru_bwd_pointwise(p, begin, end);
}

}  // namespace lstm_fused
