"""lstm_fused.reference (the readable specification the kernels are tested against) against nn.LSTM/nn.GRU, and its
regularising and layer-norm options against their equations written out by hand."""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from lstm_fused import reference


def _same(a, b):
    if hasattr(a, "batch_sizes"):
        a, b = a.data, b.data
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("proj_size", [0, 3])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("kind", ["padded", "packed", "unbatched"])
def test_reference_lstm_equals_nn_lstm(num_layers, bidirectional, proj_size, batch_first, kind):
    torch.manual_seed(0)
    m = nn.LSTM(4, 6, num_layers=num_layers, bidirectional=bidirectional, proj_size=proj_size,
                batch_first=batch_first, dtype=torch.float64)
    x = torch.randn((3, 7, 4) if batch_first else (7, 3, 4), dtype=torch.float64)
    if kind == "packed":
        x = pack_padded_sequence(x, torch.tensor([5, 7, 2]), batch_first=batch_first, enforce_sorted=False)
    elif kind == "unbatched":
        x = x[0] if batch_first else x[:, 0]
    out, (h, c) = m(x)
    r_out, (r_h, r_c) = reference.run_lstm(m, x)
    _same(r_out, out)
    _same(r_h, h)
    _same(r_c, c)


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("kind", ["padded", "packed", "unbatched"])
def test_reference_gru_equals_nn_gru(num_layers, bidirectional, bias, kind):
    torch.manual_seed(0)
    m = nn.GRU(4, 6, num_layers=num_layers, bidirectional=bidirectional, bias=bias, dtype=torch.float64)
    x = torch.randn(7, 3, 4, dtype=torch.float64)
    h0 = torch.randn(num_layers * (2 if bidirectional else 1), 3, 6, dtype=torch.float64)
    if kind == "packed":
        x = pack_padded_sequence(x, torch.tensor([5, 7, 2]), enforce_sorted=False)
    elif kind == "unbatched":
        x, h0 = x[:, 0], h0[:, 0]
    out, h = m(x, h0)
    r_out, r_h = reference.run_gru(m, x, h0)
    _same(r_out, out)
    _same(r_h, h)


def test_reference_cells_equal_nn_cells():
    torch.manual_seed(0)
    lc = nn.LSTMCell(5, 7, dtype=torch.float64)
    gc = nn.GRUCell(5, 7, dtype=torch.float64)
    x = torch.randn(3, 5, dtype=torch.float64)
    h, c = torch.randn(3, 7, dtype=torch.float64), torch.randn(3, 7, dtype=torch.float64)
    h1, c1 = lc(x, (h, c))
    r_h1, r_c1 = reference.lstm_cell(x, h, c, lc.weight_ih, lc.weight_hh, lc.bias_ih, lc.bias_hh)
    _same(r_h1, h1)
    _same(r_c1, c1)
    _same(reference.gru_cell(x, h, gc.weight_ih, gc.weight_hh, gc.bias_ih, gc.bias_hh), gc(x, h))


# ---- the regularising and layer-norm options, against the equations written out by hand ---------------------
def _with_options(m, layer_norm=False, zoneout=0.0, zoneout_cell=0.0, weight_drop=0.0):
    """nn's module `m` given the options' attributes and (layer_norm) layer-norm parameters away from their
    initial ones/zeros, so a gain or bias that is not applied shows."""
    m.layer_norm, m.zoneout, m.zoneout_cell, m.weight_drop = layer_norm, zoneout, zoneout_cell, weight_drop
    if layer_norm:
        g = torch.Generator().manual_seed(11)
        lstm = isinstance(m, (nn.LSTM, nn.LSTMCell))
        names = ("weight_ln_ih", "weight_ln_hh", "weight_ln_c", "bias_ln_c")[: 4 if lstm else 2]
        suffixes = [""] if isinstance(m, nn.RNNCellBase) else [
            f"_l{k}{s}" for k in range(m.num_layers) for s in ("", "_reverse")[: 1 + m.bidirectional]]
        for sfx in suffixes:
            for n in names:
                size = m.hidden_size if n.endswith("_c") else getattr(m, "weight_ih" + sfx).shape[0]
                value = (1.0 if n.startswith("weight") else 0.0) + 0.3 * torch.randn(size, generator=g,
                                                                                     dtype=torch.float64)
                setattr(m, n + sfx, nn.Parameter(value))
    return m


