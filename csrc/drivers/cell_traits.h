// What the CUDA path's layer driver (drivers/layer_driver.h) needs to know about a cell beyond host/cells.h: its step
// parameter types and the step fields and gradients only it has. Everything else
// (buffers, the step table, the path choice, the GEMM path, the projection, the gradient GEMMs) is the driver's, once.
#pragma once

#include <optional>

#include <ATen/ATen.h>

#include "host/cells.h"
#include "drivers/driver_common.h"
#include "kernels/gru_step_phases.h"
#include "kernels/layer_norm_phases.h"
#include "kernels/lstm_step_phases.h"

namespace lstm_fused {
namespace cuda_driver {

using at::Tensor;

// The rows one backward step of one direction touches: its own (from `off`), the previous step's h_{t-1} / c_{t-1}
// (n_prev rows from `prev_off`) and, where there is one, the later step's (from `later_off`), processed just before.
struct BwdRows {
  int64_t off, prev_off, n_prev;
  bool has_later;
  int64_t later_off;
};

// A direction's layer-norm gains (kernels/lstm_step_phases.h), from its checked parameters (host/arg_checks.h).
template <typename T>
cuda_step::LnGains<T> ln_gains(const DirectionWeights& w) {
  cuda_step::LnGains<T> g;
  if (w.ln.empty()) return g;
  g.ih = w.ln[0].const_data_ptr<T>();
  g.hh = w.ln[1].const_data_ptr<T>();
  if (w.ln.size() > 2) g.c_w = w.ln[2].const_data_ptr<T>(), g.c_b = w.ln[3].const_data_ptr<T>();
  return g;
}

// LSTM.
struct LstmTraits : LstmCell {
  template <typename T, typename A>
  using FwdStep = cuda_step::FwdStepParams<T, A>;
  template <typename T, typename A>
  using BwdStep = cuda_step::BwdStepParams<T, A>;

  // Workspace column of c_t as the next step reads it: the zoned-out one when c has zoneout (the candidate c̃_t is at G).
  static int64_t c_col(const LayerSizes& s) { return s.G() + (s.zoneout_c ? s.H : 0); }

  // The forward step's LSTM fields (step `step` at time t, whose rows start at row `off`). Pass: the driver's FwdPass
  // (its buffers and sizes).
  template <typename T, typename A, typename Pass>
  static void fill_fwd(FwdStep<T, A>& p, const Pass& f, int64_t d, int64_t step, int64_t off, int64_t prev,
                       int64_t n_prev) {
    const LayerSizes& s = f.s;
    p.P = s.P;
    p.coupled = s.coupled;
    p.peep = s.peephole ? f.cell_w[d].template const_data_ptr<T>() : nullptr;
    p.ld_ws = f.LW;
    p.ld_h = s.proj ? s.H : f.D * s.P;
    p.c_prev = n_prev > 0 ? f.ws.template const_data_ptr<A>() + f.ws_row(d, step - 1, prev) + c_col(s) : nullptr;
    p.c0 = f.c0c.template const_data_ptr<T>() + d * f.c0c.stride(0);
    p.ld_xw = f.G;
    p.c_n = f.c_n.template data_ptr<T>() + d * f.B * s.H;
    p.zo_c = mask_rows<A>(f.a.zoneout_c, d, off);
    if (!s.proj) p.zo_h = mask_rows<A>(f.a.zoneout_h, d, off);  // with a projection: FwdPass::project
    if (s.layer_norm) {
      p.ln = ln_gains<T>(f.dirs[d]);
      p.ln_bias = f.in_bias[d].defined() ? f.in_bias[d].template const_data_ptr<T>() : nullptr;
      p.ln_col = s.ln_col();
      if (f.a.need_workspace) {  // where FwdPass::input_norm wrote x̂_ih (fill_input_norm)
        p.xhat_ih = f.ws.template const_data_ptr<A>() + (d * f.N + off) * f.LW + p.ln_col;
        p.ld_xhat_ih = f.LW;
      } else {
        p.xhat_ih = f.xw[d].template const_data_ptr<A>() + off * f.G;
        p.ld_xhat_ih = f.G;
      }
    }
  }

