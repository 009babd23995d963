// Layer-normalised cells on the CPU: a row's normalisation and the per-row passes of one time step. The layer norms
// reduce over a whole row (the G gate products, the H cells), so these passes go row by row (threads take rows), where
// the passes without layer norm go element by element. Each row's sums are taken in column order in double, so the
// results do not depend on the thread count. Elementwise math from cell_math.h.
#pragma once

#include <algorithm>
#include <cmath>

#include "cpu/cpu_common.h"
#include "cpu/lstm_cpu_pointwise.h"
#include "kernels/cell_math.h"
#include "kernels/recurrent_params.h"

namespace lstm_fused {
namespace cpu {

constexpr double kLayerNormEps = 1e-5;  // as F.layer_norm's default and haste's

// x̂ = (x − mean)·rstd over a row of n (biased variance), into out (which may be x); returns rstd.
template <typename scalar_t>
scalar_t ln_normalize(const scalar_t* x, scalar_t* out, int64_t n) {
  double mean = 0;
  for (int64_t i = 0; i < n; ++i) mean += x[i];
  mean /= double(n);
  double var = 0;
  for (int64_t i = 0; i < n; ++i) var += (double(x[i]) - mean) * (double(x[i]) - mean);
  const double rstd = 1.0 / std::sqrt(var / double(n) + kLayerNormEps);
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<scalar_t>((double(x[i]) - mean) * rstd);
  return static_cast<scalar_t>(rstd);
}

// Rows per parallel chunk of a row pass over rows of G gate products: about kPointwiseGrain elements.
inline int64_t ln_row_grain(int64_t G) { return std::max<int64_t>(1, kPointwiseGrain / G); }

// One GRU product row normalised, then scaled in place: row = γ ⊙ x̂ (+ bias, where given), x̂ and its rstd kept in
// the workspace row where there is one (ws_xhat nullptr: inference).
template <typename scalar_t>
void gru_ln_row(scalar_t* row, int64_t G, const scalar_t* gamma, const scalar_t* bias, scalar_t* ws_xhat,
                scalar_t* ws_rstd) {
  const scalar_t rstd = ln_normalize(row, row, G);
  if (ws_xhat) {
    std::copy(row, row + G, ws_xhat);
    *ws_rstd = rstd;
  }
  if (bias)
    for (int64_t c = 0; c < G; ++c) row[c] = gamma[c] * row[c] + bias[c];
  else
    for (int64_t c = 0; c < G; ++c) row[c] *= gamma[c];
}

// The gradient reaching a row's x of y = γ ⊙ x̂ from dy (layer_norm_backward; dy·γ staged in `out`, which may be dy).
template <typename scalar_t>
void ln_backward_row(const scalar_t* dy, const scalar_t* gamma, const scalar_t* xhat, scalar_t rstd, int64_t n,
                     scalar_t* out) {
  double s1 = 0, s2 = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = double(dy[i]) * double(gamma[i]);
    s1 += d;
    s2 += d * double(xhat[i]);
  }
  const scalar_t m1 = static_cast<scalar_t>(s1 / double(n)), m2 = static_cast<scalar_t>(s2 / double(n));
  for (int64_t i = 0; i < n; ++i) out[i] = layer_norm_backward<scalar_t>(dy[i] * gamma[i], xhat[i], rstd, m1, m2);
}

// ---- LSTM --------------------------------------------------------------------------------------------------------
// The forward of row b: the recurrent product's layer norm, the gates from both normalised products, the cells, then
// c's layer norm and h = o ⊙ tanh(γ_c ⊙ ĉ + β_c); zoneout as the plain pass does it (masks read as zeros where absent,
// which keeps nothing exactly). kProj: h goes to the projection's input only.
template <typename scalar_t, bool kProj, bool kPeephole, bool kCoupled>
void lstm_ln_fwd_row(const LstmFwdStep<scalar_t>& p, int64_t b) {
  using C = GateCols<kCoupled>;
  const int64_t H = p.H, G = C::kGates * H, ci = C::i(H), cf = C::f(H), cg = C::g(H), co = C::o(H);
  scalar_t* g = p.gates + b * p.ld_ws;
  scalar_t* cell = p.cells + b * p.ld_ws;
  scalar_t* czd = p.cells_zoned + b * p.ld_ws;
  scalar_t* xi = g + p.ln_col;  // [G] x̂_ih, [G] x̂_hh, [H] ĉ, [3] rstd
  scalar_t* xh = xi + G;
  scalar_t* ch = xh + G;
  scalar_t* rs = ch + H;
  scalar_t* cs = p.c_state + b * H;
  rs[1] = ln_normalize(xh, xh, G);
  for (int64_t k = 0; k < G; ++k) g[k] = p.ln_ih[k] * xi[k] + p.ln_hh[k] * xh[k] + p.bias[k];
  for (int64_t j = 0; j < H; ++j) {
    const LstmGates<scalar_t> pre{g[ci + j], kCoupled ? scalar_t(0) : g[cf + j], g[cg + j], g[co + j]};
    Peepholes<scalar_t> peep;
    if constexpr (kPeephole) {
      peep.i = p.peep[C::peep_i(H) + j];
      if constexpr (!kCoupled) peep.f = p.peep[C::peep_f(H) + j];
      peep.o = p.peep[C::peep_o(H) + j];
    }
    LstmGates<scalar_t> act;
    scalar_t c;
    lstm_cell_gates<scalar_t, kPeephole, kCoupled>(pre, cs[j], act, c, peep);
    g[ci + j] = act.i;
    if constexpr (!kCoupled) g[cf + j] = act.f;
    g[cg + j] = act.g;
    g[co + j] = act.o;
    cell[j] = c;
    const scalar_t cz = zoneout_forward(p.zo_c.at(b, j), cs[j], c);
    czd[j] = cz;  // (the candidate again when c has no zoneout: then czd is cell)
    cs[j] = cz;
  }
  rs[2] = ln_normalize(cell, ch, H);
  scalar_t* h = p.h_out + b * p.ld_h;
  scalar_t* hs = kProj ? nullptr : p.h_state + b * H;
  for (int64_t j = 0; j < H; ++j) {
    scalar_t hv = g[co + j] * lf_tanh(p.ln_c_w[j] * ch[j] + p.ln_c_b[j]);
    if constexpr (!kProj) {
      hv = zoneout_forward(p.zo_h.at(b, j), hs[j], hv);
      hs[j] = hv;
    }
    h[j] = hv;
  }
}

// The backward of row b: h's gradient (zoneout split) through tanh and c's layer norm, then the gates and the cell
// update (c's gradient zoneout split), then both products' layer norms. Writes dpre (before the layer norms; for the
// biases, the gains and the peepholes), dy_c, and the products' gradients dgates (input) and dgates_rec (recurrent).
template <typename scalar_t, bool kProj, bool kPeephole, bool kCoupled>
void lstm_ln_bwd_row(const LstmBwdStep<scalar_t>& p, int64_t b) {
  using C = GateCols<kCoupled>;
  const int64_t H = p.H, G = C::kGates * H, ci = C::i(H), cf = C::f(H), cg = C::g(H), co = C::o(H);
  const scalar_t* g = p.gates + b * p.ld_ws;
  const scalar_t* cp = b < p.n_prev ? p.c_prev + b * p.ld_ws : p.c_init + b * H;
  const scalar_t* xi = g + p.ln_col;
  const scalar_t* xh = xi + G;
  const scalar_t* ch = xh + G;
  const scalar_t* rs = ch + H;
  const scalar_t* dh = p.dh + b * p.ld_dh;
  scalar_t* dcs = p.dc_state + b * H;
  scalar_t* dpre = p.dpre + b * G;
  scalar_t* dy = p.dy_c + b * H;
  double s1 = 0, s2 = 0;
  for (int64_t j = 0; j < H; ++j) {
    scalar_t dhv = dh[j];
    if constexpr (!kProj) {
      dhv += p.dh_extra[b * p.ld_dh_extra + j];
      scalar_t to_prev = 0;
      dhv = zoneout_backward(p.zo_h.at(b, j), dhv, to_prev);
      if (p.dh_carry) p.dh_carry[b * H + j] = to_prev;
    }
    const scalar_t o = g[co + j], tc = lf_tanh(p.ln_c_w[j] * ch[j] + p.ln_c_b[j]);
    dpre[co + j] = dhv * tc * o * (scalar_t(1) - o);
    dy[j] = dhv * o * (scalar_t(1) - tc * tc);
    if constexpr (kProj) p.r_out[b * H + j] = o * tc;
    const double d = double(dy[j]) * double(p.ln_c_w[j]);
    s1 += d;
    s2 += d * double(ch[j]);
  }
  const scalar_t m1 = static_cast<scalar_t>(s1 / double(H)), m2 = static_cast<scalar_t>(s2 / double(H));
  for (int64_t j = 0; j < H; ++j) {
    const scalar_t ai = g[ci + j];
    const LstmGates<scalar_t> act{ai, kCoupled ? scalar_t(1) - ai : g[cf + j], g[cg + j], g[co + j]};
    Peepholes<scalar_t> peep;
    if constexpr (kPeephole) {
      peep.i = p.peep[C::peep_i(H) + j];
      if constexpr (!kCoupled) peep.f = p.peep[C::peep_f(H) + j];
      peep.o = p.peep[C::peep_o(H) + j];
    }
    scalar_t dc_carry = 0;
    const scalar_t dc_next = zoneout_backward(p.zo_c.at(b, j), dcs[j], dc_carry);
    scalar_t dc = dc_next + layer_norm_backward<scalar_t>(dy[j] * p.ln_c_w[j], ch[j], rs[2], m1, m2);
    if constexpr (kPeephole) dc += dpre[co + j] * peep.o;
    LstmGates<scalar_t> dp;
    scalar_t dc_prev;
    lstm_cell_backward_gates<scalar_t, kPeephole, kCoupled>(act, cp[j], dc, dp, dc_prev, peep);
    dpre[ci + j] = dp.i;
    if constexpr (!kCoupled) dpre[cf + j] = dp.f;
    dpre[cg + j] = dp.g;
    dcs[j] = dc_prev + dc_carry;
  }
  ln_backward_row(dpre, p.ln_ih, xi, rs[0], G, p.dgates + b * G);
  ln_backward_row(dpre, p.ln_hh, xh, rs[1], G, p.dgates_rec + b * G);
}

template <typename scalar_t>
void lstm_ln_fwd_rows(const LstmFwdStep<scalar_t>& p, int64_t r0, int64_t r1) {
  for (int64_t b = r0; b < r1; ++b)
    LF_VARIANT_DISPATCH(lstm_ln_fwd_row, p.h_state == nullptr, p.peep != nullptr, p.coupled, p, b);
}

template <typename scalar_t>
void lstm_ln_bwd_rows(const LstmBwdStep<scalar_t>& p, int64_t r0, int64_t r1) {
  for (int64_t b = r0; b < r1; ++b)
    LF_VARIANT_DISPATCH(lstm_ln_bwd_row, p.r_out != nullptr, p.peep != nullptr, p.coupled, p, b);
}

// The input side's layer norm over rows [0, rows) of a chunk (the raw products at `rows_base`, row stride ld): x̂ in
// place and its rstd at column rstd_col of the row.
template <typename scalar_t>
void ln_normalize_rows(scalar_t* rows_base, int64_t ld, int64_t rows, int64_t n, int64_t rstd_col) {
  at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      scalar_t* row = rows_base + r * ld;
      row[rstd_col] = ln_normalize(row, row, n);
    }
  });
}

}  // namespace cpu
}  // namespace lstm_fused
