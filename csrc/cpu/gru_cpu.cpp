// The GRU on the CPU (CpuOps' GRU ops): its sequence loops — per step one GEMM of h against W_hhᵀ and one fused
// pointwise pass (cpu/gru_cpu_pointwise.h) — run by the layer driver (cpu/layer_cpu.h) as CpuGru.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include "host/arg_checks.h"
#include "cpu/cpu_ops.h"
#include "cpu/layer_cpu.h"
#include "cpu/cpu_common.h"
#include "cpu/cpu_gemm.h"
#include "cpu/gru_cpu_pointwise.h"
#include "cpu/layer_norm_cpu.h"

namespace lstm_fused {

using namespace cpu;

namespace {

template <typename scalar_t>
void gru_fwd_loop(const CpuFwdParams<scalar_t>& prm) {
  const SeqLayout& seq = prm.seq;
  const int64_t I = prm.s.I, H = prm.s.H;
  const scalar_t *x = prm.x, *w_ih = prm.w_ih, *w_hh = prm.w_hh;
  const scalar_t* b_ih = prm.bias;    // [3H] (zeros without bias), added after the input projection
  const scalar_t* b_hh = prm.cell_w;  // [3H] (zeros without bias), inside r ⊙ (W_hn·h + b_hn)
  scalar_t *out = prm.out, *h_state = prm.h_state, *ws = prm.ws;
  const int64_t ld_out = prm.ld_out;
  const int64_t G = 3 * H;
  const int64_t ld_ws = prm.s.gru_ws_cols();
  // Layer norm: each product normalised over its row (x̂ and rstd kept in the workspace from column G + H), then
  // scaled by its gain; the cell then runs on those as on the plain products.
  const bool ln = prm.s.layer_norm;
  const int64_t xi_col = G + H, xh_col = 2 * G + H, rs_col = 3 * G + H;
  const GemmOperand<scalar_t> w_ih_t(true, I, G, w_ih, I);
  const GemmOperand<scalar_t> w_hh_t(true, H, G, w_hh, H);
  const int64_t chunk_steps =
      std::max<int64_t>(1, kChunkBytes / static_cast<int64_t>(sizeof(scalar_t) * G * std::max<int64_t>(1, seq.B)));
  std::vector<scalar_t> xw(std::min(seq.T, chunk_steps) * seq.B * G), hh(seq.B * G);
  std::vector<scalar_t> ws_step(ws ? 0 : seq.B * 4 * H);  // inference: one step's gates, not kept
  const bool split_rows = rows_per_thread(seq.B, H, G, sizeof(scalar_t), w_hh_t.packed);
  for (int64_t s0 = 0; s0 < seq.T; s0 += chunk_steps) {
    const int64_t s1 = std::min(seq.T, s0 + chunk_steps);
    const int64_t ta = seq.time_at(s0), tb = seq.time_at(s1 - 1);
    const int64_t row_lo = std::min(seq.offsets[ta], seq.offsets[tb]);
    const int64_t row_hi = std::max(seq.offsets[ta] + seq.batch_sizes[ta], seq.offsets[tb] + seq.batch_sizes[tb]);
    // Input projection of the chunk's steps in one GEMM, then b_ih.
    gemm<scalar_t>(false, row_hi - row_lo, x + row_lo * I, I, w_ih_t, false, xw.data(), G);
    at::parallel_for(0, row_hi - row_lo, 64, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        scalar_t* row = xw.data() + r * G;
        if (ln) {
          scalar_t* w = ws ? ws + (row_lo + r) * ld_ws : nullptr;
          gru_ln_row(row, G, prm.ln_ih, b_ih, w ? w + xi_col : nullptr, w ? w + rs_col : nullptr);
        } else {
          for (int64_t c = 0; c < G; ++c) row[c] += b_ih[c];
        }
      }
    });
    // Rows [r0, r1) of one step (clipped to its active rows); rows never interact (see run_steps).
    auto step_rows = [&](int64_t step, int64_t r0, int64_t r1) {
      const int64_t t = seq.time_at(step), off = seq.offsets[t];
      r1 = std::min(r1, seq.batch_sizes[t]);
      if (r0 >= r1) return;
      gemm<scalar_t>(false, r1 - r0, h_state + r0 * H, H, w_hh_t, false, hh.data() + r0 * G, G);
      if (ln)
        at::parallel_for(r0, r1, ln_row_grain(G), [&](int64_t b0, int64_t b1) {
          for (int64_t b = b0; b < b1; ++b) {
            scalar_t* w = ws ? ws + (off + b) * ld_ws : nullptr;
            gru_ln_row<scalar_t>(hh.data() + b * G, G, prm.ln_hh, nullptr, w ? w + xh_col : nullptr,
                                 w ? w + rs_col + 1 : nullptr);
          }
        });
      GruFwdStep<scalar_t> p;
      p.H = H;
      p.xw = xw.data() + (off - row_lo) * G;
      p.hh = hh.data();
      p.b_hh = b_hh;
      p.ws = ws ? ws + off * ld_ws : ws_step.data();
      p.ld_ws = ws ? ld_ws : 4 * H;
      p.h_state = h_state;
      p.h_out = out + off * ld_out;
      p.ld_h = ld_out;
      p.zoneout = prm.s.zoneout_h;
      p.zo_h = prm.zo_h.advanced(off);
      at::parallel_for(r0 * H, r1 * H, kPointwiseGrain, [&](int64_t b, int64_t e) { gru_fwd_pointwise_dispatch(p, b, e); });
    };
    run_steps(seq.B, s0, s1, step_rows, split_rows);
  }
}

