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
has no projection) and PackedSequence input (the packing is data-dependent). Dropout between layers is a
training-time operation and is left out of the exported (inference) graph, with a warning if the module is in
training mode with dropout > 0.
"""
import contextlib
import warnings
from typing import Optional

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

__all__ = ["is_exporting", "lstm_forward", "gru_forward", "lstm_cell_forward", "gru_cell_forward"]


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


def _onnx_lstm(x, w, r, b, h0, c0, p, hidden_size: int, d: int):
    """ONNX LSTM node over d directions: x [T, B, I], w [d, 4H, I], r [d, 4H, H], b [d, 8H] or None, h0/c0
    [d, B, H] or None, p [d, 3H] or None. Returns Y [T, d, B, H], Y_h [d, B, H], Y_c [d, B, H]."""
    direction = "bidirectional" if d == 2 else "forward"
    if torch.jit.is_tracing():  # the TorchScript-based exporter
        return _TorchScriptLSTM.apply(x, w, r, b, h0, c0, p, hidden_size, direction)
    inputs = [x, w, r, b, None, h0, c0, p]
    while inputs[-1] is None:
        inputs.pop()
    t, batch = x.shape[0], x.shape[1]
    y, y_h, y_c = torch.onnx.ops.symbolic_multi_out(
        "LSTM", inputs, {"hidden_size": hidden_size, "direction": direction}, dtypes=[x.dtype] * 3,
        shapes=[[t, d, batch, hidden_size], [d, batch, hidden_size], [d, batch, hidden_size]])
    return y, y_h, y_c


def _onnx_gru(x, w, r, b, h0, hidden_size: int, d: int):
    """ONNX GRU node (linear_before_reset=1): shapes as _onnx_lstm, b [D, 6H]. Returns Y, Y_h."""
    direction = "bidirectional" if d == 2 else "forward"
    if torch.jit.is_tracing():
        return _TorchScriptGRU.apply(x, w, r, b, h0, hidden_size, direction)
    inputs = [x, w, r, b, None, h0]
    while inputs[-1] is None:
        inputs.pop()
    t, batch = x.shape[0], x.shape[1]
    y, y_h = torch.onnx.ops.symbolic_multi_out(
        "GRU", inputs, {"hidden_size": hidden_size, "direction": direction, "linear_before_reset": 1},
        dtypes=[x.dtype] * 2, shapes=[[t, d, batch, hidden_size], [d, batch, hidden_size]])
    return y, y_h


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


def _lstm_node_weights(ps: list, coupled: bool, dtype):
    w = _stack([_lstm_rows(p["weight_ih"], coupled) for p in ps], dtype)
    r = _stack([_lstm_rows(p["weight_hh"], coupled) for p in ps], dtype)
    b = None
    if ps[0]["bias_ih"] is not None:
        b = _stack([torch.cat([_lstm_rows(p["bias_ih"], coupled), _lstm_rows(p["bias_hh"], coupled)]) for p in ps],
                   dtype)
    ph = None
    if ps[0]["weight_ph"] is not None:
        ph = _stack([_lstm_peepholes(p["weight_ph"], coupled) for p in ps], dtype)
    return w, r, b, ph


def _gru_node_weights(ps: list, dtype):
    w = _stack([_gru_rows(p["weight_ih"]) for p in ps], dtype)
    r = _stack([_gru_rows(p["weight_hh"]) for p in ps], dtype)
    b = None
    if ps[0]["bias_ih"] is not None:
        b = _stack([torch.cat([_gru_rows(p["bias_ih"]), _gru_rows(p["bias_hh"])]) for p in ps], dtype)
    return w, r, b


def _y_to_output(y: Tensor) -> Tensor:
    """ONNX's Y [T, D, B, H] -> [T, B, D·H], directions side by side as in PyTorch."""
    return y.transpose(1, 2).flatten(2)


def _warn_dropout(module) -> None:
    if module.training and module.dropout > 0 and module.num_layers > 1:
        warnings.warn(
            f"lstm_fused: the exported ONNX graph of {type(module).__name__} leaves out the dropout between layers "
            "(an ONNX export is an inference graph); call model.eval() before exporting to silence this",
            stacklevel=4,
        )


