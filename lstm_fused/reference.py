"""Readable plain-PyTorch definitions of the cells lstm_fused fuses, and of whole multi-layer runs over them.

They are the specification the kernels are tested against: each cell is a few lines of the textbook
equations, and the sequence runner handles layers, directions, batch_first, projections and packed input the
way nn.LSTM / nn.GRU do, one time step at a time (slow, exact, obviously correct). They are themselves tested
against nn.LSTM and nn.GRU where those exist, and against the equations written out by hand where they do not
(tests/test_reference.py).

The regularised and layer-normalised options (a module's `layer_norm`, `zoneout`, `zoneout_cell`, `weight_drop`
attributes, each absent or off by default):
- layer norm (`layer_norm`, weight `γ`, bias `β`, ε = 1e-5, over the whole gate vector): LSTM
  gates = LN(W_ih x; γ_ih) + LN(W_hh h; γ_hh) + b_ih + b_hh, c' = f ⊙ c + i ⊙ g, h' = o ⊙ tanh(LN(c'; γ_c, β_c));
  GRU r, z = σ(LN(W_ih x)_{r,z} + b_i{r,z} + LN(W_hh h)_{r,z} + b_h{r,z}),
  n = tanh(LN(W_ih x)_n + b_in + r ⊙ (LN(W_hh h)_n + b_hn)).
- zoneout (Krueger et al. 2016): per step and unit the state keeps its previous value with probability p,
  h = m ⊙ h_prev + (1 − m) ⊙ h̃ (c likewise with its own mask), the candidate h̃ computed from the candidate c̃;
  in eval m is p itself (the expectation). With a projection, zoneout applies to the projected h.
- weight drop (DropConnect on W_hh): in training each call drops each weight_hh with F.dropout's inverted scaling
  and uses the dropped matrix for every step of that call.
Random draws are made by the fused modules' own functions, in their order and layout (lstm_fused/_regularisers.py),
so the same seed gives the same masks in both.
"""
from typing import Optional

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ._regularisers import drop_weight, zoneout_mask

__all__ = ["lstm_cell", "gru_cell", "layer_norm", "zoneout", "run_lstm", "run_gru", "run_lstm_cell", "run_gru_cell",
           "LN_EPS"]

LN_EPS = 1e-5


def layer_norm(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, eps: float = LN_EPS) -> Tensor:
    """Normalises each row of x over its last dimension: (x − mean) / sqrt(var + eps) ⊙ weight (+ bias), with the
    biased variance. That is nn.LayerNorm's definition, so this is F.layer_norm (tests/test_reference.py checks it
    against the formula written out): what a user's own layer-normalised cell calls, which keeps the benchmarks'
    plain loop as fast as the loop users actually run (the formula as five separate ops, with their backward,
    made that loop about twice as slow at B 64, H 256 and flattered lstm_fused by as much)."""
    return torch.nn.functional.layer_norm(x, x.shape[-1:], weight, bias, eps)


def zoneout(previous: Tensor, candidate: Tensor, mask) -> Tensor:
    """m ⊙ previous + (1 − m) ⊙ candidate: m is 1 where a unit keeps its previous value (training, a 0/1 mask), or
    the probability p itself (eval, the expectation)."""
    return mask * previous + (1 - mask) * candidate


def lstm_cell(x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor] = None,
              b_hh: Optional[Tensor] = None, w_hr: Optional[Tensor] = None, w_ph: Optional[Tensor] = None,
              coupled: bool = False, ln: Optional[tuple] = None) -> tuple[Tensor, Tensor]:
    """One LSTM step. x: [B, I], h: [B, P], c: [B, H].

    Standard (nn.LSTM, gate order i, f, g, o):
        i = σ(W_ii x + b_ii + W_hi h + b_hi), f = σ(…), g = tanh(…), o = σ(…)
        c' = f ⊙ c + i ⊙ g,  h' = o ⊙ tanh(c'),  then h' = W_hr h' with a projection.
    Peephole (w_ph rows p_i, p_f, p_o): i and f add p ⊙ c; o adds p_o ⊙ c' (the new cell).
    Coupled (gate rows i, g, o): f = 1 − i; with peepholes w_ph rows are p_i, p_o.
    Layer norm (ln = (γ_ih, γ_hh, γ_c, β_c)): gates = LN(W_ih x; γ_ih) + LN(W_hh h; γ_hh) + b_ih + b_hh, each LN
    over the whole gate vector; h' = o ⊙ tanh(LN(c'; γ_c, β_c)) (c' itself is kept un-normalised). Peephole terms
    are added after the layer norms.
    """
    gi, gh = x @ w_ih.t(), h @ w_hh.t()
    if ln is not None:
        gi, gh = layer_norm(gi, ln[0]), layer_norm(gh, ln[1])
    gates = gi + gh
    if b_ih is not None:
        gates = gates + b_ih + b_hh
    if coupled:
        a_i, a_g, a_o = gates.chunk(3, dim=-1)
        p_i, p_f, p_o = (w_ph[0], None, w_ph[1]) if w_ph is not None else (None, None, None)
    else:
        a_i, a_f, a_g, a_o = gates.chunk(4, dim=-1)
        p_i, p_f, p_o = (w_ph[0], w_ph[1], w_ph[2]) if w_ph is not None else (None, None, None)
    i = torch.sigmoid(a_i + p_i * c if p_i is not None else a_i)
    if coupled:
        f = 1 - i
    else:
        f = torch.sigmoid(a_f + p_f * c if p_f is not None else a_f)
    g = torch.tanh(a_g)
    c_new = f * c + i * g
    o = torch.sigmoid(a_o + p_o * c_new if p_o is not None else a_o)
    h_new = o * torch.tanh(layer_norm(c_new, ln[2], ln[3]) if ln is not None else c_new)
    if w_hr is not None:
        h_new = h_new @ w_hr.t()
    return h_new, c_new


