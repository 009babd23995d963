"""torch.library.opcheck on every op: schema, fake kernels, autograd registration, AOT dispatch."""
import pytest
import torch

from lstm_fused import ops
from helpers import requires_testing_ops


def _layer_args(packed, proj, bias, requires_grad, directions=1, dtype=torch.float32, peephole=False, coupled=False):
    g = torch.Generator().manual_seed(0)

    def t(*s):
        return torch.randn(*s, generator=g, dtype=dtype).requires_grad_(requires_grad)

    T, B, I, H = 4, 3, 5, 6
    P = 3 if proj else H
    D = directions
    G = (3 if coupled else 4) * H
    batch_sizes = torch.tensor([3, 2, 2, 1]) if packed else None
    x = t(int(batch_sizes.sum()), I) if packed else t(T, B, I)
    return [x, batch_sizes, t(D, B, P), t(D, B, H), [t(G, I) for _ in range(D)], [t(G, P) for _ in range(D)],
            [t(G) for _ in range(D)] if bias else None, [t(G) for _ in range(D)] if bias else None,
            [t(P, H) for _ in range(D)] if proj else None,
            [t(2 if coupled else 3, H) for _ in range(D)] if peephole else None, coupled]


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("proj", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("directions", [1, 2])
@pytest.mark.parametrize("need_workspace", [True, False])
def test_opcheck_fwd(packed, proj, bias, directions, need_workspace):
    args = _layer_args(packed, proj, bias, requires_grad=need_workspace, directions=directions) + [need_workspace]
    torch.library.opcheck(torch.ops.lstm_fused.lstm_layer_fwd.default, args)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("proj", [False, True])
@pytest.mark.parametrize("directions", [1, 2])
@pytest.mark.parametrize("need_grad_input", [False, True])
def test_opcheck_bwd(packed, proj, directions, need_grad_input):
    x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, w_ph, coupled = _layer_args(packed, proj, True, requires_grad=False,
                                                                            directions=directions)
    out, h_n, c_n, ws = torch.ops.lstm_fused.lstm_layer_fwd.default(x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, w_ph,
                                                                    coupled, True)
    args = [torch.randn_like(out), torch.randn_like(h_n), torch.randn_like(c_n), x, bs, h0, c0, w_ih, w_hh, w_hr,
            w_ph, coupled, out, ws, True, need_grad_input]
    torch.library.opcheck(torch.ops.lstm_fused.lstm_layer_bwd.default, args)


@pytest.mark.parametrize("peephole,coupled", [(True, False), (False, True), (True, True)])
@pytest.mark.parametrize("packed", [False, True])
def test_opcheck_variants(peephole, coupled, packed):
    fwd_args = _layer_args(packed, True, True, requires_grad=True, directions=2, peephole=peephole, coupled=coupled)
    torch.library.opcheck(torch.ops.lstm_fused.lstm_layer_fwd.default, fwd_args + [True])
    plain = [[t.detach() for t in a] if isinstance(a, list) else (a.detach() if isinstance(a, torch.Tensor) else a)
             for a in fwd_args]
    x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, w_ph, cpl = plain
    out, h_n, c_n, ws = torch.ops.lstm_fused.lstm_layer_fwd.default(*plain, True)
    args = [torch.randn_like(out), torch.randn_like(h_n), torch.randn_like(c_n), x, bs, h0, c0, w_ih, w_hh, w_hr,
            w_ph, cpl, out, ws, True, True]
    torch.library.opcheck(torch.ops.lstm_fused.lstm_layer_bwd.default, args)


def test_every_op_has_cpu_kernel_and_fake():
    for name in ("lstm_layer_fwd", "lstm_layer_bwd"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"lstm_fused::{name}", "CPU")
    assert ops.has_kernel("CPU")


@requires_testing_ops
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (1, 64, 256), (3, 5, 7), (8, 513, 33), (9, 31, 32), (17, 1100, 70),
                                   (70, 96, 129), (130, 7, 16)])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_internal_gemm_matches_matmul(m, k, n, trans_a, trans_b, dtype):
    # The GEMM under every product of the CPU kernels (packed AVX-512 for float where available), at odd
    # sizes that cross the 8-row, 32-column and 512-k blocking, with both operand layouts.
    a = torch.randn((k, m) if trans_a else (m, k), dtype=dtype)
    b = torch.randn((n, k) if trans_b else (k, n), dtype=dtype)
    expected = (a.double().t() if trans_a else a.double()) @ (b.double().t() if trans_b else b.double())
    got = torch.ops.lstm_fused_testing.gemm(a, b, trans_a, trans_b)
    tol = 2e-6 * k ** 0.5 if dtype == torch.float32 else 1e-12 * k
    torch.testing.assert_close(got.double(), expected, rtol=tol, atol=tol * max(1.0, expected.abs().max().item()))


