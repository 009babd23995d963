"""ONNX export of lstm_fused's modules: each recurrent layer becomes one node of ONNX's own LSTM / GRU operator.

The modules' forward methods branch here when ``is_exporting()`` is true: while ``torch.onnx.export`` traces
the model, with either exporter (the default torch.export-based one, and ``dynamo=False``, the TorchScript-based
one). Eager calls, plain ``torch.export`` (hence AOTInductor) and ``torch.compile`` still run lstm_fused's
custom ops. The node is emitted with ``torch.onnx.ops.symbolic_multi_out`` under the torch.export-based exporter
and through an ``autograd.Function`` with a ``symbolic`` staticmethod under the TorchScript-based one (which
cannot trace ``torch.onnx.ops``). The weight re-arrangement below is ordinary tensor code on the parameters:
the TorchScript-based exporter folds it into the initializers; the torch.export-based one keeps the parameters
as initializers under their state_dict names with a few Split/Neg/Concat nodes after them, which onnxruntime
folds when it loads the model.

Mapping (H = hidden_size, D = 2 if bidirectional else 1, one ONNX node per layer, both directions in it):

- LSTM: PyTorch's gate rows i, f, g, o become ONNX's i, o, f, c: W = weight_ih rows reordered, [D, 4H, I];
  R = weight_hh likewise, [D, 4H, H]; B = [bias_ih; bias_hh] reordered, [D, 8H] (omitted without bias).
  initial_h / initial_c are slices of hx (omitted when hx is None: ONNX's default is zeros).
- Peephole (weight_ph rows p_i, p_f, p_o): ONNX input P, [D, 3H], order i, o, f. ONNX's equations match
  lstm_fused's: i and f see C_{t-1}, o sees the new C_t.
- Coupled (f = 1 − i; rows i, g, o): an ordinary LSTM node whose forget rows are the negated input rows
  (W_f = −W_i, R_f = −R_i, biases likewise, and with peepholes P_f = −p_i), since σ(−a) = 1 − σ(a). This
  avoids the ``input_forget`` attribute, which runtimes implement unevenly.
- GRU: PyTorch's r, z, n become ONNX's z, r, h, with ``linear_before_reset=1`` (n = tanh(W_n x + b_in +
  r ⊙ (R_n h + b_hn)), PyTorch's formula).
- Outputs: ONNX's Y [T, D, B, H] becomes [T, B, D·H] (the next layer's input); Y_h (and Y_c) of the layers are
  concatenated into [L·D, B, H]. batch_first transposes around the nodes; unbatched input gets a batch of 1.
- LSTMCell / GRUCell: a one-step, one-direction LSTM / GRU node; its Y_h (Y_c) are the cell's outputs.
- float16/bfloat16 modules compute in float32 (cast around the nodes), as on lstm_fused's CPU path; float64
  modules give float64 nodes, valid ONNX, but onnxruntime's CPU LSTM/GRU kernels have no float64.

Not expressible with ONNX's operators, so they raise a RuntimeError saying so: ``proj_size > 0`` (ONNX's LSTM
has no projection), ``zoneout`` / ``zoneout_cell`` (its LSTM and GRU have no state that keeps part of its previous
value, in training or in eval), ``layer_norm`` (nor layer normalisation inside the recurrence) and PackedSequence
input (the packing is data-dependent). Dropout between layers and
weight_drop are training-time operations and are left out of the exported (inference) graph, with a warning if
the module is in training mode with either on.
"""
import contextlib
import warnings
from typing import Optional

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

__all__ = ["is_exporting", "rnn_forward", "cell_forward"]


def is_exporting() -> bool:
    """True while torch.onnx.export traces the model, with either exporter; False in eager (also eager calls
    made during an export), under plain torch.export / AOTInductor and under torch.compile, where the modules
    run lstm_fused's own ops. Costs ~0.2 µs outside tracing."""
    if torch.jit.is_tracing():  # the TorchScript-based exporter traces with torch.jit
        return torch.onnx.is_in_onnx_export()
    if not torch.compiler.is_exporting():  # eager, torch.compile
        return False
    if torch.onnx.is_in_onnx_export():  # torch.onnx.export's torch.export(strict=False) capture
        return True
    # If that capture fails, torch.onnx.export retries with torch.export(strict=True), whose dynamo folds
    # is_in_onnx_export() to False. The exporter's own flag catches that retry, which _refuse_strict_retry then
    # fails, so that torch.onnx.export reports the first attempt's error rather than capturing lstm_fused's ops,
    # which it cannot convert.
    flags = getattr(getattr(getattr(torch.onnx, "_internal", None), "exporter", None), "_flags", None)
    return bool(getattr(flags, "_is_onnx_exporting", False))