def gru_cell(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor] = None,
             b_hh: Optional[Tensor] = None, ln: Optional[tuple] = None) -> Tensor:
    """One GRU step (nn.GRU's equations, gate order r, z, n): n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)),
    h' = (1 − z) ⊙ n + z ⊙ h. Layer norm (ln = (γ_ih, γ_hh)): W_ih x and W_hh h are each normalised over their
    whole 3H vector before the biases are added."""
    gi = x @ w_ih.t()
    gh = h @ w_hh.t()
    if ln is not None:
        gi, gh = layer_norm(gi, ln[0]), layer_norm(gh, ln[1])
    if b_ih is not None:
        gi, gh = gi + b_ih, gh + b_hh
    i_r, i_z, i_n = gi.chunk(3, dim=-1)
    h_r, h_z, h_n = gh.chunk(3, dim=-1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return (1 - z) * n + z * h


_PARAM_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr", "weight_ph", "weight_ln_ih",
                "weight_ln_hh", "weight_ln_c", "bias_ln_c")


def _layer_params(module, layer: int, direction: int) -> dict:
    suffix = "_reverse" if direction == 1 else ""
    return {n: getattr(module, f"{n}_l{layer}{suffix}", None) for n in _PARAM_KINDS}


def _ln(module, p: dict, num_states: int) -> Optional[tuple]:
    """The cell's layer-norm parameters (LSTM: γ_ih, γ_hh, γ_c, β_c; GRU: γ_ih, γ_hh), or None without layer norm."""
    if not getattr(module, "layer_norm", False):
        return None
    names = ("weight_ln_ih", "weight_ln_hh", "weight_ln_c", "bias_ln_c")[: 2 * num_states]
    return tuple(p[n] for n in names)


def _zoneout_ps(module, num_states: int) -> list:
    """The zoneout probability of each state: h's (zoneout), then LSTM's c's (zoneout_cell)."""
    return [getattr(module, "zoneout", 0.0), getattr(module, "zoneout_cell", 0.0)][:num_states]


def _dropped_hh(module, D: int) -> dict:
    """weight_hh of every layer and direction, dropped for this call when weight_drop is on in training."""
    p = getattr(module, "weight_drop", 0.0)
    if not (p > 0 and module.training):
        return {}
    return {(layer, d): drop_weight(getattr(module, f"weight_hh_l{layer}{'_reverse' if d else ''}"), p)
            for layer in range(module.num_layers) for d in range(D)}