  // The input side's norm (FwdPass::input_norm): x̂_ih and its rstd into the workspace in training; in place in
  // inference (the workspace then holds two steps' rows, and only this call's steps read x̂_ih).
  template <typename T, typename A, typename Pass>
  static void fill_input_norm(cuda_step::RowNormParams<T, A>& p, Pass& f, int64_t d) {
    if (!f.a.need_workspace) {
      p.xhat = f.xw[d].template data_ptr<A>(), p.ld_xhat = f.G;
      return;
    }
    A* ws = f.ws.template data_ptr<A>() + d * f.N * f.LW;
    p.xhat = ws + f.s.ln_col(), p.ld_xhat = f.LW;
    p.rstd = ws + cuda_step::LstmLnCols{f.G, f.H, f.s.ln_col()}.rstd(0), p.ld_rstd = f.LW;
  }

  // One step of every direction, forward or backward: the step kernel, or with layer norm its row kernel (after the
  // GEMM).
  template <typename Runner, typename Pass, typename DP>
  static void run_fwd_step(Runner& run, Pass& pass, const DP& dp, int64_t) {
    if (pass.s.layer_norm)
      run.ln_step(dp);
    else
      run.step(dp);
  }
  template <typename Runner, typename Pass, typename DP>
  static void run_bwd_step(Runner& run, Pass& pass, const DP& dp, int64_t step) {
    run_fwd_step(run, pass, dp, step);
  }

  // The backward step's LSTM fields. Pass: the driver's BwdPass.
  template <typename T, typename A, typename Pass>
  static void fill_bwd(BwdStep<T, A>& p, const Pass& b, int64_t d, const BwdRows& r) {
    const LayerSizes& s = b.s;
    const int64_t N = b.N, G = b.G, H = s.H, P = s.P, B = b.B;
    p.P = P;
    p.coupled = s.coupled;
    p.peep = s.peephole ? b.cell_w[d].template const_data_ptr<T>() : nullptr;
    p.ld_ws = b.LW;
    p.ld_gout = b.D * P;
    p.dg_later = r.has_later ? b.dg_rec.template const_data_ptr<A>() + (d * N + r.later_off) * G : nullptr;
    p.gout = b.gout.defined() ? b.gout.template const_data_ptr<T>() + r.off * b.D * P + d * P : nullptr;
    p.c_prev = r.n_prev > 0 ? b.ws.template const_data_ptr<A>() + (d * N + r.prev_off) * b.LW + c_col(s) : nullptr;
    p.c0 = b.c0c.template const_data_ptr<T>() + d * B * H;
    p.dc_state = b.dc_state.template data_ptr<A>() + d * B * H;
    p.dg = b.dg.template data_ptr<A>() + (d * N + r.off) * G;
    p.zo_h = mask_rows<A>(b.zoneout_h, d, r.off);
    p.zo_c = mask_rows<A>(b.zoneout_c, d, r.off);
    if (s.zoneout_h) p.dh_carry = b.dh_carry.template data_ptr<A>() + d * B * P;
    if (s.layer_norm) {
      p.ln = ln_gains<T>(b.dirs[d]);
      p.ln_col = s.ln_col();
      p.dpre = b.dpre.template data_ptr<A>() + (d * N + r.off) * G;
      p.dg_rec = b.dg_rec.template data_ptr<A>() + (d * N + r.off) * G;
      p.dy_c = b.dy_c.template data_ptr<A>() + (d * N + r.off) * H;
    }
    if (s.proj) {
      p.dh_tot = b.dh_tot.template data_ptr<A>() + (d * N + r.off) * P;
      p.dr = b.dr.template const_data_ptr<A>() + d * B * H;
      p.r_out = b.r_all.template data_ptr<A>() + (d * N + r.off) * H;
    }
  }

  // dh0 of rows [b0, b0 + n) of the batch, which started from h0 at the step whose rows start at row r0: the
  // recurrent product, plus with zoneout on h the part of h_t's gradient that reaches h0 directly (the carry the
  // step left; no later step touched those rows). c0's gradient is carried in dc_state.
  template <typename Pass>
  static void h0_grad_rows(Tensor& rows, const Pass& b, int64_t d, int64_t, int64_t b0, int64_t n) {
    if (b.s.zoneout_h) rows.add_(b.dh_carry[d].narrow(0, b0, n));
  }

