"""The test helpers themselves (helpers.py) and the test-only instrumentation they rely on."""
import pytest
import torch

from helpers import loss_of, on_backend, requires_testing_ops


def test_test_loss_weights_follow_the_outputs_device():
    # The GPU parity tests weight outputs with loss_of: its weights must be made on the outputs' device (a CPU
    # weight times a CUDA output raises), the same numbers whatever the device. meta stands in for CUDA here.
    out, h, c = (torch.randn(4, 2, 3), torch.randn(1, 2, 3), torch.randn(1, 2, 3))
    assert loss_of(*(t.to("meta") for t in (out, h, c))).device.type == "meta"
    g = torch.Generator().manual_seed(1)
    w = [torch.randn(t.shape, generator=g) for t in (out, h, c)]
    torch.testing.assert_close(loss_of(out, h, c), sum((t * wt).sum() for t, wt in zip((out, h, c), w)))


@requires_testing_ops
def test_path_counts_op_reports_four_paths():
    counts = torch.ops.lstm_fused_testing.path_counts()
    assert len(counts) == 4 and all(isinstance(n, int) and n >= 0 for n in counts)


@requires_testing_ops
def test_emulated_backend_fails_a_block_where_the_cuda_path_did_not_run():
    # A routing that silently fell back to the CPU kernels would pass every parity test: on_backend catches it.
    with pytest.raises(AssertionError, match="did not run"):
        with on_backend("emulated_cuda"):
            pass