def _run(module, input, hx, step, num_states: int):
    """Runs `step(x_t, states, params) -> candidate states` over layers and directions like nn.LSTM/nn.GRU do,
    with the module's zoneout and weight drop.

    Packed input is unpacked to padded form; each sequence stops updating its states after its length, so the
    final states are those of its last step, and padded outputs are zero (re-packed at the end)."""
    packed = isinstance(input, PackedSequence)
    if packed:
        x, lengths = pad_packed_sequence(input)  # [T, B, I], in the caller's batch order
        lengths = lengths.to(x.device)
    else:
        unbatched = input.dim() == 2  # [T, I] whatever batch_first says
        x = input.unsqueeze(1) if unbatched else (input.transpose(0, 1) if module.batch_first else input)
        if unbatched:
            if hx is not None:
                hx = tuple(s.unsqueeze(1) for s in hx) if num_states == 2 else hx.unsqueeze(1)
        lengths = torch.full((x.shape[1],), x.shape[0], device=x.device)
    T, B = x.shape[0], x.shape[1]
    D = 2 if module.bidirectional else 1
    out_size = module.proj_size if getattr(module, "proj_size", 0) else module.hidden_size
    widths = [out_size, module.hidden_size][:num_states]
    if hx is None:
        hx = tuple(x.new_zeros(module.num_layers * D, B, s) for s in widths)
    elif num_states == 1:
        hx = (hx,)
    dropped = _dropped_hh(module, D)
    finals = [[] for _ in range(num_states)]
    for layer in range(module.num_layers):
        # This layer's zoneout masks, one draw per state over its directions in the layout of the layer's output
        # rows, then seen per direction in padded form.
        masks = [[None] * num_states for _ in range(D)]
        for k, (p, w) in enumerate(zip(_zoneout_ps(module, num_states), widths)):
            if p <= 0:
                continue
            rows = (D, input.data.shape[0], w) if packed else (D, T, B, w)
            m = zoneout_mask(rows, p, module.training, x.device, x.dtype)
            for d in range(D):
                md = m[d] if isinstance(m, Tensor) else m
                if packed and isinstance(md, Tensor):
                    md = pad_packed_sequence(PackedSequence(md, *input[1:]))[0]  # [T, B, w], the caller's order
                masks[d][k] = md
        outs = []
        for d in range(D):
            params = _layer_params(module, layer, d)
            if (layer, d) in dropped:
                params["weight_hh"] = dropped[(layer, d)]
            states = [s[layer * D + d] for s in hx]
            ys = [None] * T
            for t in (range(T - 1, -1, -1) if d == 1 else range(T)):
                new = step(x[t], states, params)
                new = [n if m is None else zoneout(s, n, m[t] if isinstance(m, Tensor) else m)
                       for n, s, m in zip(new, states, masks[d])]
                active = (t < lengths).unsqueeze(1)  # sequences still running at t
                states = [torch.where(active, n, s) for n, s in zip(new, states)]
                ys[t] = torch.where(active, new[0], torch.zeros_like(new[0]))
            outs.append(torch.stack(ys))
            for k in range(num_states):
                finals[k].append(states[k])
        x = torch.cat(outs, dim=-1)
        if module.dropout > 0 and module.training and layer < module.num_layers - 1:
            x = torch.nn.functional.dropout(x, module.dropout, training=True)
    finals = tuple(torch.stack(f) for f in finals)
    if packed:
        out = pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False)
    else:
        out = x.transpose(0, 1) if module.batch_first and not unbatched else x
        if unbatched:
            out = out.squeeze(1)
            finals = tuple(f.squeeze(1) for f in finals)
    return out, finals


def run_lstm(module, input, hx=None):
    """What an LSTM module (nn.LSTM or lstm_fused.LSTM, same attributes and parameters, including the
    peephole/coupled variants and the regularising and layer-norm options) computes."""
    coupled = getattr(module, "coupled", False)

    def step(x, states, p):
        return lstm_cell(x, states[0], states[1], p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"],
                         p["weight_hr"], p["weight_ph"], coupled, _ln(module, p, 2))
    out, (h, c) = _run(module, input, hx, step, 2)
    return out, (h, c)


def run_gru(module, input, hx=None):
    """What a GRU module (nn.GRU, or one with the same attributes and parameters, options included) computes."""
    def step(x, states, p):
        return (gru_cell(x, states[0], p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"],
                         _ln(module, p, 1)),)
    out, (h,) = _run(module, input, hx, step, 1)
    return out, h


def _cell_step(module, input, hx, step, num_states: int):
    """One step of a cell module with its options: input [B, I] or unbatched [I]; hx its states or None."""
    unbatched = input.dim() == 1
    x = input.unsqueeze(0) if unbatched else input
    if hx is None:
        states = [x.new_zeros(x.shape[0], module.hidden_size) for _ in range(num_states)]
    else:
        states = list(hx) if num_states == 2 else [hx]
        states = [s.unsqueeze(0) if unbatched else s for s in states]
    p = {n: getattr(module, n, None) for n in _PARAM_KINDS}
    w_drop = getattr(module, "weight_drop", 0.0)
    if w_drop > 0 and module.training:
        p["weight_hh"] = drop_weight(p["weight_hh"], w_drop)
    new = step(x, states, p)
    for k, zp in enumerate(_zoneout_ps(module, num_states)):
        if zp > 0:  # a cell's mask is its one step's rows, [1, B, H]
            m = zoneout_mask((1, *states[k].shape), zp, module.training, x.device, x.dtype)
            new[k] = zoneout(states[k], new[k], m[0] if isinstance(m, Tensor) else m)
    if unbatched:
        new = [t.squeeze(0) for t in new]
    return tuple(new) if num_states == 2 else new[0]


def run_lstm_cell(module, input, hx=None):
    """What an LSTMCell module (nn.LSTMCell or lstm_fused.LSTMCell, options included) computes in one call."""
    def step(x, states, p):
        return list(lstm_cell(x, states[0], states[1], p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"],
                              ln=_ln(module, p, 2)))
    return _cell_step(module, input, hx, step, 2)


def run_gru_cell(module, input, hx=None):
    """What a GRUCell module (nn.GRUCell or lstm_fused.GRUCell, options included) computes in one call."""
    def step(x, states, p):
        return [gru_cell(x, states[0], p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"], _ln(module, p, 1))]
    return _cell_step(module, input, hx, step, 1)
