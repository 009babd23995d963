"""The persistent CUDA kernel (one cooperative launch per layer and sequence) on a GPU, forced with
LSTM_FUSED_CUDA_ALGO=persistent and compared with nn.LSTM (cuDNN), with float64 references and with the per-step
kernels. Skipped without a GPU; its logic is covered on the CPU by test_persistent_emulation.py."""
import itertools

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import lstm_fused
from helpers import check_half_type_vs_float64, compare_modules, outputs_and_grads, paths_taken, twin_lstms


def assert_only(taken, *paths):
    """Only these recurrent paths ran (each at least once)."""
    assert all(taken[p] > 0 for p in paths) and all(n == 0 for p, n in taken.items() if p not in paths), taken

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and lstm_fused.has_cuda_kernels()), reason="needs a GPU and a CUDA build"
)


@pytest.fixture(autouse=True)
def _setup(monkeypatch):
    monkeypatch.setenv("LSTM_FUSED_CUDA_ALGO", "persistent")
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 3, 5), (17, 16, 33), (50, 3, 128), (9, 70, 65), (20, 8, 768)],
                         ids=str)
@pytest.mark.parametrize("structure", list(itertools.product([1, 2], [False, True], [False, True])), ids=str)
def test_persistent_parity_with_cudnn(structure, shape):
    num_layers, bidirectional, batch_first = structure
    T, B, H = shape
    ref, ours = twin_lstms(H + 3, H, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first)
    ref, ours = ref.cuda(), ours.cuda()
    D = 2 if bidirectional else 1
    x = torch.randn((B, T, H + 3) if batch_first else (T, B, H + 3), device="cuda", requires_grad=True)
    h0 = torch.randn(num_layers * D, B, H, device="cuda", requires_grad=True)
    c0 = torch.randn(num_layers * D, B, H, device="cuda", requires_grad=True)
    with paths_taken() as taken:
        compare_modules(ref, ours, x, (h0, c0), [x, h0, c0], torch.float32)
    # Forced persistent: a 2-layer unidirectional stack may take the wavefront, never the per-step kernels.
    assert taken["persistent"] + taken["wavefront"] > 0 and taken["step"] == taken["gemm_step"] == 0, taken


@pytest.mark.parametrize("bidirectional", [False, True])
def test_persistent_packed(bidirectional):
    ref, ours = twin_lstms(4, 37, num_layers=2, bidirectional=bidirectional)
    ref, ours = ref.cuda(), ours.cuda()
    x = torch.randn(9, 5, 4, device="cuda", requires_grad=True)
    packed = pack_padded_sequence(x, torch.tensor([2, 9, 1, 6, 4]), enforce_sorted=False)
    with paths_taken() as taken:
        compare_modules(ref, ours, packed, None, [x], torch.float32)
    assert taken["persistent"] + taken["wavefront"] > 0 and taken["step"] == taken["gemm_step"] == 0, taken


@pytest.mark.parametrize("variant", [dict(peephole=True), dict(coupled=True), dict(peephole=True, coupled=True)])
def test_persistent_variants_gradcheck_float64(variant):
    torch.manual_seed(0)
    m = lstm_fused.LSTM(3, 6, num_layers=2, bidirectional=True, dtype=torch.float64, **variant).cuda()
    names = [n for n, _ in m.named_parameters()]
    x = torch.randn(5, 3, 3, dtype=torch.float64, device="cuda", requires_grad=True)
    packed_lengths = torch.tensor([5, 2, 4])

    def f(x, *ps):
        out, (h, c) = torch.func.functional_call(m, dict(zip(names, ps)),
                                                 (pack_padded_sequence(x, packed_lengths, enforce_sorted=False),))
        return out.data, h, c

    assert torch.autograd.gradcheck(f, [x, *[p.detach().clone().requires_grad_() for p in m.parameters()]])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_persistent_half_types_error_vs_float64(dtype):
    # Bidirectional 2 layers: the persistent kernel forward (tensor cores) and backward (tensor cores for bfloat16).
    ref, ours = twin_lstms(64, 256, num_layers=2, bidirectional=True)
    ref64 = lstm_fused.LSTM(64, 256, num_layers=2, bidirectional=True, dtype=torch.float64)
    ref64.load_state_dict(ref.state_dict())
    with paths_taken() as taken:
        check_half_type_vs_float64(ref.cuda(), ours.cuda(), ref64, torch.randn(60, 8, 64, device="cuda"), dtype)
    assert_only(taken, "persistent")


