// The sequence loop of the CUDA path, on tensors: checks, buffers, the cuBLAS GEMMs (through ATen, on the
// current stream) and one step launch per time step through a Runner. lstm_cuda.cpp instantiates it with the
// GPU launchers; cpu/cuda_emulation.cpp with a CPU emulation of the same kernels, so everything here but the
// launches themselves is exercised by the CPU test suite.
//
// Runner: template <T, A> void fwd(const FwdStepParams<T, A>&); template <T, A> void bwd(const BwdStepParams<T,
// A>&, int mode).
#pragma once

#include <optional>
#include <tuple>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include "../lstm_checks.h"
#include "lstm_cuda_step.h"

namespace lstm_fused {
namespace cuda_driver {

using at::Tensor;

inline at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

inline void check_dtype(const Tensor& input) {
  const auto t = input.scalar_type();
  TORCH_CHECK_TYPE(t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16,
                   "lstm_fused: the CUDA kernels support float32, float64, float16 and bfloat16, got ", t);
}

// Rows of h_{t-1} each step consumed, as one [N, P] matrix (for W_hh's gradient).
inline Tensor gather_prev_hidden(const SeqLayout& L, bool packed, const Tensor& out2d, const Tensor& h0) {
  if (!packed) {  // uniform batch: a shifted copy of the output with h0 at the first processed step
    const int64_t B = L.B, N = L.N;
    if (!L.reverse) return at::cat({h0, out2d.narrow(0, 0, N - B)}, 0);
    return at::cat({out2d.narrow(0, B, N - B), h0}, 0);
  }
  // Packed: index rows of [output; h0]. batch_sizes live on the host, so the index is built there (this copy
  // is the one host-to-device transfer of the packed path).
  std::vector<int64_t> idx(L.N);
  for (int64_t t = 0; t < L.T; ++t) {
    int64_t prev, n_prev;
    L.prev_rows(t, prev, n_prev);
    for (int64_t b = 0; b < L.batch_sizes[t]; ++b)
      idx[L.offsets[t] + b] = b < n_prev ? L.offsets[prev] + b : L.N + b;
  }
  Tensor index = at::tensor(idx, at::TensorOptions().dtype(at::kLong)).to(out2d.device());
  return at::cat({out2d, h0}, 0).index_select(0, index);
}

template <typename Runner>
std::tuple<Tensor, Tensor, Tensor, Tensor> layer_fwd(const Tensor& input, const std::optional<Tensor>& batch_sizes,
                                                     const Tensor& h0, const Tensor& c0, const Tensor& w_ih,
                                                     const Tensor& w_hh, const std::optional<Tensor>& b_ih,
                                                     const std::optional<Tensor>& b_hh,
                                                     const std::optional<Tensor>& w_hr, bool reverse,
                                                     bool need_workspace, Runner& run) {
  const LayerSizes s = check_layer_args(input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr);
  check_dtype(input);
  const SeqLayoutHolder lh = make_layout(input, batch_sizes, h0.size(0), reverse);
  const SeqLayout L = lh.view();
  const int64_t H = s.H, P = s.P, G = 4 * H, N = L.N;
  const auto T_opts = input.options();
  const auto A_opts = input.options().dtype(acc_type(input.scalar_type()));

  const Tensor x2d = input.reshape({N, s.I});
  // Input projection of all steps in one GEMM, both biases folded in: [N, 4H].
  const Tensor xw = b_ih ? at::addmm(*b_ih + *b_hh, x2d, w_ih.t()) : at::mm(x2d, w_ih.t());
  Tensor ws = at::empty({N, 5 * H}, A_opts);
  Tensor out = at::empty({N, P}, T_opts);
  Tensor h_n = at::empty({L.B, P}, T_opts), c_n = at::empty({L.B, H}, T_opts);
  const Tensor h0c = h0.contiguous(), c0c = c0.contiguous(), w_hh_c = w_hh.contiguous();
  Tensor r_buf = s.proj ? at::empty({L.B, H}, T_opts) : Tensor();
  const Tensor w_hr_t = s.proj ? w_hr->t() : Tensor();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "lstm_fused_cuda_fwd", [&] {
    using T = scalar_t;
    using A = std::conditional_t<std::is_same_v<T, double>, double, float>;
    for (int64_t step = 0; step < L.T; ++step) {
      const int64_t t = L.time_at(step), bs = L.batch_sizes[t], off = L.offsets[t];
      int64_t prev, n_prev;
      L.prev_rows(t, prev, n_prev);
      cuda_step::FwdStepParams<T, A> p;
      p.H = H;
      p.P = P;
      p.rows = bs;
      p.n_prev = n_prev;
      p.ld_ws = 5 * H;
      p.ld_h = s.proj ? H : P;
      p.h_prev = n_prev > 0 ? out.const_data_ptr<T>() + L.offsets[prev] * P : nullptr;
      p.h0 = h0c.const_data_ptr<T>();
      p.c_prev = n_prev > 0 ? ws.const_data_ptr<A>() + L.offsets[prev] * 5 * H + G : nullptr;
      p.c0 = c0c.const_data_ptr<T>();
      p.xw = xw.const_data_ptr<T>() + off * G;
      p.w_hh = w_hh_c.const_data_ptr<T>();
      p.ws = ws.data_ptr<A>() + off * 5 * H;
      p.h_out = s.proj ? r_buf.data_ptr<T>() : out.data_ptr<T>() + off * P;
      run.template fwd<T, A>(p);
      if (s.proj) {
        Tensor o = out.narrow(0, off, bs);
        at::mm_out(o, r_buf.narrow(0, 0, bs), w_hr_t);
      }
      // Rows whose sequence ends at this step hand their state to h_n/c_n.
      int64_t e0 = 0, e1 = 0;
      if (!L.reverse) {
        e0 = t + 1 < L.T ? L.batch_sizes[t + 1] : 0;
        e1 = bs;
      } else if (t == 0) {
        e1 = bs;
      }
      if (e1 > e0) {
        h_n.narrow(0, e0, e1 - e0).copy_(out.narrow(0, off + e0, e1 - e0));
        c_n.narrow(0, e0, e1 - e0).copy_(ws.narrow(0, off + e0, e1 - e0).narrow(1, G, H));
      }
    }
  });
  auto lead = input.sizes().vec();
  lead.pop_back();
  auto out_shape = lead, ws_shape = lead;
  out_shape.push_back(P);
  ws_shape.push_back(5 * H);
  return {out.view(out_shape), h_n, c_n, need_workspace ? ws.view(ws_shape) : at::empty({0}, A_opts)};
}

template <typename Runner>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> layer_bwd(
    const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& grad_c_n, const Tensor& input,
    const std::optional<Tensor>& batch_sizes, const Tensor& h0, const Tensor& c0, const Tensor& w_ih,
    const Tensor& w_hh, const std::optional<Tensor>& w_hr, const Tensor& output, const Tensor& workspace,
    bool reverse, bool has_bias, bool need_grad_input, Runner& run) {
  const LayerSizes s = check_layer_args(input, batch_sizes, h0, c0, w_ih, w_hh, std::nullopt, std::nullopt, w_hr);
  check_dtype(input);
  const SeqLayoutHolder lh = make_layout(input, batch_sizes, h0.size(0), reverse);
  const SeqLayout L = lh.view();
  const int64_t H = s.H, P = s.P, G = 4 * H, N = L.N;
  const auto Tt = input.scalar_type(), At = acc_type(Tt);
  const auto A_opts = input.options().dtype(At);
  check_shape(grad_output, output.sizes(), "grad_output");
  check_shape(grad_h_n, h0.sizes(), "grad_h_n");
  check_shape(grad_c_n, c0.sizes(), "grad_c_n");
  TORCH_CHECK(output.numel() == N * P && workspace.numel() == N * 5 * H && workspace.scalar_type() == At,
              "lstm_fused: output/workspace do not come from lstm_layer_fwd with these arguments (was the "
              "forward run without a workspace, e.g. under no_grad?)");
  for (auto [t, name] : {std::pair{&grad_output, "grad_output"}, {&grad_h_n, "grad_h_n"}, {&grad_c_n, "grad_c_n"},
                         {&output, "output"}})
    check_same_dtype_device(input, *t, name);
  TORCH_CHECK(workspace.device() == input.device(), "lstm_fused: workspace is on another device");

  const Tensor gout = grad_output.reshape({N, P}).contiguous();
  const Tensor ghn = grad_h_n.contiguous(), c0c = c0.contiguous();
  const Tensor ws = workspace.reshape({N, 5 * H}).contiguous();
  const Tensor out2d = output.reshape({N, P});
  const Tensor w_hh_t = w_hh.t().contiguous();  // [P, 4H]: the backward reduces along W_hh's columns
  Tensor dg = at::empty({N, G}, A_opts);
  Tensor dc_state = grad_c_n.to(At).contiguous().clone();
  Tensor dh_tot = s.proj ? at::empty({N, P}, A_opts) : Tensor();
  Tensor dr = s.proj ? at::empty({L.B, H}, A_opts) : Tensor();
  Tensor r_all = s.proj ? at::empty({N, H}, A_opts) : Tensor();
  const Tensor w_hr_a = s.proj ? w_hr->to(At) : Tensor();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, Tt, "lstm_fused_cuda_bwd", [&] {
    using T = scalar_t;
    using A = std::conditional_t<std::is_same_v<T, double>, double, float>;
    for (int64_t step = L.T - 1; step >= 0; --step) {
      const int64_t t = L.time_at(step), bs = L.batch_sizes[t], off = L.offsets[t];
      int64_t prev, n_prev;
      L.prev_rows(t, prev, n_prev);
      // The step after t in forward order was processed just before this one here.
      const int64_t later = L.reverse ? t - 1 : t + 1;
      const bool has_later = later >= 0 && later < L.T;
      cuda_step::BwdStepParams<T, A> p;
      p.H = H;
      p.P = P;
      p.rows = bs;
      p.n_later = has_later ? std::min(bs, L.batch_sizes[later]) : 0;
      p.n_prev = n_prev;
      p.ld_ws = 5 * H;
      p.dg_later = has_later ? dg.const_data_ptr<A>() + L.offsets[later] * G : nullptr;
      p.w_hh_t = w_hh_t.const_data_ptr<T>();
      p.gout = gout.const_data_ptr<T>() + off * P;
      p.grad_hn = ghn.const_data_ptr<T>();
      p.ws = ws.const_data_ptr<A>() + off * 5 * H;
      p.c_prev = n_prev > 0 ? ws.const_data_ptr<A>() + L.offsets[prev] * 5 * H + G : nullptr;
      p.c0 = c0c.const_data_ptr<T>();
      p.dc_state = dc_state.data_ptr<A>();
      p.dg = dg.data_ptr<A>() + off * G;
      if (!s.proj) {
        run.template bwd<T, A>(p, cuda_step::kFused);
      } else {
        p.dh_tot = dh_tot.data_ptr<A>() + off * P;
        run.template bwd<T, A>(p, cuda_step::kReduceOnly);
        Tensor d = dr.narrow(0, 0, bs);
        at::mm_out(d, dh_tot.narrow(0, off, bs), w_hr_a);
        p.dr = dr.const_data_ptr<A>();
        p.r_out = r_all.data_ptr<A>() + off * H;
        run.template bwd<T, A>(p, cuda_step::kPointwiseOnly);
      }
    }
  });

