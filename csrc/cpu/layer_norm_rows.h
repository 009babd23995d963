// The row passes of the layer-normalised cells on the CPU, torch-free: a row's normalisation and the per-row passes of
// one time step. The layer norms reduce over a whole row (the G gate products, the H cells), so these passes go row by
// row (threads take rows), where the passes without layer norm go element by element. Elementwise math from
// cell_math.h. Written so gcc vectorises every inner loop: row sums in a fixed set of lanes (row_sums), restrict
// pointers, and the variant and zoneout choices made once per range of rows, not per element. The float entry points
// (layer_norm_rows_f32.cpp) are compiled per x86-64 level like the plain passes; double inlines into its callers.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "cpu/lstm_cpu_pointwise.h"
#include "kernels/cell_math.h"
#include "kernels/recurrent_params.h"

namespace lstm_fused {
namespace cpu {

// Partial sums of a row reduction: element i goes to lane i % kSumLanes and the lanes are added in a fixed tree at
// the end, so a row's sums depend on its length only (never on the thread count or the ISA clone), and the lanes are
// independent, so the loop vectorises without reassociating (16 floats: one AVX-512 register, two AVX2 ones).
constexpr int kSumLanes = 16;

// out[k] = Σ_i term_k(i) over [0, n) for the N terms that term(i, t) writes to t[0..N).
template <typename acc_t, int N, typename Term>
LF_ALWAYS_INLINE void row_sums(int64_t n, const Term& term, acc_t (&out)[N]) {
  acc_t lane[N][kSumLanes] = {};
  int64_t i = 0;
  for (; i + kSumLanes <= n; i += kSumLanes)
    for (int l = 0; l < kSumLanes; ++l) {
      acc_t t[N];
      term(i + l, t);
      for (int k = 0; k < N; ++k) lane[k][l] += t[k];
    }
  if (i < n)  // the last, partial group: a fixed 16 (no epilogue loops to compile), the lanes past n add nothing
    for (int l = 0; l < kSumLanes; ++l) {
      const bool in = i + l < n;
      acc_t t[N];
      term(in ? i + l : i, t);
      for (int k = 0; k < N; ++k) lane[k][l] += in ? t[k] : acc_t(0);
    }
  for (int k = 0; k < N; ++k) {
    for (int w = kSumLanes / 2; w > 0; w /= 2)
      for (int l = 0; l < w; ++l) lane[k][l] += lane[k][l + w];
    out[k] = lane[k][0];
  }
}

// The mean and rstd = 1/√(var + ε) of a row of n (biased variance): the sum, then the centred sum of squares (two
// passes, so no cancellation).
template <typename scalar_t>
LF_ALWAYS_INLINE void ln_moments(const scalar_t* __restrict x, int64_t n, scalar_t& mean, scalar_t& rstd) {
  scalar_t s[1];
  row_sums<scalar_t, 1>(n, [&](int64_t i, scalar_t* t) { t[0] = x[i]; }, s);
  const scalar_t m = s[0] / scalar_t(n);
  row_sums<scalar_t, 1>(n, [&](int64_t i, scalar_t* t) { t[0] = (x[i] - m) * (x[i] - m); }, s);
  mean = m;
  rstd = static_cast<scalar_t>(1.0 / std::sqrt(double(s[0]) / double(n) + kLayerNormEps));
}

// x̂ = (x − mean)·rstd over a row of n, into out (which may be x); returns rstd.
template <typename scalar_t>
LF_ALWAYS_INLINE scalar_t ln_normalize(const scalar_t* x, scalar_t* out, int64_t n) {
  scalar_t mean, rstd;
  ln_moments(x, n, mean, rstd);
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i) out[i] = (x[i] - mean) * rstd;
  return rstd;
}

// Rows [r0, r1) of a chunk's raw input products (row stride ld): x̂ in place and its rstd at column rstd_col.
template <typename scalar_t>
LF_ALWAYS_INLINE void ln_normalize_range(scalar_t* rows_base, int64_t ld, int64_t r0, int64_t r1, int64_t n,
                                         int64_t rstd_col) {
  for (int64_t r = r0; r < r1; ++r) {
    scalar_t* row = rows_base + r * ld;
    row[rstd_col] = ln_normalize(row, row, n);
  }
}

// One GRU product row normalised, then scaled in place: row = γ ⊙ x̂ (+ bias, where given), x̂ and its rstd kept in
// the workspace row where there is one (ws_xhat nullptr: inference).
template <typename scalar_t>
LF_ALWAYS_INLINE void gru_ln_row_impl(scalar_t* __restrict row, int64_t G, const scalar_t* __restrict gamma,
                                      const scalar_t* __restrict bias, scalar_t* __restrict ws_xhat,
                                      scalar_t* ws_rstd) {
  const scalar_t rstd = ln_normalize(row, row, G);
  if (ws_xhat) {
    std::memcpy(ws_xhat, row, sizeof(scalar_t) * G);
    *ws_rstd = rstd;
  }
  if (bias)
    for (int64_t c = 0; c < G; ++c) row[c] = gamma[c] * row[c] + bias[c];
  else
    for (int64_t c = 0; c < G; ++c) row[c] *= gamma[c];
}

// The gradient reaching a row's x of y = γ ⊙ x̂ from dy (layer_norm_backward). out may be dy.
template <typename scalar_t>
LF_ALWAYS_INLINE void ln_backward_row_impl(const scalar_t* dy, const scalar_t* __restrict gamma,
                                           const scalar_t* __restrict xhat, scalar_t rstd, int64_t n, scalar_t* out) {
  scalar_t s[2];
  row_sums<scalar_t, 2>(n, [&](int64_t i, scalar_t* t) {
    t[0] = dy[i] * gamma[i];
    t[1] = t[0] * xhat[i];
  }, s);
  const scalar_t m1 = s[0] / scalar_t(n), m2 = s[1] / scalar_t(n);
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i) out[i] = layer_norm_backward<scalar_t>(dy[i] * gamma[i], xhat[i], rstd, m1, m2);
}

