"""The CUDA kernels against nn.LSTM on CUDA (cuDNN) and against float64 references. Skipped without a GPU or
without a CUDA build; the CUDA path's logic is also covered on the CPU by test_cuda_emulation.py."""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import lstm_fused
from helpers import (GRU_STRUCTURES, LARGE_BATCH_SHAPES, SHAPE_SAMPLE, check_half_type_vs_float64,
                     compare_modules, outputs_and_grads, twin_lstms)

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and lstm_fused.has_cuda_kernels()), reason="needs a GPU and a CUDA build"
)


@pytest.fixture(autouse=True)
def _true_fp32():
    # nn.LSTM on cuDNN may use TF32 for float32 unless told not to; compare true float32 with true float32.
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _cuda_twins(*args, dtype=torch.float32, **kwargs):
    ref, ours = twin_lstms(*args, dtype=dtype, **kwargs)
    return ref.cuda(), ours.cuda()


# The LSTM parity grid on the GPU is test_parity.py's test_parity_grid[cuda-...] (backend "cuda").


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("proj", [0, 3])
@pytest.mark.parametrize("enforce_sorted", [False, True])
def test_cuda_packed(bidirectional, proj, enforce_sorted):
    ref, ours = _cuda_twins(4, 7, num_layers=2, bidirectional=bidirectional, proj_size=proj)
    lengths = torch.tensor([9, 6, 6, 2, 1]) if enforce_sorted else torch.tensor([2, 9, 1, 6, 4])
    x = torch.randn(9, 5, 4, device="cuda", requires_grad=True)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
    compare_modules(ref, ours, packed, None, [x], torch.float32)


def test_cuda_unbatched_and_dropout_eval():
    ref, ours = _cuda_twins(4, 6, num_layers=2, dropout=0.3, proj_size=2)
    ref.eval(), ours.eval()
    x = torch.randn(7, 4, device="cuda", requires_grad=True)
    # cuDNN has no backward in eval mode; nn.LSTM's own CUDA kernels do (and lstm_fused never uses cuDNN).
    with torch.backends.cudnn.flags(enabled=False):
        compare_modules(ref, ours, x, None, [x], torch.float32)


@pytest.mark.parametrize("packed", [False, True])
def test_cuda_gradcheck_float64(packed):
    from torch.func import functional_call

    torch.manual_seed(0)
    m = lstm_fused.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2, dtype=torch.float64).cuda()
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]
    x = torch.randn(5, 3, 3, dtype=torch.float64, device="cuda", requires_grad=True)
    lengths = torch.tensor([5, 2, 4])

    def f(x, *ps):
        inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x
        out, (h, c) = functional_call(m, dict(zip(names, ps)), (inp,))
        return (out.data if packed else out), h, c

    assert torch.autograd.gradcheck(f, [x, *params])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("proj", [0, 16])
def test_cuda_half_types_error_vs_float64(dtype, proj):
    # Our error against a float64 reference may be at most a few times nn.LSTM's own error at that dtype.
    ref, ours = _cuda_twins(64, 96, num_layers=2, proj_size=proj)
    ref64 = lstm_fused.LSTM(64, 96, num_layers=2, proj_size=proj, dtype=torch.float64)
    ref64.load_state_dict(ref.state_dict())
    check_half_type_vs_float64(ref, ours, ref64, torch.randn(40, 8, 64, device="cuda"), dtype)


def test_cuda_graph_capture_replay_equals_eager():
    torch.manual_seed(0)
    m = lstm_fused.LSTM(8, 16, num_layers=2, bidirectional=True, proj_size=5).cuda()
    static_x = torch.randn(12, 4, 8, device="cuda")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s), torch.no_grad():
        for _ in range(2):
            m(static_x)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(g):
        static_out, (static_h, static_c) = m(static_x)
    new_x = torch.randn(12, 4, 8, device="cuda")
    static_x.copy_(new_x)
    g.replay()
    with torch.no_grad():
        out, (h, c) = m(new_x)
    assert torch.equal(static_out, out) and torch.equal(static_h, h) and torch.equal(static_c, c)


def test_cuda_non_default_stream():
    ref, ours = _cuda_twins(5, 9, bidirectional=True)
    x = torch.randn(6, 3, 5, device="cuda")
    expected = ours(x)[0]
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        got = ours(x)[0]
    torch.cuda.current_stream().wait_stream(s)
    assert torch.equal(got, expected)


def test_cuda_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = lstm_fused.LSTM(5, 8, num_layers=2, bidirectional=True, proj_size=3, batch_first=True).cuda()
    x = torch.randn(4, 7, 5, device="cuda")
    eager = m(x)
    compiled = torch.compile(m, fullgraph=True)(x)
    torch.testing.assert_close(compiled[0], eager[0])
    torch.testing.assert_close(compiled[1][0], eager[1][0])


