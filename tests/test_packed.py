"""PackedSequence input (LSTM and GRU), handled natively by the kernels through per-step batch sizes; the parity
cases on every backend (helpers.on_backend)."""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pack_sequence, pad_packed_sequence

from helpers import BACKENDS, CUDNN_GRU_TOL, compare_grus, compare_modules, on_backend, twin_grus, twin_lstms


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("proj_size", [0, 3])
@pytest.mark.parametrize("enforce_sorted", [False, True])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_packed_parity(backend, num_layers, bidirectional, proj_size, enforce_sorted, with_state, dtype):
    B, T, I, H = 5, 9, 4, 7
    with on_backend(backend) as device:
        ref, ours = twin_lstms(I, H, num_layers=num_layers, bidirectional=bidirectional, proj_size=proj_size,
                               dtype=dtype)
        ref, ours = ref.to(device), ours.to(device)
        lengths = torch.tensor([9, 6, 6, 2, 1]) if enforce_sorted else torch.tensor([2, 9, 1, 6, 4])
        x = torch.randn(T, B, I, dtype=dtype, device=device, requires_grad=True)
        packed = pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
        D = 2 if bidirectional else 1
        if with_state:
            h0 = torch.randn(num_layers * D, B, proj_size or H, dtype=dtype, device=device, requires_grad=True)
            c0 = torch.randn(num_layers * D, B, H, dtype=dtype, device=device, requires_grad=True)
            out, h, c = compare_modules(ref, ours, packed, (h0, c0), [x, h0, c0], dtype)
        else:
            out, h, c = compare_modules(ref, ours, packed, None, [x], dtype)
    assert torch.equal(out.batch_sizes, packed.batch_sizes)
    if not enforce_sorted:
        assert torch.equal(out.sorted_indices, packed.sorted_indices)
        assert torch.equal(out.unsorted_indices, packed.unsorted_indices)


def test_packed_matches_padded_per_sequence():
    # Each sequence of a packed batch gives exactly what it gives alone.
    _, ours = twin_lstms(3, 6, num_layers=2, bidirectional=True, dtype=torch.float64)
    seqs = [torch.randn(n, 3, dtype=torch.float64) for n in (4, 7, 1, 5)]
    out, (h, c) = ours(pack_sequence(seqs, enforce_sorted=False))
    padded, lengths = pad_packed_sequence(out)
    for b, s in enumerate(seqs):
        o1, (h1, c1) = ours(s.unsqueeze(1))
        torch.testing.assert_close(padded[: lengths[b], b], o1[:, 0])
        torch.testing.assert_close(h[:, b], h1[:, 0])
        torch.testing.assert_close(c[:, b], c1[:, 0])


def test_packed_all_equal_lengths_equals_padded():
    ref, ours = twin_lstms(3, 5, bidirectional=True)
    x = torch.randn(6, 4, 3)
    out_p, (h_p, c_p) = ours(pack_padded_sequence(x, torch.tensor([6, 6, 6, 6])))
    out, (h, c) = ours(x)
    torch.testing.assert_close(out_p.data, out.reshape(-1, out.shape[-1]))
    torch.testing.assert_close(h_p, h)
    torch.testing.assert_close(c_p, c)


def test_packed_batch_first_ignored_like_nn_lstm():
    ref, ours = twin_lstms(3, 5, batch_first=True)
    x = torch.randn(4, 6, 3, requires_grad=True)  # [B, T, I]
    packed = pack_padded_sequence(x, torch.tensor([6, 2, 5, 1]), batch_first=True, enforce_sorted=False)
    compare_modules(ref, ours, packed, None, [x], torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("enforce_sorted", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gru_packed(backend, bidirectional, enforce_sorted, dtype):
    with on_backend(backend) as device:
        ref, ours = twin_grus(4, 7, num_layers=2, bidirectional=bidirectional, dtype=dtype)
        ref, ours = ref.to(device), ours.to(device)
        lengths = torch.tensor([9, 6, 6, 2, 1]) if enforce_sorted else torch.tensor([2, 9, 1, 6, 4])
        x = torch.randn(9, 5, 4, dtype=dtype, device=device, requires_grad=True)
        h0 = torch.randn(2 * (2 if bidirectional else 1), 5, 7, dtype=dtype, device=device, requires_grad=True)
        tol = CUDNN_GRU_TOL if backend == "cuda" and dtype == torch.float32 else None
        compare_grus(ref, ours, pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted), h0, [x, h0], dtype,
                     tol)
