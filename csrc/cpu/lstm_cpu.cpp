// CPU binding and sequence loops of the fused LSTM layer: checks, buffers, the per-step GEMMs and the
// parallel pointwise passes (cpu/lstm_cpu_pointwise.h over cell_math.h).
#include <cstring>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "host/stack_loop.h"
#include "host/arg_checks.h"
#include "cpu/cpu_common.h"
#include "cpu/cpu_gemm.h"
#include "cpu/lstm_cpu_pointwise.h"

namespace lstm_fused {
namespace {

using at::Tensor;
using namespace cpu;

template <typename scalar_t>
void lstm_fwd_loop(const SeqLayout& seq, const LayerSizes& s,
                   const scalar_t* x,     // [N, I]
                   const scalar_t* w_ih,  // [4H, I]
                   const scalar_t* w_hh,  // [4H, P]
                   const scalar_t* bias,  // [G] b_ih + b_hh
                   const scalar_t* w_hr,  // [P, H] or nullptr
                   const scalar_t* w_ph,  // [3 or 2, H] peephole weights or nullptr
                   scalar_t* out,         // [N, ld_out] this direction's columns of the layer output
                   int64_t ld_out,        // D·P
                   scalar_t* h_state,     // [B, P] h0 in, h_n out
                   scalar_t* c_state,     // [B, H] c0 in, c_n out
                   scalar_t* ws,          // [N, G + H] activated gates (G) and c_t (H) per row; nullptr: inference
                   scalar_t* r_buf) {     // [B, H] o·tanh(c) before the projection, if any
  const int64_t H = s.H, P = s.P, G = s.G(), ld_ws = G + H;
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
    gemm<scalar_t>(false, row_hi - row_lo, x + row_lo * s.I, s.I, w_ih_t, false, base, ld_ws);
    // Rows [r0, r1) of one step (clipped to the rows active at it): every product and the cell update of a
    // row read only that row's state, so a thread that owns rows needs nobody else's.
    auto step_rows = [&](int64_t step, int64_t r0, int64_t r1) {
      const int64_t t = seq.time_at(step);
      r1 = std::min(r1, seq.batch_sizes[t]);
      if (r0 >= r1) return;
      scalar_t* g = base + (seq.offsets[t] - row_lo) * ld_ws;
      scalar_t* o = out + seq.offsets[t] * ld_out;
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
      at::parallel_for(r0 * H, r1 * H, kPointwiseGrain,
                       [&](int64_t b, int64_t e) { lstm_fwd_pointwise_dispatch(p, b, e); });
      if (w_hr) {
        gemm<scalar_t>(false, r1 - r0, r_buf + r0 * H, H, w_hr_t, false, o + r0 * ld_out, ld_out);
        copy_rows(h_state + r0 * P, P, o + r0 * ld_out, ld_out, r1 - r0, P);
      }
    };
    run_steps(seq.B, s0, s1, step_rows, split_rows);
  }
}

template <typename scalar_t>
void lstm_bwd_loop(const SeqLayout& seq, const LayerSizes& s,
                   const scalar_t* gout,  // [N, ld_gout] this direction's columns of the output gradient
                   int64_t ld_gout,       // D·P
                   const scalar_t* c0,    // [B, H]
                   const scalar_t* w_hh,  // [4H, P]
                   const scalar_t* w_hr,  // [P, H] or nullptr
                   const scalar_t* w_ph,  // [3 or 2, H] peephole weights or nullptr
                   const scalar_t* ws,    // [N, G + H] forward workspace
                   scalar_t* dh_state,    // [B, P] grad of h_n in, grad of h0 out
                   scalar_t* dc_state,    // [B, H] grad of c_n in, grad of c0 out
                   scalar_t* dgates,      // [N, G] pre-activation gradients out
                   scalar_t* dh_total,    // [N, P] with a projection: total gradient of each h_t, else unused
                   scalar_t* r_all,       // [N, H] with a projection: o·tanh(c_t) of each row, else unused
                   scalar_t* dr_buf) {    // [B, H] with a projection: gradient of o·tanh(c_t) at one step
  const int64_t H = s.H, P = s.P, G = s.G(), ld_ws = G + H;
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
    p.c_prev = n_prev > 0 ? ws + seq.offsets[prev] * ld_ws + G : nullptr;
    p.n_prev = n_prev;
    p.c_init = c0;
    p.dc_state = dc_state;
    p.dgates = dgates + row0 * G;
    if (w_hr) {
      // h_t = W_hr·(o·tanh(c_t)): sum the two gradients reaching h_t, then map them back through W_hr.
      scalar_t* dht = dh_total + row0 * P;
      const scalar_t* go = gout + row0 * ld_gout;
      for (int64_t b = r0; b < r1; ++b)
        for (int64_t j = 0; j < P; ++j) dht[b * P + j] = dh_state[b * P + j] + go[b * ld_gout + j];
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
    at::parallel_for(r0 * H, r1 * H, kPointwiseGrain, [&](int64_t b, int64_t e) { lstm_bwd_pointwise_dispatch(p, b, e); });
    // Gradient for h_{t-1}. Rows that started from h0 at this step keep it: it is their grad of h0.
    gemm<scalar_t>(false, r1 - r0, p.dgates + r0 * G, G, w_hh_op, false, dh_state + r0 * P, P);
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
  const int64_t H = s.H, G = s.G(), ld_ws = G + H;
  const int64_t ci = 0, cf = H, co = s.coupled ? 2 * H : 3 * H;
  at::parallel_for(0, H, 64, [&](int64_t j0, int64_t j1) {
    std::vector<double> acc_i(j1 - j0, 0.0), acc_f(j1 - j0, 0.0), acc_o(j1 - j0, 0.0);
    for (int64_t t = 0; t < seq.T; ++t) {
      int64_t prev, n_prev;
      seq.prev_rows(t, prev, n_prev);
      for (int64_t b = 0; b < seq.batch_sizes[t]; ++b) {
        const int64_t r = seq.offsets[t] + b;
        const scalar_t* cp = b < n_prev ? ws + (seq.offsets[prev] + b) * ld_ws + G : c0 + b * H;
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

std::tuple<Tensor, Tensor, Tensor, Tensor> lstm_layer_fwd_cpu(
    const Tensor& input, const std::optional<Tensor>& batch_sizes, const Tensor& h0, const Tensor& c0,
    at::TensorList w_ih, at::TensorList w_hh, const std::optional<at::TensorList>& b_ih,
    const std::optional<at::TensorList>& b_hh, const std::optional<at::TensorList>& w_hr,
    const std::optional<at::TensorList>& w_ph, bool coupled, bool need_workspace) {
  std::vector<DirectionWeights> dirs;
  const LayerSizes s = check_lstm_directions(input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, w_ph, coupled, dirs);
  check_cpu_dtype(input);
  const int64_t D = static_cast<int64_t>(dirs.size()), H = s.H, P = s.P, G = s.G();
  Tensor out = at::empty(with_last(input, D * P), input.options());
  auto ws_shape = with_last(input, G + H);
  ws_shape.insert(ws_shape.begin(), D);
  Tensor ws = need_workspace ? at::empty(ws_shape, input.options()) : at::empty({0}, input.options());
  Tensor h_n = h0.contiguous().clone();
  Tensor c_n = c0.contiguous().clone();
  const Tensor x = input.contiguous();
  const std::vector<SeqLayoutHolder> layouts = direction_layouts(input, batch_sizes, h0.size(1), D);
  for (int64_t d = 0; d < D; ++d) {
    const DirectionWeights& w = dirs[d];
    const SeqLayout seq = layouts[d].view();
    const Tensor bias = w.b_ih ? (*w.b_ih + *w.b_hh).contiguous() : at::zeros({G}, input.options());
    const Tensor w_ih_c = w.w_ih.contiguous(), w_hh_c = w.w_hh.contiguous();
    const Tensor w_hr_c = s.proj ? w.w_hr->contiguous() : Tensor();
    const Tensor w_ph_c = s.peephole ? w.w_ph->contiguous() : Tensor();
    Tensor r_buf = s.proj ? at::empty({seq.B, H}, input.options()) : Tensor();
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lstm_layer_fwd_cpu", [&] {
      lstm_fwd_loop<scalar_t>(seq, s, x.const_data_ptr<scalar_t>(), w_ih_c.const_data_ptr<scalar_t>(),
                              w_hh_c.const_data_ptr<scalar_t>(), bias.const_data_ptr<scalar_t>(),
                              s.proj ? w_hr_c.const_data_ptr<scalar_t>() : nullptr,
                              s.peephole ? w_ph_c.const_data_ptr<scalar_t>() : nullptr,
                              out.data_ptr<scalar_t>() + d * P, D * P, h_n[d].data_ptr<scalar_t>(),
                              c_n[d].data_ptr<scalar_t>(),
                              need_workspace ? ws[d].data_ptr<scalar_t>() : nullptr,
                              s.proj ? r_buf.data_ptr<scalar_t>() : nullptr);
    });
  }
  return {out, h_n, c_n, ws};
}

using LayerGrads = std::tuple<Tensor, Tensor, Tensor, std::vector<Tensor>, std::vector<Tensor>, std::vector<Tensor>,
                               std::vector<Tensor>, std::vector<Tensor>>;

LayerGrads lstm_layer_bwd_cpu(const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& grad_c_n,
                              const Tensor& input, const std::optional<Tensor>& batch_sizes, const Tensor& h0,
                              const Tensor& c0, at::TensorList w_ih, at::TensorList w_hh,
                              const std::optional<at::TensorList>& w_hr, const std::optional<at::TensorList>& w_ph,
                              bool coupled, const Tensor& output, const Tensor& workspace, bool has_bias,
                              bool need_grad_input) {
  std::vector<DirectionWeights> dirs;
  const LayerSizes s = check_lstm_directions(input, batch_sizes, h0, c0, w_ih, w_hh, std::nullopt, std::nullopt, w_hr,
                                        w_ph, coupled, dirs);
  check_cpu_dtype(input);
  const int64_t D = static_cast<int64_t>(dirs.size()), H = s.H, P = s.P, G = s.G();
  const int64_t N = input.numel() / std::max<int64_t>(1, s.I);
  check_shape(grad_output, output.sizes(), "grad_output");
  check_shape(grad_h_n, h0.sizes(), "grad_h_n");
  check_shape(grad_c_n, c0.sizes(), "grad_c_n");
  TORCH_CHECK(output.numel() == N * D * P && workspace.numel() == D * N * (G + H),
              "lstm_fused: output/workspace do not come from lstm_layer_fwd with these arguments (was the "
              "forward run without a workspace, e.g. under no_grad?)");
  for (auto [t, name] : {std::pair{&grad_output, "grad_output"}, {&grad_h_n, "grad_h_n"}, {&grad_c_n, "grad_c_n"},
                         {&output, "output"}, {&workspace, "workspace"}})
    check_same_dtype_device(input, *t, name);

  const auto opts = input.options();
  const Tensor gout = grad_output.contiguous(), out_c = output.contiguous(), ws = workspace.contiguous();
  const Tensor x = input.contiguous(), h0_c = h0.contiguous(), c0_c = c0.contiguous();
  Tensor dh0 = grad_h_n.contiguous().clone();
  Tensor dc0 = grad_c_n.contiguous().clone();
  Tensor d_input = need_grad_input ? at::empty(input.sizes(), opts) : at::empty({0}, opts);
  Tensor dgates = at::empty({N, G}, opts);
  Tensor hprev = at::empty({N, P}, opts);
  Tensor dh_total = s.proj ? at::empty({N, P}, opts) : Tensor();
  Tensor r_all = s.proj ? at::empty({N, H}, opts) : Tensor();
  std::vector<Tensor> d_w_ih, d_w_hh, d_bias, d_w_hr, d_w_ph;
  const std::vector<SeqLayoutHolder> layouts = direction_layouts(input, batch_sizes, h0.size(1), D);
  for (int64_t d = 0; d < D; ++d) {
    const DirectionWeights& w = dirs[d];
    const Tensor w_ph_c = s.peephole ? w.w_ph->contiguous() : Tensor();
    if (s.peephole) d_w_ph.push_back(at::empty(w_ph_c.sizes(), opts));
    const SeqLayout seq = layouts[d].view();
    const Tensor w_ih_c = w.w_ih.contiguous(), w_hh_c = w.w_hh.contiguous();
    const Tensor w_hr_c = s.proj ? w.w_hr->contiguous() : Tensor();
    Tensor dr_buf = s.proj ? at::empty({seq.B, H}, opts) : Tensor();
    d_w_ih.push_back(at::empty({G, s.I}, opts));
    d_w_hh.push_back(at::empty({G, P}, opts));
    if (has_bias) d_bias.push_back(at::empty({G}, opts));
    if (s.proj) d_w_hr.push_back(at::empty({P, H}, opts));
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lstm_layer_bwd_cpu", [&] {
      const scalar_t* w_hr_p = s.proj ? w_hr_c.const_data_ptr<scalar_t>() : nullptr;
      scalar_t* dg = dgates.data_ptr<scalar_t>();
      const scalar_t* w_ph_p = s.peephole ? w_ph_c.const_data_ptr<scalar_t>() : nullptr;
      lstm_bwd_loop<scalar_t>(seq, s, gout.const_data_ptr<scalar_t>() + d * P, D * P, c0_c[d].const_data_ptr<scalar_t>(),
                              w_hh_c.const_data_ptr<scalar_t>(), w_hr_p, w_ph_p, ws[d].const_data_ptr<scalar_t>(),
                              dh0[d].data_ptr<scalar_t>(), dc0[d].data_ptr<scalar_t>(), dg,
                              s.proj ? dh_total.data_ptr<scalar_t>() : nullptr,
                              s.proj ? r_all.data_ptr<scalar_t>() : nullptr,
                              s.proj ? dr_buf.data_ptr<scalar_t>() : nullptr);
      // Everything below is one GEMM or reduction over all steps. Both directions read the same input, so
      // its gradient is their sum (accumulated in direction order).
      if (need_grad_input)
        gemm<scalar_t>(false, seq.N, dg, G, GemmOperand<scalar_t>(false, G, s.I, w_ih_c.const_data_ptr<scalar_t>(), s.I),
                       d > 0, d_input.data_ptr<scalar_t>(), s.I);
      gemm<scalar_t>(true, G, dg, G, GemmOperand<scalar_t>(false, seq.N, s.I, x.const_data_ptr<scalar_t>(), s.I), false,
                     d_w_ih[d].data_ptr<scalar_t>(), s.I);
      gather_prev_hidden<scalar_t>(seq, P, out_c.const_data_ptr<scalar_t>() + d * P, D * P,
                                   h0_c[d].const_data_ptr<scalar_t>(), hprev.data_ptr<scalar_t>());
      gemm<scalar_t>(true, G, dg, G, GemmOperand<scalar_t>(false, seq.N, P, hprev.const_data_ptr<scalar_t>(), P), false,
                     d_w_hh[d].data_ptr<scalar_t>(), P);
      if (has_bias) column_sums<scalar_t>(dg, seq.N, G, d_bias[d].data_ptr<scalar_t>());
      if (s.peephole)
        peephole_grads<scalar_t>(seq, s, dg, ws[d].const_data_ptr<scalar_t>(), c0_c[d].const_data_ptr<scalar_t>(),
                                 d_w_ph[d].data_ptr<scalar_t>());
      if (s.proj)
        gemm<scalar_t>(true, P, dh_total.const_data_ptr<scalar_t>(), P,
                       GemmOperand<scalar_t>(false, seq.N, H, r_all.const_data_ptr<scalar_t>(), H), false,
                       d_w_hr[d].data_ptr<scalar_t>(), H);
    });
  }
  return {d_input, dh0, dc0, d_w_ih, d_w_hh, d_bias, d_w_hr, d_w_ph};
}

StackOutputs lstm_stack_fwd_cpu(const Tensor& input, const std::optional<Tensor>& batch_sizes, const Tensor& h0,
                                const Tensor& c0, at::TensorList w_ih, at::TensorList w_hh,
                                const std::optional<at::TensorList>& b_ih, const std::optional<at::TensorList>& b_hh,
                                const std::optional<at::TensorList>& w_ph, bool coupled, bool need_workspace) {
  return stack_loop(input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ph, coupled, need_workspace,
                    [](const Tensor& x, const std::optional<Tensor>& bs, const Tensor& h, const Tensor& c,
                       at::TensorList wi, at::TensorList wh, const std::optional<at::TensorList>& bi,
                       const std::optional<at::TensorList>& bh, const std::optional<at::TensorList>& wp, bool cpl,
                       bool nw) { return lstm_layer_fwd_cpu(x, bs, h, c, wi, wh, bi, bh, std::nullopt, wp, cpl, nw); });
}

StackGrads lstm_stack_bwd_cpu(at::TensorList grad_outputs, const Tensor& grad_h_n, const Tensor& grad_c_n,
                              const Tensor& input, const std::optional<Tensor>& batch_sizes, const Tensor& h0,
                              const Tensor& c0, at::TensorList w_ih, at::TensorList w_hh,
                              const std::optional<at::TensorList>& w_ph, bool coupled, at::TensorList outputs,
                              at::TensorList workspaces, bool has_bias, bool need_grad_input) {
  return stack_bwd_loop(grad_outputs, grad_h_n, grad_c_n, input, batch_sizes, h0, c0, w_ih, w_hh, w_ph, coupled, outputs,
                        workspaces, has_bias, need_grad_input, [](auto&&... a) { return lstm_layer_bwd_cpu(a...); });
}

}  // namespace

TORCH_LIBRARY_IMPL(lstm_fused, CPU, m) {
  m.impl("lstm_stack_fwd", &lstm_stack_fwd_cpu);
  m.impl("lstm_stack_bwd", &lstm_stack_bwd_cpu);
  m.impl("lstm_layer_fwd", &lstm_layer_fwd_cpu);
  m.impl("lstm_layer_bwd", &lstm_layer_bwd_cpu);
}

}  // namespace lstm_fused
