"""Zoneout in the fused layer ops, on every backend (the CPU kernels; the CUDA path's step, GEMM and persistent
kernels, emulated on the CPU and on a GPU): lstm_layer and gru_layer with zoneout masks against a step-by-step loop
over lstm_fused.reference's cell and zoneout, float64, outputs, final states and every gradient; masks on h, on c, on
both, 0/1 (training) and an expanded probability (eval); gradcheck; all-zero masks equal no zoneout bit for bit."""
import contextlib
import itertools

import pytest
import torch

from helpers import (grad_leaves, gru_layer_args, layer_args, on_backend, op_args_on, op_results, paths_taken,
                     reference_gru_layer, reference_lstm_layer, requiring_grad)
from lstm_fused import ops

F64 = torch.float64


def _layer(T, B, I, H, proj, packed, directions, peephole, coupled, seed):
    """helpers.layer_args (float64, leaves requiring grad), its row count, P, and a generator for the masks."""
    args = requiring_grad(layer_args(T, B, I, H, proj, packed, F64, seed, directions, peephole, coupled))
    return args, args[0].shape[0] if packed else T * B, proj or H, torch.Generator().manual_seed(seed + 100)


def _masks(kind, which, D, rows, P, H, g):
    def one(width, p):
        if kind == "train":
            return (torch.rand(D, rows, width, generator=g) < p).to(F64)
        return torch.tensor(p, dtype=F64).expand(D, rows, width)  # eval: the probability, no memory per row

    return (one(P, 0.3) if which in ("h", "both") else None, one(H, 0.6) if which in ("c", "both") else None)


CASES = [  # T, B, I, H, proj
    (1, 1, 1, 1, 0),
    (5, 3, 4, 6, 0),
    (6, 4, 3, 7, 3),
    (9, 5, 4, 33, 0),
]

# The CUDA path's recurrent kernels (LSTM_FUSED_CUDA_ALGO) and the path counter each one moves.
ALGOS = {"step": "step", "gemm": "gemm_step", "persistent": "persistent"}


@contextlib.contextmanager
def _running_on(backend, algo, proj, monkeypatch):
    """The block's ops on `backend` (helpers.on_backend) with the CUDA path's kernel `algo` forced (None: the automatic
    choice), checking that kernel ran; yields the device."""
    if algo == "persistent" and proj:
        pytest.skip("the persistent kernel has no projection (the automatic choice never picks it)")
    if algo is not None:
        monkeypatch.setenv("LSTM_FUSED_CUDA_ALGO", algo)
    with on_backend(backend) as device:
        if backend == "cpu" or algo is None:
            yield device
            return
        with paths_taken() as taken:
            yield device
        assert taken[ALGOS[algo]] > 0, taken


def _check_lstm(case, packed, directions, variant, which, kind, backend, algo, monkeypatch):
    T, B, I, H, proj = case
    args, rows, P, g = _layer(T, B, I, H, proj, packed, directions, *variant, seed=sum(case) + directions)
    zo_h, zo_c = _masks(kind, which, directions, rows, P, H, g)
    expected = op_results(reference_lstm_layer(*args, zo_h, zo_c), grad_leaves(args))
    with _running_on(backend, algo, proj, monkeypatch) as device:
        ours = op_args_on(args, device)
        masks = [m.to(device) if m is not None else None for m in (zo_h, zo_c)]
        actual = op_results(ops.lstm_layer(*ours, zoneout_h=masks[0], zoneout_c=masks[1]), grad_leaves(ours))
    for i, (a, b) in enumerate(zip(actual, expected, strict=True)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11, msg=f"result {i}")


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("directions", [1, 2])
@pytest.mark.parametrize("variant", [(False, False), (True, False), (False, True), (True, True)],
                         ids=["lstm", "peephole", "coupled", "peephole+coupled"])
@pytest.mark.parametrize("which", ["h", "c", "both"])
@pytest.mark.parametrize("kind", ["train", "eval"])
@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_lstm_layer_zoneout_matches_reference(case, packed, directions, variant, which, kind, backend, monkeypatch):
    _check_lstm(case, packed, directions, variant, which, kind, backend, None, monkeypatch)


# The CUDA path's kernels one by one, emulated and on a GPU, over structures that between them cover padded and
# packed input, one and two directions, every variant, training and eval masks.
LSTM_STRUCTURES = [(False, 1, (False, False), "train"), (True, 2, (True, False), "eval"),
                   (True, 1, (False, True), "train"), (False, 2, (True, True), "train")]


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("structure", LSTM_STRUCTURES, ids=str)
@pytest.mark.parametrize("which", ["h", "c", "both"])
@pytest.mark.parametrize("algo", list(ALGOS))
@pytest.mark.parametrize("backend", ["emulated_cuda", "cuda"])
def test_lstm_layer_zoneout_cuda_kernels(case, structure, which, algo, backend, monkeypatch):
    packed, directions, variant, kind = structure
    _check_lstm(case, packed, directions, variant, which, kind, backend, algo, monkeypatch)


