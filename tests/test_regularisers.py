"""The regularising options on LSTM, GRU and the cells — weight_drop (DropConnect on the recurrent matrices,
AWD-LSTM's WeightDrop), zoneout (h) and zoneout_cell (c), alone and together: against lstm_fused.reference on every
backend, in training and eval (outputs, final states, every gradient), the same seed giving the same masks; 0 leaves
the module as it is bit for bit and draws nothing; weight_drop in eval is the module without it; the parameters are
never written; the options' checks, repr and state dicts; torch.compile, TorchScript, torch.export and ONNX."""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import lstm_fused
from helpers import BACKENDS, assert_scripted_equals_eager, cell_and_reference_results, on_backend
from lstm_fused import reference

F64 = torch.float64
# (num_layers, bidirectional, proj_size, input): one and several layers (a unidirectional LSTM stack of two or more
# runs as one stack op unless zoneout is on), both directions, a projection, padded / packed / batch_first /
# unbatched input.
STRUCTURES = [(1, False, 0, "padded"), (2, True, 0, "packed"), (3, False, 0, "batch_first"), (2, False, 3, "packed"),
              (2, True, 2, "unbatched")]
# Each option alone and all together (GRU and GRUCell have no cell state: no zoneout_cell).
OPTIONS = {"weight_drop": {"weight_drop": 0.4}, "zoneout": {"zoneout": 0.3}, "zoneout_cell": {"zoneout_cell": 0.4},
           "all": {"weight_drop": 0.3, "zoneout": 0.3, "zoneout_cell": 0.5}}
NAMES = ("weight_drop", "zoneout", "zoneout_cell")


def _options(option, cls):
    """The keyword arguments of `option` for class name `cls` (skips what the class does not have)."""
    kw = dict(OPTIONS[option])
    if not cls.startswith("LSTM"):
        if option == "zoneout_cell":
            pytest.skip("no cell state")
        kw.pop("zoneout_cell", None)
    return kw


