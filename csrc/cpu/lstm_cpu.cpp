// The LSTM on the CPU (CpuOps' LSTM ops): its sequence loops — per step the recurrent GEMM and the parallel pointwise
// pass (cpu/lstm_cpu_pointwise.h over cell_math.h) — and peephole gradients, run by the layer driver
// (cpu/layer_cpu.h) as CpuLstm; the stack is host/stack_loop.h over the layer.
#include <cstring>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include "host/stack_loop.h"
#include "host/arg_checks.h"
#include "cpu/cpu_ops.h"
#include "cpu/layer_cpu.h"
#include "cpu/cpu_common.h"
#include "cpu/cpu_gemm.h"
#include "cpu/layer_norm_cpu.h"
#include "cpu/lstm_cpu_pointwise.h"

namespace lstm_fused {

using namespace cpu;

namespace {

template <typename scalar_t>
void lstm_fwd_loop(const CpuFwdParams<scalar_t>& prm) {
  const SeqLayout& seq = prm.seq;
  const LayerSizes& s = prm.s;
  const scalar_t *x = prm.x, *w_ih = prm.w_ih, *w_hh = prm.w_hh, *w_hr = prm.w_hr;
  const scalar_t* bias = prm.bias;   // [G] b_ih + b_hh, added in the pointwise pass
  const scalar_t* w_ph = prm.cell_w;  // [3 or 2, H] peephole weights or nullptr
  scalar_t *out = prm.out, *h_state = prm.h_state, *c_state = prm.c_state, *ws = prm.ws, *r_buf = prm.r_buf;
  const int64_t ld_out = prm.ld_out;
  const int64_t H = s.H, P = s.P, G = s.G(), ld_ws = s.lstm_ws_cols();
  const bool ln = s.layer_norm;
  // Layer norm: the products go to their own columns (x̂_ih, x̂_hh) and are normalised there, rows at a time.
  const int64_t ln_col = s.ln_col();
  const GemmOperand<scalar_t> w_ih_t(true, s.I, G, w_ih, s.I);         // W_ihᵀ [I, 4H]
  const GemmOperand<scalar_t> w_hh_t(true, P, G, w_hh, P);              // W_hhᵀ [P, 4H], reused every step
  const GemmOperand<scalar_t> w_hr_t(true, H, w_hr ? P : 0, w_hr, H);  // W_hrᵀ [H, P]
  const int64_t chunk_steps =
      std::max<int64_t>(1, kChunkBytes / static_cast<int64_t>(sizeof(scalar_t) * ld_ws * std::max<int64_t>(1, seq.B)));
  std::vector<scalar_t> scratch(ws ? 0 : std::min(seq.T, chunk_steps) * seq.B * ld_ws);
  const bool split_rows =
      rows_per_thread(seq.B, P, G, sizeof(scalar_t), w_hh_t.packed && (!w_hr || w_hr_t.packed));
  for (int64_t s0 = 0; s0 < seq.T; s0 += chunk_steps) {
    const int64_t s1 = std::min(seq.T, s0 + chunk_steps);
    // The chunk's steps are one contiguous row range in either direction.
    const int64_t ta = seq.time_at(s0), tb = seq.time_at(s1 - 1);
    const int64_t row_lo = std::min(seq.offsets[ta], seq.offsets[tb]);
    const int64_t row_hi = std::max(seq.offsets[ta] + seq.batch_sizes[ta], seq.offsets[tb] + seq.batch_sizes[tb]);
    scalar_t* base = ws ? ws + row_lo * ld_ws : scratch.data();  // gates of row row_lo
    // Input projection of the chunk's steps in one GEMM; biases are added in the pointwise pass.
    if (ln) {
      gemm<scalar_t>(false, row_hi - row_lo, x + row_lo * s.I, s.I, w_ih_t, false, base + ln_col, ld_ws);
      ln_normalize_rows(base + ln_col, ld_ws, row_hi - row_lo, G, 2 * G + H);
    } else {
      gemm<scalar_t>(false, row_hi - row_lo, x + row_lo * s.I, s.I, w_ih_t, false, base, ld_ws);
    }
    // Rows [r0, r1) of one step (clipped to the rows active at it): every product and the cell update of a
    // row read only that row's state, so a thread that owns rows needs nobody else's.
    auto step_rows = [&](int64_t step, int64_t r0, int64_t r1) {
      const int64_t t = seq.time_at(step);
      r1 = std::min(r1, seq.batch_sizes[t]);
      if (r0 >= r1) return;
      scalar_t* g = base + (seq.offsets[t] - row_lo) * ld_ws;
      scalar_t* o = out + seq.offsets[t] * ld_out;
      if (ln)
        gemm<scalar_t>(false, r1 - r0, h_state + r0 * P, P, w_hh_t, false, g + r0 * ld_ws + ln_col + G, ld_ws);
      else
        gemm<scalar_t>(false, r1 - r0, h_state + r0 * P, P, w_hh_t, true, g + r0 * ld_ws, ld_ws);
      LstmFwdStep<scalar_t> p;
      p.H = H;
      p.coupled = s.coupled;
      p.peep = w_ph;
      p.gates = g;
      p.cells = g + G;
      p.ld_ws = ld_ws;
      p.bias = bias;
      p.c_state = c_state;
      p.h_out = w_hr ? r_buf : o;
      p.ld_h = w_hr ? H : ld_out;
      p.h_state = w_hr ? nullptr : h_state;
      const ZoneoutMask<scalar_t> zo_h = prm.zo_h.advanced(seq.offsets[t]);
      p.zoneout = s.zoneout();
      p.zo_h = zo_h;
      p.zo_c = prm.zo_c.advanced(seq.offsets[t]);
      p.cells_zoned = s.zoneout_c ? g + G + H : g + G;
      if (ln) {
        p.ln_ih = prm.ln_ih, p.ln_hh = prm.ln_hh, p.ln_c_w = prm.ln_c_w, p.ln_c_b = prm.ln_c_b, p.ln_col = ln_col;
        at::parallel_for(r0, r1, ln_row_grain(G), [&](int64_t b, int64_t e) { lstm_ln_fwd_rows(p, b, e); });
      } else {
        at::parallel_for(r0 * H, r1 * H, kPointwiseGrain,
                         [&](int64_t b, int64_t e) { lstm_fwd_pointwise_dispatch(p, b, e); });
      }
      if (w_hr) {
        gemm<scalar_t>(false, r1 - r0, r_buf + r0 * H, H, w_hr_t, false, o + r0 * ld_out, ld_out);
        if (s.zoneout_h)  // zoneout of the projected h: the candidate is the GEMM's row, the previous value the state
          for (int64_t b = r0; b < r1; ++b)
            for (int64_t j = 0; j < P; ++j)
              o[b * ld_out + j] = zoneout_forward(zo_h.at(b, j), h_state[b * P + j], o[b * ld_out + j]);
        copy_rows(h_state + r0 * P, P, o + r0 * ld_out, ld_out, r1 - r0, P);
      }
    };
    run_steps(seq.B, s0, s1, step_rows, split_rows);
  }
}

template <typename scalar_t>
void lstm_bwd_loop(const CpuBwdParams<scalar_t>& prm) {
  const SeqLayout& seq = prm.seq;
  const LayerSizes& s = prm.s;
  const scalar_t *gout = prm.gout, *c0 = prm.c0, *w_hh = prm.w_hh, *w_hr = prm.w_hr, *ws = prm.ws;
  const scalar_t* w_ph = prm.cell_w;  // [3 or 2, H] peephole weights or nullptr
  const int64_t ld_gout = prm.ld;
  scalar_t *dh_state = prm.dh_state, *dc_state = prm.dc_state, *dgates = prm.dg;
  scalar_t *dh_total = prm.dh_total, *r_all = prm.r_all, *dr_buf = prm.dr_buf;
  const int64_t H = s.H, P = s.P, G = s.G(), ld_ws = s.lstm_ws_cols();
  // Column of c_t as the next step reads it: the zoned-out one when c has zoneout.
  const int64_t c_col = s.zoneout_c ? G + H : G;
  scalar_t* dh_carry = prm.dh_carry;  // [B, P] with zoneout on h
  const GemmOperand<scalar_t> w_hh_op(false, G, P, w_hh, P);          // W_hh [G, P]
  const GemmOperand<scalar_t> w_hr_op(false, w_hr ? P : 0, H, w_hr, H);  // W_hr [P, H]
  auto step_rows = [&](int64_t step, int64_t r0, int64_t r1) {
    const int64_t t = seq.time_at(step);
    r1 = std::min(r1, seq.batch_sizes[t]);
    if (r0 >= r1) return;
    const int64_t row0 = seq.offsets[t];
    int64_t prev, n_prev;
    seq.prev_rows(t, prev, n_prev);
    LstmBwdStep<scalar_t> p;
    p.H = H;
    p.coupled = s.coupled;
    p.peep = w_ph;
    p.gates = ws + row0 * ld_ws;
    p.cells = p.gates + G;
    p.ld_ws = ld_ws;
    p.c_prev = n_prev > 0 ? ws + seq.offsets[prev] * ld_ws + c_col : nullptr;
    p.n_prev = n_prev;
    p.c_init = c0;
    p.dc_state = dc_state;
    p.dgates = dgates + row0 * G;
    const ZoneoutMask<scalar_t> zo_h = prm.zo_h.advanced(row0);
    p.zoneout = s.zoneout();
    p.zo_h = zo_h;
    p.zo_c = prm.zo_c.advanced(row0);
    p.dh_carry = dh_carry;
    if (w_hr) {
      // h_t = W_hr·(o·tanh(c_t)): sum the two gradients reaching h_t, then map them back through W_hr. With
      // zoneout on h, the sum splits first into the candidate's part (kept, for W_hr's gradient too) and h_{t-1}'s.
      scalar_t* dht = dh_total + row0 * P;
      const scalar_t* go = gout + row0 * ld_gout;
      for (int64_t b = r0; b < r1; ++b)
        for (int64_t j = 0; j < P; ++j) dht[b * P + j] = dh_state[b * P + j] + go[b * ld_gout + j];
      if (s.zoneout_h)
        for (int64_t b = r0; b < r1; ++b)
          for (int64_t j = 0; j < P; ++j) {
            scalar_t carry = 0;
            dht[b * P + j] = zoneout_backward(zo_h.at(b, j), dht[b * P + j], carry);
            dh_carry[b * P + j] = carry;
          }
      gemm<scalar_t>(false, r1 - r0, dht + r0 * P, P, w_hr_op, false, dr_buf + r0 * H, H);
      p.dh = dr_buf;
      p.ld_dh = H;
      p.r_out = r_all + row0 * H;
    } else {
      p.dh = dh_state;
      p.ld_dh = P;
      p.dh_extra = gout + row0 * ld_gout;
      p.ld_dh_extra = ld_gout;
    }
    if (s.layer_norm) {
      p.ln_ih = prm.ln_ih, p.ln_hh = prm.ln_hh, p.ln_c_w = prm.ln_c_w, p.ln_c_b = prm.ln_c_b, p.ln_col = s.ln_col();
      p.dpre = prm.dpre + row0 * G;
      p.dgates_rec = prm.dg_rec + row0 * G;
      p.dy_c = prm.dy_c + row0 * H;
      p.ln_sums = prm.ln_sums;
      at::parallel_for(r0, r1, ln_row_grain(G), [&](int64_t b, int64_t e) { lstm_ln_bwd_rows(p, b, e); });
    } else {
      at::parallel_for(r0 * H, r1 * H, kPointwiseGrain,
                       [&](int64_t b, int64_t e) { lstm_bwd_pointwise_dispatch(p, b, e); });
    }
    // Gradient for h_{t-1} (plus, with zoneout on h, the part that reaches it directly). Rows that started from h0
    // at this step keep it: it is their grad of h0.
    const scalar_t* dg_rec = s.layer_norm ? p.dgates_rec : p.dgates;  // (the same gradients without layer norm)
    gemm<scalar_t>(false, r1 - r0, dg_rec + r0 * G, G, w_hh_op, false, dh_state + r0 * P, P);
    if (s.zoneout_h)
      for (int64_t b = r0; b < r1; ++b)
        for (int64_t j = 0; j < P; ++j) dh_state[b * P + j] += dh_carry[b * P + j];
  };
  // Processing order backwards: steps T-1 .. 0 of step_rows' numbering.
  run_steps(seq.B, 0, seq.T, [&](int64_t i, int64_t r0, int64_t r1) { step_rows(seq.T - 1 - i, r0, r1); },
            rows_per_thread(seq.B, P, G, sizeof(scalar_t), w_hh_op.packed && (!w_hr || w_hr_op.packed)));
}

// Peephole weight gradients [3 or 2, H]: per unit, the fixed-order sum over all rows of dpre_i·c_{t-1},
// dpre_f·c_{t-1} and dpre_o·c_t (c_{t-1} from the previous step's workspace row, or c0).
template <typename scalar_t>
void peephole_grads(const SeqLayout& seq, const LayerSizes& s, const scalar_t* dg, const scalar_t* ws,
                    const scalar_t* c0, scalar_t* out) {
  const int64_t H = s.H, G = s.G(), ld_ws = s.lstm_ws_cols();
  const int64_t ci = 0, cf = H, co = s.coupled ? 2 * H : 3 * H;
  const int64_t c_col = s.zoneout_c ? G + H : G;  // c_{t-1} as the step read it (zoned out); o saw c̃_t at G
  at::parallel_for(0, H, 64, [&](int64_t j0, int64_t j1) {
    std::vector<double> acc_i(j1 - j0, 0.0), acc_f(j1 - j0, 0.0), acc_o(j1 - j0, 0.0);
    for (int64_t t = 0; t < seq.T; ++t) {
      int64_t prev, n_prev;
      seq.prev_rows(t, prev, n_prev);
      for (int64_t b = 0; b < seq.batch_sizes[t]; ++b) {
        const int64_t r = seq.offsets[t] + b;
        const scalar_t* cp = b < n_prev ? ws + (seq.offsets[prev] + b) * ld_ws + c_col : c0 + b * H;
        const scalar_t* c = ws + r * ld_ws + G;
        const scalar_t* d = dg + r * G;
        for (int64_t j = j0; j < j1; ++j) {
          acc_i[j - j0] += double(d[ci + j]) * double(cp[j]);
          if (!s.coupled) acc_f[j - j0] += double(d[cf + j]) * double(cp[j]);
          acc_o[j - j0] += double(d[co + j]) * double(c[j]);
        }
      }
    }
    const int64_t row_o = s.coupled ? 1 : 2;
    for (int64_t j = j0; j < j1; ++j) {
      out[j] = static_cast<scalar_t>(acc_i[j - j0]);
      if (!s.coupled) out[H + j] = static_cast<scalar_t>(acc_f[j - j0]);
      out[row_o * H + j] = static_cast<scalar_t>(acc_o[j - j0]);
    }
  });
}

// The LSTM on the CPU's layer driver (cpu/layer_cpu.h).
struct CpuLstm : LstmCell {
  // The backward's row pass sums the biases' and layer norms' gradients per batch slot (CpuBwdParams::ln_sums).
  static constexpr bool kLnSumsInLoop = true;
  template <typename scalar_t>
  static void fwd_loop(const CpuFwdParams<scalar_t>& p) {
    lstm_fwd_loop(p);
  }
  template <typename scalar_t>
  static void bwd_loop(const CpuBwdParams<scalar_t>& p) {
    lstm_bwd_loop(p);
  }
  template <typename scalar_t>
  static void cell_weight_grad(const CpuBwdParams<scalar_t>& p, scalar_t* out) {
    // (Peepholes act after the layer norms: their gradients take the pre-norm ones.)
    peephole_grads<scalar_t>(p.seq, p.s, p.s.layer_norm ? p.dpre : p.dg, p.ws, p.c0, out);
  }
};

}  // namespace

LayerOutputs CpuOps::lstm_layer_fwd(const LayerArgs& a) { return layer_fwd<CpuLstm>(a); }

LayerGrads CpuOps::lstm_layer_bwd(const LayerBwdArgs& a) { return layer_bwd<CpuLstm>(a); }

StackOutputs CpuOps::lstm_stack_fwd(const LayerArgs& a) { return stack_loop(a, &CpuOps::lstm_layer_fwd); }

LayerGrads CpuOps::lstm_stack_bwd(const StackBwdArgs& a) { return stack_bwd_loop(a, &CpuOps::lstm_layer_bwd); }

}  // namespace lstm_fused
