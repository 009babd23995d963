// Registers a backend's six op kernels, boxed: each reads its op's arguments off the dispatcher's stack into the
// op's struct (host/op_args.h), calls the backend, and pushes the named results back in the schema's order. So the
// op signatures live only in host/op_schemas.h; a backend is a type with six static functions:
//   LayerOutputs lstm_layer_fwd(const LayerArgs&);      LayerGrads lstm_layer_bwd(const LayerBwdArgs&);
//   StackOutputs lstm_stack_fwd(const LayerArgs&);      LayerGrads lstm_stack_bwd(const StackBwdArgs&);
//   LayerOutputs gru_layer_fwd(const LayerArgs&);       LayerGrads gru_layer_bwd(const LayerBwdArgs&);
#pragma once

#include <string>

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "host/op_args.h"

namespace lstm_fused {
namespace op_binding {

using torch::jit::Stack;

template <class Ops>
void lstm_layer_fwd(const c10::OperatorHandle&, Stack* s) {
  op_io::push_lstm(*s, Ops::lstm_layer_fwd(op_io::read_fwd(*s, op_io::Op::kLstmLayer)));
}
template <class Ops>
void lstm_layer_bwd(const c10::OperatorHandle&, Stack* s) {
  op_io::push_lstm_grads(*s, Ops::lstm_layer_bwd(op_io::read_layer_bwd(*s, op_io::Op::kLstmLayer)));
}
template <class Ops>
void lstm_stack_fwd(const c10::OperatorHandle&, Stack* s) {
  op_io::push_stack(*s, Ops::lstm_stack_fwd(op_io::read_fwd(*s, op_io::Op::kLstmStack)));
}
template <class Ops>
void lstm_stack_bwd(const c10::OperatorHandle&, Stack* s) {
  op_io::push_stack_grads(*s, Ops::lstm_stack_bwd(op_io::read_stack_bwd(*s)));
}
template <class Ops>
void gru_layer_fwd(const c10::OperatorHandle&, Stack* s) {
  op_io::push_gru(*s, Ops::gru_layer_fwd(op_io::read_fwd(*s, op_io::Op::kGruLayer)));
}
template <class Ops>
void gru_layer_bwd(const c10::OperatorHandle&, Stack* s) {
  op_io::push_gru_grads(*s, Ops::gru_layer_bwd(op_io::read_layer_bwd(*s, op_io::Op::kGruLayer)));
}

}  // namespace op_binding

// For a TORCH_LIBRARY_IMPL(<namespace>, <backend key>, m) block: the six ops of backend `Ops`, their names prefixed
// by `prefix` (the test library's emulated twins are emu_<name>).
template <class Ops>
void bind_ops(torch::Library& m, const char* prefix = "") {
  auto impl = [&](const char* name, torch::CppFunction&& fn) {
    m.impl((std::string(prefix) + name).c_str(), std::move(fn));
  };
  impl("lstm_layer_fwd", torch::CppFunction::makeFromBoxedFunction<&op_binding::lstm_layer_fwd<Ops>>());
  impl("lstm_layer_bwd", torch::CppFunction::makeFromBoxedFunction<&op_binding::lstm_layer_bwd<Ops>>());
  impl("lstm_stack_fwd", torch::CppFunction::makeFromBoxedFunction<&op_binding::lstm_stack_fwd<Ops>>());
  impl("lstm_stack_bwd", torch::CppFunction::makeFromBoxedFunction<&op_binding::lstm_stack_bwd<Ops>>());
  impl("gru_layer_fwd", torch::CppFunction::makeFromBoxedFunction<&op_binding::gru_layer_fwd<Ops>>());
  impl("gru_layer_bwd", torch::CppFunction::makeFromBoxedFunction<&op_binding::gru_layer_bwd<Ops>>());
}

}  // namespace lstm_fused