@pytest.mark.parametrize("packed", [False, True])
def test_lstm_layer_zoneout_gradcheck(packed):
    args, rows, P, g = _layer(4, 3, 3, 4, 2, packed, 2, True, False, seed=3)
    zo_h, zo_c = _masks("train", "both", 2, rows, P, 4, g)
    leaves = grad_leaves(args)

    def f(*flat):
        it = iter(flat)
        rebuilt = [a if not isinstance(a, (torch.Tensor, list)) or (isinstance(a, torch.Tensor) and not a.requires_grad)
                   else ([next(it) for _ in a] if isinstance(a, list) else next(it)) for a in args]
        return ops.lstm_layer(*rebuilt, zoneout_h=zo_h, zoneout_c=zo_c)

    assert torch.autograd.gradcheck(f, leaves)


def test_zero_masks_equal_no_zoneout_bit_for_bit():
    for proj, packed in itertools.product([0, 3], [False, True]):
        args, rows, P, g = _layer(7, 4, 5, 6, proj, packed, 2, False, False, seed=5)
        zeros = (torch.zeros(2, rows, P, dtype=F64), torch.zeros(2, rows, 6, dtype=F64))
        leaves = grad_leaves(args)
        plain = ops.lstm_layer(*args)
        zoned = ops.lstm_layer(*args, zoneout_h=zeros[0], zoneout_c=zeros[1])
        assert all(torch.equal(a, b) for a, b in zip(plain, zoned))
        ga = torch.autograd.grad(sum(t.sum() for t in plain), leaves)
        gb = torch.autograd.grad(sum(t.sum() for t in zoned), leaves)
        assert all(torch.equal(a, b) for a, b in zip(ga, gb))


@pytest.mark.parametrize("bad", ["shape", "dtype", "rows"])
def test_bad_masks_are_clear_errors(bad):
    args, rows, P, g = _layer(3, 2, 3, 4, 0, False, 1, False, False, seed=1)
    mask = {"shape": torch.zeros(1, rows, P + 1, dtype=F64), "dtype": torch.zeros(1, rows, P, dtype=torch.float32),
            "rows": torch.zeros(1, rows + 1, P, dtype=F64)}[bad]
    with pytest.raises(RuntimeError, match="zoneout_h"):
        ops.lstm_layer(*args, zoneout_h=mask)


def _gru_args(T, B, I, H, packed, directions, bias, seed):
    args = requiring_grad(gru_layer_args(T, B, I, H, packed, F64, seed, directions, bias))
    return args, args[0].shape[0] if packed else T * B, torch.Generator().manual_seed(seed + 100)


def _check_gru(case, packed, directions, bias, kind, backend, algo, monkeypatch):
    T, B, I, H, _ = case
    args, rows, g = _gru_args(T, B, I, H, packed, directions, bias, seed=sum(case) + directions)
    zo_h, _ = _masks(kind, "h", directions, rows, H, H, g)
    expected = op_results(reference_gru_layer(*args, zo_h), grad_leaves(args))
    with _running_on(backend, algo, 0, monkeypatch) as device:
        ours = op_args_on(args, device)
        actual = op_results(ops.gru_layer(*ours, zoneout_h=zo_h.to(device)), grad_leaves(ours))
    for i, (a, b) in enumerate(zip(actual, expected, strict=True)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11, msg=f"result {i}")


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("directions", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kind", ["train", "eval"])
@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_gru_layer_zoneout_matches_reference(case, packed, directions, bias, kind, backend, monkeypatch):
    _check_gru(case, packed, directions, bias, kind, backend, None, monkeypatch)


GRU_STRUCTURES = [(False, 1, True, "train"), (True, 2, True, "eval"), (True, 1, False, "train"),
                  (False, 2, False, "train")]


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("structure", GRU_STRUCTURES, ids=str)
@pytest.mark.parametrize("algo", list(ALGOS))
@pytest.mark.parametrize("backend", ["emulated_cuda", "cuda"])
def test_gru_layer_zoneout_cuda_kernels(case, structure, algo, backend, monkeypatch):
    packed, directions, bias, kind = structure
    _check_gru(case, packed, directions, bias, kind, backend, algo, monkeypatch)


def test_gru_zero_mask_equals_no_zoneout_bit_for_bit():
    args, rows, g = _gru_args(7, 4, 5, 6, True, 2, True, seed=5)
    leaves = grad_leaves(args)
    plain = ops.gru_layer(*args)
    zoned = ops.gru_layer(*args, zoneout_h=torch.zeros(2, rows, 6, dtype=F64))
    assert all(torch.equal(a, b) for a, b in zip(plain, zoned))
    ga = torch.autograd.grad(sum(t.sum() for t in plain), leaves)
    gb = torch.autograd.grad(sum(t.sum() for t in zoned), leaves)
    assert all(torch.equal(a, b) for a, b in zip(ga, gb))
