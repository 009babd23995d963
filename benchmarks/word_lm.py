"""End to end: a word-level language model on WikiText-2, trained with nn.LSTM and with lstm_fused, side by side.

The model is PyTorch's classic word_language_model (embedding → dropout → multi-layer LSTM with dropout between
layers → dropout → linear decoder; SGD with gradient clipping, truncated BPTT). Both runs start from the same
weights (the lstm_fused one is made with lstm_fused.convert) and the same seed, so on the CPU they draw the same
dropout masks and their losses agree step by step; the difference is the time per step.

It trains on valid.txt and evaluates on test.txt of ../shared/data/wikitext-2 (not part of the repository):
    python benchmarks/word_lm.py [--steps 50] [--device cpu|cuda] [--data DIR]
Prints a markdown table and writes JSON under benchmarks/out/.
"""
import argparse
import copy
import datetime
import json
import math
import os
import time

import torch
from torch import nn

import lstm_fused

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tokenize(path, vocab):
    ids = []
    with open(path, encoding="utf8") as f:
        for line in f:
            for w in line.split() + ["<eos>"]:
                ids.append(vocab.setdefault(w, len(vocab)))
    return torch.tensor(ids, dtype=torch.long)


def batchify(data, bsz):
    n = data.size(0) // bsz
    return data[: n * bsz].view(bsz, n).t().contiguous()  # [n, bsz]


class RNNModel(nn.Module):
    def __init__(self, ntoken, ninp, nhid, nlayers, dropout):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = nn.LSTM(ninp, nhid, nlayers, dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def forward(self, x, hidden):
        out, hidden = self.rnn(self.drop(self.encoder(x)), hidden)
        return self.decoder(self.drop(out)), hidden


def run(model, train, test, args, device):
    """Trains for args.steps BPTT windows; returns per-step losses, seconds per step, test perplexity."""
    torch.manual_seed(args.seed)
    model.train()
    crit = nn.CrossEntropyLoss()
    hidden = None
    losses, times = [], []
    for step in range(args.steps):
        i = (step * args.bptt) % (train.size(0) - 1 - args.bptt)
        x, y = train[i: i + args.bptt].to(device), train[i + 1: i + 1 + args.bptt].to(device)
        if hidden is not None:
            hidden = tuple(h.detach() for h in hidden)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        model.zero_grad()
        out, hidden = model(x, hidden)
        loss = crit(out.view(-1, out.size(-1)), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p.grad, alpha=-args.lr)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    model.eval()
    total, count, hidden = 0.0, 0, None
    with torch.no_grad():
        for i in range(0, min(test.size(0) - 1, args.eval_tokens), args.bptt):
            n = min(args.bptt, test.size(0) - 1 - i)
            out, hidden = model(test[i: i + n].to(device), hidden)
            total += nn.functional.cross_entropy(out.view(-1, out.size(-1)), test[i + 1: i + 1 + n].to(device).reshape(-1),
                                                 reduction="sum").item()
            count += out.size(0) * out.size(1)
    return losses, times, math.exp(total / count)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "wikitext-2"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--emsize", type=int, default=200)
    ap.add_argument("--nhid", type=int, default=200)
    ap.add_argument("--nlayers", type=int, default=2)
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--bptt", type=int, default=35)
    ap.add_argument("--steps", type=int, default=50, help="training windows per model")
    ap.add_argument("--warmup", type=int, default=3, help="leading steps left out of the timing")
    ap.add_argument("--lr", type=float, default=20.0)
    ap.add_argument("--clip", type=float, default=0.25)
    ap.add_argument("--eval-tokens", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=1111)
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "out"))
    args = ap.parse_args(argv)
    device = torch.device(args.device)

    vocab = {}
    train = batchify(tokenize(os.path.join(args.data, "valid.txt"), vocab), args.batch)
    test = batchify(tokenize(os.path.join(args.data, "test.txt"), vocab), 10)
    torch.manual_seed(args.seed)
    reference = RNNModel(len(vocab), args.emsize, args.nhid, args.nlayers, args.dropout).to(device)
    fused = lstm_fused.convert(copy.deepcopy(reference))
    assert isinstance(fused.rnn, lstm_fused.LSTM)

    results = {}
    for name, model in (("nn.LSTM", reference), ("lstm_fused", fused)):
        losses, times, ppl = run(model, train, test, args, device)
        timed = times[args.warmup:] or times
        step_s = sorted(timed)[len(timed) // 2]
        results[name] = dict(losses=losses, median_step_s=step_s, tokens_per_s=args.batch * args.bptt / step_s,
                             test_ppl=ppl)
    ref, ours = results["nn.LSTM"], results["lstm_fused"]
    max_diff = max(abs(a - b) for a, b in zip(ref["losses"], ours["losses"]))
    meta = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                threads=torch.get_num_threads(), torch=torch.__version__, vocab=len(vocab),
                **{k: v for k, v in vars(args).items() if k not in ("data", "out", "device")})
    lines = [f"word-level LM, WikiText-2 (vocab {len(vocab)}), {args.nlayers}-layer LSTM {args.emsize}/{args.nhid}, "
             f"batch {args.batch}, bptt {args.bptt}, {args.steps} SGD steps, {meta['device']}, torch {torch.__version__}",
             "", "| model | ms / step | tokens / s | final train loss | test ppl (after training) |", "|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['median_step_s'] * 1e3:.1f} | {r['tokens_per_s']:.0f} | {r['losses'][-1]:.4f} | "
                     f"{r['test_ppl']:.2f} |")
    lines += ["", f"speedup (nn.LSTM time / lstm_fused time per step): {ref['median_step_s'] / ours['median_step_s']:.2f}x; "
              f"largest per-step loss difference: {max_diff:.2e}"]
    print("\n".join(lines))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"word_lm_{device.type}.json"), "w") as f:
        json.dump(dict(meta=meta, results=results, max_loss_diff=max_diff), f, indent=1)
    return results, max_diff


if __name__ == "__main__":
    main()