def test_persistent_equals_step_kernels_and_is_deterministic(monkeypatch):
    torch.manual_seed(0)
    m = lstm_fused.LSTM(32, 512, num_layers=2, bidirectional=True).cuda()
    x = torch.randn(40, 16, 32, device="cuda")
    first, second = outputs_and_grads(m, x), outputs_and_grads(m, x)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    monkeypatch.setenv("LSTM_FUSED_CUDA_ALGO", "step")
    for a, b in zip(first, outputs_and_grads(m, x)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * max(1.0, b.abs().max().item()))


def test_persistent_on_a_side_stream_and_inference():
    _, ours = twin_lstms(5, 40, bidirectional=True)
    ours = ours.cuda()
    x = torch.randn(6, 3, 5, device="cuda")
    with torch.no_grad():
        expected = ours(x)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s), torch.no_grad():
        got = ours(x)
    torch.cuda.current_stream().wait_stream(s)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1][0], expected[1][0])
    train = ours(x)  # the training forward keeps the workspace; same numbers
    assert torch.equal(train[0], expected[0]) and torch.equal(train[1][1], expected[1][1])


def test_auto_takes_step_kernels_under_graph_capture(monkeypatch):
    monkeypatch.setenv("LSTM_FUSED_CUDA_ALGO", "auto")
    torch.manual_seed(0)
    m = lstm_fused.LSTM(8, 16).cuda()
    static_x = torch.randn(12, 4, 8, device="cuda")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s), torch.no_grad():
        m(static_x)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with paths_taken() as taken, torch.no_grad(), torch.cuda.graph(g):
        static_out, _ = m(static_x)
    assert_only(taken, "step")
    static_x.copy_(torch.randn(12, 4, 8, device="cuda"))
    g.replay()
    with torch.no_grad():
        out, _ = m(static_x)
    torch.testing.assert_close(static_out, out, rtol=1e-5, atol=1e-6)


def test_persistent_empty_batch():
    _, ours = twin_lstms(4, 6)
    out, (h, c) = ours.cuda()(torch.randn(3, 0, 4, device="cuda"))
    assert out.shape == (3, 0, 6) and h.shape == (1, 0, 6)


@pytest.mark.parametrize("structure", list(itertools.product([1, 2], [False, True])), ids=str)
@pytest.mark.parametrize("shape", [(1, 1, 1), (17, 16, 33), (9, 70, 65), (20, 8, 512)], ids=str)
def test_persistent_gru_parity_with_cudnn(structure, shape):
    num_layers, bidirectional = structure
    T, B, H = shape
    torch.manual_seed(0)
    ref = torch.nn.GRU(H + 3, H, num_layers=num_layers, bidirectional=bidirectional).cuda()
    ours = lstm_fused.GRU(H + 3, H, num_layers=num_layers, bidirectional=bidirectional).cuda()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, H + 3, device="cuda", requires_grad=True)
    h0 = torch.randn(num_layers * (2 if bidirectional else 1), B, H, device="cuda", requires_grad=True)
    res = []
    for m in (ref, ours):
        out, h = m(x, h0)
        res.append([out, h, *torch.autograd.grad(out.square().sum() + h.sum(), [x, h0, *m.parameters()])])
    for a, b in zip(res[1], res[0]):
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_persistent_gru_half_types_error_vs_float64(dtype):
    torch.manual_seed(0)
    ref = torch.nn.GRU(64, 256).cuda()
    ours = lstm_fused.GRU(64, 256).cuda()
    ours.load_state_dict(ref.state_dict())
    ref64 = lstm_fused.GRU(64, 256, dtype=torch.float64)
    ref64.load_state_dict(ref.state_dict())
    with paths_taken() as taken:
        check_half_type_vs_float64(ref, ours, ref64, torch.randn(60, 8, 64, device="cuda"), dtype)
    assert_only(taken, "persistent")


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("shape", [(20, 8, 256), (9, 3, 33)], ids=str)
def test_wavefront_stack_parity_with_cudnn(packed, shape):
    # 3 unidirectional layers without projection: lstm_stack_fwd, one wavefront launch for all layers.
    T, B, H = shape
    ref, ours = twin_lstms(H + 3, H, num_layers=3)
    ref, ours = ref.cuda(), ours.cuda()
    x = torch.randn(T, B, H + 3, device="cuda", requires_grad=True)
    inp = x
    if packed:
        lengths = torch.randint(1, T + 1, (B,))
        lengths[0] = T
        inp = pack_padded_sequence(x, lengths, enforce_sorted=False)
    with paths_taken() as taken:
        compare_modules(ref, ours, inp, None, [x], torch.float32)
        with torch.no_grad():  # inference: the wavefront without a workspace
            torch.testing.assert_close(ours(x)[0], ref(x)[0], rtol=1e-5, atol=1e-6)
    # Where this GPU fits the stack as one wavefront (both shapes do on an H200), forward, backward and the
    # inference forward each take it; otherwise each layer runs persistently.
    prop = torch.cuda.get_device_properties(0)
    sms, smem = prop.multi_processor_count, prop.shared_memory_per_block_optin
    plan = torch.ops.lstm_fused_testing.persistent_plan.default
    fwd_fits = plan(4, H, 2 * H, B, 3, 4, 4, sms, smem)[0]
    bwd_fits = plan(1, H, 8 * H, B, 3, 4, 4, sms, smem)[0]
    assert taken["wavefront"] == 2 * bool(fwd_fits) + bool(bwd_fits), taken
    assert taken["step"] == taken["gemm_step"] == 0, taken


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_wavefront_half_types_error_vs_float64(dtype):
    ref, ours = twin_lstms(64, 256, num_layers=3)
    ref64 = lstm_fused.LSTM(64, 256, num_layers=3, dtype=torch.float64)
    ref64.load_state_dict(ref.state_dict())
    with paths_taken() as taken:
        check_half_type_vs_float64(ref.cuda(), ours.cuda(), ref64, torch.randn(40, 8, 64, device="cuda"), dtype)
    assert taken["wavefront"] > 0 and taken["step"] == taken["gemm_step"] == 0, taken


