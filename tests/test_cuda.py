"""What only a GPU has: half types against float64 references, CUDA graph capture, side streams, bitwise
determinism. Skipped without a GPU or without a CUDA build. The GPU's parity with nn.LSTM / nn.GRU (cuDNN) runs in
the concern files on the "cuda" backend (helpers.on_backend): test_parity, test_packed, test_cells, test_gradients,
test_lstm_variants, test_compile."""
import pytest
import torch

import lstm_fused
from helpers import check_half_type_vs_float64, outputs_and_grads, twin_lstms

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


def test_cuda_deterministic_bitwise():
    torch.manual_seed(0)
    m = lstm_fused.LSTM(32, 64, num_layers=2, bidirectional=True, proj_size=20).cuda()
    x = torch.randn(30, 16, 32, device="cuda")
    for a, b in zip(outputs_and_grads(m, x), outputs_and_grads(m, x)):
        assert torch.equal(a, b)