def _sequence_input(module, input, hx, name: str, num_states: int):
    """Checks and normalises a module's sequence input for export: returns (x [T, B, I] time-major, hx as a
    tuple of [L·D, B, ·] tensors or None, is_batched)."""
    # (The TorchScript-based exporter hands a PackedSequence over as a plain tuple of its tensors.)
    if isinstance(input, (PackedSequence, tuple, list)):
        raise _unsupported(
            f"{name} with PackedSequence input", "the packing (batch_sizes, sorted_indices) is data that ONNX's "
            f"{name} operator cannot take", "Export the module with padded input instead ([T, B, I], or "
            "[B, T, I] with batch_first) and use the outputs at each sequence's length")
    if input.dim() not in (2, 3):
        raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D instead")
    is_batched = input.dim() == 3
    if hx is not None:
        hx = tuple(hx) if num_states == 2 else (hx,)
        want = 3 if is_batched else 2
        if any(h.dim() != want for h in hx):  # the modules' messages
            dims = ", ".join(f"{h.dim()}-D" for h in hx)
            kind = "batched 3-D" if is_batched else "unbatched 2-D"
            raise RuntimeError(f"For {kind} input, hx and cx should also be {want}-D but got ({dims}) tensors"
                               if num_states == 2 else f"For {kind} input, hx should also be {want}-D but got {dims} "
                               "tensor")
    if not is_batched:
        x = input.unsqueeze(1)
        hx = tuple(h.unsqueeze(1) for h in hx) if hx is not None else None
    else:
        x = input.transpose(0, 1) if module.batch_first else input
    with _static_checks():
        module._check_input(x, None)
        if hx is not None:
            module._check_hidden(hx if num_states == 2 else hx[0], x.size(1))
    return x, hx, is_batched


def _sequence_output(module, out: Tensor, states: tuple, is_batched: bool, dtype: torch.dtype):
    out = _cast(out, dtype)
    states = tuple(_cast(s, dtype) for s in states)
    if not is_batched:
        return out.squeeze(1), tuple(s.squeeze(1) for s in states)
    return (out.transpose(0, 1) if module.batch_first else out), states


def lstm_forward(module, input, hx: Optional[tuple] = None):
    """lstm_fused.LSTM.forward under torch.onnx.export: one ONNX LSTM node per layer."""
    _refuse_strict_retry("LSTM")
    kind = "LSTM" + "".join(f" ({v}=True)" for v in ("peephole", "coupled") if getattr(module, v))
    if module.proj_size > 0:
        raise _unsupported(
            f"{kind} with proj_size>0", "ONNX's LSTM operator has no projection (h_t = W_hr·h_t)",
            "Export a model without proj_size, or keep the projected LSTM in PyTorch (torch.export / AOTInductor "
            "handle lstm_fused's ops)")
    x, hx, is_batched = _sequence_input(module, input, hx, "LSTM", 2)
    _warn_dropout(module)
    result_dtype = x.dtype
    dtype = _compute_dtype(result_dtype)
    x = _cast(x, dtype)
    num_directions = 2 if module.bidirectional else 1
    h_out, c_out = [], []
    for layer in range(module.num_layers):
        ps = [_params(module, layer, d) for d in range(num_directions)]
        w, r, b, ph = _lstm_node_weights(ps, module.coupled, dtype)
        first = layer * num_directions
        h0 = _cast(hx[0][first:first + num_directions], dtype) if hx is not None else None
        c0 = _cast(hx[1][first:first + num_directions], dtype) if hx is not None else None
        y, y_h, y_c = _onnx_lstm(x, w, r, b, h0, c0, ph, module.hidden_size, num_directions)
        x = _y_to_output(y)
        h_out.append(y_h)
        c_out.append(y_c)
    h_n = h_out[0] if len(h_out) == 1 else torch.cat(h_out)
    c_n = c_out[0] if len(c_out) == 1 else torch.cat(c_out)
    out, (h_n, c_n) = _sequence_output(module, x, (h_n, c_n), is_batched, result_dtype)
    return out, (h_n, c_n)


