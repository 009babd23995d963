"""The end-to-end WikiText-2 language-model benchmark (benchmarks/word_lm.py) on a tiny synthetic corpus: the model
converted with lstm_fused.convert trains step for step like the nn.LSTM one (same weights, seed, dropout masks)."""
import importlib.util
import os
import random

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load():
    spec = importlib.util.spec_from_file_location("word_lm", os.path.join(ROOT, "benchmarks", "word_lm.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_word_lm_trains_like_nn_lstm(tmp_path):
    rng = random.Random(0)
    words = [f"w{i}" for i in range(60)]
    for name in ("valid.txt", "test.txt"):
        with open(tmp_path / name, "w") as f:
            for _ in range(80):
                f.write(" ".join(rng.choice(words) for _ in range(rng.randint(3, 15))) + "\n")
    results, max_diff = _load().main(["--data", str(tmp_path), "--device", "cpu", "--steps", "6", "--warmup", "1",
                                      "--emsize", "16", "--nhid", "24", "--batch", "4", "--bptt", "7",
                                      "--eval-tokens", "100", "--out", str(tmp_path / "out")])
    ref, ours = results["nn.LSTM"], results["lstm_fused"]
    assert len(ref["losses"]) == len(ours["losses"]) == 6
    assert max_diff < 1e-4, max_diff
    assert abs(ref["test_ppl"] - ours["test_ppl"]) / ref["test_ppl"] < 1e-3
    assert os.path.exists(tmp_path / "out" / "word_lm_cpu.json")
    assert torch.isfinite(torch.tensor(ours["losses"])).all()
