"""ONNX export (lstm_fused/onnx_export.py): torch.onnx.export with the default (torch.export-based) exporter and
with dynamo=False (TorchScript-based), run in onnxruntime and compared with the modules in eager PyTorch."""
import re
import warnings

import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")  # the default exporter needs it

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402

import lstm_fused  # noqa: E402

T, B, I, H = 7, 3, 5, 6  # all distinct, and none equal to num_layers·directions, so no mix-up keeps its shape

EXPORTERS = [pytest.param(True, id="dynamo"), pytest.param(False, id="torchscript")]


def export(model, args, path, dynamo, **kwargs):
    """Plain torch.onnx.export: no arguments beyond the exporter choice (and, where a test asks for it, the
    dynamic dimensions)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # dynamo=False is deprecated in favour of the default
        if dynamo:
            torch.onnx.export(model, args, str(path), **kwargs)
        else:
            torch.onnx.export(model, args, str(path), dynamo=False, **kwargs)
    return onnx.load(str(path))


def flat(obj) -> list:
    if obj is None:
        return []
    if isinstance(obj, torch.Tensor):
        return [obj]
    return [t for o in obj for t in flat(o)]


def run_ort(path, args) -> list:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    inputs = flat(args)
    assert len(names) == len(inputs), (names, len(inputs))
    return [torch.from_numpy(o) for o in sess.run(None, {n: t.numpy() for n, t in zip(names, inputs)})]


def compare(got: list, want, rtol=1e-5, atol=1e-6):
    # float32: onnxruntime's LSTM/GRU kernels and lstm_fused's differ only in summation order and in their
    # exp/tanh approximations (lstm_fused's are within 4e-7 relative); the observed gap is ~1e-7.
    want = flat(want)
    assert len(got) == len(want)
    for k, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape, (k, g.shape, w.shape)
        torch.testing.assert_close(g, w, rtol=rtol, atol=atol, msg=lambda m: f"output {k}: {m}")


def op_counts(model) -> dict:
    counts = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
        assert node.domain in ("", "ai.onnx"), f"non-standard node {node.domain}::{node.op_type}"
    return counts


def states(layers_dirs, batch=B, unbatched=False, two=True):
    shape = (layers_dirs, H) if unbatched else (layers_dirs, batch, H)
    return (torch.randn(shape), torch.randn(shape)) if two else torch.randn(shape)


class Wrapped(nn.Module):
    """A model around a converted nn.LSTM, as lstm_fused.convert leaves it."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(I, 8)
        self.rnn = nn.LSTM(8, H, num_layers=2, batch_first=True)
        self.out = nn.Linear(H, 2)

    def forward(self, x):
        y, (h, c) = self.rnn(torch.tanh(self.inp(x)))
        return self.out(y), h, c


# (id, model factory, args factory, expected node counts)
CASES = [
    ("lstm", lambda: lstm_fused.LSTM(I, H), lambda: (torch.randn(T, B, I),), {"LSTM": 1}),
    ("lstm-2layers-bidir-batch_first-hx", lambda: lstm_fused.LSTM(I, H, 2, batch_first=True, bidirectional=True),
     lambda: (torch.randn(B, T, I), states(4)), {"LSTM": 2}),
    ("lstm-unbatched-hx", lambda: lstm_fused.LSTM(I, H, 2), lambda: (torch.randn(T, I), states(2, unbatched=True)),
     {"LSTM": 2}),
    ("lstm-nobias-bidir", lambda: lstm_fused.LSTM(I, H, bias=False, bidirectional=True),
     lambda: (torch.randn(T, B, I),), {"LSTM": 1}),
    ("peephole-2layers-hx", lambda: lstm_fused.LSTM(I, H, 2, peephole=True), lambda: (torch.randn(T, B, I), states(2)),
     {"LSTM": 2}),
    ("coupled-bidir-batch_first", lambda: lstm_fused.LSTM(I, H, batch_first=True, bidirectional=True, coupled=True),
     lambda: (torch.randn(B, T, I),), {"LSTM": 1}),
    ("peephole-coupled-2layers-bidir-hx",
     lambda: lstm_fused.LSTM(I, H, 2, bidirectional=True, peephole=True, coupled=True),
     lambda: (torch.randn(T, B, I), states(4)), {"LSTM": 2}),
    ("peephole-coupled-unbatched-nobias", lambda: lstm_fused.LSTM(I, H, bias=False, peephole=True, coupled=True),
     lambda: (torch.randn(T, I),), {"LSTM": 1}),
    ("gru", lambda: lstm_fused.GRU(I, H), lambda: (torch.randn(T, B, I),), {"GRU": 1}),
    ("gru-2layers-bidir-batch_first-hx", lambda: lstm_fused.GRU(I, H, 2, batch_first=True, bidirectional=True),
     lambda: (torch.randn(B, T, I), states(4, two=False)), {"GRU": 2}),
    ("gru-unbatched-nobias-hx", lambda: lstm_fused.GRU(I, H, bias=False),
     lambda: (torch.randn(T, I), states(1, unbatched=True, two=False)), {"GRU": 1}),
    ("lstmcell-hx", lambda: lstm_fused.LSTMCell(I, H), lambda: (torch.randn(B, I), (torch.randn(B, H),
                                                                                   torch.randn(B, H))), {"LSTM": 1}),
    ("lstmcell-unbatched-nobias", lambda: lstm_fused.LSTMCell(I, H, bias=False), lambda: (torch.randn(I),),
     {"LSTM": 1}),
    ("grucell-hx", lambda: lstm_fused.GRUCell(I, H), lambda: (torch.randn(B, I), torch.randn(B, H)), {"GRU": 1}),
    ("grucell-unbatched", lambda: lstm_fused.GRUCell(I, H), lambda: (torch.randn(I),), {"GRU": 1}),
    ("converted-model", lambda: lstm_fused.convert(Wrapped()), lambda: (torch.randn(B, T, I),), {"LSTM": 2}),
]