def _refuse_strict_retry(name: str) -> None:
    if not torch.onnx.is_in_onnx_export():  # see is_exporting
        raise RuntimeError(
            f"lstm_fused: {name} exports to ONNX through torch.onnx.export's first attempt, torch.export(strict="
            "False); its retry with torch.export(strict=True) is not supported (dynamo cannot trace "
            "torch.onnx.ops). The first attempt's error says what failed.")


@contextlib.contextmanager
def _static_checks():
    # The modules' input checks compare sizes with Python ints; under the TorchScript exporter's trace each
    # comparison warns that it is not recorded in the graph, which is right for a check, so the warning is
    # silenced. (Under torch.export the comparisons become guards on the dynamic dimensions.)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


def _unsupported(what: str, why: str, todo: str) -> RuntimeError:
    return RuntimeError(f"lstm_fused: ONNX export of {what} is not supported: {why}. {todo}")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # float16/bfloat16 modules compute in float32, as on lstm_fused's CPU path (onnxruntime's CPU LSTM/GRU
    # kernels are float32 only); float64 stays float64, as ONNX's operators define it.
    return torch.float64 if dtype == torch.float64 else torch.float32


# -- weight re-arrangement (PyTorch gate order -> ONNX gate order) ------------------------------------------------
def _lstm_rows(t: Tensor, coupled: bool) -> Tensor:
    """Gate rows (dim 0) i, f, g, o (coupled: i, g, o) -> ONNX's i, o, f, c (coupled: f = −i)."""
    if coupled:
        i, g, o = t.chunk(3, 0)
        return torch.cat([i, o, -i, g])
    i, f, g, o = t.chunk(4, 0)
    return torch.cat([i, o, f, g])


def _lstm_peepholes(p: Tensor, coupled: bool) -> Tensor:
    """weight_ph rows p_i, p_f, p_o (coupled: p_i, p_o) -> ONNX's P [3H] in order i, o, f."""
    if coupled:
        return torch.cat([p[0], p[1], -p[0]])
    return torch.cat([p[0], p[2], p[1]])


def _gru_rows(t: Tensor) -> Tensor:
    """Gate rows r, z, n -> ONNX's z, r, h."""
    r, z, n = t.chunk(3, 0)
    return torch.cat([z, r, n])


# -- emitting an ONNX node under either exporter ------------------------------------------------------------------
def _none_input(g):
    # An omitted optional input of an ONNX node (TorchScript exporter's convention).
    n = g.op("prim::Constant")
    n.setType(torch._C.OptionalType.ofTensor())
    return n


def _ts_inputs(g, inputs):
    inputs = list(inputs)
    while inputs and inputs[-1] is None:  # trailing omitted inputs are simply left out
        inputs.pop()
    return [_none_input(g) if v is None else v for v in inputs]


class _TorchScriptLSTM(torch.autograd.Function):
    """Carries an ONNX LSTM node through the TorchScript exporter's trace (only ``symbolic`` matters there; the
    forward returns placeholders of the right shapes)."""

    @staticmethod
    def forward(ctx, x, w, r, b, h0, c0, p, hidden_size: int, direction: str):
        d, t, batch = (2 if direction == "bidirectional" else 1), x.shape[0], x.shape[1]
        return x.new_zeros(t, d, batch, hidden_size), x.new_zeros(d, batch, hidden_size), x.new_zeros(d, batch,
                                                                                                     hidden_size)

    @staticmethod
    def symbolic(g, x, w, r, b, h0, c0, p, hidden_size, direction):
        return g.op("LSTM", *_ts_inputs(g, [x, w, r, b, None, h0, c0, p]), hidden_size_i=hidden_size,
                    direction_s=direction, outputs=3)


class _TorchScriptGRU(torch.autograd.Function):
    """As _TorchScriptLSTM, for an ONNX GRU node with linear_before_reset=1."""

    @staticmethod
    def forward(ctx, x, w, r, b, h0, hidden_size: int, direction: str):
        d, t, batch = (2 if direction == "bidirectional" else 1), x.shape[0], x.shape[1]
        return x.new_zeros(t, d, batch, hidden_size), x.new_zeros(d, batch, hidden_size)

    @staticmethod
    def symbolic(g, x, w, r, b, h0, hidden_size, direction):
        return g.op("GRU", *_ts_inputs(g, [x, w, r, b, None, h0]), hidden_size_i=hidden_size,
                    direction_s=direction, linear_before_reset_i=1, outputs=2)


