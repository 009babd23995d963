"""lstm_fused.reference (the readable specification the kernels are tested against) against nn.LSTM/nn.GRU."""
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
