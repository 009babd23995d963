"""Results are bitwise identical across runs and across thread counts."""
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import lstm_fused


def _run(model, x, lengths):
    model.zero_grad()
    xg = x.clone().requires_grad_()
    out, (h, c) = model(pack_padded_sequence(xg, lengths, enforce_sorted=False))
    (out.data.square().sum() + h.sum() + c.sum()).backward()
    return [out.data, h, c, xg.grad] + [p.grad.clone() for p in model.parameters()]


def test_bitwise_deterministic_across_runs_and_threads():
    torch.manual_seed(0)
    model = lstm_fused.LSTM(48, 96, num_layers=2, bidirectional=True, proj_size=40)
    x = torch.randn(30, 24, 48)
    lengths = torch.randint(1, 31, (24,))
    lengths[0] = 30
    threads = torch.get_num_threads()
    try:
        first = _run(model, x, lengths)
        again = _run(model, x, lengths)
        torch.set_num_threads(1)
        single = _run(model, x, lengths)
    finally:
        torch.set_num_threads(threads)
    for a, b, c in zip(first, again, single):
        assert torch.equal(a, b)
        assert torch.equal(a, c)