@requires_testing_ops
def test_internal_gemm_transposed_a_with_a_long_k():
    # A stored [k, m] with k past the 64k rows the packed GEMM copies into k-major blocks: read in place instead.
    torch.manual_seed(0)
    a = torch.randn(70000, 128)  # 64-row tasks: 70000·64 floats per copy, past the 4M-float cap
    b = torch.randn(70000, 40)
    got = torch.ops.lstm_fused_testing.gemm(a, b, True, False)
    expected = a.double().t() @ b.double()
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def _gru_op_args(packed, bias, directions, requires_grad):
    g = torch.Generator().manual_seed(0)

    def t(*s):
        return torch.randn(*s, generator=g).requires_grad_(requires_grad)

    T, B, I, H, D = 4, 3, 5, 6, directions
    bs = torch.tensor([3, 2, 2, 1]) if packed else None
    x = t(int(bs.sum()), I) if packed else t(T, B, I)
    return [x, bs, t(D, B, H), [t(3 * H, I) for _ in range(D)], [t(3 * H, H) for _ in range(D)],
            [t(3 * H) for _ in range(D)] if bias else None, [t(3 * H) for _ in range(D)] if bias else None]


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("directions", [1, 2])
def test_gru_opcheck(packed, bias, directions):
    args = _gru_op_args(packed, bias, directions, True)
    torch.library.opcheck(torch.ops.lstm_fused.gru_layer_fwd.default, args + [True])
    torch.library.opcheck(torch.ops.lstm_fused.gru_layer_fwd.default, _gru_op_args(packed, bias, directions, False)
                          + [False])
    x, bs, h0, w_ih, w_hh, b_ih, b_hh = _gru_op_args(packed, bias, directions, False)
    out, h_n, ws = torch.ops.lstm_fused.gru_layer_fwd.default(x, bs, h0, w_ih, w_hh, b_ih, b_hh, True)
    torch.library.opcheck(torch.ops.lstm_fused.gru_layer_bwd.default,
                          [torch.randn_like(out), torch.randn_like(h_n), x, bs, h0, w_ih, w_hh, out, ws, bias, True])