template <typename scalar_t>
void gru_bwd_loop(const CpuBwdParams<scalar_t>& prm) {
  const SeqLayout& seq = prm.seq;
  const int64_t H = prm.s.H, ld = prm.ld;
  const scalar_t *gout = prm.gout, *out = prm.out, *h0 = prm.h0, *w_hh = prm.w_hh, *ws = prm.ws;
  scalar_t *dh_state = prm.dh_state, *dgx = prm.dg, *dgh = prm.dg_rec;
  const int64_t G = 3 * H;
  const int64_t ld_ws = prm.s.gru_ws_cols();
  const bool ln = prm.s.layer_norm;
  const int64_t xi_col = G + H, xh_col = 2 * G + H, rs_col = 3 * G + H;  // with layer norm (gru_fwd_loop)
  const GemmOperand<scalar_t> w_hh_op(false, G, H, w_hh, H);
  auto step_rows = [&](int64_t step, int64_t r0, int64_t r1) {
    const int64_t t = seq.time_at(step), off = seq.offsets[t];
    r1 = std::min(r1, seq.batch_sizes[t]);
    if (r0 >= r1) return;
    int64_t prev, n_prev;
    seq.prev_rows(t, prev, n_prev);
    GruBwdStep<scalar_t> p;
    p.H = H;
    p.ws = ws + off * ld_ws;
    p.ld_ws = ld_ws;
    p.h_prev = n_prev > 0 ? out + seq.offsets[prev] * ld : nullptr;
    p.ld_hp = ld;
    p.n_prev = n_prev;
    p.h0 = h0;
    p.gout = gout + off * ld;
    p.ld_gout = ld;
    p.dh_state = dh_state;
    // With layer norm the cell's gradients are the pre-norm ones (for the biases and gains); each product's own
    // follows through its norm.
    p.dgx = (ln ? prm.dpre : dgx) + off * G;
    p.dgh = (ln ? prm.dpre_rec : dgh) + off * G;
    p.zoneout = prm.s.zoneout_h;
    p.zo_h = prm.zo_h.advanced(off);
    at::parallel_for(r0 * H, r1 * H, kPointwiseGrain, [&](int64_t b, int64_t e) { gru_bwd_pointwise_dispatch(p, b, e); });
    if (ln)
      at::parallel_for(r0, r1, ln_row_grain(G), [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          const scalar_t* w = p.ws + b * ld_ws;
          ln_backward_row(p.dgx + b * G, prm.ln_ih, w + xi_col, w[rs_col], G, dgx + (off + b) * G);
          ln_backward_row(p.dgh + b * G, prm.ln_hh, w + xh_col, w[rs_col + 1], G, dgh + (off + b) * G);
        }
      });
    // Gradient for h_{t-1}: the direct z ⊙ dh (with zoneout also m ⊙ dh; already in dh_state) plus the recurrent
    // product.
    gemm<scalar_t>(false, r1 - r0, dgh + (off + r0) * G, G, w_hh_op, true, dh_state + r0 * H, H);
  };
  // Processing order backwards: steps T-1 .. 0 of step_rows' numbering.
  run_steps(seq.B, 0, seq.T, [&](int64_t i, int64_t r0, int64_t r1) { step_rows(seq.T - 1 - i, r0, r1); },
            rows_per_thread(seq.B, H, G, sizeof(scalar_t), w_hh_op.packed));
}

// The GRU on the CPU's layer driver (cpu/layer_cpu.h).
struct CpuGru : GruCell {
  static constexpr bool kLnSumsInLoop = false;  // its gradients' sums are column passes after the loop
  template <typename scalar_t>
  static void fwd_loop(const CpuFwdParams<scalar_t>& p) {
    gru_fwd_loop(p);
  }
  template <typename scalar_t>
  static void bwd_loop(const CpuBwdParams<scalar_t>& p) {
    gru_bwd_loop(p);
  }
  // b_hh, or zeros without biases: the CPU pointwise pass always adds it.
  static Tensor cell_weight(const DirectionWeights& w) {
    return w.b_hh ? GruCell::cell_weight(w) : at::zeros({w.w_hh.size(0)}, w.w_hh.options());
  }
  template <typename scalar_t>
  static void cell_weight_grad(const CpuBwdParams<scalar_t>&, scalar_t*) {}
};

}  // namespace

LayerOutputs CpuOps::gru_layer_fwd(const LayerArgs& a) { return layer_fwd<CpuGru>(a); }

LayerGrads CpuOps::gru_layer_bwd(const LayerBwdArgs& a) { return layer_bwd<CpuGru>(a); }

}  // namespace lstm_fused