// ---- LSTM --------------------------------------------------------------------------------------------------------
// The forward of row b: the recurrent product's layer norm, the gates from both normalised products, the cells, then
// c's layer norm and h = o ⊙ tanh(γ_c ⊙ ĉ + β_c); kZoneout: zoneout as the plain pass does it (masks read as zeros
// where absent; without it the states take the candidates, which is what a zero mask gives for finite values).
// kProj: h goes to the projection's input only.
template <typename scalar_t, bool kProj, bool kPeephole, bool kCoupled, bool kZoneout>
LF_ALWAYS_INLINE void lstm_ln_fwd_row(const LstmFwdStep<scalar_t>& p, int64_t b) {
  using C = GateCols<kCoupled>;
  const int64_t H = p.H, G = C::kGates * H, ci = C::i(H), cf = C::f(H), cg = C::g(H), co = C::o(H);
  scalar_t* __restrict g = p.gates + b * p.ld_ws;
  scalar_t* __restrict cell = p.cells + b * p.ld_ws;
  scalar_t* czd = p.cells_zoned + b * p.ld_ws;  // is `cell` when c has no zoneout (then it stores the same values)
  scalar_t* __restrict xi = g + p.ln_col;       // [G] x̂_ih, [G] x̂_hh, [H] ĉ, [3] rstd
  scalar_t* __restrict xh = xi + G;
  scalar_t* __restrict ch = xh + G;
  scalar_t* __restrict rs = ch + H;
  scalar_t* __restrict cs = p.c_state + b * H;
  const scalar_t *__restrict ln_ih = p.ln_ih, *__restrict ln_hh = p.ln_hh, *__restrict bias = p.bias;
  const scalar_t *__restrict ln_c_w = p.ln_c_w, *__restrict ln_c_b = p.ln_c_b;
  const scalar_t* __restrict pi = kPeephole ? p.peep + C::peep_i(H) : nullptr;
  const scalar_t* __restrict pf = kPeephole && !kCoupled ? p.peep + C::peep_f(H) : nullptr;
  const scalar_t* __restrict po = kPeephole ? p.peep + C::peep_o(H) : nullptr;
  // x̂_hh in place, fused with the gates' sum γ_ih ⊙ x̂_ih + γ_hh ⊙ x̂_hh + b.
  scalar_t mean, rstd;
  ln_moments(xh, G, mean, rstd);
  rs[1] = rstd;
#pragma GCC ivdep
  for (int64_t k = 0; k < G; ++k) {
    const scalar_t v = (xh[k] - mean) * rstd;
    xh[k] = v;
    g[k] = ln_ih[k] * xi[k] + ln_hh[k] * v + bias[k];
  }
#pragma GCC ivdep
  for (int64_t j = 0; j < H; ++j) {
    const LstmGates<scalar_t> pre{g[ci + j], kCoupled ? scalar_t(0) : g[cf + j], g[cg + j], g[co + j]};
    Peepholes<scalar_t> peep;
    if constexpr (kPeephole) {
      peep.i = pi[j];
      if constexpr (!kCoupled) peep.f = pf[j];
      peep.o = po[j];
    }
    LstmGates<scalar_t> act;
    scalar_t c;
    lstm_cell_gates<scalar_t, kPeephole, kCoupled>(pre, cs[j], act, c, peep);
    g[ci + j] = act.i;
    if constexpr (!kCoupled) g[cf + j] = act.f;
    g[cg + j] = act.g;
    g[co + j] = act.o;
    cell[j] = c;
    if constexpr (kZoneout) {
      const scalar_t cz = zoneout_forward(p.zo_c.at(b, j), cs[j], c);
      czd[j] = cz;
      cs[j] = cz;
    } else {
      cs[j] = c;
    }
  }
  // ĉ of the candidate cells, fused with h.
  ln_moments(cell, H, mean, rstd);
  rs[2] = rstd;
  scalar_t* __restrict h = p.h_out + b * p.ld_h;
  scalar_t* __restrict hs = kProj ? nullptr : p.h_state + b * H;
#pragma GCC ivdep
  for (int64_t j = 0; j < H; ++j) {
    const scalar_t v = (cell[j] - mean) * rstd;
    ch[j] = v;
    scalar_t hv = g[co + j] * lf_tanh(ln_c_w[j] * v + ln_c_b[j]);
    if constexpr (!kProj) {
      if constexpr (kZoneout) hv = zoneout_forward(p.zo_h.at(b, j), hs[j], hv);
      hs[j] = hv;
    }
    h[j] = hv;
  }
}