@pytest.mark.parametrize("which", ["h", "c", "both"])
@pytest.mark.parametrize("packed", [False, True])
def test_opcheck_zoneout(which, packed):
    # The zoneout masks (trailing arguments with defaults): schema, fake kernels (the workspace grows by c̃), autograd.
    fwd_args = _layer_args(packed, True, True, requires_grad=True, directions=2, peephole=True)
    rows = fwd_args[0].shape[0] if packed else fwd_args[0].shape[0] * fwd_args[0].shape[1]
    g = torch.Generator().manual_seed(1)
    zo_h = (torch.rand(2, rows, 3, generator=g) < 0.4).float() if which != "c" else None
    zo_c = (torch.rand(2, rows, 6, generator=g) < 0.4).float() if which != "h" else None
    torch.library.opcheck(torch.ops.lstm_fused.lstm_layer_fwd.default, fwd_args + [True, zo_h, zo_c])
    plain = [[t.detach() for t in a] if isinstance(a, list) else (a.detach() if isinstance(a, torch.Tensor) else a)
             for a in fwd_args]
    x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, w_ph, cpl = plain
    out, h_n, c_n, ws = torch.ops.lstm_fused.lstm_layer_fwd.default(*plain, True, zo_h, zo_c)
    args = [torch.randn_like(out), torch.randn_like(h_n), torch.randn_like(c_n), x, bs, h0, c0, w_ih, w_hh, w_hr,
            w_ph, cpl, out, ws, True, True, zo_h, zo_c]
    torch.library.opcheck(torch.ops.lstm_fused.lstm_layer_bwd.default, args)
    gru = [x, bs, h0[:, :, :1].expand(2, h0.shape[1], 6).contiguous().requires_grad_(),
           [torch.randn(18, 5, requires_grad=True) for _ in range(2)], [torch.randn(18, 6, requires_grad=True)
                                                                      for _ in range(2)], None, None, True]
    mask = (torch.rand(2, rows, 6, generator=g) < 0.4).float()
    torch.library.opcheck(torch.ops.lstm_fused.gru_layer_fwd.default, gru + [mask])


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("zoneout", [False, True])
def test_opcheck_layer_norm(packed, zoneout):
    # The layer-norm parameters (a trailing list with a default): schema, fake kernels (the workspace's extra
    # columns), autograd (their gradients from the backward's last output).
    fwd_args = _layer_args(packed, True, True, requires_grad=True, directions=2, peephole=True)
    rows = fwd_args[0].shape[0] if packed else fwd_args[0].shape[0] * fwd_args[0].shape[1]
    g = torch.Generator().manual_seed(2)
    H, G = 6, 24
    ln = [torch.randn(w, generator=g).requires_grad_() for _ in range(2) for w in (G, G, H, H)]
    zo_h = (torch.rand(2, rows, 3, generator=g) < 0.4).float() if zoneout else None
    torch.library.opcheck(torch.ops.lstm_fused.lstm_layer_fwd.default, fwd_args + [True, zo_h, None, ln])
    plain = [[t.detach() for t in a] if isinstance(a, list) else (a.detach() if isinstance(a, torch.Tensor) else a)
             for a in fwd_args]
    x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, w_ph, cpl = plain
    ln_d = [t.detach() for t in ln]
    out, h_n, c_n, ws = torch.ops.lstm_fused.lstm_layer_fwd.default(*plain, True, zo_h, None, ln_d)
    torch.library.opcheck(torch.ops.lstm_fused.lstm_layer_bwd.default,
                          [torch.randn_like(out), torch.randn_like(h_n), torch.randn_like(c_n), x, bs, h0, c0, w_ih,
                           w_hh, w_hr, w_ph, cpl, out, ws, True, True, zo_h, None, ln_d])
    gru = [x, bs, h0[:, :, :1].expand(2, h0.shape[1], 6).contiguous().requires_grad_(),
           [torch.randn(18, 5, requires_grad=True) for _ in range(2)],
           [torch.randn(18, 6, requires_grad=True) for _ in range(2)], None, None, True]
    gln = [torch.randn(18, generator=g).requires_grad_() for _ in range(4)]
    mask = (torch.rand(2, rows, 6, generator=g) < 0.4).float() if zoneout else None
    torch.library.opcheck(torch.ops.lstm_fused.gru_layer_fwd.default, gru + [mask, gln])
    gplain = [[t.detach() for t in a] if isinstance(a, list) else (a.detach() if isinstance(a, torch.Tensor) else a)
              for a in gru]
    gout, gh_n, gws = torch.ops.lstm_fused.gru_layer_fwd.default(*gplain[:-1], True, mask, [t.detach() for t in gln])
    torch.library.opcheck(torch.ops.lstm_fused.gru_layer_bwd.default,
                          [torch.randn_like(gout), torch.randn_like(gh_n), gplain[0], gplain[1], gplain[2], gplain[3],
                           gplain[4], gout, gws, False, True, mask, [t.detach() for t in gln]])