def _run_and_grads(run, inp, leaves, params):
    out, state = run(inp)
    data = out.data if hasattr(out, "batch_sizes") else out
    states = list(state) if isinstance(state, tuple) else [state]
    g = torch.Generator().manual_seed(2)
    loss = sum((t * torch.randn(t.shape, generator=g, dtype=t.dtype).to(t.device)).sum() for t in [data, *states])
    return [data, *states, *torch.autograd.grad(loss, leaves + params, retain_graph=True)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", ["LSTM", "GRU"])
@pytest.mark.parametrize("structure", STRUCTURES, ids=str)
@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_option_matches_reference(backend, cls, structure, option, training):
    num_layers, bidirectional, proj, kind = structure
    if cls == "GRU" and proj:
        pytest.skip("GRU has no projection")
    extra = dict(proj_size=proj) if proj else {}
    with on_backend(backend) as device:
        torch.manual_seed(0)
        m = getattr(lstm_fused, cls)(4, 7, num_layers=num_layers, bidirectional=bidirectional, dtype=F64,
                                     batch_first=kind == "batch_first", **_options(option, cls), **extra).to(device)
        m.train(training)
        shape = {"batch_first": (5, 9, 4), "unbatched": (9, 4)}.get(kind, (9, 5, 4))
        x = torch.randn(shape, dtype=F64).to(device).requires_grad_()
        lengths = torch.tensor([9, 3, 6, 1, 9])
        inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if kind == "packed" else x
        run_ref = reference.run_lstm if cls == "LSTM" else reference.run_gru
        params = list(m.parameters())
        torch.manual_seed(5)
        ours = _run_and_grads(m, inp, [x], params)
        torch.manual_seed(5)
        ref = _run_and_grads(lambda i: run_ref(m, i), inp, [x], params)
        torch.manual_seed(6)
        other = m(inp)[0]
    names = ["output", *(["h_n", "c_n"] if cls == "LSTM" else ["h_n"]), "grad x"] + [
        f"grad {n}" for n, _ in m.named_parameters()]
    for name, a, b in zip(names, ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=name)
    # A different seed draws different masks in training (so the comparison above could fail), none in eval.
    other = other.data if kind == "packed" else other
    assert torch.equal(other, ours[0]) != training


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", ["LSTMCell", "GRUCell"])
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_cell_option_matches_reference(backend, cls, batched, option, training):
    with on_backend(backend) as device:
        torch.manual_seed(0)
        m = getattr(lstm_fused, cls)(4, 6, dtype=F64, **_options(option, cls)).to(device)
        m.train(training)
        x = torch.randn((3, 4) if batched else (4,), dtype=F64).to(device).requires_grad_()
        h = torch.randn((3, 6) if batched else (6,), dtype=F64).to(device).requires_grad_()
        hx, leaves = ((h, h.detach().clone().requires_grad_()), [x, h]) if cls == "LSTMCell" else (h, [x, h])
        if cls == "LSTMCell":
            leaves.append(hx[1])
        results = cell_and_reference_results(m, x, hx, leaves)
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


MAKERS = {"lstm": lambda **kw: lstm_fused.LSTM(4, 6, num_layers=2, bidirectional=True, **kw),
          "lstm-stack": lambda **kw: lstm_fused.LSTM(4, 6, num_layers=3, **kw),  # the stack op (without zoneout)
          "lstm-proj": lambda **kw: lstm_fused.LSTM(4, 6, proj_size=3, **kw),
          "gru": lambda **kw: lstm_fused.GRU(4, 6, num_layers=2, **kw),
          "lstm-cell": lambda **kw: lstm_fused.LSTMCell(4, 6, **kw),
          "gru-cell": lambda **kw: lstm_fused.GRUCell(4, 6, **kw)}


def _call_args(m):
    """Arguments for a call of `m`: a cell sees weight_hh and zoneout only through its state, so it gets one."""
    if isinstance(m, (lstm_fused.LSTMCell, lstm_fused.GRUCell)):
        h = torch.randn(3, 6)
        return torch.randn(3, 4), ((h, h.flip(0)) if isinstance(m, lstm_fused.LSTMCell) else h)
    return (torch.randn(5, 3, 4),)


def _flat(result):
    return [t for r in (result if isinstance(result, tuple) else (result,)) for t in (r if isinstance(r, tuple) else (r,))]


@pytest.mark.parametrize("make", list(MAKERS))
@pytest.mark.parametrize("name", NAMES)
def test_zero_leaves_the_module_unchanged_bit_for_bit(make, name):
    if name == "zoneout_cell" and "gru" in make:
        pytest.skip("no cell state")
    make = MAKERS[make]
    args = _call_args(make())
    torch.manual_seed(0)
    plain = make()
    torch.manual_seed(0)
    zero = make(**{name: 0.0})
    torch.manual_seed(0)
    on = make(**{name: 0.3})
    assert name not in repr(zero) and f"{name}=0.3" in repr(on)
    assert plain.state_dict().keys() == on.state_dict().keys()
    for a, b in zip(plain.state_dict().values(), on.state_dict().values()):
        assert torch.equal(a, b)  # the option adds no parameters and does not change their initialisation
    torch.manual_seed(1)
    want = _flat(plain(*args))
    after_plain = torch.rand(4)
    torch.manual_seed(1)
    got = _flat(zero(*args))
    assert torch.equal(torch.rand(4), after_plain)  # p = 0 draws nothing
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    before = [p.detach().clone() for p in on.parameters()]
    assert not all(torch.equal(a, b) for a, b in zip(_flat(on(*args)), want))
    assert all(torch.equal(a, b) for a, b in zip(on.parameters(), before))  # the parameters are not written
    # Eval draws nothing and is deterministic; weight_drop's eval is the module without the option.
    on.eval()
    torch.manual_seed(1)
    first = _flat(on(*args))
    assert torch.equal(torch.rand(4), after_plain)
    assert all(torch.equal(a, b) for a, b in zip(_flat(on(*args)), first))
    assert all(torch.equal(a, b) for a, b in zip(first, want)) == (name == "weight_drop")


def test_dropped_entries_get_no_gradient_and_kept_ones_are_scaled():
    # The call's mask is F.dropout's over weight_hh: nn.LSTM with weight_hh times that mask gives the same numbers,
    # and no gradient reaches a dropped weight.
    torch.manual_seed(0)
    m = lstm_fused.LSTM(3, 5, weight_drop=0.5, dtype=F64)
    x = torch.randn(4, 2, 3, dtype=F64)
    torch.manual_seed(3)
    out = m(x)[0]
    out.sum().backward()
    torch.manual_seed(3)
    mask = torch.nn.functional.dropout(torch.ones_like(m.weight_hh_l0), 0.5, training=True)
    assert (mask == 0).any() and (mask == 2).any()
    assert not m.weight_hh_l0.grad[mask == 0].any()
    assert m.weight_hh_l0.grad[mask == 2].abs().sum() > 0
    plain = nn.LSTM(3, 5, dtype=F64)
    plain.load_state_dict(m.state_dict())
    with torch.no_grad():
        plain.weight_hh_l0.mul_(mask)
    torch.testing.assert_close(out, plain(x)[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, "0.1", True, None])
@pytest.mark.parametrize("cls", [lstm_fused.LSTM, lstm_fused.GRU, lstm_fused.LSTMCell, lstm_fused.GRUCell])
@pytest.mark.parametrize("name", NAMES)
def test_bad_probability_is_a_value_error(cls, p, name):
    if name == "zoneout_cell" and cls in (lstm_fused.GRU, lstm_fused.GRUCell):
        with pytest.raises(TypeError, match="zoneout_cell"):  # no cell state: not an argument at all
            cls(3, 4, zoneout_cell=0.1)
        return
    with pytest.raises(ValueError, match=f"{name} should be a number in range"):
        cls(3, 4, **{name: p})


@pytest.mark.parametrize("cls", [lstm_fused.LSTM, lstm_fused.GRU, lstm_fused.LSTMCell, lstm_fused.GRUCell])
def test_options_are_keyword_only(cls):
    n_positional = {lstm_fused.LSTM: 10, lstm_fused.GRU: 9, lstm_fused.LSTMCell: 5, lstm_fused.GRUCell: 5}[cls]
    with pytest.raises(TypeError):
        cls(3, 4, *([None] * (n_positional - 2)), 0.5)


@pytest.mark.parametrize("cls", ["LSTM", "GRU"])
@pytest.mark.parametrize("option", ["weight_drop", "zoneout", "all"])
def test_compile_fullgraph_draws_eagers_masks(cls, option):
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = getattr(lstm_fused, cls)(4, 6, num_layers=2, bidirectional=True, **_options(option, cls))
    x = torch.randn(5, 3, 4)
    compiled = torch.compile(m, fullgraph=True)
    results = []
    for run in (m, compiled):
        torch.manual_seed(7)
        out = run(x)[0]
        (g,) = torch.autograd.grad(out.square().sum(), [m.weight_hh_l1_reverse])
        results.append((out, g))
    # Inductor draws its own random numbers unless told to fall back to eager's; with the fallback the masks match.
    with torch._inductor.config.patch(fallback_random=True):
        torch._dynamo.reset()
        compiled = torch.compile(m, fullgraph=True)
        torch.manual_seed(7)
        out = compiled(x)[0]
        (g,) = torch.autograd.grad(out.square().sum(), [m.weight_hh_l1_reverse])
    torch.testing.assert_close(out, results[0][0])
    torch.testing.assert_close(g, results[0][1])
    assert results[1][0].shape == results[0][0].shape and torch.isfinite(results[1][1]).all()
    # Eval has no randomness: compiled equals eager.
    m.eval()
    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(m, fullgraph=True)(x)[0], m(x)[0])
    torch._dynamo.reset()


