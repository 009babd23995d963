// CPU binding and sequence loops of the fused GRU layer (same structure as lstm_cpu.cpp): per step one GEMM of
// h against W_hhᵀ and one fused pointwise pass; the backward's weight gradients are single GEMMs over all
// steps and the bias gradients fixed-order reductions.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "host/arg_checks.h"
#include "cpu/cpu_common.h"
#include "cpu/cpu_gemm.h"
#include "cpu/gru_cpu_pointwise.h"

namespace lstm_fused {
namespace {

using at::Tensor;
using namespace cpu;

template <typename scalar_t>
void gru_fwd_loop(const SeqLayout& seq, int64_t I, int64_t H,
                  const scalar_t* x,     // [N, I]
                  const scalar_t* w_ih,  // [3H, I]
                  const scalar_t* w_hh,  // [3H, H]
                  const scalar_t* b_ih,  // [3H] (zeros without bias)
                  const scalar_t* b_hh,  // [3H]
                  scalar_t* out,         // [N, ld_out] this direction's columns of the layer output
                  int64_t ld_out,        // D·H
                  scalar_t* h_state,     // [B, H] h0 in, h_n out
                  scalar_t* ws) {        // [N, 4H] r, z, n, h_n per row; nullptr: inference
  const int64_t G = 3 * H;
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
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = 0; c < G; ++c) xw[r * G + c] += b_ih[c];
    });
    // Rows [r0, r1) of one step (clipped to its active rows); rows never interact (see run_steps).
    auto step_rows = [&](int64_t step, int64_t r0, int64_t r1) {
      const int64_t t = seq.time_at(step), off = seq.offsets[t];
      r1 = std::min(r1, seq.batch_sizes[t]);
      if (r0 >= r1) return;
      gemm<scalar_t>(false, r1 - r0, h_state + r0 * H, H, w_hh_t, false, hh.data() + r0 * G, G);
      GruFwdStep<scalar_t> p;
      p.H = H;
      p.xw = xw.data() + (off - row_lo) * G;
      p.hh = hh.data();
      p.b_hh = b_hh;
      p.ws = ws ? ws + off * 4 * H : ws_step.data();
      p.h_state = h_state;
      p.h_out = out + off * ld_out;
      p.ld_h = ld_out;
      at::parallel_for(r0 * H, r1 * H, kPointwiseGrain, [&](int64_t b, int64_t e) { gru_fwd_pointwise_dispatch(p, b, e); });
    };
    run_steps(seq.B, s0, s1, step_rows, split_rows);
  }
}

template <typename scalar_t>
void gru_bwd_loop(const SeqLayout& seq, int64_t H,
                  const scalar_t* gout,  // [N, ld] this direction's columns of the output gradient
                  const scalar_t* out,   // [N, ld] this direction's columns of the output (h_t)
                  int64_t ld,            // D·H
                  const scalar_t* h0,    // [B, H]
                  const scalar_t* w_hh,  // [3H, H]
                  const scalar_t* ws,    // [N, 4H]
                  scalar_t* dh_state,    // [B, H] grad of h_n in, grad of h0 out
                  scalar_t* dgx,         // [N, 3H] out
                  scalar_t* dgh) {       // [N, 3H] out
  const int64_t G = 3 * H;
  const GemmOperand<scalar_t> w_hh_op(false, G, H, w_hh, H);
  auto step_rows = [&](int64_t step, int64_t r0, int64_t r1) {
    const int64_t t = seq.time_at(step), off = seq.offsets[t];
    r1 = std::min(r1, seq.batch_sizes[t]);
    if (r0 >= r1) return;
    int64_t prev, n_prev;
    seq.prev_rows(t, prev, n_prev);
    GruBwdStep<scalar_t> p;
    p.H = H;
    p.ws = ws + off * 4 * H;
    p.h_prev = n_prev > 0 ? out + seq.offsets[prev] * ld : nullptr;
    p.ld_hp = ld;
    p.n_prev = n_prev;
    p.h0 = h0;
    p.gout = gout + off * ld;
    p.ld_gout = ld;
    p.dh_state = dh_state;
    p.dgx = dgx + off * G;
    p.dgh = dgh + off * G;
    at::parallel_for(r0 * H, r1 * H, kPointwiseGrain, [&](int64_t b, int64_t e) { gru_bwd_pointwise_dispatch(p, b, e); });
    // Gradient for h_{t-1}: the direct z ⊙ dh (already in dh_state) plus the recurrent product.
    gemm<scalar_t>(false, r1 - r0, p.dgh + r0 * G, G, w_hh_op, true, dh_state + r0 * H, H);
  };
  // Processing order backwards: steps T-1 .. 0 of step_rows' numbering.
  run_steps(seq.B, 0, seq.T, [&](int64_t i, int64_t r0, int64_t r1) { step_rows(seq.T - 1 - i, r0, r1); },
            rows_per_thread(seq.B, H, G, sizeof(scalar_t), w_hh_op.packed));
}

