"""TorchScript: torch.jit.trace (default checks on) and torch.jit.script of every module class give eager's
results and gradients (bitwise: the same kernels run), a module traced under no_grad still trains, scripted
modules share the eager module's parameters, raise eager's (nn's) exceptions, take packed input through
forward_packed, and survive torch.jit.save / torch.jit.load in a fresh process."""
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import lstm_fused

LSTM_CONFIGS = {
    "plain": dict(),
    "stack": dict(num_layers=2),  # one lstm_stack_fwd op
    "bi_proj_batch_first": dict(num_layers=2, bidirectional=True, proj_size=3, batch_first=True),
    "peephole_coupled_stack": dict(num_layers=2, peephole=True, coupled=True),
    "peephole_bi_nobias": dict(bidirectional=True, peephole=True, bias=False),
    "coupled_proj": dict(coupled=True, proj_size=2),
}
GRU_CONFIGS = {
    "plain": dict(),
    "bi_2layer_batch_first": dict(num_layers=2, bidirectional=True, batch_first=True),
    "nobias": dict(bias=False),
}
I, H = 4, 5
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")


def exact(actual, expected, what=""):
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, msg=lambda m: f"{what}: {m}")


def compile_module(mode, module, example):
    if mode == "script":
        return torch.jit.script(module)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # nn.LSTM's shape checks warn the same way
        return torch.jit.trace(module, example)  # check_trace on (the default)


def _flat(result):
    """Tensors of a forward's result, in order: out, h, c / out, h / h, c / h."""
    if isinstance(result, torch.Tensor):
        return [result]
    return [t for r in result for t in _flat(r)]


def run(module, params, x, hx, grad=True):
    """Outputs of module(x[, hx]) and the gradients of a weighted loss w.r.t. x, hx and params."""
    if not grad:
        with torch.no_grad():
            return _flat(module(x) if hx is None else module(x, hx))
    x = x.clone().requires_grad_()
    if hx is not None:
        hx = tuple(t.clone().requires_grad_() for t in hx) if isinstance(hx, tuple) else hx.clone().requires_grad_()
    outs = _flat(module(x) if hx is None else module(x, hx))
    g = torch.Generator().manual_seed(7)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outs)
    leaves = [x] + ([] if hx is None else list(hx) if isinstance(hx, tuple) else [hx]) + list(params)
    grads = torch.autograd.grad(loss, leaves)
    return [o.detach() for o in outs] + list(grads)


def assert_same(got, want):
    assert len(got) == len(want)
    for k, (a, b) in enumerate(zip(got, want)):
        exact(a, b, f"result {k}")