def test_reference_layer_norm_by_hand():
    # Rows with a large mean and spread, and one constant row (variance 0: ε alone keeps it finite).
    x, w, b = (torch.randn(4, 12, dtype=torch.float64) * 3 + 1, torch.randn(12, dtype=torch.float64),
               torch.randn(12, dtype=torch.float64))
    x[2] = 7.0
    mean = x.sum(-1, keepdim=True) / 12
    var = ((x - mean) ** 2).sum(-1, keepdim=True) / 12  # biased, as nn.LayerNorm
    by_hand = (x - mean) / torch.sqrt(var + 1e-5) * w
    _same(reference.layer_norm(x, w, b), by_hand + b)
    _same(reference.layer_norm(x, w), by_hand)
    assert reference.LN_EPS == 1e-5


@pytest.mark.parametrize("variant", [dict(), dict(peephole=True), dict(coupled=True)], ids=["lstm", "ph", "cpl"])
def test_reference_layer_norm_lstm_cell_by_hand(variant):
    torch.manual_seed(0)
    B, I, H = 3, 4, 5
    G = (3 if variant.get("coupled") else 4) * H
    x, h, c = (torch.randn(B, I, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64),
               torch.randn(B, H, dtype=torch.float64))
    w_ih, w_hh, b_ih, b_hh = (torch.randn(G, I, dtype=torch.float64), torch.randn(G, H, dtype=torch.float64),
                              torch.randn(G, dtype=torch.float64), torch.randn(G, dtype=torch.float64))
    ln = (1 + torch.randn(G, dtype=torch.float64) * .3, 1 + torch.randn(G, dtype=torch.float64) * .3,
          1 + torch.randn(H, dtype=torch.float64) * .3, torch.randn(H, dtype=torch.float64) * .3)
    w_ph = torch.randn(2 if variant.get("coupled") else 3, H, dtype=torch.float64) if variant.get("peephole") else None
    F = torch.nn.functional
    a = F.layer_norm(x @ w_ih.T, (G,), ln[0]) + F.layer_norm(h @ w_hh.T, (G,), ln[1]) + b_ih + b_hh
    if variant.get("coupled"):
        a_i, a_g, a_o = a.chunk(3, 1)
        i = torch.sigmoid(a_i + (w_ph[0] * c if w_ph is not None else 0))
        f = 1 - i
    else:
        a_i, a_f, a_g, a_o = a.chunk(4, 1)
        i = torch.sigmoid(a_i + (w_ph[0] * c if w_ph is not None else 0))
        f = torch.sigmoid(a_f + (w_ph[1] * c if w_ph is not None else 0))
    c_new = f * c + i * torch.tanh(a_g)
    o = torch.sigmoid(a_o + (w_ph[-1] * c_new if w_ph is not None else 0))
    h_new = o * torch.tanh(F.layer_norm(c_new, (H,), ln[2], ln[3]))
    r_h, r_c = reference.lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh, None, w_ph, variant.get("coupled", False), ln)
    _same(r_h, h_new)
    _same(r_c, c_new)


