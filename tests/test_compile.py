"""torch.compile(fullgraph=True) forward and backward equal eager (LSTM, GRU)."""
import contextlib

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import lstm_fused
from helpers import BACKENDS, on_backend, paths_taken


def _grads(model, make_input, hx):
    model.zero_grad()
    x = make_input()
    out, (h, c) = model(x, hx)
    data = out.data if hasattr(out, "batch_sizes") else out
    loss = (data * data).sum() + h.sum() * 2 + c.sum() * 3
    loss.backward()
    return [data.detach(), h.detach(), c.detach()] + [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("packed", [False, True])
def test_compile_fullgraph_matches_eager(backend, packed):
    with on_backend(backend) as device:
        torch._dynamo.reset()
        torch.manual_seed(0)
        model = lstm_fused.LSTM(5, 8, num_layers=2, bidirectional=True, proj_size=3, batch_first=True).to(device)
        x = torch.randn(4, 7, 5).to(device)
        h0, c0 = torch.randn(4, 4, 3).to(device), torch.randn(4, 4, 8).to(device)
        lengths = torch.tensor([7, 3, 5, 1])

        def make_input():
            return pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False) if packed else x

        eager = _grads(model, make_input, (h0, c0))
        compiled = torch.compile(model, fullgraph=True)
        with paths_taken() if backend == "emulated_cuda" else contextlib.nullcontext({}) as taken:
            got = _grads(compiled, make_input, (h0, c0))
        # The compiled graph calls the emulated ops too (their fake kernels are registered with their autograd).
        assert backend != "emulated_cuda" or sum(taken.values()) > 0
        torch._dynamo.reset()
    for a, b in zip(got, eager):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_compile_dynamic_shapes():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = lstm_fused.LSTM(3, 6)
    compiled = torch.compile(model, fullgraph=True, dynamic=True)
    for T, B in [(5, 2), (9, 3), (2, 7)]:
        x = torch.randn(T, B, 3)
        out_c, (h_c, _) = compiled(x)
        out_e, (h_e, _) = model(x)
        torch.testing.assert_close(out_c, out_e)
        torch.testing.assert_close(h_c, h_e)


def test_gru_compile_fullgraph_and_inference_equal_eager():
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = lstm_fused.GRU(5, 8, num_layers=2, bidirectional=True, batch_first=True)
    x = torch.randn(4, 7, 5)
    eager = m(x)
    compiled = torch.compile(m, fullgraph=True)(x)
    torch.testing.assert_close(compiled[0], eager[0])
    with torch.no_grad():  # inference keeps no workspace: same bits
        inf = m(x)
    assert torch.equal(inf[0], eager[0]) and torch.equal(inf[1], eager[1])