// The backward of row b: h's gradient (zoneout split) through tanh and c's layer norm, then the gates and the cell
// update (c's gradient zoneout split), then both products' layer norms. Writes dpre (before the layer norms; for the
// biases, the gains and the peepholes), dy_c, and the products' gradients dgates (input) and dgates_rec (recurrent);
// adds the row's terms of the biases' and norms' gradients to its slot of ln_sums.
template <typename scalar_t, bool kProj, bool kPeephole, bool kCoupled, bool kZoneout>
LF_ALWAYS_INLINE void lstm_ln_bwd_row(const LstmBwdStep<scalar_t>& p, int64_t b) {
  using C = GateCols<kCoupled>;
  const int64_t H = p.H, G = C::kGates * H, ci = C::i(H), cf = C::f(H), cg = C::g(H), co = C::o(H);
  const scalar_t* __restrict g = p.gates + b * p.ld_ws;
  const scalar_t* __restrict cp = b < p.n_prev ? p.c_prev + b * p.ld_ws : p.c_init + b * H;
  const scalar_t* __restrict xi = g + p.ln_col;
  const scalar_t* __restrict xh = xi + G;
  const scalar_t* __restrict ch = xh + G;
  const scalar_t* __restrict rs = ch + H;
  const scalar_t* __restrict dh = p.dh + b * p.ld_dh;
  const scalar_t* __restrict dh2 = kProj ? nullptr : p.dh_extra + b * p.ld_dh_extra;
  const scalar_t *__restrict ln_c_w = p.ln_c_w, *__restrict ln_c_b = p.ln_c_b;
  const scalar_t *__restrict ln_ih = p.ln_ih, *__restrict ln_hh = p.ln_hh;
  const scalar_t* __restrict pi = kPeephole ? p.peep + C::peep_i(H) : nullptr;
  const scalar_t* __restrict pf = kPeephole && !kCoupled ? p.peep + C::peep_f(H) : nullptr;
  const scalar_t* __restrict po = kPeephole ? p.peep + C::peep_o(H) : nullptr;
  scalar_t* __restrict dcs = p.dc_state + b * H;
  scalar_t* __restrict dpre = p.dpre + b * G;
  scalar_t* __restrict dy = p.dy_c + b * H;
  scalar_t* __restrict r = kProj ? p.r_out + b * H : nullptr;
  scalar_t* __restrict carry = kZoneout && !kProj ? p.dh_carry + b * H : nullptr;
#pragma GCC ivdep
  for (int64_t j = 0; j < H; ++j) {
    scalar_t dhv = dh[j];
    if constexpr (!kProj) {
      dhv += dh2[j];
      if constexpr (kZoneout) {
        scalar_t to_prev = 0;
        dhv = zoneout_backward(p.zo_h.at(b, j), dhv, to_prev);
        carry[j] = to_prev;
      }
    }
    const scalar_t o = g[co + j], tc = lf_tanh(ln_c_w[j] * ch[j] + ln_c_b[j]);
    dpre[co + j] = dhv * tc * o * (scalar_t(1) - o);
    dy[j] = dhv * o * (scalar_t(1) - tc * tc);
    if constexpr (kProj) r[j] = o * tc;
  }
  scalar_t s[2];
  row_sums<scalar_t, 2>(H, [&](int64_t j, scalar_t* t) {
    t[0] = dy[j] * ln_c_w[j];
    t[1] = t[0] * ch[j];
  }, s);
  const scalar_t m1 = s[0] / scalar_t(H), m2 = s[1] / scalar_t(H), rstd_c = rs[2];
#pragma GCC ivdep
  for (int64_t j = 0; j < H; ++j) {
    const scalar_t ai = g[ci + j];
    const LstmGates<scalar_t> act{ai, kCoupled ? scalar_t(1) - ai : g[cf + j], g[cg + j], g[co + j]};
    Peepholes<scalar_t> peep;
    if constexpr (kPeephole) {
      peep.i = pi[j];
      if constexpr (!kCoupled) peep.f = pf[j];
      peep.o = po[j];
    }
    scalar_t dc_carry = 0, dc_next = dcs[j];
    if constexpr (kZoneout) dc_next = zoneout_backward(p.zo_c.at(b, j), dc_next, dc_carry);
    scalar_t dc = dc_next + layer_norm_backward<scalar_t>(dy[j] * ln_c_w[j], ch[j], rstd_c, m1, m2);
    if constexpr (kPeephole) dc += dpre[co + j] * peep.o;
    LstmGates<scalar_t> dp;
    scalar_t dc_prev;
    lstm_cell_backward_gates<scalar_t, kPeephole, kCoupled>(act, cp[j], dc, dp, dc_prev, peep);
    dpre[ci + j] = dp.i;
    if constexpr (!kCoupled) dpre[cf + j] = dp.f;
    dpre[cg + j] = dp.g;
    if constexpr (kZoneout)
      dcs[j] = dc_prev + dc_carry;
    else
      dcs[j] = dc_prev;
  }
  // Both products' layer norms from the one dpre (four sums in one pass do not vectorise), both gradients in one pass.
  scalar_t qi[2], qh[2];
  row_sums<scalar_t, 2>(G, [&](int64_t k, scalar_t* t) {
    t[0] = dpre[k] * ln_ih[k];
    t[1] = t[0] * xi[k];
  }, qi);
  row_sums<scalar_t, 2>(G, [&](int64_t k, scalar_t* t) {
    t[0] = dpre[k] * ln_hh[k];
    t[1] = t[0] * xh[k];
  }, qh);
  const scalar_t n = scalar_t(G), mi1 = qi[0] / n, mi2 = qi[1] / n, mh1 = qh[0] / n, mh2 = qh[1] / n;
  const scalar_t rstd_i = rs[0], rstd_h = rs[1];
  scalar_t* __restrict dgi = p.dgates + b * G;
  scalar_t* __restrict dgh = p.dgates_rec + b * G;
#pragma GCC ivdep
  for (int64_t k = 0; k < G; ++k) {
    dgi[k] = layer_norm_backward<scalar_t>(dpre[k] * ln_ih[k], xi[k], rstd_i, mi1, mi2);
    dgh[k] = layer_norm_backward<scalar_t>(dpre[k] * ln_hh[k], xh[k], rstd_h, mh1, mh2);
  }
  if (p.ln_sums) {  // (a product of two floats is exact in double: a fused multiply-add changes no bit)
    double* __restrict sb = p.ln_sums + b * (3 * G + 2 * H);
    for (int64_t k = 0; k < G; ++k) {
      const double d = dpre[k];
      sb[k] += d;
      sb[G + k] += d * double(xi[k]);
      sb[2 * G + k] += d * double(xh[k]);
    }
    for (int64_t j = 0; j < H; ++j) {
      const double d = dy[j];
      sb[3 * G + j] += d * double(ch[j]);
      sb[3 * G + H + j] += d;
    }
  }
}

