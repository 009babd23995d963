"""Python side of the lstm_fused ops: thin wrappers, fake kernels (for torch.compile and meta tensors) and
autograd, registered with torch.library as pytorch/extension-cpp does."""
from typing import Optional

import torch
from torch import Tensor
from torch.utils._pytree import tree_flatten, tree_unflatten

_ops = torch.ops.lstm_fused


def has_kernel(dispatch_key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key("lstm_fused::lstm_layer_fwd", dispatch_key)


def _workspace_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half types keep gates and cell state in float32.
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _needs_workspace(*groups) -> bool:
    """The workspace is only kept when autograd will need it; inference runs on a small scratch instead. Groups
    are tensors, lists of tensors or None. Under torch.jit.trace it is always kept: the bool would be baked into
    the graph, which must not depend on grad mode (a module traced under no_grad must still train)."""
    if torch.jit.is_tracing():
        return True
    if not torch.is_grad_enabled():
        return False
    return any(t.requires_grad for g in groups if g is not None for t in (g if isinstance(g, (list, tuple)) else [g]))


def _with_optional(args: tuple, *optional) -> tuple:
    """`args` plus the trailing optional arguments up to the last one given. The dispatcher drops trailing arguments
    equal to their defaults (None) before autograd sees a call, so an op's backward returns one gradient per argument
    left: len(_with_optional((), *optional)) of them for these."""
    n = 0
    for i, a in enumerate(optional):  # (a loop: dynamo traces this on every compiled forward)
        if a is not None:
            n = i + 1
    return args + tuple(optional[:n])


def lstm_layer(
    input: Tensor,
    batch_sizes: Optional[Tensor],
    h0: Tensor,
    c0: Tensor,
    w_ih: list[Tensor],
    w_hh: list[Tensor],
    b_ih: Optional[list[Tensor]],
    b_hh: Optional[list[Tensor]],
    w_hr: Optional[list[Tensor]],
    w_ph: Optional[list[Tensor]] = None,
    coupled: bool = False,
    zoneout_h: Optional[Tensor] = None,
    zoneout_c: Optional[Tensor] = None,
    layer_norm: Optional[list[Tensor]] = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One LSTM layer over a whole sequence in D = len(w_ih) directions (the second one reversed).

    input: [T, B, I] time-major, or the data [N, I] of a PackedSequence with its batch_sizes [T].
    h0: [D, B, P], c0: [D, B, H] (P = proj_size or H); the weight lists hold one tensor per direction.
    w_ph: peephole weights per direction ([3, H]: p_i, p_f, p_o; [2, H]: p_i, p_o when coupled).
    coupled: f = 1 − i, with gate rows i, g, o (3H) in W_ih, W_hh and the biases.
    zoneout_h / zoneout_c: [D, rows, P] / [D, rows, H] (rows: T·B, or N packed), how much of its previous value each
    unit of h / c keeps per row (0/1 masks in training, the probability, expanded, in eval); float64 for float64
    input, else float32.
    layer_norm: per direction γ_ih [G], γ_hh [G], γ_c [H], β_c [H] (gates = LN(x·W_ihᵀ; γ_ih) + LN(h·W_hhᵀ; γ_hh) +
    biases, h = o ⊙ tanh(LN(c; γ_c, β_c))), or None.
    Returns output ([T, B, D·P] or [N, D·P], directions side by side), h_n [D, B, P], c_n [D, B, H].
    """
    need_workspace = _needs_workspace(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, w_ph, layer_norm)
    args = (input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, w_ph, coupled, need_workspace)
    out, h_n, c_n, _ = _call("lstm_layer_fwd", _with_optional(args, zoneout_h, zoneout_c, layer_norm))
    return out, h_n, c_n


def _check_same_device(input, *groups):
    # The real kernels reject mixed devices; so must the fake ones (they also serve a real call that mixes
    # meta and CPU tensors, where they would otherwise return uninitialised memory).
    for group in groups:
        for t in group if isinstance(group, (list, tuple)) else [group]:
            if t is not None:
                torch._check(t.device == input.device, lambda: "lstm_fused: all tensors must be on one device")


@torch.library.register_fake("lstm_fused::lstm_layer_fwd")
def _lstm_layer_fwd_fake(input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, w_ph, coupled, need_workspace,
                         zoneout_h=None, zoneout_c=None, layer_norm=None):
    torch._check(input.dim() == (2 if batch_sizes is not None else 3), lambda: "lstm_fused: bad input rank")
    _check_same_device(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, w_ph, zoneout_h, zoneout_c, layer_norm)
    directions = len(w_ih)
    gates = 3 if coupled else 4
    hidden = w_ih[0].shape[0] // gates
    p = w_hr[0].shape[0] if w_hr is not None else hidden
    lead = tuple(input.shape[:-1])
    # Per row the gates and c_t; with zoneout on c the candidate c̃_t and the zoned-out c_t; with layer norm the two
    # normalised products, the normalised c and three reciprocal deviations.
    cols = (gates + 1 + (zoneout_c is not None)) * hidden
    if layer_norm is not None:
        cols += (2 * gates + 1) * hidden + 3
    ws_shape = (directions, *lead, cols) if need_workspace else (0,)
    ws = input.new_empty(ws_shape, dtype=_workspace_dtype(input.dtype))
    return input.new_empty((*lead, directions * p)), h0.new_empty(h0.shape), c0.new_empty(c0.shape), ws


@torch.library.register_fake("lstm_fused::lstm_layer_bwd")
def _lstm_layer_bwd_fake(
    grad_output, grad_h_n, grad_c_n, input, batch_sizes, h0, c0, w_ih, w_hh, w_hr, w_ph, coupled, output,
    workspace, has_bias, need_grad_input, zoneout_h=None, zoneout_c=None, layer_norm=None,
):
    return (
        input.new_empty(input.shape) if need_grad_input else input.new_empty((0,)),
        h0.new_empty(h0.shape),
        c0.new_empty(c0.shape),
        [w.new_empty(w.shape) for w in w_ih],
        [w.new_empty(w.shape) for w in w_hh],
        [w.new_empty((w.shape[0],)) for w in w_ih] if has_bias else [],
        [w.new_empty(w.shape) for w in w_hr] if w_hr is not None else [],
        [w.new_empty(w.shape) for w in w_ph] if w_ph is not None else [],
        [w.new_empty(w.shape) for w in layer_norm] if layer_norm is not None else [],
    )


def _setup_context(ctx, inputs, output):
    input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, w_ph, coupled, _, *optional = inputs
    zoneout_h, zoneout_c, layer_norm = (*optional, None, None, None)[:3]
    out, _, _, ws = output
    # Unused outputs (the workspace, h_n, c_n, a stack's lower outputs) reach the backward as None, not as
    # zero tensors of their full size (the workspace's alone is as large as all the gates).
    ctx.set_materialize_grads(False)
    ctx.directions = len(w_ih)
    ctx.has_bias = b_ih is not None
    ctx.has_proj = w_hr is not None
    ctx.has_peephole = w_ph is not None
    ctx.coupled = coupled
    ctx.n_optional = len(_with_optional((), zoneout_h, zoneout_c, layer_norm))  # the optional arguments kept
    ctx.n_ln = len(layer_norm or ())
    ctx.save_for_backward(input, batch_sizes, h0, c0, out, ws, zoneout_h, zoneout_c, *w_ih, *w_hh, *(w_hr or ()),
                          *(w_ph or ()), *(layer_norm or ()))
    ctx.mark_non_differentiable(ws)


def _backward(ctx, grad_out, grad_h_n, grad_c_n, _grad_ws):
    input, batch_sizes, h0, c0, out, ws, zoneout_h, zoneout_c, *weights = ctx.saved_tensors
    d = ctx.directions
    layer_norm = list(weights[len(weights) - ctx.n_ln:]) if ctx.n_ln else None
    weights = weights[:len(weights) - ctx.n_ln]
    w_ih, w_hh, rest = weights[:d], weights[d : 2 * d], weights[2 * d :]
    w_hr = rest[:d] if ctx.has_proj else None
    w_ph = rest[-d:] if ctx.has_peephole else None
    # Outputs the loss did not use arrive as None.
    grad_out = torch.zeros_like(out) if grad_out is None else grad_out
    grad_h_n = torch.zeros_like(h0) if grad_h_n is None else grad_h_n
    grad_c_n = torch.zeros_like(c0) if grad_c_n is None else grad_c_n
    need_grad_input = ctx.needs_input_grad[0]
    args = (grad_out, grad_h_n, grad_c_n, input, batch_sizes, h0, c0, w_ih, w_hh, w_hr, w_ph, ctx.coupled, out, ws,
            ctx.has_bias, need_grad_input)
    gi, gh0, gc0, gw_ih, gw_hh, gb, gw_hr, gw_ph, g_ln = _call(
        "lstm_layer_bwd", _with_optional(args, zoneout_h, zoneout_c, layer_norm))
    return (
        gi if need_grad_input else None,
        None,
        gh0,
        gc0,
        gw_ih,
        gw_hh,
        gb if ctx.has_bias else None,
        [g.clone() for g in gb] if ctx.has_bias else None,  # b_ih and b_hh get the same gradient, as separate tensors
        gw_hr if ctx.has_proj else None,
        gw_ph if ctx.has_peephole else None,
        None,
        None,
        *[None, None, g_ln][:ctx.n_optional],  # the zoneout masks: drawn, not learned
    )


torch.library.register_autograd("lstm_fused::lstm_layer_fwd", _backward, setup_context=_setup_context)


def _no_double_backward(ctx, *grads):
    raise RuntimeError(
        "lstm_fused: double backward (gradients of gradients, e.g. a gradient penalty) is not supported; "
        "use torch.nn.LSTM/GRU for that computation"
    )


def _no_context(ctx, inputs, output):
    pass


# Differentiating a backward op must fail loudly: without a formula autograd would treat its outputs as
# constants and a gradient penalty would silently be zero.
torch.library.register_autograd("lstm_fused::lstm_layer_bwd", _no_double_backward, setup_context=_no_context)


# ---- stacks of unidirectional layers -----------------------------------------------------------------------
def lstm_stack(
    input: Tensor,
    batch_sizes: Optional[Tensor],
    h0: Tensor,
    c0: Tensor,
    w_ih: list[Tensor],
    w_hh: list[Tensor],
    b_ih: Optional[list[Tensor]],
    b_hh: Optional[list[Tensor]],
    w_ph: Optional[list[Tensor]] = None,
    coupled: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """L unidirectional LSTM layers without projection and without dropout between them, as one op: the lists
    hold one tensor per layer, h0/c0 are [L, B, H]. Returns the last layer's output, h_n and c_n [L, B, H].

    Same results as L calls of lstm_layer (on the CPU it is that loop); on CUDA the layers can run as one
    persistent wavefront launch."""
    need_workspace = _needs_workspace(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ph)
    outs, h_n, c_n, _ = _call("lstm_stack_fwd", (input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ph, coupled,
                                                  need_workspace))
    return outs[-1], h_n, c_n


@torch.library.register_fake("lstm_fused::lstm_stack_fwd")
def _lstm_stack_fwd_fake(input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ph, coupled, need_workspace):
    torch._check(input.dim() == (2 if batch_sizes is not None else 3), lambda: "lstm_fused: bad input rank")
    torch._check(len(w_ih) == len(w_hh) and h0.dim() == 3 and h0.shape[0] == len(w_ih),
                 lambda: "lstm_fused: lstm_stack_fwd expects one weight per layer and h0 [layers, batch, hidden]")
    _check_same_device(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ph)
    gates = 3 if coupled else 4
    hidden = w_hh[0].shape[1]
    lead = tuple(input.shape[:-1])
    ws_shape = (1, *lead, (gates + 1) * hidden) if need_workspace else (0,)
    layers = len(w_ih)
    outs = [input.new_empty((*lead, hidden)) for _ in range(layers)]
    wss = [input.new_empty(ws_shape, dtype=_workspace_dtype(input.dtype)) for _ in range(layers)]
    return outs, h0.new_empty(h0.shape), c0.new_empty(c0.shape), wss


def _stack_setup_context(ctx, inputs, output):
    input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ph, coupled, _ = inputs
    outs, _, _, wss = output
    ctx.set_materialize_grads(False)  # as in _setup_context
    ctx.layers = len(w_ih)
    ctx.has_bias = b_ih is not None
    ctx.has_peephole = w_ph is not None
    ctx.coupled = coupled
    ctx.save_for_backward(input, batch_sizes, h0, c0, *outs, *wss, *w_ih, *w_hh, *(w_ph or ()))
    ctx.mark_non_differentiable(*wss)


def _first_layer_needing_grad(needs, n):
    """The lowest layer whose backward is needed: layers below it (frozen, with no input or initial-state
    gradient wanted) are skipped, as autograd skips frozen layers of a layer-by-layer graph."""
    if needs[0] or needs[2] or needs[3]:  # input, h0, c0
        return 0

    def layer(k, l):
        flags = needs[k]
        return bool(flags[l]) if isinstance(flags, (list, tuple)) else bool(flags)

    for l in range(n):
        if any(layer(k, l) for k in (4, 5, 6, 7, 8)):  # w_ih, w_hh, b_ih, b_hh, w_ph
            return l
    return n


def _stack_backward(ctx, grad_outs, grad_h_n, grad_c_n, _grad_wss):
    input, batch_sizes, h0, c0, *rest = ctx.saved_tensors
    n = ctx.layers
    outs, wss, w_ih, w_hh = rest[:n], rest[n:2 * n], rest[2 * n:3 * n], rest[3 * n:4 * n]
    w_ph = list(rest[4 * n:5 * n]) if ctx.has_peephole else None
    lo = min(_first_layer_needing_grad(ctx.needs_input_grad, n), n - 1)
    # Outputs the loss did not use arrive as None (the lower layers' outputs, as a rule): an empty tensor tells
    # the op, which then neither allocates nor reads a zero gradient for them.
    grad_outs = [o.new_empty(0) if g is None else g for o, g in zip(outs, grad_outs or [None] * n)]
    grad_h_n = torch.zeros_like(h0) if grad_h_n is None else grad_h_n
    grad_c_n = torch.zeros_like(c0) if grad_c_n is None else grad_c_n
    need_grad_input = lo == 0 and ctx.needs_input_grad[0]
    gi, gh0, gc0, gw_ih, gw_hh, gb, gw_ph = _call("lstm_stack_bwd", (
        grad_outs[lo:], grad_h_n[lo:], grad_c_n[lo:], input if lo == 0 else outs[lo - 1], batch_sizes, h0[lo:],
        c0[lo:], list(w_ih[lo:]), list(w_hh[lo:]), w_ph[lo:] if w_ph is not None else None, ctx.coupled,
        list(outs[lo:]), list(wss[lo:]), ctx.has_bias, need_grad_input,
    ))
    skipped = [None] * lo
    return (
        gi if need_grad_input else None,
        None,
        gh0 if lo == 0 else None,
        gc0 if lo == 0 else None,
        skipped + gw_ih,
        skipped + gw_hh,
        skipped + gb if ctx.has_bias else None,
        skipped + [g.clone() for g in gb] if ctx.has_bias else None,  # b_ih and b_hh get the same gradient
        skipped + gw_ph if ctx.has_peephole else None,
        None,
        None,
    )


@torch.library.register_fake("lstm_fused::lstm_stack_bwd")
def _lstm_stack_bwd_fake(grad_outputs, grad_h_n, grad_c_n, input, batch_sizes, h0, c0, w_ih, w_hh, w_ph, coupled,
                         outputs, workspaces, has_bias, need_grad_input):
    return (
        input.new_empty(input.shape) if need_grad_input else input.new_empty((0,)),
        h0.new_empty(h0.shape),
        c0.new_empty(c0.shape),
        [w.new_empty(w.shape) for w in w_ih],
        [w.new_empty(w.shape) for w in w_hh],
        [w.new_empty((w.shape[0],)) for w in w_ih] if has_bias else [],
        [w.new_empty(w.shape) for w in w_ph] if w_ph is not None else [],
    )


torch.library.register_autograd("lstm_fused::lstm_stack_fwd", _stack_backward, setup_context=_stack_setup_context)
torch.library.register_autograd("lstm_fused::lstm_stack_bwd", _no_double_backward, setup_context=_no_context)


# ---- GRU --------------------------------------------------------------------------------------------------
def gru_layer(
    input: Tensor,
    batch_sizes: Optional[Tensor],
    h0: Tensor,
    w_ih: list[Tensor],
    w_hh: list[Tensor],
    b_ih: Optional[list[Tensor]],
    b_hh: Optional[list[Tensor]],
    zoneout_h: Optional[Tensor] = None,
    layer_norm: Optional[list[Tensor]] = None,
) -> tuple[Tensor, Tensor]:
    """One GRU layer over a whole sequence in D = len(w_ih) directions (the second one reversed).

    input: [T, B, I] or packed data [N, I] with batch_sizes; h0: [D, B, H]; zoneout_h: [D, rows, H], as
    lstm_layer's; layer_norm: per direction γ_ih, γ_hh [3H] (each product normalised before the biases), or None.
    Returns output ([..., D·H]) and h_n [D, B, H].
    """
    need_workspace = _needs_workspace(input, h0, w_ih, w_hh, b_ih, b_hh, layer_norm)
    args = (input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, need_workspace)
    out, h_n, _ = _call("gru_layer_fwd", _with_optional(args, zoneout_h, layer_norm))
    return out, h_n


@torch.library.register_fake("lstm_fused::gru_layer_fwd")
def _gru_layer_fwd_fake(input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, need_workspace, zoneout_h=None,
                        layer_norm=None):
    torch._check(input.dim() == (2 if batch_sizes is not None else 3), lambda: "lstm_fused: bad input rank")
    _check_same_device(input, h0, w_ih, w_hh, b_ih, b_hh, zoneout_h, layer_norm)
    directions, hidden = len(w_ih), w_ih[0].shape[0] // 3
    lead = tuple(input.shape[:-1])
    cols = 4 * hidden + (6 * hidden + 2 if layer_norm is not None else 0)  # (layer norm: x̂_ih, x̂_hh, two rstds)
    ws_shape = (directions, *lead, cols) if need_workspace else (0,)
    ws = input.new_empty(ws_shape, dtype=_workspace_dtype(input.dtype))
    return input.new_empty((*lead, directions * hidden)), h0.new_empty(h0.shape), ws


@torch.library.register_fake("lstm_fused::gru_layer_bwd")
def _gru_layer_bwd_fake(grad_output, grad_h_n, input, batch_sizes, h0, w_ih, w_hh, output, workspace, has_bias,
                        need_grad_input, zoneout_h=None, layer_norm=None):
    return (
        input.new_empty(input.shape) if need_grad_input else input.new_empty((0,)),
        h0.new_empty(h0.shape),
        [w.new_empty(w.shape) for w in w_ih],
        [w.new_empty(w.shape) for w in w_hh],
        [w.new_empty((w.shape[0],)) for w in w_ih] if has_bias else [],
        [w.new_empty((w.shape[0],)) for w in w_hh] if has_bias else [],
        [w.new_empty(w.shape) for w in layer_norm] if layer_norm is not None else [],
    )


def _gru_setup_context(ctx, inputs, output):
    input, batch_sizes, h0, w_ih, w_hh, b_ih, _, _, *optional = inputs
    zoneout_h, layer_norm = (*optional, None, None)[:2]
    out, _, ws = output
    ctx.set_materialize_grads(False)  # as in _setup_context
    ctx.directions = len(w_ih)
    ctx.has_bias = b_ih is not None
    ctx.n_optional = len(_with_optional((), zoneout_h, layer_norm))
    ctx.save_for_backward(input, batch_sizes, h0, out, ws, zoneout_h, *w_ih, *w_hh, *(layer_norm or ()))
    ctx.mark_non_differentiable(ws)


def _gru_backward(ctx, grad_out, grad_h_n, _grad_ws):
    input, batch_sizes, h0, out, ws, zoneout_h, *weights = ctx.saved_tensors
    d = ctx.directions
    layer_norm = list(weights[2 * d:]) or None
    grad_out = torch.zeros_like(out) if grad_out is None else grad_out
    grad_h_n = torch.zeros_like(h0) if grad_h_n is None else grad_h_n
    need_grad_input = ctx.needs_input_grad[0]
    args = (grad_out, grad_h_n, input, batch_sizes, h0, list(weights[:d]), list(weights[d:2 * d]), out, ws,
            ctx.has_bias, need_grad_input)
    gi, gh0, gw_ih, gw_hh, gb_ih, gb_hh, g_ln = _call("gru_layer_bwd", _with_optional(args, zoneout_h, layer_norm))
    return (
        gi if need_grad_input else None,
        None,
        gh0,
        gw_ih,
        gw_hh,
        gb_ih if ctx.has_bias else None,
        gb_hh if ctx.has_bias else None,
        None,
        *[None, g_ln][:ctx.n_optional],  # the mask: drawn, not learned
    )


torch.library.register_autograd("lstm_fused::gru_layer_fwd", _gru_backward, setup_context=_gru_setup_context)
torch.library.register_autograd("lstm_fused::gru_layer_bwd", _no_double_backward, setup_context=_no_context)


# ---- torch.func (grad, vjp, jacrev, vmap) -----------------------------------------------------------------------
# register_autograd's formulas serve autograd, torch.compile and export, but torch.func's transforms only accept an
# autograd.Function with setup_context. Under a transform the ops therefore run through one such Function holding
# the same setup_context/backward, on flattened arguments (a Function only tracks top-level tensors, and the ops
# take lists); vmap goes through per-sample batching rules of the ops. Forward-mode AD has no formula.
_AUTOGRAD_FORMULAS = {
    "lstm_layer_fwd": (_setup_context, _backward),
    "lstm_stack_fwd": (_stack_setup_context, _stack_backward),
    "gru_layer_fwd": (_gru_setup_context, _gru_backward),
    # The backward ops, called from the formulas above inside a transform: differentiating them fails loudly.
    "lstm_layer_bwd": (_no_context, _no_double_backward),
    "lstm_stack_bwd": (_no_context, _no_double_backward),
    "gru_layer_bwd": (_no_context, _no_double_backward),
}


def _call(name: str, args: tuple):
    """Runs op `name` on `args`: directly, or through _TransformableOp when a torch.func transform is active."""
    # Only a differentiating transform (grad, vjp, jacrev; jvp to raise) needs the Function: vmap uses the ops'
    # batching rules and functionalize takes the ops as they are. Dynamo traces the ops themselves: their
    # registered autograd is what compiled graphs use.
    if torch.compiler.is_compiling() or not _differentiating_transform():
        return getattr(_ops, name).default(*args)
    flat, in_spec = tree_flatten(args)
    spec = _OpSpec(name, in_spec)
    return tree_unflatten(list(_TransformableOp.apply(spec, *flat)), spec.out_spec)


def _differentiating_transform() -> bool:
    if torch._C._functorch.peek_interpreter_stack() is None:  # the common case, cheaply
        return False
    from torch._C._functorch import TransformType
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

    return any(i.key() in (TransformType.Grad, TransformType.Jvp) for i in retrieve_all_functorch_interpreters())


class _OpSpec:
    """The non-tensor argument of _TransformableOp: which op, and the structure of its arguments and results."""

    def __init__(self, name, in_spec):
        self.name, self.in_spec, self.out_spec = name, in_spec, None


class _CtxView:
    """The Function's ctx as the ops' backward formulas expect it: needs_input_grad structured like the op's
    arguments (lists for list arguments) instead of flat."""

    def __init__(self, ctx, needs_input_grad):
        self._ctx, self.needs_input_grad = ctx, needs_input_grad

    def __getattr__(self, name):
        return getattr(self._ctx, name)


def _flat_grads(grads, args):
    """Structured gradients (one entry per op argument: None, a tensor or a list) flattened like the arguments."""
    flat = []
    for grad, arg in zip(grads, args):
        count = len(tree_flatten(arg)[0])
        if grad is None:
            flat += [None] * count
        elif isinstance(grad, (list, tuple)):
            assert len(grad) == count
            flat += list(grad)
        else:
            flat.append(grad)
    return flat


class _TransformableOp(torch.autograd.Function):
    generate_vmap_rule = True  # from the ops' own batching rules below

    @staticmethod
    def forward(spec, *flat):
        result = getattr(_ops, spec.name).default(*tree_unflatten(list(flat), spec.in_spec))
        flat_out, spec.out_spec = tree_flatten(result)
        return tuple(flat_out)

    @staticmethod
    def setup_context(ctx, inputs, output):
        spec, *flat = inputs
        ctx.spec = spec
        ctx.set_materialize_grads(False)  # the formulas take None for outputs the loss did not use
        setup, _ = _AUTOGRAD_FORMULAS[spec.name]
        setup(ctx, tree_unflatten(list(flat), spec.in_spec), tree_unflatten(list(output), spec.out_spec))

    @staticmethod
    def backward(ctx, *grads):
        spec = ctx.spec
        _, formula = _AUTOGRAD_FORMULAS[spec.name]
        needs = tree_unflatten(list(ctx.needs_input_grad[1:]), spec.in_spec)
        structured = formula(_CtxView(ctx, needs), *tree_unflatten(list(grads), spec.out_spec))
        args = tree_unflatten([None] * spec.in_spec.num_leaves, spec.in_spec)
        return (None, *_flat_grads(structured, args))

    @staticmethod
    def jvp(ctx, *tangents):
        raise RuntimeError(
            "lstm_fused: forward-mode AD (torch.func.jvp, jacfwd, hessian) is not supported by the fused ops; "
            "use reverse mode (torch.func.grad, vjp, jacrev), or torch.nn.LSTM/GRU for forward-mode derivatives"
        )


def _slice(arg, dim, i):
    if isinstance(arg, (list, tuple)):
        dims = dim if isinstance(dim, (list, tuple)) else [dim] * len(arg)
        return type(arg)(_slice(a, d, i) for a, d in zip(arg, dims))
    return arg.select(dim, i) if dim is not None else arg


def _stack(results):
    first = results[0]
    if isinstance(first, (list, tuple)):
        return type(first)(_stack([r[k] for r in results]) for k in range(len(first)))
    return torch.stack(results)


def _out_dims(result):
    return type(result)(_out_dims(r) for r in result) if isinstance(result, (list, tuple)) else 0


def _per_sample_vmap(name):
    """Batching rule for torch.vmap: the op once per sample, results stacked. Correct for every op and argument
    layout (packed input included); it runs the samples one after another."""

    def rule(info, in_dims, *args):
        op = getattr(_ops, name).default
        result = _stack([op(*(_slice(a, d, i) for a, d in zip(args, in_dims))) for i in range(info.batch_size)])
        return result, _out_dims(result)

    return rule


for _name in ("lstm_layer_fwd", "lstm_layer_bwd", "lstm_stack_fwd", "lstm_stack_bwd", "gru_layer_fwd",
              "gru_layer_bwd"):
    torch.library.register_vmap(f"lstm_fused::{_name}", _per_sample_vmap(_name))
