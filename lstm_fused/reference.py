"""Readable plain-PyTorch definitions of the cells lstm_fused fuses, and of whole multi-layer runs over them.

They are the specification the kernels are tested against: each cell is a few lines of the textbook
equations, and the sequence runner handles layers, directions, batch_first, projections and packed input the
way nn.LSTM / nn.GRU do, one time step at a time (slow, exact, obviously correct). They are themselves tested
against nn.LSTM and nn.GRU where those exist (tests/test_reference.py).
"""
from typing import Optional

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

__all__ = ["lstm_cell", "gru_cell", "run_lstm", "run_gru"]


def lstm_cell(x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor] = None,
              b_hh: Optional[Tensor] = None, w_hr: Optional[Tensor] = None, w_ph: Optional[Tensor] = None,
              coupled: bool = False) -> tuple[Tensor, Tensor]:
    """One LSTM step. x: [B, I], h: [B, P], c: [B, H].

    Standard (nn.LSTM, gate order i, f, g, o):
        i = σ(W_ii x + b_ii + W_hi h + b_hi), f = σ(…), g = tanh(…), o = σ(…)
        c' = f ⊙ c + i ⊙ g,  h' = o ⊙ tanh(c'),  then h' = W_hr h' with a projection.
    Peephole (w_ph rows p_i, p_f, p_o): i and f add p ⊙ c; o adds p_o ⊙ c' (the new cell).
    Coupled (gate rows i, g, o): f = 1 − i; with peepholes w_ph rows are p_i, p_o.
    """
    gates = x @ w_ih.t() + h @ w_hh.t()
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
    h_new = o * torch.tanh(c_new)
    if w_hr is not None:
        h_new = h_new @ w_hr.t()
    return h_new, c_new


def gru_cell(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor] = None,
             b_hh: Optional[Tensor] = None) -> Tensor:
    """One GRU step (nn.GRU's equations, gate order r, z, n): n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)),
    h' = (1 − z) ⊙ n + z ⊙ h."""
    gi = x @ w_ih.t()
    gh = h @ w_hh.t()
    if b_ih is not None:
        gi, gh = gi + b_ih, gh + b_hh
    i_r, i_z, i_n = gi.chunk(3, dim=-1)
    h_r, h_z, h_n = gh.chunk(3, dim=-1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return (1 - z) * n + z * h


def _layer_params(module, layer: int, direction: int) -> dict:
    suffix = "_reverse" if direction == 1 else ""
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr", "weight_ph")
    return {n: getattr(module, f"{n}_l{layer}{suffix}", None) for n in names}


def _run(module, input, hx, step, num_states: int):
    """Runs `step(x_t, states, params) -> states` over layers and directions like nn.LSTM/nn.GRU do.

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
    if hx is None:
        out_size = module.proj_size if getattr(module, "proj_size", 0) else module.hidden_size
        sizes = [out_size, module.hidden_size][:num_states]
        hx = tuple(x.new_zeros(module.num_layers * D, B, s) for s in sizes)
    elif num_states == 1:
        hx = (hx,)
    finals = [[] for _ in range(num_states)]
    for layer in range(module.num_layers):
        outs = []
        for d in range(D):
            params = _layer_params(module, layer, d)
            states = [s[layer * D + d] for s in hx]
            ys = [None] * T
            for t in (range(T - 1, -1, -1) if d == 1 else range(T)):
                new = step(x[t], states, params)
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
    peephole/coupled variants) computes."""
    coupled = getattr(module, "coupled", False)

    def step(x, states, p):
        return lstm_cell(x, states[0], states[1], p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"],
                         p["weight_hr"], p["weight_ph"], coupled)
    out, (h, c) = _run(module, input, hx, step, 2)
    return out, (h, c)


def run_gru(module, input, hx=None):
    """What a GRU module (nn.GRU, or one with the same attributes and parameters) computes."""
    def step(x, states, p):
        return (gru_cell(x, states[0], p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"]),)
    out, (h,) = _run(module, input, hx, step, 1)
    return out, h