def test_cuda_deterministic_bitwise():
    torch.manual_seed(0)
    m = lstm_fused.LSTM(32, 64, num_layers=2, bidirectional=True, proj_size=20).cuda()
    x = torch.randn(30, 16, 32, device="cuda")
    for a, b in zip(outputs_and_grads(m, x), outputs_and_grads(m, x)):
        assert torch.equal(a, b)


def test_cuda_mixed_devices_error():
    m = lstm_fused.LSTM(3, 4).cuda()
    with pytest.raises(RuntimeError):
        m(torch.randn(5, 2, 3, device="cuda"), (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)))


@pytest.mark.parametrize("variant", [dict(peephole=True), dict(coupled=True), dict(peephole=True, coupled=True)])
@pytest.mark.parametrize("packed", [False, True])
def test_cuda_lstm_variants_match_reference(variant, packed):
    from lstm_fused import reference

    torch.manual_seed(0)
    m = lstm_fused.LSTM(6, 33, num_layers=2, bidirectional=True, proj_size=5, dtype=torch.float64, **variant)
    x = torch.randn(11, 9, 6, dtype=torch.float64)
    lengths = torch.tensor([11, 3, 7, 1, 11, 5, 9, 2, 6])
    inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x
    ref_out, (ref_h, ref_c) = reference.run_lstm(m, inp)
    m_cuda = m.cuda()
    inp_cuda = pack_padded_sequence(x.cuda(), lengths, enforce_sorted=False) if packed else x.cuda()
    out, (h, c) = m_cuda(inp_cuda)
    d_out, d_ref = (out.data, ref_out.data) if packed else (out, ref_out)
    for a, b in ((d_out, d_ref), (h, ref_h), (c, ref_c)):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-9, atol=1e-10)
    assert torch.autograd.gradcheck(
        lambda *ps: torch.func.functional_call(m_cuda, dict(zip([n for n, _ in m_cuda.named_parameters()], ps)),
                                               (inp_cuda,))[1][0],
        [p.detach().clone().requires_grad_() for p in m_cuda.parameters()], fast_mode=True)  # ~9k parameters


def _cuda_twin_grus(*args, **kwargs):
    torch.manual_seed(0)
    ref = torch.nn.GRU(*args, **kwargs)
    ours = lstm_fused.GRU(*args, **kwargs)
    ours.load_state_dict(ref.state_dict())
    return ref.cuda(), ours.cuda()


GRU_STRUCTURES_1_2 = [(layers, bidir, batch_first) for layers, bidir, batch_first, bias in GRU_STRUCTURES
                      if bias and layers <= 2]  # (num_layers, bidirectional, batch_first), with bias, up to 2 layers
GRU_SHAPES = [SHAPE_SAMPLE[0], SHAPE_SAMPLE[2], *LARGE_BATCH_SHAPES]


@pytest.mark.parametrize("structure", GRU_STRUCTURES_1_2, ids=str)
@pytest.mark.parametrize("shape", GRU_SHAPES, ids=str)
def test_cuda_gru_parity(structure, shape):
    num_layers, bidirectional, batch_first = structure
    T, B, H = shape
    ref, ours = _cuda_twin_grus(H + 3, H, num_layers=num_layers, bidirectional=bidirectional,
                                batch_first=batch_first)
    x = torch.randn((B, T, H + 3) if batch_first else (T, B, H + 3), device="cuda", requires_grad=True)
    h0 = torch.randn(num_layers * (2 if bidirectional else 1), B, H, device="cuda", requires_grad=True)
    res = []
    for m in (ref, ours):
        out, h = m(x, h0)
        res.append([out, h, *torch.autograd.grad(out.square().sum() + h.sum(), [x, h0, *m.parameters()])])
    for a, b in zip(res[1], res[0]):
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * scale)


def test_cuda_gru_packed_and_cells():
    ref, ours = _cuda_twin_grus(4, 7, num_layers=2, bidirectional=True)
    x = torch.randn(9, 5, 4, device="cuda")
    packed = pack_padded_sequence(x, torch.tensor([2, 9, 1, 6, 4]), enforce_sorted=False)
    (o1, h1), (o2, h2) = ref(packed), ours(packed)
    torch.testing.assert_close(o2.data, o1.data, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h2, h1, rtol=1e-5, atol=1e-6)
    torch.manual_seed(0)
    c_ref = torch.nn.GRUCell(4, 7).cuda()
    c_ours = lstm_fused.GRUCell(4, 7).cuda()
    c_ours.load_state_dict(c_ref.state_dict())
    torch.testing.assert_close(c_ours(x[0]), c_ref(x[0]), rtol=1e-5, atol=1e-6)