def test_reference_layer_norm_gru_cell_by_hand():
    torch.manual_seed(0)
    B, I, H = 3, 4, 5
    x, h = torch.randn(B, I, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64)
    w_ih, w_hh = torch.randn(3 * H, I, dtype=torch.float64), torch.randn(3 * H, H, dtype=torch.float64)
    b_ih, b_hh = torch.randn(3 * H, dtype=torch.float64), torch.randn(3 * H, dtype=torch.float64)
    ln = (1 + torch.randn(3 * H, dtype=torch.float64) * .3, 1 + torch.randn(3 * H, dtype=torch.float64) * .3)
    F = torch.nn.functional
    gi = F.layer_norm(x @ w_ih.T, (3 * H,), ln[0]) + b_ih
    gh = F.layer_norm(h @ w_hh.T, (3 * H,), ln[1]) + b_hh
    r = torch.sigmoid(gi[:, :H] + gh[:, :H])
    z = torch.sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
    n = torch.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
    _same(reference.gru_cell(x, h, w_ih, w_hh, b_ih, b_hh, ln), (1 - z) * n + z * h)


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_reference_runs_layer_norm_with_each_layers_parameters(cls):
    # Layer by layer and direction by direction by hand with the cell functions: the runner hands every layer
    # and direction its own layer-norm parameters.
    torch.manual_seed(0)
    m = _with_options(cls(3, 4, num_layers=2, bidirectional=True, dtype=torch.float64), layer_norm=True)
    x0 = x = torch.randn(5, 2, 3, dtype=torch.float64)
    lstm = cls is nn.LSTM
    finals = []
    for layer in range(2):
        outs = []
        for d, sfx in enumerate(("", "_reverse")):
            p = {n: getattr(m, f"{n}_l{layer}{sfx}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
            ln = tuple(getattr(m, f"{n}_l{layer}{sfx}") for n in
                       ("weight_ln_ih", "weight_ln_hh", "weight_ln_c", "bias_ln_c")[: 4 if lstm else 2])
            h = c = torch.zeros(2, 4, dtype=torch.float64)
            ys = [None] * 5
            for t in (range(4, -1, -1) if d else range(5)):
                if lstm:
                    h, c = reference.lstm_cell(x[t], h, c, *p.values(), ln=ln)
                else:
                    h = reference.gru_cell(x[t], h, *p.values(), ln=ln)
                ys[t] = h
            outs.append(torch.stack(ys))
            finals.append(h)
        x = torch.cat(outs, -1)
    out, state = (reference.run_lstm if lstm else reference.run_gru)(m, x0)
    _same(out, x)
    _same(state[0] if lstm else state, torch.stack(finals))


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
@pytest.mark.parametrize("training", [True, False])
def test_reference_zoneout_by_hand(cls, training):
    # One layer, one direction: h (and c) keep their previous value where the mask says, the candidate h̃ comes
    # from the candidate c̃; masks are float32 uniforms < p drawn [T, B, W] per state, h's first; eval uses p.
    lstm = cls is nn.LSTM
    torch.manual_seed(0)
    m = cls(3, 4, dtype=torch.float64)
    _with_options(m, zoneout=0.3, zoneout_cell=0.6 if lstm else 0.0)
    m.train(training)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    torch.manual_seed(7)
    m_h = (torch.rand(6, 2, 4) < 0.3).double() if training else torch.full((6, 2, 4), 0.3, dtype=torch.float64)
    m_c = (torch.rand(6, 2, 4) < 0.6).double() if training else torch.full((6, 2, 4), 0.6, dtype=torch.float64)
    h = c = torch.zeros(2, 4, dtype=torch.float64)
    ys = []
    for t in range(6):
        if lstm:
            h_new, c_new = reference.lstm_cell(x[t], h, c, m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0)
            h, c = m_h[t] * h + (1 - m_h[t]) * h_new, m_c[t] * c + (1 - m_c[t]) * c_new
        else:
            h_new = reference.gru_cell(x[t], h, m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0)
            h = m_h[t] * h + (1 - m_h[t]) * h_new
        ys.append(h)
    torch.manual_seed(7)
    out, state = (reference.run_lstm if lstm else reference.run_gru)(m, x)
    _same(out, torch.stack(ys))
    _same(state[0] if lstm else state, h.unsqueeze(0))
    if lstm:
        _same(state[1], c.unsqueeze(0))


def test_reference_zoneout_packed_leaves_finished_rows_alone():
    # In eval (deterministic) each sequence of a packed batch gives what it gives alone; in training the final
    # states are each sequence's last step (rows past the length untouched).
    torch.manual_seed(0)
    m = _with_options(nn.LSTM(3, 4, bidirectional=True, dtype=torch.float64), zoneout=0.2, zoneout_cell=0.4)
    m.eval()
    seqs = [torch.randn(n, 3, dtype=torch.float64) for n in (5, 2, 4)]
    out, (h, c) = reference.run_lstm(m, torch.nn.utils.rnn.pack_sequence(seqs, enforce_sorted=False))
    padded, lengths = torch.nn.utils.rnn.pad_packed_sequence(out)
    for b, s in enumerate(seqs):
        o1, (h1, c1) = reference.run_lstm(m, s.unsqueeze(1))
        _same(padded[: lengths[b], b], o1[:, 0])
        _same(h[:, b], h1[:, 0])
        _same(c[:, b], c1[:, 0])
    m.train()
    out, (h, c) = reference.run_lstm(m, torch.nn.utils.rnn.pack_sequence(seqs, enforce_sorted=False))
    padded, lengths = torch.nn.utils.rnn.pad_packed_sequence(out)
    for b, n in enumerate(lengths):
        _same(h[0, b], padded[n - 1, b, :4])  # forward direction: its final h is its last output
        assert not padded[n:, b].any()


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_reference_weight_drop_is_nn_with_dropped_recurrent_weights(cls):
    torch.manual_seed(0)
    m = _with_options(cls(3, 4, num_layers=2, bidirectional=True, dtype=torch.float64), weight_drop=0.5)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    torch.manual_seed(3)
    out, state = (reference.run_lstm if cls is nn.LSTM else reference.run_gru)(m, x)
    plain = cls(3, 4, num_layers=2, bidirectional=True, dtype=torch.float64)
    plain.load_state_dict(m.state_dict(), strict=False)
    torch.manual_seed(3)
    with torch.no_grad():  # F.dropout's masks, layer by layer, forward direction first
        for k in range(2):
            for sfx in ("", "_reverse"):
                name = f"weight_hh_l{k}{sfx}"
                getattr(plain, name).copy_(torch.nn.functional.dropout(getattr(m, name), 0.5, training=True))
    assert (plain.weight_hh_l1_reverse == 0).any()
    ref_out, ref_state = plain(x)
    _same(out, ref_out)
    _same(state[0] if cls is nn.LSTM else state, ref_state[0] if cls is nn.LSTM else ref_state)


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_reference_options_at_zero_are_nn_and_draw_nothing(cls):
    torch.manual_seed(0)
    m = _with_options(cls(3, 4, num_layers=2, bidirectional=True, dtype=torch.float64), zoneout=0.0,
                      zoneout_cell=0.0, weight_drop=0.0)
    m.dropout = 0.0
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    torch.manual_seed(5)
    out, state = (reference.run_lstm if cls is nn.LSTM else reference.run_gru)(m, x)
    after = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(torch.rand(3), after)  # the generator did not move
    _same(out, m(x)[0])


@pytest.mark.parametrize("cls", [nn.LSTMCell, nn.GRUCell])
def test_reference_cells_with_options_by_hand(cls):
    lstm = cls is nn.LSTMCell
    torch.manual_seed(0)
    m = _with_options(cls(3, 4, dtype=torch.float64), layer_norm=True, zoneout=0.3,
                      zoneout_cell=0.5 if lstm else 0.0, weight_drop=0.4)
    x = torch.randn(2, 3, dtype=torch.float64)
    hx = (torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64))
    torch.manual_seed(9)  # weight drop's mask, then the zoneout masks (h's, then c's), one step [1, B, H]
    w_hh = torch.nn.functional.dropout(m.weight_hh, 0.4, training=True)
    m_h = (torch.rand(1, 2, 4) < 0.3).double()[0]
    m_c = (torch.rand(1, 2, 4) < 0.5).double()[0]
    if lstm:
        ln = (m.weight_ln_ih, m.weight_ln_hh, m.weight_ln_c, m.bias_ln_c)
        h_new, c_new = reference.lstm_cell(x, *hx, m.weight_ih, w_hh, m.bias_ih, m.bias_hh, ln=ln)
        expected = (m_h * hx[0] + (1 - m_h) * h_new, m_c * hx[1] + (1 - m_c) * c_new)
    else:
        h_new = reference.gru_cell(x, hx[0], m.weight_ih, w_hh, m.bias_ih, m.bias_hh, (m.weight_ln_ih, m.weight_ln_hh))
        expected = m_h * hx[0] + (1 - m_h) * h_new
    torch.manual_seed(9)
    got = (reference.run_lstm_cell if lstm else reference.run_gru_cell)(m, x, hx if lstm else hx[0])
    for a, b in zip(got if lstm else [got], expected if lstm else [expected]):
        _same(a, b)