@pytest.mark.parametrize("proj", [0, 11])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("shape", [(9, 3, 33), (12, 96, 128)], ids=str)
def test_gemm_step_path_parity_with_cudnn(monkeypatch, proj, bidirectional, shape):
    # Per step a cuBLAS GEMM for the recurrent product, then the cell launch (auto's choice above batch 64).
    monkeypatch.setenv("LSTM_FUSED_CUDA_ALGO", "gemm")
    T, B, H = shape
    ref, ours = twin_lstms(H + 3, H, num_layers=2, bidirectional=bidirectional, proj_size=proj)
    ref, ours = ref.cuda(), ours.cuda()
    x = torch.randn(T, B, H + 3, device="cuda", requires_grad=True)
    with paths_taken() as taken:
        compare_modules(ref, ours, x, None, [x], torch.float32)
    assert_only(taken, "gemm_step")


@pytest.mark.parametrize("bidirectional", [False, True])
def test_gemm_step_path_gru_parity_with_cudnn(monkeypatch, bidirectional):
    monkeypatch.setenv("LSTM_FUSED_CUDA_ALGO", "gemm")
    torch.manual_seed(0)
    ref = torch.nn.GRU(35, 64, num_layers=2, bidirectional=bidirectional).cuda()
    ours = lstm_fused.GRU(35, 64, num_layers=2, bidirectional=bidirectional).cuda()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(12, 96, 35, device="cuda", requires_grad=True)
    res = []
    for m in (ref, ours):
        out, h = m(x)
        res.append([out, h, *torch.autograd.grad(out.square().sum() + h.sum(), [x, *m.parameters()])])
    for a, b in zip(res[1], res[0]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * max(1.0, b.abs().max().item()))


@pytest.mark.parametrize("cls", [lstm_fused.LSTM, lstm_fused.GRU])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gemm_step_path_half_types_error_vs_float64(cls, dtype):
    """Auto above batch 64 takes the per-step GEMM path; its recurrent product is a mixed-precision GEMM (half
    operands, float result), so half types stay within the reference's error at large batch too."""
    torch.manual_seed(0)
    ref = getattr(torch.nn, cls.__name__)(64, 256).cuda()
    ours = cls(64, 256).cuda()
    ours.load_state_dict(ref.state_dict())
    ref64 = cls(64, 256, dtype=torch.float64)
    ref64.load_state_dict(ref.state_dict())
    with paths_taken() as taken:
        check_half_type_vs_float64(ref, ours, ref64, torch.randn(30, 96, 64, device="cuda"), dtype)
    assert_only(taken, "gemm_step")
