// One layer of any cell on the CPU, written once: checks, buffers, per direction the cell's fused sequence loop, and
// in the backward the weight, bias and input gradients as GEMMs and fixed-order reductions over all steps. A Cell
// (CpuLstm in cpu/lstm_cpu.cpp, CpuGru in cpu/gru_cpu.cpp) extends host/cells.h (CpuGru's cell_weight gives zeros
// for an absent b_hh) with
//   template <typename scalar_t> static void fwd_loop(const CpuFwdParams<scalar_t>&);
//   template <typename scalar_t> static void bwd_loop(const CpuBwdParams<scalar_t>&);
//   template <typename scalar_t> static void cell_weight_grad(const CpuBwdParams<scalar_t>&, scalar_t* out);
//   static constexpr bool kLnSumsInLoop;  // with layer norm, bwd_loop fills CpuBwdParams::ln_sums
#pragma once

#include <algorithm>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include "cpu/column_sums.h"
#include "cpu/cpu_common.h"
#include "cpu/cpu_gemm.h"
#include "host/cells.h"

namespace lstm_fused {
namespace cpu {

// One direction of a layer's forward.
template <typename scalar_t>
struct CpuFwdParams {
  SeqLayout seq;
  LayerSizes s;
  const scalar_t* x = nullptr;       // [N, I]
  const scalar_t* w_ih = nullptr;    // [G, I]
  const scalar_t* w_hh = nullptr;    // [G, P]
  const scalar_t* bias = nullptr;    // [G] the input projection's (Cell::input_bias; zeros without biases)
  const scalar_t* cell_w = nullptr;  // the cell's own weight (LSTM: peepholes [3 or 2, H] or nullptr; GRU: b_hh [G])
  const scalar_t* w_hr = nullptr;    // [P, H] or nullptr
  scalar_t* out = nullptr;           // [N, ld_out] this direction's columns of the layer output
  int64_t ld_out = 0;                // D·P
  scalar_t* h_state = nullptr;       // [B, P] h0 in, h_n out
  scalar_t* c_state = nullptr;       // [B, H] c0 in, c_n out (LSTM)
  scalar_t* ws = nullptr;            // [N, Cell::ws_cols] the workspace rows the backward reads; nullptr: inference
  scalar_t* r_buf = nullptr;         // [B, H] o·tanh(c) before the projection, if any
  ZoneoutMask<scalar_t> zo_h, zo_c;  // [N, P] / [N, H] this direction's zoneout masks (a zero where absent)
  // Layer norm: γ_ih [G], γ_hh [G] and (LSTM) γ_c [H], β_c [H]; nullptr without.
  const scalar_t *ln_ih = nullptr, *ln_hh = nullptr, *ln_c_w = nullptr, *ln_c_b = nullptr;
};

// One direction of a layer's backward (its recurrent part: the cell's loop).
template <typename scalar_t>
struct CpuBwdParams {
  SeqLayout seq;
  LayerSizes s;
  const scalar_t* gout = nullptr;    // [N, ld] this direction's columns of the output gradient
  const scalar_t* out = nullptr;     // [N, ld] this direction's columns of the output (h_t)
  int64_t ld = 0;                    // D·P
  const scalar_t* h0 = nullptr;      // [B, P]
  const scalar_t* c0 = nullptr;      // [B, H] (LSTM)
  const scalar_t* w_hh = nullptr;    // [G, P]
  const scalar_t* w_hr = nullptr;    // [P, H] or nullptr
  const scalar_t* cell_w = nullptr;  // as in CpuFwdParams
  const scalar_t* ws = nullptr;      // [N, Cell::ws_cols] the forward's workspace
  scalar_t* dh_state = nullptr;      // [B, P] grad of h_n in, grad of h0 out
  scalar_t* dc_state = nullptr;      // [B, H] grad of c_n in, grad of c0 out (LSTM)
  scalar_t* dg = nullptr;            // [N, G] out: pre-activation gradients of the input-side product
  scalar_t* dg_rec = nullptr;        // [N, G] out: those of the recurrent product (dg itself unless kSplitGates)
  scalar_t* dh_total = nullptr;      // [N, P] with a projection: total gradient of each h_t
  scalar_t* r_all = nullptr;         // [N, H] with a projection: o·tanh(c_t) of each row
  scalar_t* dr_buf = nullptr;        // [B, H] with a projection: gradient of o·tanh(c_t) at one step
  ZoneoutMask<scalar_t> zo_h, zo_c;  // as in CpuFwdParams
  scalar_t* dh_carry = nullptr;      // [B, P] with zoneout: the part of a step's h gradient for h_{t-1}
  // Layer norm: the parameters as in CpuFwdParams; the pre-activation gradients before the layer norms (dg and dg_rec
  // then hold the products' own) of the input side and of the recurrent side (the same array for an LSTM), and
  // (LSTM) the gradient of γ_c ⊙ ĉ + β_c.
  const scalar_t *ln_ih = nullptr, *ln_hh = nullptr, *ln_c_w = nullptr, *ln_c_b = nullptr;
  scalar_t* dpre = nullptr;          // [N, G]
  scalar_t* dpre_rec = nullptr;      // [N, G]
  scalar_t* dy_c = nullptr;          // [N, H]
  double* ln_sums = nullptr;         // [B, 3G + 2H] (Cell::kLnSumsInLoop) zeros in, per-slot sums out (LstmBwdStep)
};

// Direction weights' layer-norm parameters as pointers (nullptr where absent).
template <typename scalar_t, typename Params>
void set_layer_norm(Params& p, const DirectionWeights& w) {
  const scalar_t** dst[] = {&p.ln_ih, &p.ln_hh, &p.ln_c_w, &p.ln_c_b};
  for (size_t k = 0; k < w.ln.size(); ++k) *dst[k] = w.ln[k].const_data_ptr<scalar_t>();
}

// Direction d's zoneout mask from the op's [D, rows, width] tensor, or a zero (keeps nothing) where there is none.
template <typename scalar_t>
ZoneoutMask<scalar_t> zoneout_mask(const std::optional<at::Tensor>& mask, int64_t d) {
  static const scalar_t kZero = 0;
  if (!mask) return {&kZero, 0, 0};
  return {(*mask)[d].const_data_ptr<scalar_t>(), mask->stride(1), mask->stride(2)};
}

template <typename Cell>
LayerOutputs layer_fwd(const LayerArgs& a) {
  const at::Tensor& input = a.input;
  std::vector<DirectionWeights> dirs;
  const LayerSizes s = Cell::check(a, dirs);
  check_cpu_dtype(input);
  const auto opts = input.options();
  const int64_t D = static_cast<int64_t>(dirs.size()), H = s.H, P = s.P, G = s.G();
  LayerOutputs r;
  r.output = at::empty(with_last(input, D * P), opts);
  auto ws_shape = with_last(input, Cell::ws_cols(s));
  ws_shape.insert(ws_shape.begin(), D);
  r.workspace = a.need_workspace ? at::empty(ws_shape, opts) : at::empty({0}, opts);
  r.h_n = a.h0.contiguous().clone();
  if (Cell::kHasCellState) r.c_n = a.c0.contiguous().clone();
  const at::Tensor x = input.contiguous();
  const std::vector<SeqLayoutHolder> layouts = direction_layouts(input, a.batch_sizes, a.h0.size(1), D);
  for (int64_t d = 0; d < D; ++d) {
    const DirectionWeights& w = dirs[d];
    const SeqLayout seq = layouts[d].view();
    const std::optional<at::Tensor> b = Cell::input_bias(w);
    const at::Tensor bias = b ? b->contiguous() : at::zeros({G}, opts);
    const at::Tensor w_ih_c = w.w_ih.contiguous(), w_hh_c = w.w_hh.contiguous();
    const at::Tensor w_hr_c = s.proj ? w.w_hr->contiguous() : at::Tensor();
    const at::Tensor cell_w = Cell::cell_weight(w);
    at::Tensor r_buf = s.proj ? at::empty({seq.B, H}, opts) : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lstm_fused_cpu_fwd", [&] {
      CpuFwdParams<scalar_t> p;
      p.seq = seq;
      p.s = s;
      p.x = x.const_data_ptr<scalar_t>();
      p.w_ih = w_ih_c.const_data_ptr<scalar_t>();
      p.w_hh = w_hh_c.const_data_ptr<scalar_t>();
      p.bias = bias.const_data_ptr<scalar_t>();
      p.cell_w = cell_w.defined() ? cell_w.const_data_ptr<scalar_t>() : nullptr;
      p.w_hr = s.proj ? w_hr_c.const_data_ptr<scalar_t>() : nullptr;
      p.out = r.output.data_ptr<scalar_t>() + d * P;
      p.ld_out = D * P;
      p.h_state = r.h_n[d].data_ptr<scalar_t>();
      p.c_state = Cell::kHasCellState ? r.c_n[d].data_ptr<scalar_t>() : nullptr;
      p.ws = a.need_workspace ? r.workspace[d].data_ptr<scalar_t>() : nullptr;
      p.r_buf = s.proj ? r_buf.data_ptr<scalar_t>() : nullptr;
      p.zo_h = zoneout_mask<scalar_t>(a.zoneout_h, d);
      p.zo_c = zoneout_mask<scalar_t>(a.zoneout_c, d);
      set_layer_norm<scalar_t>(p, w);
      Cell::fwd_loop(p);
    });
  }
  return r;
}

