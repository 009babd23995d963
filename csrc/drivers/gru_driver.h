// The sequence loop of the CUDA GRU path on tensors (like drivers/lstm_driver.h): cuBLAS GEMMs through ATen and
// either one persistent launch for the whole sequence (Runner::sequence) or one step launch per time step
// (Runner::gru_fwd / gru_bwd), on the GPU or in the CPU emulation.
#pragma once

#include "kernels/gru_step_phases.h"
#include "drivers/lstm_driver.h"

namespace lstm_fused {
namespace cuda_driver {

template <typename Runner>
std::tuple<Tensor, Tensor, Tensor> gru_layer_fwd(const Tensor& input, const std::optional<Tensor>& batch_sizes,
                                                 const Tensor& h0, at::TensorList w_ih, at::TensorList w_hh,
                                                 const std::optional<at::TensorList>& b_ih,
                                                 const std::optional<at::TensorList>& b_hh, bool need_workspace,
                                                 Runner& run) {
  std::vector<DirectionWeights> dirs;
  const LayerSizes s = check_gru_directions(input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, dirs);
  check_dtype(input);
  const int64_t D = static_cast<int64_t>(dirs.size());
  const std::vector<SeqLayoutHolder> lh = direction_layouts(input, batch_sizes, h0.size(1), D);
  const int64_t H = s.H, G = 3 * H, N = lh[0].N, B = h0.size(1);
  const int64_t n_steps = static_cast<int64_t>(lh[0].batch_sizes.size());
  const auto A_opts = input.options().dtype(acc_type(input.scalar_type()));
  const Tensor x2d = input.reshape({N, s.I});
  // Training keeps every step's gates for the backward; inference overwrites one step's worth.
  Tensor ws = need_workspace ? at::empty({D, N, 4 * H}, A_opts) : at::empty({D, B, 4 * H}, A_opts);
  Tensor out = at::empty({N, D * H}, input.options());
  Tensor h_n = at::empty({D, B, H}, input.options());
  const Tensor h0c = h0.contiguous();
  std::vector<Tensor> xw, w_hh_c, b_hh_c;
  for (int64_t d = 0; d < D; ++d) {
    const DirectionWeights& w = dirs[d];
    // Input projection of all steps in one GEMM per direction with b_ih; b_hh stays with the recurrent product.
    xw.push_back(w.b_ih ? at::addmm(*w.b_ih, x2d, w.w_ih.t()) : at::mm(x2d, w.w_ih.t()));
    w_hh_c.push_back(w.w_hh.contiguous());
    b_hh_c.push_back(w.b_hh ? w.b_hh->contiguous() : Tensor());
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "lstm_fused_gru_fwd", [&] {
    using T = scalar_t;
    using A = cuda_step::acc_t<T>;
    std::vector<cuda_step::DirectionParams<cuda_step::GruFwdStepParams<T, A>>> steps(n_steps);
    for (int64_t step = 0; step < n_steps; ++step) {
      auto& dp = steps[step];
      dp.count = static_cast<int>(D);
      for (int64_t d = 0; d < D; ++d) {
        const SeqLayout seq = lh[d].view();
        const int64_t t = seq.time_at(step), off = seq.offsets[t];
        int64_t prev, n_prev;
        seq.prev_rows(t, prev, n_prev);
        cuda_step::GruFwdStepParams<T, A>& p = dp.dir[d];
        p.H = H;
        p.rows = seq.batch_sizes[t];
        p.n_prev = n_prev;
        p.ld_out = D * H;
        p.h_prev = n_prev > 0 ? out.const_data_ptr<T>() + seq.offsets[prev] * D * H + d * H : nullptr;
        p.h0 = h0c.const_data_ptr<T>() + d * B * H;
        p.xw = xw[d].const_data_ptr<T>() + off * G;
        p.w_hh = w_hh_c[d].const_data_ptr<T>();
        p.b_hh = b_hh_c[d].defined() ? b_hh_c[d].const_data_ptr<T>() : nullptr;
        p.ws = ws.data_ptr<A>() + (need_workspace ? d * N + off : d * B) * 4 * H;
        p.h_out = out.data_ptr<T>() + off * D * H + d * H;
        ending_rows(seq, t, p.end_lo, p.end_hi);
        p.h_n = h_n.data_ptr<T>() + d * B * H;
      }
    }
    // One persistent launch, or one launch per step, both directions; large batches get h_{t-1}·W_hhᵀ from a GEMM
    // first.
    bool gemm = false;
    if (persistent_or_steps(run, steps, B, true, gemm)) return;
    std::vector<Tensor> rec;  // [B, 3H] per direction
    for (int64_t d = 0; gemm && d < D; ++d) rec.push_back(at::empty({B, G}, A_opts));
    for (int64_t step = 0; step < n_steps; ++step) {
      for (int64_t d = 0; gemm && d < D; ++d) {
        gemm_prev_hidden(rec[d], lh[d].view(), step, out.narrow(1, d * H, H), h0c[d], w_hh_c[d].t());
        steps[step].dir[d].rec = rec[d].template const_data_ptr<A>();
      }
      run.template gru_fwd<T, A>(steps[step]);
    }
  });
  auto ws_shape = with_last(input, 4 * H);
  ws_shape.insert(ws_shape.begin(), D);
  return {out.view(with_last(input, D * H)), h_n, need_workspace ? ws.view(ws_shape) : at::empty({0}, A_opts)};
}

template <typename Runner>
std::tuple<Tensor, Tensor, std::vector<Tensor>, std::vector<Tensor>, std::vector<Tensor>, std::vector<Tensor>>
gru_layer_bwd(const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& input,
              const std::optional<Tensor>& batch_sizes, const Tensor& h0, at::TensorList w_ih, at::TensorList w_hh,
              const Tensor& output, const Tensor& workspace, bool has_bias, bool need_grad_input, Runner& run) {
  std::vector<DirectionWeights> dirs;
  const LayerSizes s = check_gru_directions(input, batch_sizes, h0, w_ih, w_hh, std::nullopt, std::nullopt, dirs);
  check_dtype(input);
  const int64_t D = static_cast<int64_t>(dirs.size());
  const std::vector<SeqLayoutHolder> lh = direction_layouts(input, batch_sizes, h0.size(1), D);
  const int64_t H = s.H, G = 3 * H, N = lh[0].N, B = h0.size(1);
  const int64_t n_steps = static_cast<int64_t>(lh[0].batch_sizes.size());
  const auto Tt = input.scalar_type(), At = acc_type(Tt);
  const auto A_opts = input.options().dtype(At);
  check_shape(grad_output, output.sizes(), "grad_output");
  check_shape(grad_h_n, h0.sizes(), "grad_h_n");
  TORCH_CHECK(output.numel() == N * D * H && workspace.numel() == D * N * 4 * H && workspace.scalar_type() == At,
              "lstm_fused: output/workspace do not come from gru_layer_fwd with these arguments (was the forward "
              "run without a workspace, e.g. under no_grad?)");
  for (auto [t, name] : {std::pair{&grad_output, "grad_output"}, {&grad_h_n, "grad_h_n"}, {&output, "output"}})
    check_same_dtype_device(input, *t, name);
  const Tensor gout = grad_output.reshape({N, D * H}).contiguous();
  const Tensor out2d = output.reshape({N, D * H}).contiguous();
  const Tensor ghn = grad_h_n.contiguous(), h0c = h0.contiguous();
  const Tensor ws = workspace.reshape({D, N, 4 * H}).contiguous();
  Tensor dgx = at::empty({D, N, G}, A_opts), dgh = at::empty({D, N, G}, A_opts), dh = at::empty({D, N, H}, A_opts);
  std::vector<Tensor> w_hh_t;
  for (int64_t d = 0; d < D; ++d) w_hh_t.push_back(dirs[d].w_hh.t().contiguous());  // [H, 3H]
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, Tt, "lstm_fused_gru_bwd", [&] {
    using T = scalar_t;
    using A = cuda_step::acc_t<T>;
    // steps[i]: the i-th step the backward processes (forward processing order reversed).
    std::vector<cuda_step::DirectionParams<cuda_step::GruBwdStepParams<T, A>>> steps(n_steps);
    for (int64_t i = 0; i < n_steps; ++i) {
      const int64_t step = n_steps - 1 - i;
      auto& dp = steps[i];
      dp.count = static_cast<int>(D);
      for (int64_t d = 0; d < D; ++d) {
        const SeqLayout seq = lh[d].view();
        const int64_t t = seq.time_at(step), bs = seq.batch_sizes[t], off = seq.offsets[t];
        int64_t prev, n_prev;
        seq.prev_rows(t, prev, n_prev);
        const int64_t later = seq.reverse ? t - 1 : t + 1;  // processed just before this step here
        const bool has_later = later >= 0 && later < n_steps;
        const int64_t later_off = has_later ? seq.offsets[later] : 0;
        cuda_step::GruBwdStepParams<T, A>& p = dp.dir[d];
        p.H = H;
        p.rows = bs;
        p.n_later = has_later ? std::min(bs, seq.batch_sizes[later]) : 0;
        p.n_prev = n_prev;
        p.ld_out = D * H;
        p.dgh_later = has_later ? dgh.const_data_ptr<A>() + (d * N + later_off) * G : nullptr;
        p.ws_later = has_later ? ws.const_data_ptr<A>() + (d * N + later_off) * 4 * H : nullptr;
        p.dh_later = has_later ? dh.const_data_ptr<A>() + (d * N + later_off) * H : nullptr;
        p.w_hh_t = w_hh_t[d].const_data_ptr<T>();
        p.gout = gout.const_data_ptr<T>() + off * D * H + d * H;
        p.grad_hn = ghn.const_data_ptr<T>() + d * B * H;
        p.ws = ws.const_data_ptr<A>() + (d * N + off) * 4 * H;
        p.h_prev = n_prev > 0 ? out2d.const_data_ptr<T>() + seq.offsets[prev] * D * H + d * H : nullptr;
        p.h0 = h0c.const_data_ptr<T>() + d * B * H;
        p.dh = dh.data_ptr<A>() + (d * N + off) * H;
        p.dgx = dgx.data_ptr<A>() + (d * N + off) * G;
        p.dgh = dgh.data_ptr<A>() + (d * N + off) * G;
      }
    }
    bool gemm = false;
    if (persistent_or_steps(run, steps, B, true, gemm)) return;
    std::vector<Tensor> rec, w_hh_a;  // [B, H] per direction: dGh_later·W_hh of the GEMM path
    for (int64_t d = 0; gemm && d < D; ++d) {
      rec.push_back(at::empty({B, H}, A_opts));
      w_hh_a.push_back(dirs[d].w_hh.to(At).contiguous());  // [3H, H]
    }
    for (int64_t i = 0; i < n_steps; ++i) {
      for (int64_t d = 0; gemm && d < D; ++d) {
        gemm_later_grad(rec[d], lh[d].view(), i, dgh[d], w_hh_a[d]);
        steps[i].dir[d].rec = rec[d].template const_data_ptr<A>();
      }
      run.template gru_bwd<T, A>(steps[i]);
    }
  });
  // One GEMM or reduction over all steps per direction (a few for h0 with packed input).
  const Tensor x2d = input.reshape({N, s.I});
  Tensor dh0 = at::zeros({D, B, H}, A_opts);
  Tensor d_input;
  std::vector<Tensor> d_w_ih, d_w_hh, d_b_ih, d_b_hh;
  for (int64_t d = 0; d < D; ++d) {
    const SeqLayout seq = lh[d].view();
    const Tensor w_hh_a = dirs[d].w_hh.to(At);
    for (int64_t t = 0; t < n_steps; ++t) {
      int64_t prev, n_prev;
      seq.prev_rows(t, prev, n_prev);
      const int64_t bs = seq.batch_sizes[t];
      if (bs > n_prev) {  // rows [n_prev, bs) started from h0 at step t: dh0 = dGh·W_hh + z ⊙ dh
        const int64_t r0 = seq.offsets[t] + n_prev, n = bs - n_prev;
        Tensor rows = dh0[d].narrow(0, n_prev, n);
        at::mm_out(rows, dgh[d].narrow(0, r0, n), w_hh_a);
        rows.add_(ws[d].narrow(0, r0, n).narrow(1, H, H) * dh[d].narrow(0, r0, n));
      }
    }
    if (need_grad_input) {
      const Tensor part = at::mm(dgx[d], dirs[d].w_ih.to(At));
      d_input = d == 0 ? part : d_input.add_(part);
    }
    d_w_ih.push_back(at::mm(dgx[d].t(), x2d.to(At)).to(Tt));
    const Tensor hprev = gather_prev_hidden(seq, batch_sizes.has_value(), out2d.narrow(1, d * H, H), h0c[d]);
    d_w_hh.push_back(at::mm(dgh[d].t(), hprev.to(At)).to(Tt));
    if (has_bias) {
      d_b_ih.push_back(dgx[d].sum(0).to(Tt));
      d_b_hh.push_back(dgh[d].sum(0).to(Tt));
    }
  }
  d_input = need_grad_input ? d_input.to(Tt).view(input.sizes()) : at::empty({0}, input.options());
  return {d_input, dh0.to(Tt), d_w_ih, d_w_hh, d_b_ih, d_b_hh};
}

}  // namespace cuda_driver
}  // namespace lstm_fused