  // Peephole gradients: per unit, sums over rows of dpre_i·c_{t-1}, dpre_f·c_{t-1} and dpre_o·c_t.
  template <typename Pass>
  static void cell_weight_grads(LayerGrads& g, const Pass& b, int64_t d) {
    const LayerSizes& s = b.s;
    if (!s.peephole) return;
    const int64_t H = s.H, G = b.G;
    const Tensor dgd = s.layer_norm ? b.dpre[d] : b.dg[d];  // (the peepholes act after the norms)
    const Tensor cells = b.ws[d].narrow(1, G, H);  // the candidates c̃_t, which o saw
    const Tensor c_prev = gather_prev_hidden(b.lh[d].view(), b.batch_sizes.has_value(), b.ws[d].narrow(1, c_col(s), H),
                                             b.c0[d].to(b.At).contiguous());
    const int64_t co = s.coupled ? 2 * H : 3 * H;
    std::vector<Tensor> rows{(dgd.narrow(1, 0, H) * c_prev).sum(0)};
    if (!s.coupled) rows.push_back((dgd.narrow(1, H, H) * c_prev).sum(0));
    rows.push_back((dgd.narrow(1, co, H) * cells).sum(0));
    g.w_ph.push_back(at::stack(rows).to(b.Tt));
  }
};

// GRU.
struct GruTraits : GruCell {
  template <typename T, typename A>
  using FwdStep = cuda_step::GruFwdStepParams<T, A>;
  template <typename T, typename A>
  using BwdStep = cuda_step::GruBwdStepParams<T, A>;


  template <typename T, typename A, typename Pass>
  static void fill_fwd(FwdStep<T, A>& p, const Pass& f, int64_t d, int64_t, int64_t off, int64_t, int64_t) {
    p.b_hh = f.cell_w[d].defined() ? f.cell_w[d].template const_data_ptr<T>() : nullptr;
    p.ld_ws = f.LW;
    p.zo_h = mask_rows<A>(f.a.zoneout_h, d, off);
    if (f.s.layer_norm) p.xw_ln = f.xw[d].template const_data_ptr<A>() + off * f.G;  // γ_ih ⊙ x̂_ih + b_ih
  }

  // Workspace columns of the layer-norm GRU's rows (LayerSizes::gru_ws_cols): from ln_col x̂_ih [G], x̂_hh [G], then the
  // two rstd.
  static int64_t rstd_col(const LayerSizes& s, int which) { return ln_col(s) + 2 * s.G() + which; }

  // The input side's norm (FwdPass::input_norm): γ_ih ⊙ x̂_ih + b_ih in place, which the cell reads (xw_ln); x̂_ih and
  // its rstd into the workspace in training.
  template <typename T, typename A, typename Pass>
  static void fill_input_norm(cuda_step::RowNormParams<T, A>& p, Pass& f, int64_t d) {
    p.gamma = f.dirs[d].ln[0].template const_data_ptr<T>();
    p.beta = f.in_bias[d].defined() ? f.in_bias[d].template const_data_ptr<T>() : nullptr;
    p.y = f.xw[d].template data_ptr<A>(), p.ld_y = f.G;
    if (!f.a.need_workspace) return;
    A* ws = f.ws.template data_ptr<A>() + d * f.N * f.LW;
    p.xhat = ws + ln_col(f.s), p.ld_xhat = f.LW;
    p.rstd = ws + rstd_col(f.s, 0), p.ld_rstd = f.LW;
  }

  // One step of every direction; with layer norm the GEMM's product is first normalised and scaled in place (γ_hh ⊙
  // x̂_hh; x̂_hh and its rstd into the step's workspace rows), then the plain cell kernel runs on it.
  template <typename T, typename A, typename Runner, typename Pass>
  static void run_fwd_step(Runner& run, Pass& f, const cuda_step::DirectionParams<FwdStep<T, A>>& dp, int64_t step) {
    if (f.s.layer_norm) {
      cuda_step::RowLaunch<cuda_step::RowNormParams<T, A>> l;
      l.count = dp.count;
      for (int d = 0; d < dp.count; ++d) {
        const SeqLayout seq = f.lh[d].view();
        auto& p = l.set[d];
        p.n = f.G, p.rows = dp.dir[d].rows;
        p.x = f.rec[d].template data_ptr<A>(), p.ld_x = f.G;
        A* w = f.ws.template data_ptr<A>() + f.ws_row(d, step, seq.time_at(step));
        p.xhat = w + ln_col(f.s) + f.G, p.ld_xhat = f.LW;
        p.rstd = w + rstd_col(f.s, 1), p.ld_rstd = f.LW;
        p.gamma = f.dirs[d].ln[1].template const_data_ptr<T>();
        p.y = f.rec[d].template data_ptr<A>(), p.ld_y = f.G;
      }
      run.step(l);
    }
    run.step(dp);
  }