std::tuple<Tensor, Tensor, Tensor> gru_layer_fwd_cpu(const Tensor& input, const std::optional<Tensor>& batch_sizes,
                                                     const Tensor& h0, at::TensorList w_ih, at::TensorList w_hh,
                                                     const std::optional<at::TensorList>& b_ih,
                                                     const std::optional<at::TensorList>& b_hh, bool need_workspace) {
  std::vector<DirectionWeights> dirs;
  const LayerSizes s = check_gru_directions(input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, dirs);
  check_cpu_dtype(input);
  const int64_t D = static_cast<int64_t>(dirs.size()), H = s.H;
  Tensor out = at::empty(with_last(input, D * H), input.options());
  auto ws_shape = with_last(input, 4 * H);
  ws_shape.insert(ws_shape.begin(), D);
  Tensor ws = need_workspace ? at::empty(ws_shape, input.options()) : at::empty({0}, input.options());
  Tensor h_n = h0.contiguous().clone();
  const Tensor x = input.contiguous();
  const std::vector<SeqLayoutHolder> layouts = direction_layouts(input, batch_sizes, h0.size(1), D);
  for (int64_t d = 0; d < D; ++d) {
    const DirectionWeights& w = dirs[d];
    const SeqLayout seq = layouts[d].view();
    const Tensor zeros = at::zeros({3 * H}, input.options());
    const Tensor bi = w.b_ih ? w.b_ih->contiguous() : zeros, bh = w.b_hh ? w.b_hh->contiguous() : zeros;
    const Tensor w_ih_c = w.w_ih.contiguous(), w_hh_c = w.w_hh.contiguous();
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "gru_layer_fwd_cpu", [&] {
      gru_fwd_loop<scalar_t>(seq, s.I, H, x.const_data_ptr<scalar_t>(), w_ih_c.const_data_ptr<scalar_t>(),
                             w_hh_c.const_data_ptr<scalar_t>(), bi.const_data_ptr<scalar_t>(),
                             bh.const_data_ptr<scalar_t>(), out.data_ptr<scalar_t>() + d * H, D * H,
                             h_n[d].data_ptr<scalar_t>(), need_workspace ? ws[d].data_ptr<scalar_t>() : nullptr);
    });
  }
  return {out, h_n, ws};
}