def _onnx_node(op: str, x, w, r, b, initial: list, p, hidden_size: int, d: int):
    """ONNX `op` node (LSTM, or GRU with linear_before_reset=1) over d directions: x [T, B, I], w [d, G·H, I],
    r [d, G·H, H], b [d, 2G·H] or None, initial: the initial states (h0, LSTM's c0), each [d, B, H] or None,
    p [d, 3H] or None (LSTM's peepholes). Returns Y [T, d, B, H] and the final states, each [d, B, H]."""
    direction = "bidirectional" if d == 2 else "forward"
    if torch.jit.is_tracing():  # the TorchScript-based exporter
        if op == "LSTM":
            return _TorchScriptLSTM.apply(x, w, r, b, *initial, p, hidden_size, direction)
        return _TorchScriptGRU.apply(x, w, r, b, *initial, hidden_size, direction)
    inputs = [x, w, r, b, None, *initial, p]
    while inputs[-1] is None:  # trailing omitted inputs are simply left out
        inputs.pop()
    attributes = {"hidden_size": hidden_size, "direction": direction}
    if op == "GRU":
        attributes["linear_before_reset"] = 1
    t, batch = x.shape[0], x.shape[1]
    return torch.onnx.ops.symbolic_multi_out(
        op, inputs, attributes, dtypes=[x.dtype] * (1 + len(initial)),
        shapes=[[t, d, batch, hidden_size]] + [[d, batch, hidden_size]] * len(initial))


# -- layers -------------------------------------------------------------------------------------------------------
def _params(module, layer: int, direction: int) -> dict:
    suffix = "_reverse" if direction == 1 else ""
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_ph")
    return {n: getattr(module, f"{n}_l{layer}{suffix}", None) for n in names}


def _cast(t: Tensor, dtype: torch.dtype) -> Tensor:
    # Only where needed: the TorchScript exporter records even a no-op .to() as a Cast node.
    return t if t.dtype == dtype else t.to(dtype)


def _stack(tensors, dtype):
    return _cast(torch.stack(tensors), dtype)


def _node_weights(op: str, ps: list, coupled: bool, dtype):
    """W, R, B (None without bias) and P (LSTM's peepholes; None without) of an `op` node, from the parameters of
    its directions."""
    rows = _gru_rows if op == "GRU" else (lambda t: _lstm_rows(t, coupled))
    w = _stack([rows(p["weight_ih"]) for p in ps], dtype)
    r = _stack([rows(p["weight_hh"]) for p in ps], dtype)
    b = None
    if ps[0]["bias_ih"] is not None:
        b = _stack([torch.cat([rows(p["bias_ih"]), rows(p["bias_hh"])]) for p in ps], dtype)
    ph = None
    if ps[0]["weight_ph"] is not None:
        ph = _stack([_lstm_peepholes(p["weight_ph"], coupled) for p in ps], dtype)
    return w, r, b, ph


def _y_to_output(y: Tensor) -> Tensor:
    """ONNX's Y [T, D, B, H] -> [T, B, D·H], directions side by side as in PyTorch."""
    return y.transpose(1, 2).flatten(2)


def _warn_dropout(module) -> None:
    """Training-time randomness has no place in an (inference) ONNX graph: warn when the module in training mode
    has some, which the graph leaves out (so it computes what the module computes in eval)."""
    left_out = []
    if module.training and getattr(module, "dropout", 0) > 0 and getattr(module, "num_layers", 1) > 1:
        left_out.append("the dropout between layers")
    if module.training and module.weight_drop > 0:
        left_out.append("weight_drop (the weights are exported as they are, as in eval)")
    if left_out:
        warnings.warn(
            f"lstm_fused: the exported ONNX graph of {type(module).__name__} leaves out {' and '.join(left_out)} "
            "(an ONNX export is an inference graph); call model.eval() before exporting to silence this",
            stacklevel=4,
        )


def _refuse_recurrence_options(module, name: str) -> None:
    """Zoneout and layer norm change the recurrence itself (zoneout in eval too: h_t = p·h_{t-1} + (1 − p)·h̃_t): no
    ONNX LSTM/GRU node computes them."""
    keep = "keep it in PyTorch (torch.export / AOTInductor handle lstm_fused's ops)"
    if getattr(module, "layer_norm", False):
        raise _unsupported(f"{name} with layer_norm=True", "ONNX's LSTM and GRU operators have no layer normalisation "
                           "of their gate products or cell", f"Export a model without layer_norm, or {keep}")
    on = [f"{opt}={getattr(module, opt)}" for opt in ("zoneout", "zoneout_cell") if getattr(module, opt, 0.0) > 0]
    if on:
        raise _unsupported(
            f"{name} with {' and '.join(on)}", "ONNX's LSTM and GRU operators have no zoneout (a state keeping part of "
            "its previous value at each step, in eval as in training)", "Export the model with zoneout=0 (the "
            f"option only regularises training), or {keep}")


def _as_hx(states: list, num_states: int):
    return tuple(states) if num_states > 1 else states[0]


