"""CPU recurrence (LSTM and GRU) with threads owning batch rows for the whole sequence (cpu_common.h:
run_steps) against the shared per-step path: the same products on the same rows, so bitwise the same results
(forced on and off with LSTM_FUSED_CPU_ROW_SPLIT), and nn.LSTM's numbers. Layers that cannot split (float64,
a W_hr or W_hh too narrow to pack) are in the grid too: forcing must leave them on the shared path."""
import itertools

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import lstm_fused
from helpers import compare_modules, twin_lstms

pytestmark = pytest.mark.skipif(torch.get_num_threads() < 2, reason="the split needs two threads")


def _results(model, x, lengths, packed):
    """Outputs, final states, input and parameter gradients of a weighted loss, and the inference output."""
    model.zero_grad()
    xg = x.clone().requires_grad_()
    inp = pack_padded_sequence(xg, lengths, enforce_sorted=False) if packed else xg
    out, state = model(inp)
    states = list(state) if isinstance(state, tuple) else [state]
    data = out.data if packed else out
    g = torch.Generator().manual_seed(3)
    w = torch.randn(data.shape, generator=g, dtype=data.dtype)
    ((data * w).sum() + sum(s.square().sum() for s in states)).backward()
    with torch.no_grad():
        inf = model(inp)[0]
    return [data, *states, xg.grad, inf.data if packed else inf] + [p.grad.clone() for p in model.parameters()]


def _split_and_shared(monkeypatch, model, x, lengths, packed):
    got = {}
    for split in ("0", "1"):
        monkeypatch.setenv("LSTM_FUSED_CPU_ROW_SPLIT", split)
        got[split] = _results(model, x, lengths, packed)
    return got["1"], got["0"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B", [16, 17, 40])
@pytest.mark.parametrize("packed,bidirectional", list(itertools.product([False, True], [False, True])))
# proj_size 5 and 40 leave W_hr to BLAS (too narrow to pack), so those layers never split; 32 packs.
@pytest.mark.parametrize("extra", [{}, dict(proj_size=5), dict(proj_size=32), dict(proj_size=40),
                                   dict(peephole=True), dict(coupled=True, num_layers=2)], ids=str)
def test_row_split_is_bitwise_the_shared_steps(monkeypatch, dtype, B, packed, bidirectional, extra):
    torch.manual_seed(B)
    model = lstm_fused.LSTM(7, 48, bidirectional=bidirectional, dtype=dtype, **extra)
    x = torch.randn(9, B, 7, dtype=dtype)
    lengths = torch.randint(1, 10, (B,))
    lengths[1] = 9
    for a, b in zip(*_split_and_shared(monkeypatch, model, x, lengths, packed)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("proj", [0, 32])  # sizes whose every product is packed, so the split does run
def test_row_split_matches_nn_lstm(monkeypatch, packed, proj):
    monkeypatch.setenv("LSTM_FUSED_CPU_ROW_SPLIT", "1")
    ref, ours = twin_lstms(6, 48, num_layers=2, bidirectional=True, proj_size=proj)
    x = torch.randn(12, 21, 6, requires_grad=True)
    inp = pack_padded_sequence(x, torch.randint(1, 13, (21,)).index_fill_(0, torch.tensor([4]), 12),
                               enforce_sorted=False) if packed else x
    compare_modules(ref, ours, inp, None, [x], torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B", [16, 33])
@pytest.mark.parametrize("packed,bidirectional", list(itertools.product([False, True], [False, True])))
@pytest.mark.parametrize("H", [40, 64])  # 40: W_hh too narrow to pack for the backward, which then does not split
def test_gru_row_split_is_bitwise_the_shared_steps(monkeypatch, dtype, B, packed, bidirectional, H):
    torch.manual_seed(B)
    model = lstm_fused.GRU(5, H, num_layers=2, bidirectional=bidirectional, dtype=dtype)
    x = torch.randn(8, B, 5, dtype=dtype)
    lengths = torch.randint(1, 9, (B,))
    lengths[2] = 8
    for a, b in zip(*_split_and_shared(monkeypatch, model, x, lengths, packed)):
        assert torch.equal(a, b)
