"""lstm_fused.LSTM / GRU against nn.LSTM / nn.GRU with identical weights over the shared parity grid, on every
backend (the CPU kernels, the CUDA path emulated on the CPU, a GPU): outputs, final states and every gradient;
float64, unbatched, non-contiguous and view inputs, partial use of the outputs."""
import pytest
import torch

from helpers import (BACKENDS, CUDNN_GRU_TOL, GRU_STRUCTURES, LARGE_BATCH_SHAPES, LSTM_STRUCTURES, SHAPE_SAMPLE, SHAPES, compare_grus,
                     compare_modules, on_backend, twin_grus, twin_lstms)


# The grid per backend (helpers.on_backend): the CPU kernels over every shape; the CUDA path, emulated on the CPU or
# on a GPU, over a sample of the shapes plus a batch over 64 (where it takes the GEMM path).
GRID = {"cpu": SHAPES, "emulated_cuda": SHAPE_SAMPLE + LARGE_BATCH_SHAPES, "cuda": SHAPE_SAMPLE + LARGE_BATCH_SHAPES}
LSTM_CASES = [(backend, shape) for backend in BACKENDS for shape in GRID[backend]]


@pytest.mark.parametrize("backend,shape", LSTM_CASES, ids=[f"{b}-{s}" for b, s in LSTM_CASES])
@pytest.mark.parametrize("case", range(len(LSTM_STRUCTURES)))
def test_parity_grid(backend, case, shape):
    """Every structure: layers {1,2,3} x bidirectional x batch_first x bias x projection, on the backend's shapes
    (the CPU: T {1,2,17,50} x B {1,3,16} x H {1,5,33,128}); input size differs from hidden size; initial states
    given on alternate cases."""
    num_layers, bidirectional, batch_first, bias, use_proj = LSTM_STRUCTURES[case]
    T, B, H = shape
    shape_index = SHAPES.index(shape) if shape in SHAPES else len(SHAPES)
    proj_size = max(1, H // 3) if use_proj and H > 1 else 0
    input_size = H + 3
    with on_backend(backend) as device:
        ref, ours = twin_lstms(input_size, H, num_layers=num_layers, bias=bias, batch_first=batch_first,
                               bidirectional=bidirectional, proj_size=proj_size, seed=case * 100 + shape_index)
        ref, ours = ref.to(device), ours.to(device)
        D = 2 if bidirectional else 1
        P = proj_size or H
        x = torch.randn((B, T, input_size) if batch_first else (T, B, input_size), device=device, requires_grad=True)
        if (case + shape_index) % 2 == 0:
            h0 = torch.randn(num_layers * D, B, P, device=device, requires_grad=True)
            c0 = torch.randn(num_layers * D, B, H, device=device, requires_grad=True)
            compare_modules(ref, ours, x, (h0, c0), [x, h0, c0], torch.float32)
        else:
            compare_modules(ref, ours, x, None, [x], torch.float32)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("proj_size", [0, 4])
def test_parity_float64(bidirectional, proj_size):
    ref, ours = twin_lstms(6, 9, num_layers=2, bidirectional=bidirectional, proj_size=proj_size, dtype=torch.float64)
    D = 2 if bidirectional else 1
    x = torch.randn(11, 5, 6, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2 * D, 5, proj_size or 9, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(2 * D, 5, 9, dtype=torch.float64, requires_grad=True)
    compare_modules(ref, ours, x, (h0, c0), [x, h0, c0], torch.float64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("with_state", [False, True])
def test_unbatched_input(backend, batch_first, with_state):
    with on_backend(backend) as device:
        ref, ours = twin_lstms(4, 6, num_layers=2, bidirectional=True, proj_size=3, batch_first=batch_first)
        ref, ours = ref.to(device), ours.to(device)
        x = torch.randn(7, 4, device=device, requires_grad=True)
        if with_state:
            h0 = torch.randn(4, 3, device=device, requires_grad=True)
            c0 = torch.randn(4, 6, device=device, requires_grad=True)
            out, h, c = compare_modules(ref, ours, x, (h0, c0), [x, h0, c0], torch.float32)
        else:
            out, h, c = compare_modules(ref, ours, x, None, [x], torch.float32)
    assert out.shape == (7, 6) and h.shape == (4, 3) and c.shape == (4, 6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unbatched_with_dropout_in_eval(backend):
    # Inter-layer dropout is off in eval: outputs and gradients equal nn's.
    with on_backend(backend) as device:
        ref, ours = twin_lstms(4, 6, num_layers=2, dropout=0.3, proj_size=2)
        ref, ours = ref.to(device).eval(), ours.to(device).eval()
        x = torch.randn(7, 4, device=device, requires_grad=True)
        # cuDNN has no backward in eval mode; nn.LSTM's own CUDA kernels do (and lstm_fused never uses cuDNN).
        with torch.backends.cudnn.flags(enabled=False):
            compare_modules(ref, ours, x, None, [x], torch.float32)


def test_non_contiguous_input_and_states():
    ref, ours = twin_lstms(5, 8, num_layers=2, bidirectional=True)
    base = torch.randn(9, 6, 12)
    x = base[:, ::2, 1:6].detach().requires_grad_()  # strided in batch and features
    assert not x.is_contiguous()
    h0 = torch.randn(8, 3, 4).transpose(0, 2).detach().requires_grad_()  # [4, 3, 8] non-contiguous
    c0 = torch.randn(4, 8, 3).transpose(1, 2).detach().requires_grad_()
    assert not h0.is_contiguous() and not c0.is_contiguous()
    compare_modules(ref, ours, x, (h0, c0), [x, h0, c0], torch.float32)


def test_batch_first_transposed_view_input():
    ref, ours = twin_lstms(5, 8, batch_first=True)
    x = torch.randn(10, 3, 5).transpose(0, 1).detach().requires_grad_()  # [3, 10, 5] view
    compare_modules(ref, ours, x, None, [x], torch.float32)


def test_large_hidden_multi_thread_chunks():
    # B·H well above the pointwise grain, so steps split across threads.
    ref, ours = twin_lstms(32, 300, bidirectional=True)
    x = torch.randn(6, 20, 32, requires_grad=True)
    compare_modules(ref, ours, x, None, [x], torch.float32)


def test_only_some_outputs_used():
    ref, ours = twin_lstms(3, 4, num_layers=2)
    x = torch.randn(5, 2, 3, requires_grad=True)
    for m in (ref, ours):
        m.zero_grad()
    ref(x)[1][0].sum().backward()
    g_ref = [p.grad.clone() for p in ref.parameters()]
    gx_ref = x.grad.clone()
    x.grad = None
    ours(x)[1][0].sum().backward()  # only h_n: grads of output and c_n arrive as None
    for a, b in zip(ours.parameters(), g_ref):
        torch.testing.assert_close(a.grad, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad, gx_ref, rtol=1e-5, atol=1e-6)


def test_input_without_grad_skips_input_gradient():
    ref, ours = twin_lstms(3, 4, num_layers=2, bidirectional=True)
    x = torch.randn(5, 2, 3)
    out_r, _ = ref(x)
    out_o, _ = ours(x)
    out_r.sum().backward()
    out_o.sum().backward()
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)


def test_bfloat16_cpu_runs_in_float32():
    ref, ours = twin_lstms(4, 8, num_layers=2)
    x = torch.randn(6, 3, 4)
    ref64 = ref.double()
    expected, _ = ref64(x.double())
    ours = ours.to(torch.bfloat16)
    out, (h, c) = ours(x.to(torch.bfloat16))
    assert out.dtype == h.dtype == c.dtype == torch.bfloat16
    # Error against float64 comes from the bf16 weights/inputs only (compute is float32).
    assert (out.double() - expected).abs().max().item() < 5e-2
    out.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.bfloat16 for p in ours.parameters())


@pytest.mark.parametrize("packed", [False, True])
def test_inference_without_workspace_equals_training_forward(packed):
    # no_grad runs the chunked path without a saved workspace; the numbers must be the same bits.
    from torch.nn.utils.rnn import pack_padded_sequence

    _, ours = twin_lstms(16, 40, num_layers=2, bidirectional=True, proj_size=12)
    x = torch.randn(70, 9, 16)
    inp = pack_padded_sequence(x, torch.tensor([70, 3, 55, 70, 1, 9, 64, 12, 40]), enforce_sorted=False) if packed else x
    out_t, (h_t, c_t) = ours(inp)
    with torch.no_grad():
        out_i, (h_i, c_i) = ours(inp)
    d_t = out_t.data if packed else out_t
    d_i = out_i.data if packed else out_i
    assert torch.equal(d_t, d_i) and torch.equal(h_t, h_i) and torch.equal(c_t, c_i)


# The GRU's grid: on the CPU kernels and the emulated CUDA path every structure over a third of the shapes, rotated
# per structure; on a GPU the structures with bias up to two layers over a sample plus a batch over 64, against
# cuDNN's GRU within CUDNN_GRU_TOL.
def _gru_cases():
    cases = []
    for backend in ("cpu", "emulated_cuda"):
        for case in range(len(GRU_STRUCTURES)):
            for shape in range(0, len(SHAPES), 3):
                cases.append((backend, case, SHAPES[(shape + case) % len(SHAPES)]))
    for case, (layers, _, _, bias) in enumerate(GRU_STRUCTURES):
        if bias and layers <= 2:
            cases += [("cuda", case, shape) for shape in (SHAPE_SAMPLE[0], SHAPE_SAMPLE[2], *LARGE_BATCH_SHAPES)]
    return cases


GRU_CASES = _gru_cases()


@pytest.mark.parametrize("backend,case,shape", GRU_CASES, ids=[f"{b}-{c}-{s}" for b, c, s in GRU_CASES])
def test_gru_parity_grid(backend, case, shape):
    num_layers, bidirectional, batch_first, bias = GRU_STRUCTURES[case]
    T, B, H = shape
    with on_backend(backend) as device:
        ref, ours = twin_grus(H + 2, H, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first,
                              bias=bias, seed=case)
        ref, ours = ref.to(device), ours.to(device)
        D = 2 if bidirectional else 1
        x = torch.randn((B, T, H + 2) if batch_first else (T, B, H + 2), device=device, requires_grad=True)
        tol = CUDNN_GRU_TOL if backend == "cuda" else None
        if case % 2:
            h0 = torch.randn(num_layers * D, B, H, device=device, requires_grad=True)
            compare_grus(ref, ours, x, h0, [x, h0], torch.float32, tol)
        else:
            compare_grus(ref, ours, x, None, [x], torch.float32, tol)


@pytest.mark.parametrize("batch_first", [False, True])
def test_gru_unbatched_and_non_contiguous(batch_first):
    ref, ours = twin_grus(4, 6, num_layers=2, bidirectional=True, batch_first=batch_first, dtype=torch.float64)
    x = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    compare_grus(ref, ours, x, h0, [x, h0], torch.float64)
    xs = torch.randn(9, 6, 12, dtype=torch.float64)[:, ::2, 1:5].detach().requires_grad_()
    compare_grus(ref, ours, xs.transpose(0, 1) if batch_first else xs, None, [xs], torch.float64)
