"""lstm_fused.LSTMCell / GRUCell against nn.LSTMCell / nn.GRUCell: parity (on every backend), errors, gradcheck
and compile."""
import pytest
import torch
from torch import nn

import lstm_fused
from helpers import BACKENDS, assert_raises_like, on_backend


def _twin_cells(*args, seed=0, **kwargs):
    torch.manual_seed(seed)
    ref = nn.LSTMCell(*args, **kwargs)
    torch.manual_seed(seed)
    ours = lstm_fused.LSTMCell(*args, **kwargs)
    for (n1, a), (n2, b) in zip(ref.named_parameters(), ours.named_parameters()):
        assert n1 == n2 and torch.equal(a, b)  # same names, order and seeded init
    return ref, ours


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("with_state", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lstm_cell_parity(backend, bias, batched, with_state, dtype):
    with on_backend(backend) as device:
        ref, ours = _twin_cells(5, 33, bias=bias, dtype=dtype)
        ref, ours = ref.to(device), ours.to(device)
        shape = (7, 5) if batched else (5,)
        x = torch.randn(shape, dtype=dtype).to(device).requires_grad_()
        hx = None
        leaves = [x]
        if with_state:
            s = (7, 33) if batched else (33,)
            hx = (torch.randn(s, dtype=dtype).to(device).requires_grad_(),
                  torch.randn(s, dtype=dtype).to(device).requires_grad_())
            leaves += list(hx)
        results = []
        for m in (ref, ours):
            h, c = m(x, hx)
            loss = (h * torch.arange(h.numel(), dtype=dtype, device=device).view(h.shape)).sum() + c.square().sum()
            results.append((h, c, torch.autograd.grad(loss, leaves + list(m.parameters()))))
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    (h1, c1, g1), (h2, c2, g2) = results
    assert h2.shape == h1.shape and c2.shape == c1.shape
    torch.testing.assert_close(h2, h1, **tol)
    torch.testing.assert_close(c2, c1, **tol)
    for a, b in zip(g2, g1):  # gradients are sums: tolerance relative to their largest entry
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a, b, rtol=tol["rtol"], atol=tol["rtol"] * scale)


def test_lstm_cell_gradcheck_and_compile():
    torch.manual_seed(0)
    cell = lstm_fused.LSTMCell(3, 4, dtype=torch.float64)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, h, c, *p: torch.func.functional_call(
        cell, dict(zip([n for n, _ in cell.named_parameters()], p)), (x, (h, c))), [x, h, c, *cell.parameters()])
    torch._dynamo.reset()
    compiled = torch.compile(cell, fullgraph=True)
    torch.testing.assert_close(compiled(x, (h, c))[0], cell(x, (h, c))[0])


CELL_ERRORS = {
    "input_3d": lambda: (torch.randn(2, 3, 5), None),
    "hx_3d": lambda: (torch.randn(3, 5), (torch.randn(1, 3, 7), torch.randn(3, 7))),
    "wrong_input_size": lambda: (torch.randn(3, 6), None),
    "wrong_hx_batch": lambda: (torch.randn(3, 5), (torch.randn(2, 7), torch.randn(2, 7))),
    "wrong_hx_size": lambda: (torch.randn(3, 5), (torch.randn(3, 8), torch.randn(3, 7))),
    "dtype_mismatch": lambda: (torch.randn(3, 5, dtype=torch.float64), None),
}


@pytest.mark.parametrize("name", sorted(CELL_ERRORS))
def test_lstm_cell_errors_match(name):
    ref, ours = _twin_cells(5, 7)
    assert_raises_like(ref, ours, *CELL_ERRORS[name]())
    torch.testing.assert_close(ours(torch.ones(2, 5))[0], ref(torch.ones(2, 5))[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("with_state", [True, False])
def test_gru_cell_parity(backend, bias, batched, with_state):
    with on_backend(backend) as device:
        torch.manual_seed(0)
        ref = nn.GRUCell(5, 9, bias=bias, dtype=torch.float64).to(device)
        torch.manual_seed(0)
        ours = lstm_fused.GRUCell(5, 9, bias=bias, dtype=torch.float64).to(device)
        x = torch.randn((4, 5) if batched else (5,), dtype=torch.float64).to(device).requires_grad_()
        h = torch.randn((4, 9) if batched else (9,), dtype=torch.float64).to(device).requires_grad_() \
            if with_state else None
        leaves = [x] + ([h] if with_state else [])
        res = []
        for m in (ref, ours):
            out = m(x, h)
            res.append((out, torch.autograd.grad(out.sin().sum(), leaves + list(m.parameters()))))
        torch.testing.assert_close(res[1][0], res[0][0])
        for a, b in zip(res[1][1], res[0][1]):
            torch.testing.assert_close(a, b)
        with pytest.raises(ValueError):
            ours(torch.randn(2, 3, 5, dtype=torch.float64, device=device))
        with pytest.raises(RuntimeError):
            ours(torch.randn(4, 6, dtype=torch.float64, device=device))


def test_gru_cell_gradcheck_and_compile():
    torch.manual_seed(0)
    cell = lstm_fused.GRUCell(3, 4, dtype=torch.float64)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in cell.named_parameters()]
    assert torch.autograd.gradcheck(
        lambda x, h, *p: torch.func.functional_call(cell, dict(zip(names, p)), (x, h)), [x, h, *cell.parameters()])
    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(cell, fullgraph=True)(x, h), cell(x, h))
