"""Gradients: float64 gradcheck of the ops and of the modules (LSTM, GRU; on every backend), parameters included;
double backward raises; a single-feature input's gradients."""
import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence

import lstm_fused
from helpers import BACKENDS, on_backend
from lstm_fused.ops import lstm_layer


def _t(*shape, device="cpu"):
    # Drawn on the CPU (the same numbers on every backend), then moved.
    return torch.randn(*shape, dtype=torch.float64).to(device).requires_grad_()


@pytest.mark.parametrize("directions", [1, 2])
@pytest.mark.parametrize("proj", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_gradcheck_layer_op(directions, proj, bias, packed):
    T, B, I, H = 4, 3, 3, 4
    P = 2 if proj else H
    D = directions
    if packed:
        batch_sizes = torch.tensor([3, 3, 2, 1])
        x = _t(int(batch_sizes.sum()), I)
    else:
        batch_sizes = None
        x = _t(T, B, I)
    per_dir = [[_t(4 * H, I), _t(4 * H, P)] + ([_t(4 * H), _t(4 * H)] if bias else []) + ([_t(P, H)] if proj else [])
               for _ in range(D)]
    flat = [w for ws in per_dir for w in ws]
    n = len(per_dir[0])

    def f(x, h0, c0, *flat_w):
        ws = [flat_w[d * n:(d + 1) * n] for d in range(D)]
        col = lambda i: [w[i] for w in ws]  # noqa: E731
        return lstm_layer(x, batch_sizes, h0, c0, col(0), col(1), col(2) if bias else None, col(3) if bias else None,
                          col(n - 1) if proj else None)

    assert torch.autograd.gradcheck(f, [x, _t(D, B, P), _t(D, B, H), *flat])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("packed", [False, True])
def test_gradcheck_module_all_parameters(backend, packed):
    with on_backend(backend) as device:
        torch.manual_seed(0)
        m = lstm_fused.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2, dtype=torch.float64).to(device)
        names = [n for n, _ in m.named_parameters()]
        params = [p.detach().clone().requires_grad_() for p in m.parameters()]
        x = _t(5, 3, 3, device=device)
        h0, c0 = _t(4, 3, 2, device=device), _t(4, 3, 4, device=device)
        lengths = torch.tensor([5, 2, 4])

        def f(x, h0, c0, *ps):
            inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x
            out, (h, c) = functional_call(m, dict(zip(names, ps)), (inp, (h0, c0)))
            return (out.data if packed else out), h, c

        assert torch.autograd.gradcheck(f, [x, h0, c0, *params])


@pytest.mark.parametrize("cls", [lstm_fused.LSTM, lstm_fused.GRU])
def test_double_backward_raises_instead_of_silent_zeros(cls):
    m = cls(3, 4)
    x = torch.randn(5, 2, 3, requires_grad=True)
    (g,) = torch.autograd.grad(m(x)[0].pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.pow(2).sum().backward()


def test_single_feature_input_gradients():
    # A 1-feature input takes the BLAS path for its weight gradient (no 32x panel padding); still exact.
    torch.manual_seed(0)
    ref = nn.LSTM(1, 6)
    ours = lstm_fused.LSTM(1, 6)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(40, 3, 1, requires_grad=True)
    g1 = torch.autograd.grad(ref(x)[0].sum(), [x, *ref.parameters()])
    g2 = torch.autograd.grad(ours(x)[0].sum(), [x, *ours.parameters()])
    for a, b in zip(g2, g1):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("packed", [False, True])
def test_gru_gradcheck(backend, packed):
    with on_backend(backend) as device:
        torch.manual_seed(0)
        m = lstm_fused.GRU(3, 4, num_layers=2, bidirectional=True, dtype=torch.float64).to(device)
        names = [n for n, _ in m.named_parameters()]
        params = [p.detach().clone().requires_grad_() for p in m.parameters()]
        x = _t(5, 3, 3, device=device)
        h0 = _t(4, 3, 4, device=device)
        lengths = torch.tensor([5, 2, 4])

        def f(x, h0, *ps):
            inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x
            out, h = torch.func.functional_call(m, dict(zip(names, ps)), (inp, h0))
            return (out.data if packed else out), h

        assert torch.autograd.gradcheck(f, [x, h0, *params])
