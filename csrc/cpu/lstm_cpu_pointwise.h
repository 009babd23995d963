// Pointwise passes of one time step on the CPU over the flattened element range [begin, end) of
// rows × H. Torch-free: the binding splits the range across threads with at::parallel_for.
#pragma once

#include <algorithm>

#include "../cell_math.h"
#include "../lstm_params.h"

namespace lstm_fused {

// Calls body(row, j_begin, j_end) for each row's contiguous run of hidden units in [begin, end).
template <typename F>
inline void for_each_row_run(int64_t begin, int64_t end, int64_t H, const F& body) {
  for (int64_t b = begin / H; b * H < end; ++b) {
    const int64_t j0 = std::max<int64_t>(begin - b * H, 0);
    const int64_t j1 = std::min<int64_t>(end - b * H, H);
    body(b, j0, j1);
  }
}

template <typename scalar_t>
void lstm_fwd_pointwise(const LstmFwdStep<scalar_t>& p, int64_t begin, int64_t end) {
  const int64_t H = p.H;
  for_each_row_run(begin, end, H, [&](int64_t b, int64_t j0, int64_t j1) {
    scalar_t* g = p.gates + b * p.ld_ws;
    scalar_t* cell = p.cells + b * p.ld_ws;
    scalar_t* cs = p.c_state + b * H;
    scalar_t* h = p.h_out + b * p.ld_h;
    scalar_t* hs = p.h_state ? p.h_state + b * H : nullptr;
    for (int64_t j = j0; j < j1; ++j) {
      LstmGates<scalar_t> pre{g[j] + p.bias[j], g[H + j] + p.bias[H + j], g[2 * H + j] + p.bias[2 * H + j],
                              g[3 * H + j] + p.bias[3 * H + j]};
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
      if (hs) hs[j] = hv;
    }
  });
}

template <typename scalar_t>
void lstm_bwd_pointwise(const LstmBwdStep<scalar_t>& p, int64_t begin, int64_t end) {
  const int64_t H = p.H;
  for_each_row_run(begin, end, H, [&](int64_t b, int64_t j0, int64_t j1) {
    const scalar_t* g = p.gates + b * p.ld_ws;
    const scalar_t* cell = p.cells + b * p.ld_ws;
    const scalar_t* cp = b < p.n_prev ? p.c_prev + b * p.ld_ws : p.c_init + b * H;
    const scalar_t* dh = p.dh + b * p.ld_dh;
    const scalar_t* dh2 = p.dh_extra ? p.dh_extra + b * p.ld_dh_extra : nullptr;
    scalar_t* dcs = p.dc_state + b * H;
    scalar_t* dg = p.dgates + b * 4 * H;
    scalar_t* r = p.r_out ? p.r_out + b * H : nullptr;
    for (int64_t j = j0; j < j1; ++j) {
      const LstmGates<scalar_t> act{g[j], g[H + j], g[2 * H + j], g[3 * H + j]};
      const scalar_t dhv = dh2 ? dh[j] + dh2[j] : dh[j];
      LstmGates<scalar_t> dpre;
      scalar_t dc_prev;
      lstm_cell_backward(act, cell[j], cp[j], dhv, dcs[j], dpre, dc_prev);
      dg[j] = dpre.i;
      dg[H + j] = dpre.f;
      dg[2 * H + j] = dpre.g;
      dg[3 * H + j] = dpre.o;
      dcs[j] = dc_prev;
      if (r) r[j] = lstm_hidden_from_saved(act, cell[j]);
    }
  });
}

}  // namespace lstm_fused
