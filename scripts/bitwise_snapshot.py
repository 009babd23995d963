"""Bitwise snapshot of lstm_fused's results, for a change that must not move a bit (a restructuring).

    python scripts/bitwise_snapshot.py save before.pt     # with the old build installed
    python scripts/bitwise_snapshot.py save after.pt      # with the new one
    python scripts/bitwise_snapshot.py compare before.pt after.pt

Runs the public modules (LSTM with every structure and variant, GRU, the cells; the layer-norm, zoneout and
weight-drop options; padded and packed; float32 and float64; forward and every gradient) and, where the build has them, the emulated CUDA ops (per-step, GEMM-step and
persistent paths on a few emulated devices, every dtype) on fixed inputs, and stores every result tensor. `compare`
demands torch.equal for every key both snapshots hold and reports keys only one holds. Thread count: the
snapshot records it; compare two snapshots taken with the same one.
"""
import os
import sys

import torch
from torch.nn.utils.rnn import pack_padded_sequence

import lstm_fused


def _rand(g, *shape, dtype):
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def _grads(module, x, hx, inputs):
    out, state = module(x, hx) if hx is not None else module(x)
    data = out.data if hasattr(out, "batch_sizes") else out
    states = list(state) if isinstance(state, tuple) else [state]
    g = torch.Generator().manual_seed(7)
    loss = (data * _rand(g, *data.shape, dtype=data.dtype)).sum()
    for s in states:
        loss = loss + (s * _rand(g, *s.shape, dtype=s.dtype)).sum()
    params = [p for _, p in module.named_parameters()]
    grads = torch.autograd.grad(loss, inputs + params, allow_unused=True)
    return [data, *states] + [gr for gr in grads if gr is not None]


def module_cases():
    for dtype in (torch.float32, torch.float64):
        for T, B, I, H in ((5, 3, 7, 9), (17, 16, 33, 40), (6, 40, 16, 64)):
            structures = [dict(), dict(num_layers=2), dict(bidirectional=True), dict(num_layers=2, bidirectional=True),
                          dict(proj_size=5), dict(num_layers=2, bidirectional=True, proj_size=4), dict(bias=False),
                          dict(peephole=True), dict(coupled=True), dict(peephole=True, coupled=True, num_layers=2),
                          # The regularising and layer-norm options (zoneout draws its masks from the seeded generator).
                          dict(layer_norm=True), dict(layer_norm=True, bias=False),
                          dict(layer_norm=True, num_layers=2, bidirectional=True, proj_size=4),
                          dict(layer_norm=True, peephole=True, coupled=True),
                          dict(zoneout=0.2, zoneout_cell=0.1, bidirectional=True), dict(zoneout=0.2, layer_norm=True),
                          dict(weight_drop=0.3, num_layers=2)]
            for kind in ("lstm", "gru"):
                for st in structures:
                    if kind == "gru" and set(st) & {"proj_size", "peephole", "coupled", "zoneout_cell"}:
                        continue
                    for packed in (False, True):
                        name = f"{kind}/{dtype}/{T}x{B}x{I}x{H}/{sorted(st.items())}/packed={packed}"
                        yield name, (kind, dtype, T, B, I, H, st, packed)
    for dtype in (torch.float32, torch.float64):
        for kind in ("lstmcell", "grucell"):
            for st in (dict(), dict(layer_norm=True, zoneout=0.2)):
                yield f"{kind}/{dtype}" + (f"/{sorted(st.items())}" if st else ""), (kind, dtype, 1, 5, 7, 11, st, False)


def run_module_case(kind, dtype, T, B, I, H, st, packed):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if kind in ("lstmcell", "grucell"):
        cls = lstm_fused.LSTMCell if kind == "lstmcell" else lstm_fused.GRUCell
        m = cls(I, H, dtype=dtype, **st)
        x = _rand(g, B, I, dtype=dtype).requires_grad_()
        h = _rand(g, B, H, dtype=dtype).requires_grad_()
        if kind == "lstmcell":
            c = _rand(g, B, H, dtype=dtype).requires_grad_()
            hy, cy = m(x, (h, c))
            outs, inputs = [hy, cy], [x, h, c]
        else:
            outs, inputs = [m(x, h)], [x, h]
        loss = sum((o * _rand(g, *o.shape, dtype=dtype)).sum() for o in outs)
        grads = torch.autograd.grad(loss, inputs + list(m.parameters()))
        return outs + list(grads)
    cls = lstm_fused.LSTM if kind == "lstm" else lstm_fused.GRU
    m = cls(I, H, dtype=dtype, **st)
    x = _rand(g, T, B, I, dtype=dtype).requires_grad_()
    inp = x
    if packed:
        lengths = torch.randint(1, T + 1, (B,), generator=g)
        lengths[0] = T
        inp = pack_padded_sequence(x, lengths, enforce_sorted=False)
    return _grads(m, inp, None, [x])


def emulation_ops():
    ns = getattr(torch.ops, "lstm_fused_testing", None)
    try:
        return (ns.emu_lstm_layer_fwd.default, ns.emu_lstm_layer_bwd.default, ns.emu_gru_layer_fwd.default,
                ns.emu_gru_layer_bwd.default)
    except (AttributeError, RuntimeError):
        pass
    ns = torch.ops.lstm_fused
    try:
        return (ns._emu_layer_fwd.default, ns._emu_layer_bwd.default, ns._emu_gru_layer_fwd.default,
                ns._emu_gru_layer_bwd.default)
    except (AttributeError, RuntimeError):
        return None