// Rows [r0, r1) of one step: the variant is chosen once for the range.
template <typename scalar_t, bool kProj, bool kPeephole, bool kCoupled>
LF_ALWAYS_INLINE void lstm_ln_fwd_variant(const LstmFwdStep<scalar_t>& p, int64_t r0, int64_t r1) {
  if (p.zoneout)
    for (int64_t b = r0; b < r1; ++b) lstm_ln_fwd_row<scalar_t, kProj, kPeephole, kCoupled, true>(p, b);
  else
    for (int64_t b = r0; b < r1; ++b) lstm_ln_fwd_row<scalar_t, kProj, kPeephole, kCoupled, false>(p, b);
}

template <typename scalar_t, bool kProj, bool kPeephole, bool kCoupled>
LF_ALWAYS_INLINE void lstm_ln_bwd_variant(const LstmBwdStep<scalar_t>& p, int64_t r0, int64_t r1) {
  if (p.zoneout)
    for (int64_t b = r0; b < r1; ++b) lstm_ln_bwd_row<scalar_t, kProj, kPeephole, kCoupled, true>(p, b);
  else
    for (int64_t b = r0; b < r1; ++b) lstm_ln_bwd_row<scalar_t, kProj, kPeephole, kCoupled, false>(p, b);
}

template <typename scalar_t>
LF_ALWAYS_INLINE void lstm_ln_fwd_range(const LstmFwdStep<scalar_t>& p, int64_t r0, int64_t r1) {
  LF_VARIANT_DISPATCH(lstm_ln_fwd_variant, p.h_state == nullptr, p.peep != nullptr, p.coupled, p, r0, r1);
}

template <typename scalar_t>
LF_ALWAYS_INLINE void lstm_ln_bwd_range(const LstmBwdStep<scalar_t>& p, int64_t r0, int64_t r1) {
  LF_VARIANT_DISPATCH(lstm_ln_bwd_variant, p.r_out != nullptr, p.peep != nullptr, p.coupled, p, r0, r1);
}

// The float passes, compiled per x86-64 level (layer_norm_rows_f32.cpp).
void ln_normalize_range_f32(float* rows_base, int64_t ld, int64_t r0, int64_t r1, int64_t n, int64_t rstd_col);
void gru_ln_row_f32(float* row, int64_t G, const float* gamma, const float* bias, float* ws_xhat, float* ws_rstd);
void ln_backward_row_f32(const float* dy, const float* gamma, const float* xhat, float rstd, int64_t n, float* out);
void lstm_ln_fwd_range_f32(const LstmFwdStep<float>& p, int64_t r0, int64_t r1);
void lstm_ln_bwd_range_f32(const LstmBwdStep<float>& p, int64_t r0, int64_t r1);

}  // namespace cpu
}  // namespace lstm_fused