@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("make_model, make_args, nodes", [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_export_matches_pytorch(make_model, make_args, nodes, dynamo, tmp_path):
    model = make_model().eval()
    args = make_args()
    with torch.no_grad():
        want = model(*args)
    path = tmp_path / "model.onnx"
    exported = export(model, args, path, dynamo)
    counts = op_counts(exported)
    for op, n in nodes.items():  # one ONNX LSTM/GRU node per layer, and no other recurrent node
        assert counts.get(op, 0) == n, counts
    assert counts.get("LSTM" if "GRU" in nodes else "GRU", 0) == 0 and "Loop" not in counts and "Scan" not in counts
    compare(run_ort(path, args), want)


@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_dynamic_sequence_length_and_batch(kind, dynamo, tmp_path):
    if kind == "LSTM":
        model = lstm_fused.LSTM(I, H, 2, batch_first=True, bidirectional=True, peephole=True, coupled=True).eval()
        make_states = lambda b: states(4, batch=b)  # noqa: E731
        state_axes = ({1: "batch"}, {1: "batch"})
    else:
        model = lstm_fused.GRU(I, H, 2, batch_first=True, bidirectional=True).eval()
        make_states = lambda b: states(4, batch=b, two=False)  # noqa: E731
        state_axes = {1: "batch"}
    args = (torch.randn(B, T, I), make_states(B))
    path = tmp_path / "model.onnx"
    if dynamo:
        batch, time = torch.export.Dim("batch"), torch.export.Dim("time")
        to_dims = lambda axes: {k: batch for k in axes}  # noqa: E731
        h_dims = tuple(map(to_dims, state_axes)) if kind == "LSTM" else to_dims(state_axes)
        export(model, args, path, True, dynamic_shapes=({0: batch, 1: time}, h_dims))
    else:
        names = ["x", "h0", "c0"] if kind == "LSTM" else ["x", "h0"]
        axes = [{0: "batch", 1: "time"}, *(state_axes if kind == "LSTM" else (state_axes,))]
        export(model, args, path, False, input_names=names, dynamic_axes=dict(zip(names, axes)))
    for b, t in ((2, 12), (4, 1)):
        other = (torch.randn(b, t, I), make_states(b))
        with torch.no_grad():
            want = model(*other)
        compare(run_ort(path, other), want)


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_float64_graph(dynamo, tmp_path):
    """float64 modules export float64 LSTM/GRU nodes. onnxruntime's CPU LSTM/GRU kernels have no float64
    ("does not support double yet"), so the graph runs in onnx's reference evaluator, which also shows the
    mapping holds for ONNX's operator definition itself (it ignores input_forget, which the export avoids)."""
    from onnx.reference import ReferenceEvaluator

    model = nn.ModuleDict({
        "lstm": lstm_fused.LSTM(I, H, 2, bidirectional=True, peephole=True, coupled=True),
        "gru": lstm_fused.GRU(I, H, bidirectional=True),
    }).double().eval()

    class Both(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, x, h):
            return self.m["lstm"](x, h), self.m["gru"](x)

    both = Both().eval()
    args = (torch.randn(T, B, I, dtype=torch.float64), tuple(s.double() for s in states(4)))
    with torch.no_grad():
        want = both(*args)
    path = tmp_path / "model.onnx"
    exported = export(both, args, path, dynamo)
    rnn_nodes = [n for n in exported.graph.node if n.op_type in ("LSTM", "GRU")]
    assert [n.op_type for n in rnn_nodes] == ["LSTM", "LSTM", "GRU"]
    sess = ReferenceEvaluator(exported)
    got = sess.run(None, dict(zip([i.name for i in exported.graph.input], (t.numpy() for t in flat(args)))))
    got = [torch.from_numpy(g) for g in got]
    assert all(g.dtype == torch.float64 for g in got)
    compare(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_float16_module(dynamo, tmp_path):
    """Half-precision modules compute in float32 and cast back, in the graph as in lstm_fused's CPU path."""
    model = lstm_fused.LSTM(I, H, 2, bidirectional=True, peephole=True).half().eval()
    args = (torch.randn(T, B, I).half(),)
    with torch.no_grad():
        want = model(*args)
    path = tmp_path / "model.onnx"
    export(model, args, path, dynamo)
    got = run_ort(path, args)
    assert all(g.dtype == torch.float16 for g in got)
    compare(got, want, rtol=1e-3, atol=1e-3)  # float32 results ~1e-7 apart can round to neighbouring halves


@pytest.mark.parametrize("make,left_out", [
    (lambda: lstm_fused.LSTM(I, H, 2, dropout=0.5), "the dropout between layers"),
    (lambda: lstm_fused.GRU(I, H, 2, weight_drop=0.5), "weight_drop"),
    (lambda: lstm_fused.LSTM(I, H, 2, dropout=0.5, weight_drop=0.5), "the dropout between layers and weight_drop"),
], ids=["dropout", "weight_drop", "both"])
def test_training_randomness_left_out_with_a_warning(make, left_out, tmp_path):
    """The exported graph is an inference graph: a module exported in training mode (the default exporter
    keeps the mode) says so and leaves the dropout between layers and weight drop out."""
    model = make()
    x = torch.randn(T, B, I)
    path = tmp_path / "model.onnx"
    with pytest.warns(UserWarning, match="leaves out " + left_out):
        export(model, (x,), path, True)
    assert model.training
    with torch.no_grad():
        want = model.eval()(x)
    compare(run_ort(path, (x,)), want)


@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("case", ["proj_size", "packed-lstm", "packed-gru", "zoneout-lstm", "zoneout-gru",
                                  "zoneout-lstm-cell", "zoneout-gru-cell", "layer_norm-lstm", "layer_norm-gru-cell"])
def test_unsupported_configurations_raise(case, dynamo, tmp_path):
    lengths = torch.tensor([T, T - 2, 1])
    if case == "proj_size":
        model, args = lstm_fused.LSTM(I, H, proj_size=2, peephole=True), (torch.randn(T, B, I),)
        message = ("lstm_fused: ONNX export of LSTM (peephole=True) with proj_size>0 is not supported: ONNX's LSTM "
                   "operator has no projection")
    elif case.startswith("zoneout"):
        model, args, message = {
            "zoneout-lstm": (lstm_fused.LSTM(I, H, 2, zoneout=0.1, zoneout_cell=0.2), (torch.randn(T, B, I),),
                             "LSTM with zoneout=0.1 and zoneout_cell=0.2"),
            "zoneout-gru": (lstm_fused.GRU(I, H, zoneout=0.3), (torch.randn(T, B, I),), "GRU with zoneout=0.3"),
            "zoneout-lstm-cell": (lstm_fused.LSTMCell(I, H, zoneout_cell=0.2), (torch.randn(B, I),),
                                  "LSTMCell with zoneout_cell=0.2"),
            "zoneout-gru-cell": (lstm_fused.GRUCell(I, H, zoneout=0.3), (torch.randn(B, I),), "GRUCell with zoneout=0.3"),
        }[case]
        message = f"lstm_fused: ONNX export of {message} is not supported: ONNX's LSTM and GRU operators have no zoneout"
    elif case.startswith("layer_norm"):
        model, args, name = ((lstm_fused.LSTM(I, H, 2, layer_norm=True), (torch.randn(T, B, I),), "LSTM")
                             if case == "layer_norm-lstm" else
                             (lstm_fused.GRUCell(I, H, layer_norm=True), (torch.randn(B, I),), "GRUCell"))
        message = (f"lstm_fused: ONNX export of {name} with layer_norm=True is not supported: ONNX's LSTM and GRU "
                   "operators have no layer normalisation")
    else:
        model = lstm_fused.LSTM(I, H) if case == "packed-lstm" else lstm_fused.GRU(I, H)
        args = (pack_padded_sequence(torch.randn(T, B, I), lengths),)
        message = (f"lstm_fused: ONNX export of {type(model).__name__} with PackedSequence input is not supported")
    # The default exporter wraps the error (TorchExportError, a RuntimeError) and quotes its message.
    with pytest.raises(RuntimeError, match=re.escape(message)) as info:
        export(model.eval(), args, tmp_path / "model.onnx", dynamo)
    assert any(todo in str(info.value) for todo in ("Export the module with padded input", "Export a model without "
                                                    "proj_size", "Export the model with zoneout=0",
                                                    "Export a model without layer_norm"))


def test_other_tracers_keep_the_fused_ops():
    """Only torch.onnx.export takes the ONNX path: plain torch.export (for AOTInductor) and eager calls still
    run lstm_fused's ops."""
    model = lstm_fused.LSTM(I, H, 2, bidirectional=True).eval()
    x = torch.randn(T, B, I)
    program = torch.export.export(model, (x,))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert "lstm_fused.lstm_layer_fwd.default" in targets
    assert not any("onnx" in t for t in targets)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), rtol=0, atol=0)
