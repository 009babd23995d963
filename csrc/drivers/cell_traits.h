// What the CUDA path's layer driver (drivers/layer_driver.h) needs to know about a cell beyond host/cells.h: its step
// parameter types and the step fields and gradients only it has. Everything else
// (buffers, the step table, the path choice, the GEMM path, the projection, the gradient GEMMs) is the driver's, once.
#pragma once

#include <optional>

#include <ATen/ATen.h>

#include "host/cells.h"
#include "drivers/driver_common.h"
#include "kernels/gru_step_phases.h"
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
    p.dg_later = r.has_later ? b.dg.template const_data_ptr<A>() + (d * N + r.later_off) * G : nullptr;
    p.gout = b.gout.defined() ? b.gout.template const_data_ptr<T>() + r.off * b.D * P + d * P : nullptr;
    p.c_prev = r.n_prev > 0 ? b.ws.template const_data_ptr<A>() + (d * N + r.prev_off) * b.LW + c_col(s) : nullptr;
    p.c0 = b.c0c.template const_data_ptr<T>() + d * B * H;
    p.dc_state = b.dc_state.template data_ptr<A>() + d * B * H;
    p.dg = b.dg.template data_ptr<A>() + (d * N + r.off) * G;
    p.zo_h = mask_rows<A>(b.zoneout_h, d, r.off);
    p.zo_c = mask_rows<A>(b.zoneout_c, d, r.off);
    if (s.zoneout_h) p.dh_carry = b.dh_carry.template data_ptr<A>() + d * B * P;
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
    const Tensor dgd = b.dg[d];
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
    p.zo_h = mask_rows<A>(f.a.zoneout_h, d, off);
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
    p.dgx = b.dg.template data_ptr<A>() + (d * N + r.off) * G;
    p.dgh = b.dg_rec.template data_ptr<A>() + (d * N + r.off) * G;
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