MODULES_WITH_ALL = {"lstm": lambda: lstm_fused.LSTM(4, 6, num_layers=2, bidirectional=True, weight_drop=0.3,
                                                    zoneout=0.2, zoneout_cell=0.4),
                    "lstm-stack": lambda: lstm_fused.LSTM(4, 6, num_layers=3, weight_drop=0.3),
                    "lstm-proj": lambda: lstm_fused.LSTM(4, 6, proj_size=3, zoneout=0.3, zoneout_cell=0.2),
                    "gru": lambda: lstm_fused.GRU(4, 6, num_layers=2, weight_drop=0.3, zoneout=0.4),
                    "lstm-cell": lambda: lstm_fused.LSTMCell(4, 6, weight_drop=0.3, zoneout=0.2, zoneout_cell=0.4),
                    "gru-cell": lambda: lstm_fused.GRUCell(4, 6, weight_drop=0.3, zoneout=0.4)}


@pytest.mark.parametrize("make", list(MODULES_WITH_ALL))
def test_torchscript_draws_eagers_masks(make):
    torch.manual_seed(0)
    m = MODULES_WITH_ALL[make]()
    assert_scripted_equals_eager(m, _call_args(m))


@pytest.mark.parametrize("make", ["lstm", "lstm-proj", "gru", "lstm-cell"])
def test_export_in_eval(make):
    torch.manual_seed(0)
    m = MODULES_WITH_ALL[make]().eval()
    args = _call_args(m)
    ep = torch.export.export(m, args)
    for a, b in zip(torch.utils._pytree.tree_leaves(ep.module()(*args)), torch.utils._pytree.tree_leaves(m(*args))):
        assert torch.equal(a, b)


@pytest.mark.parametrize("make", [lambda: lstm_fused.LSTM(4, 6, num_layers=2), lambda: lstm_fused.GRU(4, 6),
                                  lambda: lstm_fused.LSTMCell(4, 6), lambda: lstm_fused.GRUCell(4, 6)],
                         ids=["lstm", "gru", "lstm-cell", "gru-cell"])
def test_module_pickled_before_the_options_still_runs_and_scripts(make):
    # An instance from before the options existed has no such attributes: forward, repr and TorchScript still work.
    m = make()
    for name in (*NAMES, "layer_norm"):
        if name in vars(m):
            delattr(m, name)
        assert name not in vars(m)
    x = torch.randn(3, 4) if isinstance(m, (lstm_fused.LSTMCell, lstm_fused.GRUCell)) else torch.randn(5, 3, 4)
    want = m(x)
    assert not any(name in repr(m) for name in (*NAMES, "layer_norm"))
    got = torch.jit.script(m)(x)
    for a, b in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want)):
        assert torch.equal(a, b)