template <typename Cell>
LayerGrads layer_bwd(const LayerBwdArgs& a) {
  const at::Tensor &input = a.fwd.input, &h0 = a.fwd.h0, &c0 = a.fwd.c0, &output = a.output;
  std::vector<DirectionWeights> dirs;
  const LayerSizes s = Cell::check(a.fwd, dirs);
  check_cpu_dtype(input);
  const int64_t D = static_cast<int64_t>(dirs.size()), H = s.H, P = s.P, G = s.G();
  const int64_t N = input.numel() / std::max<int64_t>(1, s.I);
  check_shape(a.grad_output, output.sizes(), "grad_output");
  check_shape(a.grad_h_n, h0.sizes(), "grad_h_n");
  if (Cell::kHasCellState) check_shape(a.grad_c_n, c0.sizes(), "grad_c_n");
  TORCH_CHECK(output.numel() == N * D * P && a.workspace.numel() == D * N * Cell::ws_cols(s), "lstm_fused: output/workspace "
              "do not come from ", Cell::kFwdOp, " with these arguments (was the forward run without a workspace, e.g. "
              "under no_grad?)");
  for (auto [t, name] : {std::pair{&a.grad_output, "grad_output"}, {&a.grad_h_n, "grad_h_n"},
                         {&a.grad_c_n, "grad_c_n"}, {&output, "output"}, {&a.workspace, "workspace"}})
    if (t->defined()) check_same_dtype_device(input, *t, name);

  const auto opts = input.options();
  const at::Tensor gout = a.grad_output.contiguous(), out_c = output.contiguous(), ws = a.workspace.contiguous();
  const at::Tensor x = input.contiguous(), h0_c = h0.contiguous();
  const at::Tensor c0_c = Cell::kHasCellState ? c0.contiguous() : at::Tensor();
  LayerGrads g;
  g.h0 = a.grad_h_n.contiguous().clone();
  if (Cell::kHasCellState) g.c0 = a.grad_c_n.contiguous().clone();
  g.input = a.need_grad_input ? at::empty(input.sizes(), opts) : at::empty({0}, opts);
  at::Tensor dg = at::empty({N, G}, opts);
  // With layer norm the two products' gradients differ for an LSTM too (each went through its own norm).
  at::Tensor dg_rec = Cell::kSplitGates || s.layer_norm ? at::empty({N, G}, opts) : dg;
  at::Tensor dpre = s.layer_norm ? at::empty({N, G}, opts) : at::Tensor();
  at::Tensor dpre_rec = s.layer_norm && Cell::kSplitGates ? at::empty({N, G}, opts) : dpre;
  at::Tensor dy_c = s.layer_norm && Cell::kHasCellState ? at::empty({N, H}, opts) : at::Tensor();
  const int64_t ln_col = Cell::ln_col(s), ld_ws = Cell::ws_cols(s);
  at::Tensor hprev = at::empty({N, P}, opts);
  at::Tensor dh_total = s.proj ? at::empty({N, P}, opts) : at::Tensor();
  at::Tensor r_all = s.proj ? at::empty({N, H}, opts) : at::Tensor();
  const std::vector<SeqLayoutHolder> layouts = direction_layouts(input, a.fwd.batch_sizes, h0.size(1), D);
  for (int64_t d = 0; d < D; ++d) {
    const DirectionWeights& w = dirs[d];
    const SeqLayout seq = layouts[d].view();
    const at::Tensor cell_w = Cell::cell_weight(w);
    const at::Tensor w_ih_c = w.w_ih.contiguous(), w_hh_c = w.w_hh.contiguous();
    const at::Tensor w_hr_c = s.proj ? w.w_hr->contiguous() : at::Tensor();
    at::Tensor dr_buf = s.proj ? at::empty({seq.B, H}, opts) : at::Tensor();
    // The LSTM's zoneout step writes it without a projection even when only c has zoneout (zeros, then unused); the
    // GRU adds its carry to dh_state itself.
    const bool carry = Cell::kHasCellState && s.zoneout();
    at::Tensor dh_carry = carry ? at::empty({seq.B, P}, opts) : at::Tensor();
    g.w_ih.push_back(at::empty({G, s.I}, opts));
    g.w_hh.push_back(at::empty({G, P}, opts));
    if (a.has_bias) g.b_ih.push_back(at::empty({G}, opts));
    if (a.has_bias && Cell::kSplitGates) g.b_hh.push_back(at::empty({G}, opts));
    if (s.proj) g.w_hr.push_back(at::empty({P, H}, opts));
    if (s.peephole) g.w_ph.push_back(at::empty(cell_w.sizes(), opts));
    for (const at::Tensor& t : w.ln) g.ln.push_back(at::empty(t.sizes(), opts));
    // The loop's per-slot sums of the biases' and norms' gradients (layout in LstmBwdStep::ln_sums).
    const bool sums_in_loop = s.layer_norm && Cell::kLnSumsInLoop;
    at::Tensor ln_sums = sums_in_loop ? at::zeros({seq.B, 3 * G + 2 * H}, opts.dtype(at::kDouble)) : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lstm_fused_cpu_bwd", [&] {
      CpuBwdParams<scalar_t> p;
      p.seq = seq;
      p.s = s;
      p.gout = gout.const_data_ptr<scalar_t>() + d * P;
      p.out = out_c.const_data_ptr<scalar_t>() + d * P;
      p.ld = D * P;
      p.h0 = h0_c[d].const_data_ptr<scalar_t>();
      p.c0 = Cell::kHasCellState ? c0_c[d].const_data_ptr<scalar_t>() : nullptr;
      p.w_hh = w_hh_c.const_data_ptr<scalar_t>();
      p.w_hr = s.proj ? w_hr_c.const_data_ptr<scalar_t>() : nullptr;
      p.cell_w = cell_w.defined() ? cell_w.const_data_ptr<scalar_t>() : nullptr;
      p.ws = ws[d].const_data_ptr<scalar_t>();
      p.dh_state = g.h0[d].data_ptr<scalar_t>();
      p.dc_state = Cell::kHasCellState ? g.c0[d].data_ptr<scalar_t>() : nullptr;
      p.dg = dg.data_ptr<scalar_t>();
      p.dg_rec = dg_rec.data_ptr<scalar_t>();
      p.dh_total = s.proj ? dh_total.data_ptr<scalar_t>() : nullptr;
      p.r_all = s.proj ? r_all.data_ptr<scalar_t>() : nullptr;
      p.dr_buf = s.proj ? dr_buf.data_ptr<scalar_t>() : nullptr;
      p.zo_h = zoneout_mask<scalar_t>(a.fwd.zoneout_h, d);
      p.zo_c = zoneout_mask<scalar_t>(a.fwd.zoneout_c, d);
      p.dh_carry = carry ? dh_carry.data_ptr<scalar_t>() : nullptr;
      set_layer_norm<scalar_t>(p, w);
      if (s.layer_norm) {
        p.dpre = dpre.data_ptr<scalar_t>();
        p.dpre_rec = dpre_rec.data_ptr<scalar_t>();
        p.dy_c = dy_c.defined() ? dy_c.data_ptr<scalar_t>() : nullptr;
        p.ln_sums = sums_in_loop ? ln_sums.data_ptr<double>() : nullptr;
      }
      Cell::bwd_loop(p);
      // Everything below is one GEMM or reduction over all steps. Both directions read the same input, so its
      // gradient is their sum (accumulated in direction order).
      const scalar_t* dgp = p.dg;
      const scalar_t* dgr = p.dg_rec;
      const scalar_t* w_ih_p = w_ih_c.const_data_ptr<scalar_t>();
      if (a.need_grad_input)
        gemm<scalar_t>(false, seq.N, dgp, G, GemmOperand<scalar_t>(false, G, s.I, w_ih_p, s.I), d > 0,
                       g.input.data_ptr<scalar_t>(), s.I);
      gemm<scalar_t>(true, G, dgp, G, GemmOperand<scalar_t>(false, seq.N, s.I, x.const_data_ptr<scalar_t>(), s.I),
                     false, g.w_ih[d].data_ptr<scalar_t>(), s.I);
      gather_prev_hidden<scalar_t>(seq, P, p.out, p.ld, p.h0, hprev.data_ptr<scalar_t>());
      gemm<scalar_t>(true, G, dgr, G, GemmOperand<scalar_t>(false, seq.N, P, hprev.const_data_ptr<scalar_t>(), P),
                     false, g.w_hh[d].data_ptr<scalar_t>(), P);
      // The biases (and the gains) sit after the layer norms: their gradients are the pre-norm ones. With layer
      // norm, γ_ih and γ_hh take the pre-norm gradients times x̂, γ_c and β_c dy_c times ĉ, and dy_c. Summed per
      // batch slot in the loop (kLnSumsInLoop): the slots are summed here in order; otherwise a column pass over
      // all rows per product (its gain in the pass that sums its bias).
      if (sums_in_loop) {
        const at::Tensor totals = at::empty({3 * G + 2 * H}, ln_sums.options());  // the layout of ln_sums' rows
        column_sums<double>(ln_sums.const_data_ptr<double>(), seq.B, 3 * G + 2 * H, totals.data_ptr<double>());
        if (a.has_bias) g.b_ih[d].copy_(totals.narrow(0, 0, G));
        const int64_t nl = static_cast<int64_t>(w.ln.size());
        for (int64_t k = 0; k < nl; ++k)  // γ_ih, γ_hh (G each), γ_c, β_c (H each)
          g.ln[d * nl + k].copy_(totals.narrow(0, k < 2 ? (k + 1) * G : 3 * G + (k - 2) * H, k < 2 ? G : H));
      } else {
        // Only cells whose products have gradients of their own (split gates) come here with layer norm.
        TORCH_INTERNAL_ASSERT(!s.layer_norm || Cell::kSplitGates, "lstm_fused: layer-norm sums of shared gradients");
        for (int side = 0; side < (Cell::kSplitGates ? 2 : 1); ++side) {  // the input product, the recurrent one
          ColumnSums<scalar_t> q;
          q.a = s.layer_norm ? (side ? p.dpre_rec : p.dpre) : (side ? dgr : dgp);
          q.lda = G;
          if (a.has_bias) q.sum = (side ? g.b_hh : g.b_ih)[d].data_ptr<scalar_t>();
          if (s.layer_norm) {  // [N, ld_ws] x̂_ih, then x̂_hh
            q.b = p.ws + ln_col + side * G, q.ldb = ld_ws;
            q.dot = g.ln[d * w.ln.size() + side].data_ptr<scalar_t>();
          }
          if (q.sum || q.dot) column_sums(q, seq.N, G);
        }
      }
      if (s.peephole) Cell::cell_weight_grad(p, g.w_ph[d].data_ptr<scalar_t>());
      if (s.proj)
        gemm<scalar_t>(true, P, p.dh_total, P, GemmOperand<scalar_t>(false, seq.N, H, p.r_all, H), false,
                       g.w_hr[d].data_ptr<scalar_t>(), H);
    });
  }
  return g;
}

}  // namespace cpu
}  // namespace lstm_fused
