"""lstm_fused.LSTM and GRU expose nn.LSTM's and nn.GRU's interface: constructor, parameters, init, attributes,
state_dict, dropout."""
import pickle
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import lstm_fused
from helpers import twin_grus, twin_lstms

CONFIGS = [
    dict(input_size=3, hidden_size=5),
    dict(input_size=3, hidden_size=5, num_layers=3, bias=False, batch_first=True, dropout=0.25,
         bidirectional=True, proj_size=2),
    dict(input_size=7, hidden_size=4, num_layers=2, proj_size=3),
]


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_parameters_names_shapes_order_and_seeded_init(kwargs):
    torch.manual_seed(7)
    ref = nn.LSTM(**kwargs)
    torch.manual_seed(7)
    ours = lstm_fused.LSTM(**kwargs)
    ref_params = list(ref.named_parameters())
    our_params = list(ours.named_parameters())
    assert [n for n, _ in ref_params] == [n for n, _ in our_params]
    for (_, a), (_, b) in zip(ref_params, our_params):
        assert a.shape == b.shape and torch.equal(a, b)  # same distribution, same draw order
    assert ours._flat_weights_names == ref._flat_weights_names
    assert ours._all_weights == ref._all_weights
    assert [[p.shape for p in ps] for ps in ours.all_weights] == [[p.shape for p in ps] for ps in ref.all_weights]
    for attr in ("mode", "input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                 "bidirectional", "proj_size"):
        assert getattr(ours, attr) == getattr(ref, attr), attr
    assert repr(ours).replace("lstm_fused.", "") == repr(ref)
    assert not isinstance(ours, nn.RNNBase)


def test_state_dict_round_trip_both_ways():
    ref, ours = twin_lstms(4, 6, num_layers=2, bidirectional=True, proj_size=3)
    x = torch.randn(5, 2, 4)
    o1, _ = ref(x)
    o2, _ = ours(x)
    torch.testing.assert_close(o2, o1, rtol=1e-5, atol=1e-6)
    back = nn.LSTM(4, 6, num_layers=2, bidirectional=True, proj_size=3)
    back.load_state_dict(ours.state_dict())
    torch.testing.assert_close(back(x)[0], o1)
    wrong = lstm_fused.LSTM(4, 6, num_layers=2, bidirectional=True)  # no projection: keys differ
    with pytest.raises(RuntimeError):
        wrong.load_state_dict(ref.state_dict())


def test_device_dtype_and_to():
    m = lstm_fused.LSTM(3, 4, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in m.parameters())
    m = m.float()
    out, (h, c) = m(torch.randn(2, 1, 3))
    assert out.dtype == torch.float32
    m2 = lstm_fused.LSTM(3, 4, device="meta")
    assert all(p.is_meta for p in m2.parameters())


def test_flatten_parameters_is_harmless_and_pickle():
    ref, ours = twin_lstms(3, 4)
    ours.flatten_parameters()
    x = torch.randn(3, 2, 3)
    clone = pickle.loads(pickle.dumps(ours))
    torch.testing.assert_close(clone(x)[0], ours(x)[0])
    torch.testing.assert_close(ours(x)[0], ref(x)[0], rtol=1e-5, atol=1e-6)


def test_parameter_replaced_by_assignment_is_used():
    ref, ours = twin_lstms(3, 4)
    w = torch.randn(16, 3)
    ref.weight_ih_l0 = nn.Parameter(w.clone())
    ours.weight_ih_l0 = nn.Parameter(w.clone())
    x = torch.randn(3, 2, 3)
    torch.testing.assert_close(ours(x)[0], ref(x)[0], rtol=1e-5, atol=1e-6)


def test_functional_call_with_other_weights():
    ref, ours = twin_lstms(3, 4)
    new = {k: torch.randn_like(v) for k, v in ours.state_dict().items()}
    x = torch.randn(3, 2, 3)
    a = torch.func.functional_call(ours, new, (x,))[0]
    b = torch.func.functional_call(ref, new, (x,))[0]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_dropout_between_layers_matches_nn_lstm_rng():
    # On the CPU nn.LSTM drops out each layer's output (not the last) with at::dropout; lstm_fused does the
    # same calls in the same order, so with one seed the masks, outputs and gradients agree exactly.
    ref, ours = twin_lstms(4, 6, num_layers=3, dropout=0.4, bidirectional=True, dtype=torch.float64)
    ref.train()
    ours.train()
    x = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(11)
    o1 = ref(x)[0]
    torch.manual_seed(11)
    o2 = ours(x)[0]
    torch.testing.assert_close(o2, o1)
    assert not torch.equal(o2, ours.eval()(x)[0])  # dropout was active in training mode
    ours.train()
    grads = []
    for m in (ref, ours):
        torch.manual_seed(11)
        out = m(x)[0]
        grads.append(torch.autograd.grad((out * out.detach().cos()).sum(), [x, *m.parameters()]))
    for a, b in zip(grads[1], grads[0]):
        torch.testing.assert_close(a, b)


def test_dropout_off_in_eval_and_single_layer_warning():
    ref, ours = twin_lstms(4, 6, num_layers=2, dropout=0.9)
    ref.eval()
    ours.eval()
    x = torch.randn(5, 3, 4)
    torch.testing.assert_close(ours(x)[0], ref(x)[0], rtol=1e-5, atol=1e-6)
    with pytest.warns(UserWarning, match="dropout"):
        lstm_fused.LSTM(3, 4, dropout=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lstm_fused.LSTM(3, 4, num_layers=2, dropout=0.5)


def test_output_shapes_and_batch_first():
    m = lstm_fused.LSTM(3, 8, num_layers=2, bidirectional=True, proj_size=5, batch_first=True)
    out, (h, c) = m(torch.randn(4, 9, 3))
    assert out.shape == (4, 9, 10) and h.shape == (4, 4, 5) and c.shape == (4, 4, 8)


def test_missing_extension_fails_loudly_at_import(tmp_path):
    # A copy of the Python package without the compiled _C must not fall back to anything: it raises an
    # ImportError that says how to rebuild.
    import os
    import shutil
    import subprocess
    import sys

    src = os.path.dirname(lstm_fused.__file__)
    dst = tmp_path / "lstm_fused"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    proc = subprocess.run([sys.executable, "-c", "import lstm_fused"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert proc.returncode != 0
    assert "ImportError" in proc.stderr and "--no-build-isolation" in proc.stderr


def test_numpy_integers_accepted_like_nn():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nn.LSTM(3, 4, num_layers=np.int64(2))
    m = lstm_fused.LSTM(3, 4, num_layers=np.int64(2))
    assert m(torch.randn(2, 1, 3))[0].shape == (2, 1, 4)


def test_gru_dropout_matches_nn_gru_rng_and_eval():
    ref, ours = twin_grus(4, 6, num_layers=3, dropout=0.4, bidirectional=True, dtype=torch.float64)
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    torch.manual_seed(11)
    o1 = ref(x)[0]
    torch.manual_seed(11)
    o2 = ours(x)[0]
    torch.testing.assert_close(o2, o1)
    ref.eval(), ours.eval()
    torch.testing.assert_close(ours(x)[0], ref(x)[0])


def test_gru_api_and_state_dicts():
    ref, ours = twin_grus(3, 5, num_layers=2, bidirectional=True, batch_first=True)
    assert repr(ours).replace("lstm_fused.", "") == repr(ref)
    assert ours._all_weights == ref._all_weights and ours.mode == "GRU"
    back = nn.GRU(3, 5, num_layers=2, bidirectional=True, batch_first=True)
    back.load_state_dict(ours.state_dict())
    x = torch.randn(2, 4, 3)
    torch.testing.assert_close(back(x)[0], ours(x)[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="proj_size"):  # as nn.GRU
        lstm_fused.GRU(3, 5, proj_size=2)
    with pytest.raises(TypeError):
        lstm_fused.GRU(3, 5, peephole=True)
    with pytest.raises(RuntimeError):  # LSTM weights do not load into a GRU
        ours.load_state_dict(nn.LSTM(3, 5, num_layers=2, bidirectional=True).state_dict())