def _layer_args(g, T, B, I, H, proj, packed, dtype, D, peephole, coupled, gru=False):
    P = proj or H
    if packed:
        lengths = torch.randint(1, T + 1, (B,), generator=g).sort(descending=True).values
        lengths[0] = T
        bs = torch.tensor([int((lengths > t).sum()) for t in range(T)])
        x = _rand(g, int(bs.sum()), I, dtype=dtype)
    else:
        bs, x = None, _rand(g, T, B, I, dtype=dtype)
    k = H ** -0.5
    G = (3 if coupled or gru else 4) * H
    lst = lambda *s: [(_rand(g, *s, dtype=torch.float64) * k).to(dtype) for _ in range(D)]  # noqa: E731
    if gru:
        return [x, bs, _rand(g, D, B, H, dtype=dtype), lst(G, I), lst(G, H), lst(G), lst(G)]
    return [x, bs, _rand(g, D, B, P, dtype=dtype), _rand(g, D, B, H, dtype=dtype), lst(G, I), lst(G, P), lst(G),
            lst(G), lst(P, H) if proj else None, [_rand(g, 2 if coupled else 3, H, dtype=dtype) for _ in range(D)]
            if peephole else None, coupled]


def _like(ts):
    g = torch.Generator().manual_seed(3)
    return [_rand(g, *t.shape, dtype=t.dtype) for t in ts]


def emulation_cases(ops):
    fwd, bwd, gfwd, gbwd = ops
    devices = {"step": ("step", 132, 232448), "gemm": ("gemm", 132, 232448), "persistent": ("persistent", 132, 232448),
               "auto-3sm-small-smem": ("auto", 3, 60000), "auto-1sm": ("auto", 1, 232448)}
    shapes = ((3, 2, 5, 7, 0), (5, 9, 33, 33, 0), (4, 17, 3, 40, 0), (6, 3, 70, 65, 13), (3, 40, 40, 40, 0))
    for dev, (algo, sms, smem) in devices.items():
        for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
            for T, B, I, H, proj in shapes:
                if proj and algo == "persistent":
                    continue
                for D in (1, 2):
                    for packed in (False, True):
                        for variant in ("plain", "peephole", "coupled"):
                            name = f"emu/{dev}/{dtype}/{T}x{B}x{I}x{H}p{proj}/D{D}/packed={packed}/{variant}"

                            def run(T=T, B=B, I=I, H=H, proj=proj, D=D, packed=packed, variant=variant, dtype=dtype):
                                g = torch.Generator().manual_seed(11)
                                a = _layer_args(g, T, B, I, H, proj, packed, dtype, D, variant == "peephole",
                                                variant == "coupled")
                                out, h_n, c_n, ws = fwd(*a, True)
                                go, gh, gc = _like([out, h_n, c_n])
                                grads = bwd(go, gh, gc, a[0], a[1], a[2], a[3], a[4], a[5], a[8], a[9], a[10], out, ws,
                                            True, True)
                                lean = fwd(*a, False)
                                return [out, h_n, c_n, ws, *lean[:3], grads[0], grads[1], grads[2], *grads[3],
                                        *grads[4], *grads[5], *grads[6], *grads[7]]

                            yield name, (algo, sms, smem), run
                        if variant == "plain" and not proj:
                            name = f"emu/{dev}/{dtype}/{T}x{B}x{I}x{H}/D{D}/packed={packed}/gru"

                            def run_gru(T=T, B=B, I=I, H=H, D=D, packed=packed, dtype=dtype):
                                g = torch.Generator().manual_seed(12)
                                a = _layer_args(g, T, B, I, H, 0, packed, dtype, D, False, False, gru=True)
                                out, h_n, ws = gfwd(*a, True)
                                go, gh = _like([out, h_n])
                                grads = gbwd(go, gh, a[0], a[1], a[2], a[3], a[4], out, ws, True, True)
                                lean = gfwd(*a, False)
                                return [out, h_n, ws, *lean[:2], grads[0], grads[1], *grads[2], *grads[3], *grads[4],
                                        *grads[5]]

                            yield name, (algo, sms, smem), run_gru


def save(path):
    snap = {"__threads__": torch.tensor(torch.get_num_threads())}
    for name, case in module_cases():
        for i, t in enumerate(run_module_case(*case)):
            snap[f"{name}#{i}"] = t.detach().clone()
    ops = emulation_ops()
    if ops is None:
        print("no emulation ops in this build: module results only", file=sys.stderr)
    else:
        for name, (algo, sms, smem), run in emulation_cases(ops):
            os.environ.update(LSTM_FUSED_CUDA_ALGO=algo, LSTM_FUSED_EMU_SMS=str(sms), LSTM_FUSED_EMU_SMEM=str(smem))
            for i, t in enumerate(run()):
                snap[f"{name}#{i}"] = t.detach().clone()
    torch.save(snap, path)
    print(f"saved {len(snap)} tensors to {path}")


def compare(a_path, b_path):
    a, b = torch.load(a_path), torch.load(b_path)
    if a["__threads__"] != b["__threads__"]:
        print(f"warning: thread counts differ ({int(a['__threads__'])} vs {int(b['__threads__'])})")
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    differ = [k for k in sorted(set(a) & set(b)) if not (a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
                                                         and torch.equal(a[k], b[k]))]
    print(f"{len(set(a) & set(b))} tensors in both, {len(differ)} differ; {len(only_a)} only in {a_path}, "
          f"{len(only_b)} only in {b_path}")
    for k in differ[:20]:
        print("  differs:", k)
    for k in (only_a + only_b)[:10]:
        print("  in one only:", k)
    return 1 if differ or only_a or only_b else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "save":
        save(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        sys.exit(compare(sys.argv[2], sys.argv[3]))
    else:
        sys.exit(__doc__)
