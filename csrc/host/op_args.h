// The six ops' arguments and results as named structs (their schemas: host/op_schemas.h). Each op's arguments are
// read off the dispatcher's stack into one struct, once, by the op's reader below; every backend (CPU, CUDA, the
// CUDA path emulated on the CPU) receives that struct (host/op_binding.h), and its results go back through the op's
// writer. Adding an argument is the schema string, a field, its line in the reader, and its use.
#pragma once

#include <optional>
#include <vector>

#include <ATen/core/Tensor.h>
#include <ATen/core/ivalue.h>
#include <ATen/core/stack.h>

namespace lstm_fused {

using at::Tensor;
using TensorVec = std::vector<Tensor>;

// A layer's weights: one list per kind, one tensor per direction (per layer in a stack); the optional kinds are
// nullopt where the layer has none (the schema's None).
struct LayerWeights {
  TensorVec w_ih, w_hh;  // [G, I], [G, P]
  std::optional<TensorVec> b_ih, b_hh;  // [G]
  std::optional<TensorVec> w_hr;  // [P, H]: projection
  std::optional<TensorVec> w_ph;  // [3, H] or [2, H] (coupled): peepholes

  // The weights of lanes [first, first + count) (a stack's layer l: first l, count 1).
  LayerWeights slice(int64_t first, int64_t count) const {
    auto part = [&](const TensorVec& v) { return TensorVec(v.begin() + first, v.begin() + first + count); };
    auto opt = [&](const std::optional<TensorVec>& v) { return v ? std::optional<TensorVec>(part(*v)) : std::nullopt; };
    return {part(w_ih), part(w_hh), opt(b_ih), opt(b_hh), opt(w_hr), opt(w_ph)};
  }
};

// The forward of a layer (lstm_layer_fwd, gru_layer_fwd) or a layer stack (lstm_stack_fwd).
struct LayerArgs {
  Tensor input;  // [T, B, I], or packed data [N, I] with batch_sizes
  std::optional<Tensor> batch_sizes;  // [T] int64 on the CPU
  Tensor h0;  // [D, B, P] (a stack: [L, B, H])
  Tensor c0;  // [D, B, H]; undefined for a GRU
  LayerWeights w;
  bool coupled = false;
  bool need_workspace = false;
  // Zoneout masks [D, rows, P] / [D, rows, H] (a layer op's; a stack has none): how much of the previous h / c each
  // row and unit keeps.
  std::optional<Tensor> zoneout_h, zoneout_c;
  // Layer norm (a layer op's; a stack has none): per direction LSTM γ_ih [G], γ_hh [G], γ_c [H], β_c [H]; GRU γ_ih,
  // γ_hh [G].
  std::optional<TensorVec> layer_norm;

  // A stack's layer l, fed `x` (the input, or the output of the layer below).
  LayerArgs layer(int64_t l, const Tensor& x) const {
    return {x, batch_sizes, h0.narrow(0, l, 1), c0.narrow(0, l, 1), w.slice(l, 1), coupled, need_workspace,
            std::nullopt, std::nullopt, std::nullopt};
  }
};

// A layer forward's results: output [..., D·P], h_n [D, B, P], c_n [D, B, H] (undefined for a GRU) and the workspace
// the backward reads (empty without need_workspace).
struct LayerOutputs {
  Tensor output, h_n, c_n, workspace;
};

// The backward of a layer (lstm_layer_bwd, gru_layer_bwd): the forward's arguments (no biases: the backward does
// not read them), its results and the gradients of those.
struct LayerBwdArgs {
  Tensor grad_output;  // undefined: a stack's lower layer whose output the loss did not use (zero)
  Tensor grad_h_n, grad_c_n;  // grad_c_n undefined for a GRU
  LayerArgs fwd;
  Tensor output, workspace;
  bool has_bias = false;
  bool need_grad_input = false;
};

// A backward's results. Per direction (per layer in a stack): w_ih, w_hh, b_ih and b_hh (empty lists without
// biases; an LSTM's one bias gradient serves both and is in b_ih), w_hr, w_ph (empty without); ln: the layer-norm
// parameters' gradients in LayerArgs::layer_norm's order (empty without). input is empty unless need_grad_input; c0
// undefined for a GRU.
struct LayerGrads {
  Tensor input, h0, c0;
  TensorVec w_ih, w_hh, b_ih, b_hh, w_hr, w_ph, ln;
};

// lstm_stack_fwd's results: every layer's output and workspace (what each layer's backward reads), h_n and c_n
// [L, B, H].
struct StackOutputs {
  TensorVec outputs;
  Tensor h_n, c_n;
  TensorVec workspaces;
};

// lstm_stack_bwd's arguments: one output gradient per layer (empty where the loss did not use that output).
struct StackBwdArgs {
  TensorVec grad_outputs;
  Tensor grad_h_n, grad_c_n;
  LayerArgs fwd;
  TensorVec outputs, workspaces;
  bool has_bias = false;
  bool need_grad_input = false;