  // One backward step of every direction; with layer norm the cell kernel's gradients are the ones before the norms
  // (dpre, dpre_rec: fill_bwd), and a row launch takes both products' through their norms.
  template <typename T, typename A, typename Runner, typename Pass>
  static void run_bwd_step(Runner& run, Pass& b, const cuda_step::DirectionParams<BwdStep<T, A>>& dp, int64_t step) {
    run.step(dp);
    if (!b.s.layer_norm) return;
    cuda_step::RowLaunch<cuda_step::RowNormBwdParams<T, A>> l;
    l.count = 2 * dp.count;
    for (int d = 0; d < dp.count; ++d) {
      const SeqLayout seq = b.lh[d].view();
      const int64_t row0 = d * b.N + seq.offsets[seq.time_at(step)];
      const A* w = b.ws.template const_data_ptr<A>() + row0 * b.LW;
      for (int k = 0; k < 2; ++k) {  // the input product, then the recurrent one
        auto& p = l.set[2 * d + k];
        p.n = b.G, p.rows = dp.dir[d].rows;
        p.dy = (k == 0 ? b.dpre : b.dpre_rec).template const_data_ptr<A>() + row0 * b.G, p.ld_dy = b.G;
        p.gamma = b.dirs[d].ln[k].template const_data_ptr<T>();
        p.xhat = w + ln_col(b.s) + k * b.G, p.ld_xhat = b.LW;
        p.rstd = w + rstd_col(b.s, k), p.ld_rstd = b.LW;
        p.dx = (k == 0 ? b.dg : b.dg_rec).template data_ptr<A>() + row0 * b.G, p.ld_dx = b.G;
      }
    }
    run.step(l);
  }

  template <typename T, typename A, typename Pass>
  static void fill_bwd(BwdStep<T, A>& p, const Pass& b, int64_t d, const BwdRows& r) {
    const int64_t N = b.N, G = b.G, H = b.H, B = b.B, D = b.D;
    p.ld_out = D * H;
    p.dgh_later = r.has_later ? b.dg_rec.template const_data_ptr<A>() + (d * N + r.later_off) * G : nullptr;
    p.ws_later = r.has_later ? b.ws.template const_data_ptr<A>() + (d * N + r.later_off) * b.LW : nullptr;
    p.dh_later = r.has_later ? b.dh.template const_data_ptr<A>() + (d * N + r.later_off) * H : nullptr;
    p.gout = b.gout.template const_data_ptr<T>() + r.off * D * H + d * H;
    p.h_prev = r.n_prev > 0 ? b.out2d.template const_data_ptr<T>() + r.prev_off * D * H + d * H : nullptr;
    p.h0 = b.h0c.template const_data_ptr<T>() + d * B * H;
    p.dh = b.dh.template data_ptr<A>() + (d * N + r.off) * H;
    p.ld_ws = b.LW;
    // With layer norm the gradients before the norms (run_bwd_step takes them through).
    p.dgx = (b.s.layer_norm ? b.dpre : b.dg).template data_ptr<A>() + (d * N + r.off) * G;
    p.dgh = (b.s.layer_norm ? b.dpre_rec : b.dg_rec).template data_ptr<A>() + (d * N + r.off) * G;
    p.zo_h = mask_rows<A>(b.zoneout_h, d, r.off);
    if (r.has_later) p.zo_h_later = mask_rows<A>(b.zoneout_h, d, r.later_off);
  }

  // Rows that started from h0 (rows [r0, r0 + n) of the sequence): dh0 = dGh·W_hh + z ⊙ dh (h' = (1 − z) ⊙ n + z ⊙ h);
  // with zoneout, z ⊙ (1 − m) ⊙ dh + m ⊙ dh.
  template <typename Pass>
  static void h0_grad_rows(Tensor& rows, const Pass& b, int64_t d, int64_t r0, int64_t, int64_t n) {
    const Tensor z = b.ws[d].narrow(0, r0, n).narrow(1, b.H, b.H), dh = b.dh[d].narrow(0, r0, n);
    if (!b.zoneout_h) {
      rows.add_(z * dh);
      return;
    }
    const Tensor m = (*b.zoneout_h)[d].narrow(0, r0, n);
    rows.add_(z * ((1 - m) * dh) + m * dh);
  }

  template <typename Pass>
  static void cell_weight_grads(LayerGrads&, const Pass&, int64_t) {}
};

}  // namespace cuda_driver
}  // namespace lstm_fused