def _sequence_input(module, input, hx):
    """The module's own checks on its sequence input, for export: returns (x [T, B, I] time-major, the states
    [L·D, B, ·] or None, is_batched)."""
    # (The TorchScript-based exporter hands a PackedSequence over as a plain tuple of its tensors.)
    if isinstance(input, (PackedSequence, tuple, list)):
        raise _unsupported(
            f"{module.mode} with PackedSequence input", "the packing (batch_sizes, sorted_indices) is data that "
            f"ONNX's {module.mode} operator cannot take", "Export the module with padded input instead ([T, B, I], "
            "or [B, T, I] with batch_first) and use the outputs at each sequence's length")
    is_batched, states = module._check_ranks(input, hx)
    if not is_batched:
        x = input.unsqueeze(1)
    else:
        x = input.transpose(0, 1) if module.batch_first else input
    with _static_checks():
        module._check_input(x, None)
        if states is not None:
            module._check_hidden(states, x.size(1))
    return x, states, is_batched


def _sequence_output(module, out: Tensor, states: list, is_batched: bool, dtype: torch.dtype):
    out = _cast(out, dtype)
    states = [_cast(s, dtype) for s in states]
    if not is_batched:
        return out.squeeze(1), [s.squeeze(1) for s in states]
    return (out.transpose(0, 1) if module.batch_first else out), states


def rnn_forward(module, input, hx=None):
    """lstm_fused.LSTM / GRU .forward under torch.onnx.export: one ONNX LSTM / GRU node per layer."""
    op, num_states = module.mode, module._num_states
    _refuse_strict_retry(op)
    if module.proj_size > 0:
        kind = "LSTM" + "".join(f" ({v}=True)" for v in ("peephole", "coupled") if getattr(module, v))
        raise _unsupported(
            f"{kind} with proj_size>0", "ONNX's LSTM operator has no projection (h_t = W_hr·h_t)",
            "Export a model without proj_size, or keep the projected LSTM in PyTorch (torch.export / AOTInductor "
            "handle lstm_fused's ops)")
    _refuse_recurrence_options(module, op)
    x, states, is_batched = _sequence_input(module, input, hx)
    _warn_dropout(module)
    result_dtype = x.dtype
    dtype = _compute_dtype(result_dtype)
    x = _cast(x, dtype)
    num_directions = 2 if module.bidirectional else 1
    finals = [[] for _ in range(num_states)]
    for layer in range(module.num_layers):
        ps = [_params(module, layer, d) for d in range(num_directions)]
        w, r, b, ph = _node_weights(op, ps, module.coupled, dtype)
        first = layer * num_directions
        initial = [None if states is None else _cast(states[i][first:first + num_directions], dtype)
                   for i in range(num_states)]
        y, *layer_finals = _onnx_node(op, x, w, r, b, initial, ph, module.hidden_size, num_directions)
        x = _y_to_output(y)
        for acc, final in zip(finals, layer_finals):
            acc.append(final)
    finals = [acc[0] if len(acc) == 1 else torch.cat(acc) for acc in finals]
    out, finals = _sequence_output(module, x, finals, is_batched, result_dtype)
    return out, _as_hx(finals, num_states)


def _cell_input(module, input, hx):
    """The cell's own checks on its input, for export: returns (input [B, I], the states [B, H] or None,
    is_batched)."""
    x, states, is_batched = module._batched_step_args(input, hx)
    with _static_checks():
        if states is not None:
            module._check_step(x, states)
        else:
            module._check_input_size(x)
    return x, states, is_batched


def _cell_params(module) -> list:
    return [{"weight_ih": module.weight_ih, "weight_hh": module.weight_hh, "bias_ih": module.bias_ih,
             "bias_hh": module.bias_hh, "weight_ph": None}]


def cell_forward(module, input, hx=None):
    """lstm_fused.LSTMCell / GRUCell .forward under torch.onnx.export: a one-step ONNX LSTM / GRU node."""
    op, num_states = module._mode, module._num_states
    _refuse_strict_retry(module._name)
    _refuse_recurrence_options(module, module._name)
    x, states, is_batched = _cell_input(module, input, hx)
    _warn_dropout(module)
    result_dtype = x.dtype
    dtype = _compute_dtype(result_dtype)
    w, r, b, _ = _node_weights(op, _cell_params(module), False, dtype)
    initial = [None if states is None else _cast(states[i].unsqueeze(0), dtype) for i in range(num_states)]
    _, *finals = _onnx_node(op, _cast(x.unsqueeze(0), dtype), w, r, b, initial, None, module.hidden_size, 1)
    finals = [_cast(final[0], result_dtype) for final in finals]
    if not is_batched:
        finals = [final.squeeze(0) for final in finals]
    return _as_hx(finals, num_states)