  // Layer l's backward, given the gradient its output receives (undefined: none) and whether its input's is needed.
  LayerBwdArgs layer(int64_t l, const Tensor& grad_output, bool need_input_grad) const {
    return {grad_output, grad_h_n.narrow(0, l, 1), grad_c_n.narrow(0, l, 1),
            fwd.layer(l, l == 0 ? fwd.input : outputs[l - 1]), outputs[l], workspaces[l], has_bias, need_input_grad};
  }
};

// ---- readers and writers: the schemas' argument and result orders ----------------------------------------------
namespace op_io {

using Stack = torch::jit::Stack;

// Reads the top `n` values of the stack in order and drops them.
struct ArgReader {
  Stack& stack;
  size_t next;
  size_t n;
  ArgReader(Stack& s, size_t count) : stack(s), next(s.size() - count), n(count) {}
  ~ArgReader() { torch::jit::drop(stack, n); }
  const c10::IValue& take() { return stack[next++]; }
  Tensor tensor() { return take().toTensor(); }
  std::optional<Tensor> opt_tensor() { return take().toOptional<Tensor>(); }
  TensorVec list() { return take().toTensorVector(); }
  std::optional<TensorVec> opt_list() {
    const c10::IValue& v = take();
    return v.isNone() ? std::nullopt : std::optional<TensorVec>(v.toTensorVector());
  }
  bool flag() { return take().toBool(); }
};

// Which op's arguments are read: the three forward schemas differ only in what their layer has.
enum class Op { kLstmLayer, kLstmStack, kGruLayer };

// A forward's layer arguments in schema order: input, batch_sizes, h0, c0, w_ih, w_hh, [b_ih, b_hh], w_hr, w_ph,
// coupled. A stack has no w_hr; a GRU has no c0, w_hr, w_ph or coupled; a backward repeats them without the biases.
inline void read_layer(ArgReader& r, LayerArgs& f, Op op, bool biases) {
  const bool lstm = op != Op::kGruLayer;
  f.input = r.tensor(), f.batch_sizes = r.opt_tensor(), f.h0 = r.tensor();
  if (lstm) f.c0 = r.tensor();
  f.w.w_ih = r.list(), f.w.w_hh = r.list();
  if (biases) f.w.b_ih = r.opt_list(), f.w.b_hh = r.opt_list();
  if (op == Op::kLstmLayer) f.w.w_hr = r.opt_list();
  if (lstm) f.w.w_ph = r.opt_list(), f.coupled = r.flag();
}

// lstm_layer_fwd, lstm_stack_fwd, gru_layer_fwd: the layer, then need_workspace.
inline LayerArgs read_fwd(Stack& s, Op op) {
  ArgReader r(s, op == Op::kLstmLayer ? 15 : op == Op::kLstmStack ? 11 : 10);
  LayerArgs a;
  read_layer(r, a, op, /*biases=*/true);
  a.need_workspace = r.flag();
  if (op != Op::kLstmStack) a.zoneout_h = r.opt_tensor();
  if (op == Op::kLstmLayer) a.zoneout_c = r.opt_tensor();
  if (op != Op::kLstmStack) a.layer_norm = r.opt_list();
  return a;
}

// lstm_layer_bwd, gru_layer_bwd: grad_output, grad_h_n, [grad_c_n], the layer, output, workspace, has_bias,
// need_grad_input.
inline LayerBwdArgs read_layer_bwd(Stack& s, Op op) {
  ArgReader r(s, op == Op::kLstmLayer ? 19 : 13);
  LayerBwdArgs a;
  a.grad_output = r.tensor(), a.grad_h_n = r.tensor();
  if (op != Op::kGruLayer) a.grad_c_n = r.tensor();
  read_layer(r, a.fwd, op, /*biases=*/false);
  a.output = r.tensor(), a.workspace = r.tensor(), a.has_bias = r.flag(), a.need_grad_input = r.flag();
  a.fwd.zoneout_h = r.opt_tensor();
  if (op == Op::kLstmLayer) a.fwd.zoneout_c = r.opt_tensor();
  a.fwd.layer_norm = r.opt_list();
  return a;
}

// lstm_stack_bwd: as a layer's backward, with lists of output gradients, outputs and workspaces.
inline StackBwdArgs read_stack_bwd(Stack& s) {
  ArgReader r(s, 15);
  StackBwdArgs a;
  a.grad_outputs = r.list(), a.grad_h_n = r.tensor(), a.grad_c_n = r.tensor();
  read_layer(r, a.fwd, Op::kLstmStack, /*biases=*/false);
  a.outputs = r.list(), a.workspaces = r.list(), a.has_bias = r.flag(), a.need_grad_input = r.flag();
  return a;
}

// Results, in the schemas' orders.
inline void push_lstm(Stack& s, LayerOutputs&& o) { torch::jit::push(s, o.output, o.h_n, o.c_n, o.workspace); }
inline void push_gru(Stack& s, LayerOutputs&& o) { torch::jit::push(s, o.output, o.h_n, o.workspace); }
inline void push_stack(Stack& s, StackOutputs&& o) { torch::jit::push(s, o.outputs, o.h_n, o.c_n, o.workspaces); }
inline void push_lstm_grads(Stack& s, LayerGrads&& g) {
  torch::jit::push(s, g.input, g.h0, g.c0, g.w_ih, g.w_hh, g.b_ih, g.w_hr, g.w_ph, g.ln);
}
inline void push_stack_grads(Stack& s, LayerGrads&& g) {
  torch::jit::push(s, g.input, g.h0, g.c0, g.w_ih, g.w_hh, g.b_ih, g.w_ph);
}
inline void push_gru_grads(Stack& s, LayerGrads&& g) {
  torch::jit::push(s, g.input, g.h0, g.w_ih, g.w_hh, g.b_ih, g.b_hh, g.ln);
}

}  // namespace op_io
}  // namespace lstm_fused
