// The CUDA path's layer norm (issue 12: haste's LayerNormLSTM / LayerNormGRU in nn's layout) as __host__ __device__
// phase functions, like kernels/lstm_step_phases.h; their schedules (with the block's row sums) are in
// kernels/step_schedule.h, run on the GPU by cuda/layer_norm_kernels.cu and on the CPU by testing/cuda_emulation.cpp.
//
// A norm reduces over a whole row (the G gate products, the H cells), so these kernels give a block a row: its threads
// take the row's elements k ≡ tid (mod kBlockThreads), and the row's sums go through a fixed tree in shared memory
// (deterministic). Layer-norm layers run the per-step GEMM path: a cuBLAS GEMM for the recurrent product, then
//   LSTM: one row launch per step that normalises the product, runs the cell, normalises c and writes h (and its
//         mirror in the backward, which ends in both products' norm backward);
//   GRU:  a row-norm launch on the product before the plain GRU cell kernel (which then adds b_hh as always), and a
//         row-norm backward launch after its backward kernel.
// The input side's norm runs once over all steps' rows, before the loop.
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/lstm_step_phases.h"

namespace lstm_fused {
namespace cuda_step {

// 1/√(var + ε) from a row's centred sum of squares over n values (biased variance).
template <typename A>
LF_HOST_DEVICE A ln_rstd(A centred_sq_sum, int64_t n) {
#if defined(__CUDA_ARCH__)
  return A(1) / ::sqrt(centred_sq_sum / A(n) + A(kLayerNormEps));
#else
  return A(1) / std::sqrt(centred_sq_sum / A(n) + A(kLayerNormEps));
#endif
}

// A row's mean and rstd, as every thread of its block holds them after the row's sums.
template <typename A>
struct RowStats {
  A mean, rstd;
};

// ---- a row's norm on its own (the input side; the GRU's recurrent side) -------------------------------------------
// x̂ = (x − mean)·rstd over each of rows [0, rows) (n values); x̂ and rstd kept where asked (the backward reads them),
// y = γ ⊙ x̂ (+ β) written where asked. y may be x itself: each element is read and written by one thread.
template <typename T, typename A>
struct RowNormParams {
  int64_t n = 0, rows = 0;
  const A* x = nullptr;    // [rows, ld_x] the raw products, in the accumulate type
  int64_t ld_x = 0;
  A* xhat = nullptr;       // [rows, ld_xhat] out, or nullptr
  int64_t ld_xhat = 0;
  A* rstd = nullptr;       // [rows] out at rstd[r·ld_rstd], or nullptr
  int64_t ld_rstd = 0;
  const T* gamma = nullptr;  // [n] with y
  const T* beta = nullptr;   // [n] or nullptr
  A* y = nullptr;            // [rows, ld_y] out, or nullptr
  int64_t ld_y = 0;
};

template <typename T, typename A>
LF_HOST_DEVICE A row_norm_x(const RowNormParams<T, A>& p, int64_t r, int64_t k) {
  return p.x[r * p.ld_x + k];
}

// Element k of row r, from the row's statistics (thread `tid`'s share: k ≡ tid).
template <typename T, typename A>
LF_HOST_DEVICE void row_norm_element(const RowNormParams<T, A>& p, int64_t r, int64_t k, const RowStats<A>& st) {
  const A xh = (row_norm_x(p, r, k) - st.mean) * st.rstd;
  if (p.xhat) p.xhat[r * p.ld_xhat + k] = xh;
  if (p.rstd && k == 0) p.rstd[r * p.ld_rstd] = st.rstd;
  if (p.y) {
    A v = to_acc<T, A>(p.gamma[k]) * xh;
    if (p.beta) v += to_acc<T, A>(p.beta[k]);
    p.y[r * p.ld_y + k] = v;
  }
}

// The norm's backward over rows [0, rows): dx = rstd·(dx̂ − mean(dx̂) − x̂·mean(dx̂ ⊙ x̂)), dx̂ = dy ⊙ γ. dx may be dy.
template <typename T, typename A>
struct RowNormBwdParams {
  int64_t n = 0, rows = 0;
  const A* dy = nullptr;     // [rows, ld_dy] gradient of γ ⊙ x̂ (+ β)
  int64_t ld_dy = 0;
  const T* gamma = nullptr;  // [n]
  const A* xhat = nullptr;   // [rows, ld_xhat] the forward's x̂
  int64_t ld_xhat = 0;
  const A* rstd = nullptr;   // [rows] at rstd[r·ld_rstd]
  int64_t ld_rstd = 0;
  A* dx = nullptr;           // [rows, ld_dx] out
  int64_t ld_dx = 0;
};

// dx̂ and x̂ of element k of row r (the row sums' terms).
template <typename T, typename A>
LF_HOST_DEVICE A row_norm_dxhat(const RowNormBwdParams<T, A>& p, int64_t r, int64_t k) {
  return p.dy[r * p.ld_dy + k] * to_acc<T, A>(p.gamma[k]);
}
template <typename T, typename A>
LF_HOST_DEVICE A row_norm_xhat(const RowNormBwdParams<T, A>& p, int64_t r, int64_t k) {
  return p.xhat[r * p.ld_xhat + k];
}

// sums: Σ dx̂ and Σ dx̂ ⊙ x̂ over the row.
template <typename T, typename A>
LF_HOST_DEVICE void row_norm_bwd_element(const RowNormBwdParams<T, A>& p, int64_t r, int64_t k, A sum_d, A sum_dx) {
  const A m1 = sum_d / A(p.n), m2 = sum_dx / A(p.n);
  p.dx[r * p.ld_dx + k] =
      layer_norm_backward<A>(row_norm_dxhat(p, r, k), row_norm_xhat(p, r, k), p.rstd[r * p.ld_rstd], m1, m2);
}

// Up to four row sets in one launch (blockIdx.z): the directions of a layer, each with up to two products.
constexpr int kMaxRowSets = 4;
template <typename P>
struct RowLaunch {
  P set[kMaxRowSets];
  int count = 0;
};
// Grid: a block per row of the longest set.
template <typename P>
inline int64_t row_grid(const RowLaunch<P>& l) {
  int64_t g = 0;
  for (int s = 0; s < l.count; ++s) g = l.set[s].rows > g ? l.set[s].rows : g;
  return g;
}

// The layer-norm LSTM's step launches: a block per row of the widest direction.
template <typename P>
inline int64_t row_grid(const DirectionParams<P>& dp) {
  int64_t g = 0;
  for (int d = 0; d < dp.count; ++d) g = dp.dir[d].rows > g ? dp.dir[d].rows : g;
  return g;
}

// ---- the LSTM step, one block per row ------------------------------------------------------------------------------
// Workspace row of a layer-norm LSTM (LayerSizes::lstm_ws_cols): activated gates [G], c̃_t [H] (and the zoned-out c_t
// [H] with zoneout on c), then from ln_col x̂_ih [G], x̂_hh [G], ĉ [H] and the rstd of the input product, the recurrent
// product and c.
struct LstmLnCols {
  int64_t G, H, ln_col;
  LF_HOST_DEVICE int64_t xhat_hh() const { return ln_col + G; }
  LF_HOST_DEVICE int64_t c_hat() const { return ln_col + 2 * G; }
  LF_HOST_DEVICE int64_t rstd(int which) const { return ln_col + 2 * G + H + which; }  // 0 ih, 1 hh, 2 c
};

template <typename T, typename A>
LF_HOST_DEVICE LstmLnCols ln_cols(const FwdStepParams<T, A>& p) {
  return {(p.coupled ? 3 : 4) * p.H, p.H, p.ln_col};
}
template <typename T, typename A>
LF_HOST_DEVICE LstmLnCols ln_cols(const BwdStepParams<T, A>& p) {
  return {(p.coupled ? 3 : 4) * p.H, p.H, p.ln_col};
}

// Forward, element k of row b's recurrent product: x̂_hh into the workspace.
template <typename T, typename A>
LF_HOST_DEVICE void lstm_ln_fwd_xhat(const FwdStepParams<T, A>& p, int64_t b, int64_t k, const RowStats<A>& st) {
  const LstmLnCols c = ln_cols(p);
  A* w = p.ws + b * p.ld_ws;
  w[c.xhat_hh() + k] = (p.rec[b * c.G + k] - st.mean) * st.rstd;
  if (k == 0) w[c.rstd(1)] = st.rstd;
}

// Forward, unit j of row b: the gates from both normalised products, the candidate cell c̃_t (and the zoned-out c_t).
template <typename T, typename A, bool kPeephole, bool kCoupled>
LF_HOST_DEVICE void lstm_ln_fwd_cell_variant(const FwdStepParams<T, A>& p, int64_t b, int64_t j) {
  using C = GateCols<kCoupled>;
  const LstmLnCols cols = ln_cols(p);
  const int64_t H = p.H, G = cols.G;
  A* w = p.ws + b * p.ld_ws;
  const A* xi = p.xhat_ih + b * p.ld_xhat_ih;
  const A* xh = w + cols.xhat_hh();
  auto pre = [&](int64_t k) {
    const A v = to_acc<T, A>(p.ln.ih[k]) * xi[k] + to_acc<T, A>(p.ln.hh[k]) * xh[k];
    return p.ln_bias ? v + to_acc<T, A>(p.ln_bias[k]) : v;
  };
  const LstmGates<A> g{pre(C::i(H) + j), kCoupled ? A(0) : pre(C::f(H) + j), pre(C::g(H) + j), pre(C::o(H) + j)};
  const A c_prev = b < p.n_prev ? p.c_prev[b * p.ld_ws + j] : to_acc<T, A>(p.c0[b * H + j]);
  LstmGates<A> act;
  A c;
  lstm_cell_gates<A, kPeephole, kCoupled>(g, c_prev, act, c, load_peepholes<T, A, kCoupled>(p.peep, H, j));
  w[C::i(H) + j] = act.i;
  if constexpr (!kCoupled) w[C::f(H) + j] = act.f;
  w[C::g(H) + j] = act.g;
  w[C::o(H) + j] = act.o;
  w[G + j] = c;
  if (p.zo_c.data) w[G + H + j] = zoneout_forward(p.zo_c.at(b, j), c_prev, c);
}

template <typename T, typename A>
LF_HOST_DEVICE void lstm_ln_fwd_cell(const FwdStepParams<T, A>& p, int64_t b, int64_t j) {
  if (p.peep) {
    if (p.coupled) lstm_ln_fwd_cell_variant<T, A, true, true>(p, b, j);
    else lstm_ln_fwd_cell_variant<T, A, true, false>(p, b, j);
  } else {
    if (p.coupled) lstm_ln_fwd_cell_variant<T, A, false, true>(p, b, j);
    else lstm_ln_fwd_cell_variant<T, A, false, false>(p, b, j);
  }
}

// Forward, unit j of row b, from c̃'s statistics: ĉ, h = o ⊙ tanh(γ_c ⊙ ĉ + β_c) (zoned out where h has zoneout and no
// projection), and the final states of rows that end here.
template <typename T, typename A>
LF_HOST_DEVICE void lstm_ln_fwd_hidden(const FwdStepParams<T, A>& p, int64_t b, int64_t j, const RowStats<A>& st) {
  const LstmLnCols cols = ln_cols(p);
  const int64_t H = p.H, G = cols.G;
  A* w = p.ws + b * p.ld_ws;
  const A ch = (w[G + j] - st.mean) * st.rstd;
  w[cols.c_hat() + j] = ch;
  if (j == 0) w[cols.rstd(2)] = st.rstd;
  const int64_t co = p.coupled ? 2 * H : 3 * H;
  A h = w[co + j] * lf_tanh(to_acc<T, A>(p.ln.c_w[j]) * ch + to_acc<T, A>(p.ln.c_b[j]));
  if (p.zo_h.data) {  // no projection here, so P == H
    const A h_prev = to_acc<T, A>(b < p.n_prev ? p.h_prev[b * p.ld_out + j] : p.h0[b * p.P + j]);
    h = zoneout_forward(p.zo_h.at(b, j), h_prev, h);
  }
  p.h_out[b * p.ld_h + j] = static_cast<T>(h);
  if (b >= p.end_lo && b < p.end_hi) {
    p.c_n[b * H + j] = static_cast<T>(w[G + (p.zo_c.data ? H : 0) + j]);
    if (p.h_n) p.h_n[b * p.P + j] = static_cast<T>(h);
  }
}

// Backward, unit j of row b, first part: the gradient reaching h (zoneout split; with a projection dr, the
// projection's), through o and tanh: dpre_o and dy_c. Returns this unit's terms of c's norm sums (dĉ, dĉ ⊙ ĉ).
template <typename T, typename A>
LF_HOST_DEVICE void lstm_ln_bwd_hidden(const BwdStepParams<T, A>& p, int64_t b, int64_t j, A& sum_d, A& sum_dx) {
  const LstmLnCols cols = ln_cols(p);
  const int64_t H = p.H, G = cols.G, co = p.coupled ? 2 * H : 3 * H;
  const A* w = p.ws + b * p.ld_ws;
  const A dh = p.r_out ? p.dr[b * H + j] : bwd_zoneout_h(p, b, j, bwd_dh(p, b, j, p.rec[b * p.P + j]));
  const A o = w[co + j], ch = w[cols.c_hat() + j], gc = to_acc<T, A>(p.ln.c_w[j]);
  const A tc = lf_tanh(gc * ch + to_acc<T, A>(p.ln.c_b[j]));
  p.dpre[b * G + co + j] = dh * tc * o * (A(1) - o);
  const A dy = dh * o * (A(1) - tc * tc);
  p.dy_c[b * H + j] = dy;
  if (p.r_out) p.r_out[b * H + j] = o * tc;
  sum_d += dy * gc;
  sum_dx += dy * gc * ch;
}

// Backward, unit j of row b, second part: c's gradient (the carried one, zoneout split, plus c's norm backward and the
// peephole's), then the gates and the cell update.
template <typename T, typename A, bool kPeephole, bool kCoupled>
LF_HOST_DEVICE void lstm_ln_bwd_cell_variant(const BwdStepParams<T, A>& p, int64_t b, int64_t j, A sum_d, A sum_dx) {
  using C = GateCols<kCoupled>;
  const LstmLnCols cols = ln_cols(p);
  const int64_t H = p.H, G = cols.G;
  const A* w = p.ws + b * p.ld_ws;
  const A ai = w[C::i(H) + j];
  const LstmGates<A> act{ai, kCoupled ? A(1) - ai : w[C::f(H) + j], w[C::g(H) + j], w[C::o(H) + j]};
  const A c_prev = b < p.n_prev ? p.c_prev[b * p.ld_ws + j] : to_acc<T, A>(p.c0[b * H + j]);
  const Peepholes<A> peep = load_peepholes<T, A, kCoupled>(p.peep, H, j);
  A* dpre = p.dpre + b * G;
  A dc_carry = A(0);
  const A dc_next = p.zo_c.data ? zoneout_backward(p.zo_c.at(b, j), p.dc_state[b * H + j], dc_carry)
                                : p.dc_state[b * H + j];
  A dc = dc_next + layer_norm_backward<A>(p.dy_c[b * H + j] * to_acc<T, A>(p.ln.c_w[j]), w[cols.c_hat() + j],
                                          w[cols.rstd(2)], sum_d / A(H), sum_dx / A(H));
  if constexpr (kPeephole) dc += dpre[C::o(H) + j] * peep.o;
  LstmGates<A> d;
  A dc_prev;
  lstm_cell_backward_gates<A, kPeephole, kCoupled>(act, c_prev, dc, d, dc_prev, peep);
  dpre[C::i(H) + j] = d.i;
  if constexpr (!kCoupled) dpre[C::f(H) + j] = d.f;
  dpre[C::g(H) + j] = d.g;
  p.dc_state[b * H + j] = dc_prev + dc_carry;
}

template <typename T, typename A>
LF_HOST_DEVICE void lstm_ln_bwd_cell(const BwdStepParams<T, A>& p, int64_t b, int64_t j, A sum_d, A sum_dx) {
  if (p.peep) {
    if (p.coupled) lstm_ln_bwd_cell_variant<T, A, true, true>(p, b, j, sum_d, sum_dx);
    else lstm_ln_bwd_cell_variant<T, A, true, false>(p, b, j, sum_d, sum_dx);
  } else {
    if (p.coupled) lstm_ln_bwd_cell_variant<T, A, false, true>(p, b, j, sum_d, sum_dx);
    else lstm_ln_bwd_cell_variant<T, A, false, false>(p, b, j, sum_d, sum_dx);
  }
}

// Backward, gate column k of row b: its terms of both products' norm sums (dx̂_ih, dx̂_ih ⊙ x̂_ih, dx̂_hh, dx̂_hh ⊙ x̂_hh).
template <typename T, typename A>
LF_HOST_DEVICE void lstm_ln_bwd_product_terms(const BwdStepParams<T, A>& p, int64_t b, int64_t k, A (&acc)[4]) {
  const LstmLnCols cols = ln_cols(p);
  const A* w = p.ws + b * p.ld_ws;
  const A d = p.dpre[b * cols.G + k];
  const A di = d * to_acc<T, A>(p.ln.ih[k]), dh = d * to_acc<T, A>(p.ln.hh[k]);
  acc[0] += di;
  acc[1] += di * w[cols.ln_col + k];
  acc[2] += dh;
  acc[3] += dh * w[cols.xhat_hh() + k];
}

// Backward, gate column k of row b: both products' gradients through their norms.
template <typename T, typename A>
LF_HOST_DEVICE void lstm_ln_bwd_products(const BwdStepParams<T, A>& p, int64_t b, int64_t k, const A (&sums)[4]) {
  const LstmLnCols cols = ln_cols(p);
  const int64_t G = cols.G;
  const A* w = p.ws + b * p.ld_ws;
  const A d = p.dpre[b * G + k];
  p.dg[b * G + k] = layer_norm_backward<A>(d * to_acc<T, A>(p.ln.ih[k]), w[cols.ln_col + k], w[cols.rstd(0)],
                                           sums[0] / A(G), sums[1] / A(G));
  p.dg_rec[b * G + k] = layer_norm_backward<A>(d * to_acc<T, A>(p.ln.hh[k]), w[cols.xhat_hh() + k], w[cols.rstd(1)],
                                               sums[2] / A(G), sums[3] / A(G));
}

}  // namespace cuda_step
}  // namespace lstm_fused
