"""lstm_fused.convert: nested models and bare modules (LSTM, LSTMCell, GRU, GRUCell) keep outputs, training and
parameter objects; edge cases: exact classes only (subclasses left with a warning), shared modules stay shared,
hooks, buffers and the user's attributes carried over."""
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import lstm_fused


class MyLSTM(nn.LSTM):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.scale = 2.0

    def forward(self, x, hx=None):
        out, state = super().forward(x, hx)
        return out * self.scale, state


@pytest.mark.parametrize("make", [lambda: MyLSTM(3, 4), lambda: type("MyGRU", (nn.GRU,), {})(3, 4),
                                  lambda: type("MyCell", (nn.LSTMCell,), {})(3, 4),
                                  lambda: type("MyGRUCell", (nn.GRUCell,), {})(3, 4)])
def test_subclass_left_as_is_with_a_warning(make):
    module = make()
    model = nn.Sequential(module)
    with pytest.warns(UserWarning, match=f"leaving {type(module).__qualname__} .*unconverted"):
        converted = lstm_fused.convert(model)
    assert converted[0] is module


def test_subclass_forward_still_runs():
    model = nn.ModuleDict({"enc": MyLSTM(3, 4), "plain": nn.LSTM(3, 4)})
    x = torch.randn(5, 2, 3)
    expected = model["enc"](x)[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lstm_fused.convert(model)
    assert len([w for w in caught if "MyLSTM" in str(w.message)]) == 1
    assert isinstance(model["enc"], MyLSTM) and isinstance(model["plain"], lstm_fused.LSTM)
    torch.testing.assert_close(model["enc"](x)[0], expected)


def test_shared_module_stays_shared():
    lstm, cell = nn.LSTM(3, 4), nn.GRUCell(3, 4)
    model = nn.Sequential(lstm, lstm)
    model.branch = nn.ModuleDict({"a": lstm, "c": cell})
    model.other = nn.Sequential(nn.Linear(2, 2), cell)
    lstm_fused.convert(model)
    assert isinstance(model[0], lstm_fused.LSTM)
    assert model[0] is model[1] is model.branch["a"]
    assert isinstance(model.other[1], lstm_fused.GRUCell) and model.other[1] is model.branch["c"]
    # One set of parameters: the shared module's parameters are counted once, as before.
    assert len(list(model.parameters())) == len(list(lstm.parameters())) + len(list(cell.parameters())) + 2


def test_hooks_carried_over_and_removable():
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 4)
    calls = []
    pre = lstm.register_forward_pre_hook(lambda m, args: calls.append(("pre", type(m).__name__)))
    post = lstm.register_forward_hook(lambda m, args, out: calls.append(("post", type(m).__name__)))
    lstm.register_forward_hook(lambda m, args, kwargs, out: calls.append(("kw", len(kwargs))), with_kwargs=True)
    lstm.register_full_backward_hook(lambda m, gin, gout: calls.append(("bwd", type(m).__name__)))
    sd_hook = lstm._register_state_dict_hook(lambda m, sd, prefix, local: sd.update({prefix + "extra": 1}))
    converted = lstm_fused.convert(lstm)
    assert isinstance(converted, lstm_fused.LSTM)
    x = torch.randn(5, 2, 3, requires_grad=True)
    converted(x)[0].sum().backward()
    assert calls == [("pre", "LSTM"), ("post", "LSTM"), ("kw", 0), ("bwd", "LSTM")]
    assert "extra" in converted.state_dict()
    calls.clear()
    pre.remove()
    post.remove()
    sd_hook.remove()
    converted(x)
    assert calls == [("kw", 0)]
    assert "extra" not in converted.state_dict()


def test_buffers_and_attributes_carried_over():
    lstm = nn.LSTM(3, 4)
    lstm.register_buffer("step", torch.tensor(7))
    lstm.register_buffer("scratch", torch.zeros(2), persistent=False)
    lstm.tag = "encoder"
    converted = lstm_fused.convert(lstm)
    assert converted.step is lstm.step and converted.tag == "encoder"
    assert "step" in converted.state_dict() and "scratch" not in converted.state_dict()
    assert converted.scratch is lstm.scratch


