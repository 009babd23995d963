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

  // The forward step's LSTM fields. Pass: the driver's FwdPass (its buffers and sizes).
  template <typename T, typename A, typename Pass>
  static void fill_fwd(FwdStep<T, A>& p, const Pass& f, int64_t d, int64_t step, int64_t prev, int64_t n_prev) {
    const LayerSizes& s = f.s;
    p.P = s.P;
    p.coupled = s.coupled;
    p.peep = s.peephole ? f.cell_w[d].template const_data_ptr<T>() : nullptr;
    p.ld_ws = f.LW;
    p.ld_h = s.proj ? s.H : f.D * s.P;
    p.c_prev = n_prev > 0 ? f.ws.template const_data_ptr<A>() + f.ws_row(d, step - 1, prev) + f.G : nullptr;
    p.c0 = f.c0c.template const_data_ptr<T>() + d * f.c0c.stride(0);
    p.ld_xw = f.G;
    p.c_n = f.c_n.template data_ptr<T>() + d * f.B * s.H;
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
    p.c_prev = r.n_prev > 0 ? b.ws.template const_data_ptr<A>() + (d * N + r.prev_off) * b.LW + G : nullptr;
    p.c0 = b.c0c.template const_data_ptr<T>() + d * B * H;
    p.dc_state = b.dc_state.template data_ptr<A>() + d * B * H;
    p.dg = b.dg.template data_ptr<A>() + (d * N + r.off) * G;
    if (s.proj) {
      p.dh_tot = b.dh_tot.template data_ptr<A>() + (d * N + r.off) * P;
      p.dr = b.dr.template const_data_ptr<A>() + d * B * H;
      p.r_out = b.r_all.template data_ptr<A>() + (d * N + r.off) * H;
    }
  }

  // dh0 of rows that started from h0 is the recurrent product alone (c0's gradient is carried in dc_state).
  template <typename Pass>
  static void h0_grad_rows(Tensor&, const Pass&, int64_t, int64_t, int64_t) {}

  // Peephole gradients: per unit, sums over rows of dpre_i·c_{t-1}, dpre_f·c_{t-1} and dpre_o·c_t.
  template <typename Pass>
  static void cell_weight_grads(LayerGrads& g, const Pass& b, int64_t d) {
    const LayerSizes& s = b.s;
    if (!s.peephole) return;
    const int64_t H = s.H, G = b.G;
    const Tensor dgd = b.dg[d];
    const Tensor cells = b.ws[d].narrow(1, G, H);
    const Tensor c_prev = gather_prev_hidden(b.lh[d].view(), b.batch_sizes.has_value(), cells,
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
  static void fill_fwd(FwdStep<T, A>& p, const Pass& f, int64_t d, int64_t, int64_t, int64_t) {
    p.b_hh = f.cell_w[d].defined() ? f.cell_w[d].template const_data_ptr<T>() : nullptr;
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
  }

  // Rows that started from h0: dh0 = dGh·W_hh + z ⊙ dh (h' = (1 − z) ⊙ n + z ⊙ h).
  template <typename Pass>
  static void h0_grad_rows(Tensor& rows, const Pass& b, int64_t d, int64_t r0, int64_t n) {
    rows.add_(b.ws[d].narrow(0, r0, n).narrow(1, b.H, b.H) * b.dh[d].narrow(0, r0, n));
  }

  template <typename Pass>
  static void cell_weight_grads(LayerGrads&, const Pass&, int64_t) {}
};

}  // namespace cuda_driver
}  // namespace lstm_fused