def gru_forward(module, input, hx: Optional[Tensor] = None):
    """lstm_fused.GRU.forward under torch.onnx.export: one ONNX GRU node (linear_before_reset=1) per layer."""
    _refuse_strict_retry("GRU")
    x, hx, is_batched = _sequence_input(module, input, hx, "GRU", 1)
    _warn_dropout(module)
    result_dtype = x.dtype
    dtype = _compute_dtype(result_dtype)
    x = _cast(x, dtype)
    num_directions = 2 if module.bidirectional else 1
    h_out = []
    for layer in range(module.num_layers):
        ps = [_params(module, layer, d) for d in range(num_directions)]
        w, r, b = _gru_node_weights(ps, dtype)
        first = layer * num_directions
        h0 = _cast(hx[0][first:first + num_directions], dtype) if hx is not None else None
        y, y_h = _onnx_gru(x, w, r, b, h0, module.hidden_size, num_directions)
        x = _y_to_output(y)
        h_out.append(y_h)
    h_n = h_out[0] if len(h_out) == 1 else torch.cat(h_out)
    out, (h_n,) = _sequence_output(module, x, (h_n,), is_batched, result_dtype)
    return out, h_n


def _cell_input(module, input, hx, name: str, num_states: int):
    if input.dim() not in (1, 2):
        raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
    if hx is not None:
        hx = tuple(hx) if num_states == 2 else (hx,)
        for idx, value in enumerate(hx):
            if value.dim() not in (1, 2):
                raise ValueError(f"{name}: Expected hx[{idx}] to be 1D or 2D, got {value.dim()}D instead")
    is_batched = input.dim() == 2
    if not is_batched:
        input = input.unsqueeze(0)
        hx = tuple(h.unsqueeze(0) for h in hx) if hx is not None else None
    with _static_checks():
        if hx is not None:
            module._check_step(input, hx)
        elif input.size(1) != module.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {input.size(1)} expected {module.input_size}")
    return input, hx, is_batched


def _cell_params(module) -> list:
    return [{"weight_ih": module.weight_ih, "weight_hh": module.weight_hh, "bias_ih": module.bias_ih,
             "bias_hh": module.bias_hh, "weight_ph": None}]


def lstm_cell_forward(module, input, hx: Optional[tuple] = None):
    """lstm_fused.LSTMCell.forward under torch.onnx.export: a one-step ONNX LSTM node."""
    _refuse_strict_retry("LSTMCell")
    x, hx, is_batched = _cell_input(module, input, hx, "LSTMCell", 2)
    result_dtype = x.dtype
    dtype = _compute_dtype(result_dtype)
    w, r, b, _ = _lstm_node_weights(_cell_params(module), False, dtype)
    h0, c0 = (None, None) if hx is None else (_cast(hx[0].unsqueeze(0), dtype), _cast(hx[1].unsqueeze(0), dtype))
    _, y_h, y_c = _onnx_lstm(_cast(x.unsqueeze(0), dtype), w, r, b, h0, c0, None, module.hidden_size, 1)
    h, c = _cast(y_h[0], result_dtype), _cast(y_c[0], result_dtype)
    return (h, c) if is_batched else (h.squeeze(0), c.squeeze(0))


def gru_cell_forward(module, input, hx: Optional[Tensor] = None):
    """lstm_fused.GRUCell.forward under torch.onnx.export: a one-step ONNX GRU node."""
    _refuse_strict_retry("GRUCell")
    if hx is not None and hx.dim() not in (1, 2):
        raise ValueError(f"GRUCell: Expected hidden to be 1D or 2D, got {hx.dim()}D instead")
    x, hx, is_batched = _cell_input(module, input, hx, "GRUCell", 1)
    result_dtype = x.dtype
    dtype = _compute_dtype(result_dtype)
    w, r, b = _gru_node_weights(_cell_params(module), dtype)
    h0 = _cast(hx[0].unsqueeze(0), dtype) if hx is not None else None
    _, y_h = _onnx_gru(_cast(x.unsqueeze(0), dtype), w, r, b, h0, module.hidden_size, 1)
    h = _cast(y_h[0], result_dtype)
    return h if is_batched else h.squeeze(0)
