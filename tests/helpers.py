"""Shared helpers for the parity tests: twin modules with identical weights and loose-but-tight comparisons."""
import contextlib
import itertools

import pytest
import torch
from torch import nn

import lstm_fused

# The test-only ops (lstm_fused_testing::*) exist only in a build made with LSTM_FUSED_TESTING=1 (conftest.py).
HAS_TESTING_OPS = hasattr(torch.ops.lstm_fused_testing, "path_counts")
requires_testing_ops = pytest.mark.skipif(not HAS_TESTING_OPS, reason="needs the test-only ops: build with "
                                          "LSTM_FUSED_TESTING=1 (scripts/test.sh does)")


def twin_lstms(*args, dtype=torch.float32, seed=0, **kwargs):
    """nn.LSTM and lstm_fused.LSTM with identical parameters."""
    torch.manual_seed(seed)
    ref = nn.LSTM(*args, dtype=dtype, **kwargs)
    ours = lstm_fused.LSTM(*args, dtype=dtype, **kwargs)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def tolerances(dtype, grad=False):
    # fp32: ~1e-5 relative to the magnitude of the reference (gradients are sums over all steps and rows,
    # where summation order alone moves cancelling sums by ~1e-5 of the largest entry); fp64: near machine
    # precision.
    if dtype == torch.float32:
        return (1e-5, 1e-5 if grad else 1e-6)
    return (1e-10, 1e-11 if grad else 1e-12)


def assert_close(actual, expected, dtype, what="", grad=False):
    rtol, atol = tolerances(dtype, grad)
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol * scale, msg=lambda m: f"{what}: {m}")


def loss_of(output, h_n, c_n, seed=1):
    """A loss that touches every output with distinct weights, so every gradient path is checked."""
    g = torch.Generator().manual_seed(seed)
    data = output.data if hasattr(output, "batch_sizes") else output
    # Drawn on the CPU (the same numbers whatever the device), then moved to the outputs' device.
    w_o = torch.randn(data.shape, generator=g, dtype=data.dtype).to(data.device)
    w_h = torch.randn(h_n.shape, generator=g, dtype=h_n.dtype).to(h_n.device)
    w_c = torch.randn(c_n.shape, generator=g, dtype=c_n.dtype).to(c_n.device)
    return (data * w_o).sum() + (h_n * w_h).sum() + (c_n * w_c).sum()


def outputs_and_grads(model, x):
    """Output, h_n, c_n, the input's and every parameter's gradient of a fixed loss (for equality checks)."""
    model.zero_grad()
    xg = x.clone().requires_grad_()
    out, (h, c) = model(xg)
    (out.square().sum() + h.sum() + c.sum()).backward()
    return [out, h, c, xg.grad] + [p.grad.clone() for p in model.parameters()]


def run_and_grads(module, x, hx, leaf_inputs):
    out, (h_n, c_n) = module(x, hx)
    loss = loss_of(out, h_n, c_n)
    params = list(module.parameters())
    grads = torch.autograd.grad(loss, leaf_inputs + params, allow_unused=True, retain_graph=True)
    return out, h_n, c_n, grads


def compare_modules(ref, ours, x, hx, leaf_inputs, dtype):
    """Outputs, final states and every gradient (inputs, states, all parameters) must match."""
    o1, h1, c1, g1 = run_and_grads(ref, x, hx, leaf_inputs)
    o2, h2, c2, g2 = run_and_grads(ours, x, hx, leaf_inputs)
    d1 = o1.data if hasattr(o1, "batch_sizes") else o1
    d2 = o2.data if hasattr(o2, "batch_sizes") else o2
    assert d1.shape == d2.shape
    assert_close(d2, d1, dtype, "output")
    assert_close(h2, h1, dtype, "h_n")
    assert_close(c2, c1, dtype, "c_n")
    names = [f"input{i}" for i in range(len(leaf_inputs))] + [n for n, _ in ours.named_parameters()]
    for name, a, b in zip(names, g2, g1):
        assert (a is None) == (b is None), name
        if a is not None:
            assert_close(a, b, dtype, f"grad {name}", grad=True)
    return o2, h2, c2


PATHS = ("persistent", "wavefront", "step", "gemm_step")


@contextlib.contextmanager
def paths_taken():
    """How many sequences each recurrent path of the CUDA driver (on a GPU or emulated) ran inside the block:
    a test of one kernel checks that it ran, not a silent fallback."""
    before = torch.ops.lstm_fused_testing.path_counts()
    taken = {}
    yield taken
    after = torch.ops.lstm_fused_testing.path_counts()
    taken.update({name: a - b for name, a, b in zip(PATHS, after, before)})


def assert_error_within_reference(triples, factor=4, slack=1e-3):
    """Half types: for each (ours, nn's, float64 exact) our error may be at most `factor` times nn's own error at
    that dtype (plus `slack`)."""
    for ours, ref, exact in triples:
        err_ours = (ours.double().cpu() - exact).abs().max().item()
        err_ref = (ref.double().cpu() - exact).abs().max().item()
        assert err_ours <= factor * err_ref + slack, (err_ours, err_ref)


def check_half_type_vs_float64(ref, ours, ref64, x, dtype):
    """nn's module `ref` and ours at a half type against `ref64` (float64, on the CPU), same weights: outputs and
    final states may be at most 4x nn's own error (assert_error_within_reference), and every parameter gradient of
    a float64 weighted loss at most 10x nn's error plus 1% of the gradient's scale — loose enough for a different
    summation order, tight enough to catch a wrong tile layout or a lost term, which are off by O(1)."""
    results = []
    for m, inp in ((ref64, x.double().cpu()), (ref.to(dtype), x.to(dtype)), (ours.to(dtype), x.to(dtype))):
        out, state = m(inp)
        outs = [out, *(state if isinstance(state, tuple) else (state,))]
        g = torch.Generator().manual_seed(1)
        loss = sum((t.double() * torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.device)).sum()
                   for t in outs)
        names = [n for n, _ in m.named_parameters()]
        results.append((outs, dict(zip(names, torch.autograd.grad(loss, [p for _, p in m.named_parameters()])))))
    (exact, exact_g), (theirs, theirs_g), (mine, mine_g) = results
    assert all(t.dtype == dtype for t in mine)
    assert_error_within_reference(zip(mine, theirs, exact))
    assert exact_g.keys() == mine_g.keys() == theirs_g.keys()
    for name, e in exact_g.items():
        err_mine = (mine_g[name].double().cpu() - e).abs().max().item()
        err_theirs = (theirs_g[name].double().cpu() - e).abs().max().item()
        assert err_mine <= 10 * err_theirs + 1e-2 * e.abs().max().item(), (name, err_mine, err_theirs)


# Every (T, B, H) of the grid, in a fixed order the parity tests cycle through.
SHAPES = list(itertools.product([1, 2, 17, 50], [1, 3, 16], [1, 5, 33, 128]))


def flat_tensors(result):
    """Every tensor of a module's result, in order (a PackedSequence contributes its data)."""
    if isinstance(result, torch.Tensor):
        return [result]
    if hasattr(result, "batch_sizes"):
        return [result.data]
    return [t for r in result for t in flat_tensors(r)]
