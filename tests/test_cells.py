"""lstm_fused.LSTMCell against nn.LSTMCell, and lstm_fused.convert on nested models."""
import pytest
import torch
from torch import nn

import lstm_fused


def _twin_cells(*args, seed=0, **kwargs):
    torch.manual_seed(seed)
    ref = nn.LSTMCell(*args, **kwargs)
    torch.manual_seed(seed)
    ours = lstm_fused.LSTMCell(*args, **kwargs)
    for (n1, a), (n2, b) in zip(ref.named_parameters(), ours.named_parameters()):
        assert n1 == n2 and torch.equal(a, b)  # same names, order and seeded init
    return ref, ours


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("with_state", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lstm_cell_parity(bias, batched, with_state, dtype):
    ref, ours = _twin_cells(5, 33, bias=bias, dtype=dtype)
    shape = (7, 5) if batched else (5,)
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    hx = None
    leaves = [x]
    if with_state:
        s = (7, 33) if batched else (33,)
        hx = (torch.randn(s, dtype=dtype, requires_grad=True), torch.randn(s, dtype=dtype, requires_grad=True))
        leaves += list(hx)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    results = []
    for m in (ref, ours):
        h, c = m(x, hx)
        loss = (h * torch.arange(h.numel(), dtype=dtype).view(h.shape)).sum() + c.square().sum()
        results.append((h, c, torch.autograd.grad(loss, leaves + list(m.parameters()))))
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
    x, hx = CELL_ERRORS[name]()
    try:
        ref(x, hx)
    except Exception as e:  # noqa: BLE001
        expected = type(e)
    else:
        pytest.fail("nn.LSTMCell accepted the case")
    with pytest.raises(expected):
        ours(x, hx)
    torch.testing.assert_close(ours(torch.ones(2, 5))[0], ref(torch.ones(2, 5))[0], rtol=1e-5, atol=1e-6)


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 6)
        self.encoder = nn.ModuleDict({"rnn": nn.LSTM(6, 8, num_layers=2, bidirectional=True, batch_first=True)})
        self.decoder = nn.ModuleList([nn.LSTMCell(16, 8)])
        self.head = nn.Sequential(nn.Linear(8, 5))

    def forward(self, tokens):
        out, _ = self.encoder["rnn"](self.embed(tokens))
        h, c = self.decoder[0](out[:, -1])
        return self.head(h)


def test_convert_nested_model_same_outputs_and_training():
    torch.manual_seed(0)
    ref = _Model().double()
    torch.manual_seed(0)
    model = _Model().double()
    model.eval()
    params_before = {n: p for n, p in model.named_parameters()}
    converted = lstm_fused.convert(model)
    assert converted is model
    assert isinstance(model.encoder["rnn"], lstm_fused.LSTM) and isinstance(model.decoder[0], lstm_fused.LSTMCell)
    assert not model.encoder["rnn"].training  # eval mode carried
    # The very same parameter objects (device, dtype, requires_grad and optimizer state follow).
    for n, p in model.named_parameters():
        assert p is params_before[n]
    model.train()
    ref.train()
    tokens = torch.randint(0, 20, (3, 9))
    torch.testing.assert_close(model(tokens), ref(tokens))
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        for m, o in ((ref, opt_ref), (model, opt)):
            o.zero_grad()
            m(tokens).square().mean().backward()
            o.step()
    for a, b in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b)


def test_convert_bare_modules():
    lstm = nn.LSTM(3, 4, proj_size=2, batch_first=True)
    fused = lstm_fused.convert(lstm)
    assert isinstance(fused, lstm_fused.LSTM) and fused.proj_size == 2 and fused.batch_first
    x = torch.randn(2, 5, 3)
    torch.testing.assert_close(fused(x)[0], lstm(x)[0], rtol=1e-5, atol=1e-6)
    cell = lstm_fused.convert(nn.LSTMCell(3, 4, bias=False))
    assert isinstance(cell, lstm_fused.LSTMCell) and cell.bias_ih is None