  // Everything below is one GEMM or reduction over all steps (a few GEMMs for h0 with packed input).
  const Tensor w_hh_a = w_hh.to(At);
  Tensor dh0 = at::zeros({L.B, P}, A_opts);
  for (int64_t t = 0; t < L.T; ++t) {
    int64_t prev, n_prev;
    L.prev_rows(t, prev, n_prev);
    const int64_t bs = L.batch_sizes[t];
    if (bs > n_prev) {  // rows [n_prev, bs) started from h0 at step t
      Tensor d = dh0.narrow(0, n_prev, bs - n_prev);
      at::mm_out(d, dg.narrow(0, L.offsets[t] + n_prev, bs - n_prev), w_hh_a);
    }
  }
  const Tensor x2d = input.reshape({N, s.I});
  Tensor d_input = need_grad_input ? at::mm(dg, w_ih.to(At)).to(Tt).view(input.sizes())
                                   : at::empty({0}, input.options());
  Tensor d_w_ih = at::mm(dg.t(), x2d.to(At)).to(Tt);
  const Tensor hprev = gather_prev_hidden(L, batch_sizes.has_value(), out2d, h0.contiguous());
  Tensor d_w_hh = at::mm(dg.t(), hprev.to(At)).to(Tt);
  Tensor d_bias = has_bias ? dg.sum(0).to(Tt) : at::empty({0}, input.options());
  Tensor d_w_hr = s.proj ? at::mm(dh_tot.t(), r_all).to(Tt) : at::empty({0}, input.options());
  return {d_input, dh0.to(Tt), dc_state.to(Tt), d_w_ih, d_w_hh, d_bias, d_w_hr};
}

}  // namespace cuda_driver
}  // namespace lstm_fused
