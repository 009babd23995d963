"""The benchmark suite (README's main job) runs end to end on a tiny grid, and its memory probe measures."""
import importlib.util
import json
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def suite():
    spec = importlib.util.spec_from_file_location("lf_bench_suite", os.path.join(ROOT, "benchmarks", "suite.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quick_suite_runs_and_writes_every_output(suite, tmp_path, monkeypatch):
    # A tiny stand-in grid: a packed row and its padded twin, a variant (I != H) with no nn baseline, an option
    # whose nn baseline is nn's module with the option done around it (weight drop), and one nn does not have.
    monkeypatch.setattr(suite, "cpu_grid", lambda quick: [suite.case("lstm", 6, 3, 8), suite.case("lstm", 6, 3, 8, packed=True),
                                                          suite.case("lstm-coupled", 5, 2, 4, I=3),
                                                          suite.case("gru-weightdrop", 5, 2, 4),
                                                          suite.case("lstm-zoneout", 5, 2, 4)])
    suite.main(["--quick", "--min-time", "0", "--device", "cpu", "--out", str(tmp_path)])
    with open(tmp_path / "results_cpu_quick.json") as f:
        res = json.load(f)
    rows = res["rows"]
    assert len(rows) == 10 and {r["mode"] for r in rows} == {"inference", "training"}
    for r in rows:
        assert r["fused_ms"] > 0 and r["speedup_vs_loop"] > 0
        assert (r["kind"] in ("lstm", "gru-weightdrop")) == ("speedup_vs_nn" in r)
    assert "float32 training lstm T6 B3 H8 packed: time / padded time" in res["summary"]
    assert "float32 inference lstm vs nn" in res["summary"]
    names = set(os.listdir(tmp_path))
    assert {"results_cpu_quick.csv", "results_cpu_quick.md"} <= names
    md = (tmp_path / "results_cpu_quick.md").read_text()
    assert "lstm-coupled T5 B2 H4 I3" in md and "peak MB" in md
    pytest.importorskip("matplotlib")
    assert "speedup_vs_batch_cpu_quick_float32.png" in names and "speedup_vs_hidden_cpu_quick_float32.png" in names


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the CPU memory probe reads /proc")
def test_cpu_peak_probe_sees_a_call_allocations(suite):
    keep = []
    big = suite.cpu_peak_bytes(lambda: keep.append(torch.ones(16 << 20)))  # 64 MB touched
    small = suite.cpu_peak_bytes(lambda: torch.ones(16))
    assert big is not None and 56 << 20 <= big <= 96 << 20, big
    assert small < 8 << 20, small


def test_layer_norm_ceiling_script_measures_every_column(tmp_path):
    spec = importlib.util.spec_from_file_location("lf_ln_ceiling", os.path.join(ROOT, "benchmarks", "ln_ceiling.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    # The floor counts the six T·B·4H·H products: the forward's two, the backward's four.
    assert mod.training_flops(3, 2, 5) == 6 * 2 * (3 * 2) * (4 * 5) * 5
    rows = mod.main(["--shapes", "2x8,3x4", "--T", "5", "--rounds", "1", "--json", str(tmp_path / "r.json")])
    assert [(r["B"], r["H"]) for r in rows] == [(2, 8), (3, 4)]
    with open(tmp_path / "r.json") as f:
        saved = json.load(f)
    assert saved["rows"] == rows and saved["gemm_flops_per_s"] > 0
    for r in rows:
        assert all(r[f"{k}_ms"] > 0 for k in ("ln", "loop", "plain", "nn", "floor"))
        assert r["ln_vs_loop"] == pytest.approx(r["loop_ms"] / r["ln_ms"])
        assert r["loop_vs_floor"] == pytest.approx(r["loop_ms"] / r["floor_ms"])
        assert r["floor_ms"] == pytest.approx(mod.training_flops(5, r["B"], r["H"]) / saved["gemm_flops_per_s"] * 1e3)