def lstm_inputs(module, T, B, unbatched, with_hx, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = (2 if module.bidirectional else 1) * module.num_layers
    p = module.proj_size or module.hidden_size
    x = torch.randn((T, I) if unbatched else ((B, T, I) if module.batch_first else (T, B, I)), generator=g)
    if not with_hx:
        return x, None
    lead = (d,) if unbatched else (d, B)
    return x, (torch.randn(*lead, p, generator=g), torch.randn(*lead, module.hidden_size, generator=g))


def gru_inputs(module, T, B, unbatched, with_hx, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = (2 if module.bidirectional else 1) * module.num_layers
    x = torch.randn((T, I) if unbatched else ((B, T, I) if module.batch_first else (T, B, I)), generator=g)
    if not with_hx:
        return x, None
    return x, torch.randn(*((d,) if unbatched else (d, B)), H, generator=g)


def cell_inputs(cell, B, unbatched, with_hx, seed=0):
    g = torch.Generator().manual_seed(seed)
    lead = () if unbatched else (B,)
    x = torch.randn(*lead, I, generator=g)
    if not with_hx:
        return x, None
    h = torch.randn(*lead, H, generator=g)
    return x, ((h, torch.randn(*lead, H, generator=g)) if isinstance(cell, lstm_fused.LSTMCell) else h)


def check_matches_eager(mode, module, make_inputs):
    """Compiled module == eager, forward and backward, at the example shapes and at other ones."""
    x, hx = make_inputs(seed=0, T=5, B=3)
    compiled = compile_module(mode, module, (x,) if hx is None else (x, hx))
    params = list(module.parameters())  # the compiled module holds these very tensors
    assert [p.data_ptr() for p in compiled.parameters()] == [p.data_ptr() for p in params]
    for T, B, seed in ((5, 3, 1), (8, 2, 2)):  # another batch and length: the trace must generalise
        x, hx = make_inputs(seed=seed, T=T, B=B)
        assert_same(run(compiled, params, x, hx), run(module, params, x, hx))
        assert_same(run(compiled, params, x, hx, grad=False), run(module, params, x, hx, grad=False))


@pytest.mark.parametrize("mode", ["trace", "script"])
@pytest.mark.parametrize("config", LSTM_CONFIGS, ids=list(LSTM_CONFIGS))
@pytest.mark.parametrize("unbatched", [False, True], ids=["batched", "unbatched"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["no_hx", "hx"])
def test_lstm_matches_eager(mode, config, unbatched, with_hx):
    module = lstm_fused.LSTM(I, H, **LSTM_CONFIGS[config])
    check_matches_eager(mode, module, lambda seed, T, B: lstm_inputs(module, T, B, unbatched, with_hx, seed))


@pytest.mark.parametrize("mode", ["trace", "script"])
@pytest.mark.parametrize("config", GRU_CONFIGS, ids=list(GRU_CONFIGS))
@pytest.mark.parametrize("unbatched", [False, True], ids=["batched", "unbatched"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["no_hx", "hx"])
def test_gru_matches_eager(mode, config, unbatched, with_hx):
    module = lstm_fused.GRU(I, H, **GRU_CONFIGS[config])
    check_matches_eager(mode, module, lambda seed, T, B: gru_inputs(module, T, B, unbatched, with_hx, seed))


@pytest.mark.parametrize("mode", ["trace", "script"])
@pytest.mark.parametrize("cls", [lstm_fused.LSTMCell, lstm_fused.GRUCell], ids=["LSTMCell", "GRUCell"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("unbatched", [False, True], ids=["batched", "unbatched"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["no_hx", "hx"])
def test_cell_matches_eager(mode, cls, bias, unbatched, with_hx):
    cell = cls(I, H, bias=bias)
    check_matches_eager(mode, cell, lambda seed, T, B: cell_inputs(cell, B, unbatched, with_hx, seed))


@pytest.mark.parametrize("mode", ["trace", "script"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=["float64", "bfloat16"])
def test_other_dtypes(mode, dtype):
    module = lstm_fused.LSTM(I, H, num_layers=2, bidirectional=True, dtype=dtype)
    x = torch.randn(5, 3, I, dtype=dtype)
    compiled = compile_module(mode, module, (x,))
    x2 = torch.randn(7, 2, I, dtype=dtype)
    assert_same(run(compiled, module.parameters(), x2, None), run(module, module.parameters(), x2, None))


@pytest.mark.parametrize("mode", ["trace", "script"])
@pytest.mark.parametrize("cls, config", [(lstm_fused.LSTM, "stack"), (lstm_fused.LSTM, "bi_proj_batch_first"),
                                         (lstm_fused.GRU, "bi_2layer_batch_first"), (lstm_fused.LSTMCell, None),
                                         (lstm_fused.GRUCell, None)], ids=["lstm_stack", "lstm_bi_proj", "gru",
                                                                           "lstm_cell", "gru_cell"])
def test_compiled_under_no_grad_trains(mode, cls, config):
    """Traced (or first run) under no_grad, the module must still train: the traced graph keeps the workspace
    whatever the grad mode it was traced in; the scripted one decides at run time."""
    if cls is lstm_fused.LSTM:
        module = cls(I, H, **LSTM_CONFIGS[config])
        make = lambda seed: lstm_inputs(module, 6, 3, False, True, seed)  # noqa: E731
    elif cls is lstm_fused.GRU:
        module = cls(I, H, **GRU_CONFIGS[config])
        make = lambda seed: gru_inputs(module, 6, 3, False, True, seed)  # noqa: E731
    else:
        module = cls(I, H)
        make = lambda seed: cell_inputs(module, 3, False, True, seed)  # noqa: E731
    x, hx = make(0)
    with torch.no_grad():
        compiled = compile_module(mode, module, (x, hx))
        for _ in range(2):  # the scripted module's profiling runs, under no_grad
            compiled(x, hx)
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    for step in range(2):  # gradients equal eager's, and a step on the shared parameters moves both alike
        x, hx = make(step + 1)
        assert_same(run(compiled, module.parameters(), x, hx), run(module, module.parameters(), x, hx))
        opt.zero_grad()
        _flat(compiled(x, hx))[0].square().sum().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
        opt.step()


def test_script_dropout_same_masks():
    """Training-mode dropout between layers draws the same masks as eager (same RNG calls); eval skips it."""
    for module, make in (
        (lstm_fused.LSTM(I, H, num_layers=3, dropout=0.5), None),
        (lstm_fused.GRU(I, H, num_layers=2, dropout=0.5, bidirectional=True), None),
    ):
        scripted = torch.jit.script(module)
        x = torch.randn(6, 3, I)
        for train in (True, False):
            module.train(train)
            scripted.train(train)
            torch.manual_seed(11)
            want = run(module, module.parameters(), x, None)
            torch.manual_seed(11)
            got = run(scripted, module.parameters(), x, None)
            assert_same(got, want)
        module.train()
        torch.manual_seed(1)
        a = module(x)[0]
        torch.manual_seed(2)
        assert not torch.equal(a, module(x)[0])  # dropout really is on (the comparison above can fail)


def test_scripted_shares_parameters():
    module = lstm_fused.LSTM(I, H, num_layers=2, bidirectional=True)
    scripted = torch.jit.script(module)
    nn_keys = list(nn.LSTM(I, H, 2, bidirectional=True).state_dict())
    assert list(scripted.state_dict()) == list(module.state_dict()) == nn_keys
    x = torch.randn(5, 2, I)
    with torch.no_grad():
        module.weight_hh_l1_reverse.add_(0.5)  # an in-place update (an optimizer step) is seen by both
    exact(scripted(x)[0], module(x)[0])
    ref = nn.LSTM(I, H, 2, bidirectional=True)
    scripted.load_state_dict(ref.state_dict())  # and nn.LSTM's weights load into the scripted module
    exact(module.weight_ih_l0, ref.weight_ih_l0)
    torch.testing.assert_close(scripted(x)[0], ref(x)[0], rtol=1e-5, atol=1e-6)


class _Model(nn.Module):
    """All four classes inside one model, as a user would script it."""

    def __init__(self):
        super().__init__()
        self.lstm = lstm_fused.LSTM(I, H, num_layers=2, bidirectional=True, batch_first=True)
        self.stack = lstm_fused.LSTM(2 * H, H, num_layers=2, peephole=True, batch_first=True)
        self.gru = lstm_fused.GRU(H, H, batch_first=True)
        self.lstm_cell = lstm_fused.LSTMCell(H, H)
        self.gru_cell = lstm_fused.GRUCell(H, H)
        self.fc = nn.Linear(H, 2)

    def forward(self, x: torch.Tensor):
        y, (h, c) = self.lstm(x)
        y, _ = self.stack(y, (h[:2], c[:2]))
        y, h_g = self.gru(y)
        h1, c1 = self.lstm_cell(y[:, -1])
        h2 = self.gru_cell(h1, h_g[0])
        return self.fc(y + h2.unsqueeze(1)), c1


def test_script_and_trace_a_model():
    model = _Model()
    x = torch.randn(3, 6, I)
    want = run(model, model.parameters(), x, None)
    traced = compile_module("trace", model, (x,))
    scripted = torch.jit.script(model)
    # torch.jit.script swaps each child for its twin in the eager model too: that must not change anything.
    assert isinstance(model.lstm, lstm_fused.LSTM) and isinstance(model.gru_cell, lstm_fused.GRUCell)
    assert "LSTM(4, 5, num_layers=2, batch_first=True, bidirectional=True)" in repr(model)
    assert_same(run(model, model.parameters(), x, None), want)
    x2 = torch.randn(2, 9, I)
    want2 = run(model, model.parameters(), x2, None)
    assert_same(run(scripted, model.parameters(), x2, None), want2)
    assert_same(run(traced, model.parameters(), x2, None), want2)
    # Scripting twice: the second script shares the first's compiled forward, whose executor has profiled it by now
    # and runs its optimized graph, which may reassociate the nn.Linear on `y + h2` (every lstm_fused op stays
    # bitwise equal, checked above; this model's head alone moves by an ulp): equal up to float32 rounding.
    again = run(torch.jit.script(model), model.parameters(), x2, None)
    assert len(again) == len(want2)
    for k, (a, b) in enumerate(zip(again, want2)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=lambda m: f"scripted twice, result {k}: {m}")


class _PackedModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = lstm_fused.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=3)
        self.gru = lstm_fused.GRU(6, H)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor):
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        # Scripted modules take tensors in forward; a PackedSequence goes through forward_packed.
        if torch.jit.is_scripting():
            y, (h, c) = self.lstm.forward_packed(packed)
            z, h_g = self.gru.forward_packed(y)
        else:
            y, (h, c) = self.lstm(packed)
            z, h_g = self.gru(y)
        return z.data, h, c, h_g


def test_script_packed():
    model = _PackedModel()
    x, lengths = torch.randn(7, 4, I), torch.tensor([3, 7, 1, 5])
    scripted = torch.jit.script(model)

    def go(m):
        xg = x.clone().requires_grad_()
        outs = m(xg, lengths)
        loss = sum((o * (k + 1)).sin().sum() for k, o in enumerate(outs))
        return [o.detach() for o in outs] + list(torch.autograd.grad(loss, [xg] + list(model.parameters())))

    assert_same(go(scripted), go(model))
    # Top level, with initial states (permuted by sorted_indices like nn.LSTM's).
    lstm = lstm_fused.LSTM(I, H, bidirectional=True)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    hx = (torch.randn(2, 4, H), torch.randn(2, 4, H))
    got, want = torch.jit.script(lstm).forward_packed(packed, hx), lstm(packed, hx)
    exact(got[0].data, want[0].data)
    exact(got[1][0], want[1][0])
    exact(got[1][1], want[1][1])
    exact(got[0].unsorted_indices, want[0].unsorted_indices)


def _error_line(fn):
    with pytest.raises(Exception) as info:
        fn()
    return info.value, str(info.value).strip().splitlines()[-1]


ERROR_CASES = {
    "lstm_input_size": (lambda: lstm_fused.LSTM(I, H), lambda: (torch.randn(5, 2, I + 1),)),
    "lstm_4d": (lambda: lstm_fused.LSTM(I, H), lambda: (torch.randn(5, 2, 1, I),)),
    "lstm_hidden_shape": (lambda: lstm_fused.LSTM(I, H, bidirectional=True),
                          lambda: (torch.randn(5, 2, I), (torch.randn(2, 3, H), torch.randn(2, 2, H)))),
    "lstm_cell_shape": (lambda: lstm_fused.LSTM(I, H, proj_size=2),
                        lambda: (torch.randn(5, 2, I), (torch.randn(1, 2, 2), torch.randn(1, 2, 2)))),
    "lstm_batched_2d_hx": (lambda: lstm_fused.LSTM(I, H),
                           lambda: (torch.randn(5, 2, I), (torch.randn(2, H), torch.randn(2, H)))),
    "lstm_dtype": (lambda: lstm_fused.LSTM(I, H), lambda: (torch.randn(5, 2, I, dtype=torch.float64),)),
    "gru_input_size": (lambda: lstm_fused.GRU(I, H), lambda: (torch.randn(5, 2, I + 1),)),
    "gru_unbatched_3d_hx": (lambda: lstm_fused.GRU(I, H), lambda: (torch.randn(5, I), torch.randn(1, 1, H))),
    "gru_hidden_shape": (lambda: lstm_fused.GRU(I, H), lambda: (torch.randn(5, 2, I), torch.randn(2, 2, H))),
    "lstm_cell_3d": (lambda: lstm_fused.LSTMCell(I, H), lambda: (torch.randn(1, 2, I),)),
    "lstm_cell_input_size": (lambda: lstm_fused.LSTMCell(I, H), lambda: (torch.randn(2, I + 1),)),
    "lstm_cell_hx_shape": (lambda: lstm_fused.LSTMCell(I, H),
                           lambda: (torch.randn(2, I), (torch.randn(3, H), torch.randn(2, H)))),
    "gru_cell_hx_3d": (lambda: lstm_fused.GRUCell(I, H), lambda: (torch.randn(2, I), torch.randn(1, 2, H))),
}
_NN = {lstm_fused.LSTM: nn.LSTM, lstm_fused.GRU: nn.GRU}


@pytest.mark.parametrize("case", ERROR_CASES, ids=list(ERROR_CASES))
def test_script_errors_match_eager(case):
    """A scripted module raises torch.jit.Error naming eager's exception type and message, as scripted nn
    modules do (compared with scripted nn.LSTM/nn.GRU where nn checks the case in Python); it keeps working."""
    make_module, make_args = ERROR_CASES[case]
    module = make_module()
    scripted = torch.jit.script(module)
    args = make_args()
    eager_exc, _ = _error_line(lambda: module(*args))
    exc, line = _error_line(lambda: scripted(*args))
    assert isinstance(exc, torch.jit.Error)
    assert line == f"builtins.{type(eager_exc).__name__}: {eager_exc}"
    nn_cls = _NN.get(type(module))
    if nn_cls is not None and not case.endswith("dtype"):  # nn's scripted dtype error comes from its kernel
        ref = nn_cls(I, H, bidirectional=module.bidirectional, **({"proj_size": module.proj_size}
                                                                    if nn_cls is nn.LSTM else {}))
        assert _error_line(lambda: torch.jit.script(ref).forward__0(*args))[1] == line
    good = (torch.randn(5, 2, I),) if nn_cls is not None else (torch.randn(2, I),)
    exact(_flat(scripted(*good))[0], _flat(module(*good))[0])


_LOAD_SCRIPT = textwrap.dedent("""
    import sys
    import torch
    import lstm_fused  # registers the ops (and their autograd) the saved graphs call
    data = torch.load(sys.argv[1])
    for name, (inputs, want) in data.items():
        for mode in ("script", "trace"):
            m = torch.jit.load(sys.argv[2] + "/" + name + "." + mode + ".pt")
            x = inputs[0].clone().requires_grad_()
            outs = m(x, *inputs[1:])
            if isinstance(outs, torch.Tensor):
                outs = [outs]
            outs = [t for o in outs for t in ((o,) if isinstance(o, torch.Tensor) else o)]
            loss = sum((o * (k + 1)).sin().sum() for k, o in enumerate(outs))
            got = [o.detach() for o in outs] + list(torch.autograd.grad(loss, [x] + list(m.parameters())))
            assert len(got) == len(want), (name, mode)
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b, rtol=0, atol=0, msg=lambda s: name + " " + mode + ": " + s)
    print("LOADED_OK")
""")


def test_save_load_fresh_process(tmp_path):
    cases = {
        "lstm_bi_proj": (lstm_fused.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=3, batch_first=True),
                         (torch.randn(3, 5, I), (torch.randn(4, 3, 3), torch.randn(4, 3, H)))),
        "lstm_stack_peephole": (lstm_fused.LSTM(I, H, num_layers=2, peephole=True), (torch.randn(5, 3, I),)),
        "gru": (lstm_fused.GRU(I, H, bidirectional=True), (torch.randn(5, 3, I), torch.randn(2, 3, H))),
        "lstm_cell": (lstm_fused.LSTMCell(I, H), (torch.randn(3, I),)),
        "gru_cell": (lstm_fused.GRUCell(I, H), (torch.randn(I), torch.randn(H))),
    }
    data = {}
    for name, (module, inputs) in cases.items():
        torch.jit.save(torch.jit.script(module), str(tmp_path / f"{name}.script.pt"))
        torch.jit.save(compile_module("trace", module, inputs), str(tmp_path / f"{name}.trace.pt"))
        x = inputs[0].clone().requires_grad_()
        outs = _flat(module(x, *inputs[1:]))
        loss = sum((o * (k + 1)).sin().sum() for k, o in enumerate(outs))
        want = [o.detach() for o in outs] + list(torch.autograd.grad(loss, [x] + list(module.parameters())))
        data[name] = (inputs, want)
    torch.save(data, tmp_path / "data.pt")
    proc = subprocess.run([sys.executable, "-c", _LOAD_SCRIPT, str(tmp_path / "data.pt"), str(tmp_path)],
                          capture_output=True, text=True, timeout=120, cwd=str(tmp_path), env=dict(os.environ))
    assert proc.returncode == 0 and "LOADED_OK" in proc.stdout, proc.stdout + proc.stderr