std::tuple<Tensor, Tensor, std::vector<Tensor>, std::vector<Tensor>, std::vector<Tensor>, std::vector<Tensor>>
gru_layer_bwd_cpu(const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& input,
                  const std::optional<Tensor>& batch_sizes, const Tensor& h0, at::TensorList w_ih, at::TensorList w_hh,
                  const Tensor& output, const Tensor& workspace, bool has_bias, bool need_grad_input) {
  std::vector<DirectionWeights> dirs;
  const LayerSizes s = check_gru_directions(input, batch_sizes, h0, w_ih, w_hh, std::nullopt, std::nullopt, dirs);
  check_cpu_dtype(input);
  const int64_t D = static_cast<int64_t>(dirs.size()), H = s.H, G = 3 * H;
  const int64_t N = input.numel() / std::max<int64_t>(1, s.I);
  check_shape(grad_output, output.sizes(), "grad_output");
  check_shape(grad_h_n, h0.sizes(), "grad_h_n");
  TORCH_CHECK(output.numel() == N * D * H && workspace.numel() == D * N * 4 * H,
              "lstm_fused: output/workspace do not come from gru_layer_fwd with these arguments (was the forward "
              "run without a workspace, e.g. under no_grad?)");
  for (auto [t, name] : {std::pair{&grad_output, "grad_output"}, {&grad_h_n, "grad_h_n"}, {&output, "output"},
                         {&workspace, "workspace"}})
    check_same_dtype_device(input, *t, name);
  const auto opts = input.options();
  const Tensor gout = grad_output.contiguous(), out_c = output.contiguous(), ws = workspace.contiguous();
  const Tensor x = input.contiguous(), h0_c = h0.contiguous();
  Tensor dh0 = grad_h_n.contiguous().clone();
  Tensor d_input = need_grad_input ? at::empty(input.sizes(), opts) : at::empty({0}, opts);
  Tensor dgx = at::empty({N, G}, opts), dgh = at::empty({N, G}, opts), hprev = at::empty({N, H}, opts);
  std::vector<Tensor> d_w_ih, d_w_hh, d_b_ih, d_b_hh;
  const std::vector<SeqLayoutHolder> layouts = direction_layouts(input, batch_sizes, h0.size(1), D);
  for (int64_t d = 0; d < D; ++d) {
    const SeqLayout seq = layouts[d].view();
    const Tensor w_ih_c = dirs[d].w_ih.contiguous(), w_hh_c = dirs[d].w_hh.contiguous();
    d_w_ih.push_back(at::empty({G, s.I}, opts));
    d_w_hh.push_back(at::empty({G, H}, opts));
    if (has_bias) {
      d_b_ih.push_back(at::empty({G}, opts));
      d_b_hh.push_back(at::empty({G}, opts));
    }
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "gru_layer_bwd_cpu", [&] {
      const scalar_t* outp = out_c.const_data_ptr<scalar_t>() + d * H;
      gru_bwd_loop<scalar_t>(seq, H, gout.const_data_ptr<scalar_t>() + d * H, outp, D * H,
                             h0_c[d].const_data_ptr<scalar_t>(), w_hh_c.const_data_ptr<scalar_t>(),
                             ws[d].const_data_ptr<scalar_t>(), dh0[d].data_ptr<scalar_t>(),
                             dgx.data_ptr<scalar_t>(), dgh.data_ptr<scalar_t>());
      const scalar_t* gx = dgx.const_data_ptr<scalar_t>();
      const scalar_t* gh = dgh.const_data_ptr<scalar_t>();
      // Both directions read the same input, so its gradient is their sum (in direction order).
      if (need_grad_input)
        gemm<scalar_t>(false, seq.N, gx, G, GemmOperand<scalar_t>(false, G, s.I, w_ih_c.const_data_ptr<scalar_t>(), s.I),
                       d > 0, d_input.data_ptr<scalar_t>(), s.I);
      gemm<scalar_t>(true, G, gx, G, GemmOperand<scalar_t>(false, seq.N, s.I, x.const_data_ptr<scalar_t>(), s.I), false,
                     d_w_ih[d].data_ptr<scalar_t>(), s.I);
      gather_prev_hidden<scalar_t>(seq, H, outp, D * H, h0_c[d].const_data_ptr<scalar_t>(), hprev.data_ptr<scalar_t>());
      gemm<scalar_t>(true, G, gh, G, GemmOperand<scalar_t>(false, seq.N, H, hprev.const_data_ptr<scalar_t>(), H), false,
                     d_w_hh[d].data_ptr<scalar_t>(), H);
      if (has_bias) {
        column_sums<scalar_t>(gx, seq.N, G, d_b_ih[d].data_ptr<scalar_t>());
        column_sums<scalar_t>(gh, seq.N, G, d_b_hh[d].data_ptr<scalar_t>());
      }
    });
  }
  return {d_input, dh0, d_w_ih, d_w_hh, d_b_ih, d_b_hh};
}

}  // namespace

TORCH_LIBRARY_IMPL(lstm_fused, CPU, m) {
  m.impl("gru_layer_fwd", &gru_layer_fwd_cpu);
  m.impl("gru_layer_bwd", &gru_layer_bwd_cpu);
}

}  // namespace lstm_fused