@pytest.mark.parametrize("wrap", ["weight_norm", "spectral_norm"])
def test_old_style_weight_norm_left_as_is(wrap):
    torch.manual_seed(0)
    lstm, cell, plain = nn.LSTM(3, 4), nn.GRUCell(3, 4), nn.LSTM(3, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.nn.utils.weight_norm is deprecated
        getattr(torch.nn.utils, wrap)(lstm, "weight_hh_l0")
        getattr(torch.nn.utils, wrap)(cell, "weight_ih")
    model = nn.ModuleDict({"lstm": lstm, "cell": cell, "plain": plain}).eval()  # spectral_norm: no power step
    x = torch.randn(5, 2, 3)
    expected = lstm(x)[0]
    with pytest.warns(UserWarning, match="weight_hh_l0 not plain parameters"):
        lstm_fused.convert(model)
    assert model["lstm"] is lstm and model["cell"] is cell and isinstance(model["plain"], lstm_fused.LSTM)
    torch.testing.assert_close(model["lstm"](x)[0], expected)


def test_convert_leaves_parametrized_modules_with_a_warning():
    model = nn.Sequential(nn.LSTM(3, 5), nn.LSTM(5, 5))
    parametrize.register_parametrization(model[0], "weight_hh_l0", nn.Identity())
    with pytest.warns(UserWarning, match="parametrized"):
        lstm_fused.convert(model)
    assert isinstance(model[0], nn.LSTM) and isinstance(model[1], lstm_fused.LSTM)
    model[1](model[0](torch.randn(2, 1, 3))[0])


def test_convert_gru_modules():
    model = nn.Sequential(nn.GRU(3, 4, batch_first=True), nn.ModuleList([nn.GRUCell(4, 4)]))
    params = list(model.parameters())
    lstm_fused.convert(model)
    assert isinstance(model[0], lstm_fused.GRU) and isinstance(model[1][0], lstm_fused.GRUCell)
    assert all(a is b for a, b in zip(model.parameters(), params))


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 6)
        self.encoder = nn.ModuleDict({"rnn": nn.LSTM(6, 8, num_layers=2, bidirectional=True, batch_first=True)})
        self.decoder = nn.ModuleList([nn.LSTMCell(16, 8)])
        self.head = nn.Sequential(nn.Linear(8, 5))

    def forward(self, tokens):
        out, _ = self.encoder["rnn"](self.embed(tokens))
        h, c = self.decoder[0](out[:, -1])
        return self.head(h)


def test_convert_nested_model_same_outputs_and_training():
    torch.manual_seed(0)
    ref = _Model().double()
    torch.manual_seed(0)
    model = _Model().double()
    model.eval()
    params_before = {n: p for n, p in model.named_parameters()}
    converted = lstm_fused.convert(model)
    assert converted is model
    assert isinstance(model.encoder["rnn"], lstm_fused.LSTM) and isinstance(model.decoder[0], lstm_fused.LSTMCell)
    assert not model.encoder["rnn"].training  # eval mode carried
    # The very same parameter objects (device, dtype, requires_grad and optimizer state follow).
    for n, p in model.named_parameters():
        assert p is params_before[n]
    model.train()
    ref.train()
    tokens = torch.randint(0, 20, (3, 9))
    torch.testing.assert_close(model(tokens), ref(tokens))
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        for m, o in ((ref, opt_ref), (model, opt)):
            o.zero_grad()
            m(tokens).square().mean().backward()
            o.step()
    for a, b in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b)


def test_convert_bare_modules():
    lstm = nn.LSTM(3, 4, proj_size=2, batch_first=True)
    fused = lstm_fused.convert(lstm)
    assert isinstance(fused, lstm_fused.LSTM) and fused.proj_size == 2 and fused.batch_first
    x = torch.randn(2, 5, 3)
    torch.testing.assert_close(fused(x)[0], lstm(x)[0], rtol=1e-5, atol=1e-6)
    cell = lstm_fused.convert(nn.LSTMCell(3, 4, bias=False))
    assert isinstance(cell, lstm_fused.LSTMCell) and cell.bias_ih is None
