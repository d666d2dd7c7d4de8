"""The benchmark (bench/bench_msda.py): its smoke mode as CI runs it, and its byte count."""
import json
import os
import subprocess
import sys

import pytest
import torch

import bench_scripts

from cssformer_kernels.shapes import PRESETS, ProblemShape

SCRIPT = bench_scripts.BENCH / "bench_msda.py"


@pytest.fixture(scope="module")
def bench():
    return bench_scripts.load("bench_msda")


def test_smoke_mode(tmp_path):
    out = tmp_path / "smoke.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the script sets it itself
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--json", str(out)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["environment"]["copy_bandwidth_GBps"] > 0
    rows = result["rows"]
    for impl in ("triton", "triton_fused", "reference"):
        mine = [r for r in rows if r["impl"] == impl]
        assert {r["mode"] for r in mine} == {"fwd", "fwd+bwd"}, impl
        for r in mine:
            assert r["ok"] and r["error"] is None, r
            assert r["time_us"] > 0 and r["floor_us"] > 0 and r["floor_bytes"] > 0, r


def test_floor_bytes_hand_count(bench):
    # N=1, levels 6x5 + 3x3 (S=39), Q=10, M=2, D=8, P=2, L=2, fp32:
    # value 1*39*2*8 = 624, locations 1*10*2*2*2*2 = 160, weights 80, output 10*2*8 = 160 elements.
    shape = ProblemShape(N=1, levels=((6, 5), (3, 3)), M=2, D=8, P=2, Q=10)
    assert bench.floor_bytes(shape, 4) == 4 * (624 + 160 + 80 + 160)
    # + grad_output 160, grads 624 + 160 + 80, inputs again 624 + 160 + 80.
    assert bench.floor_bytes(shape, 4, backward=True) == 4 * (1024 + 160 + 2 * 864)
    # Fused: + reference points 1*10*2*2 = 40 elements (read, its gradient written, read again).
    assert bench.floor_bytes(shape, 2, fused=True) == 2 * (1024 + 40)
    assert bench.floor_bytes(shape, 2, fused=True, backward=True) == 2 * (2912 + 3 * 40)


@pytest.mark.parametrize("name, itemsize, floor_us", [("detr_enc", 4, 38), ("detr_enc", 2, 19),
                                                      ("seg512", 4, 74), ("seg512", 2, 37)])
def test_floor_matches_design_forward(bench, name, itemsize, floor_us):
    # Forward floors at the measured 4.24 TB/s copy bandwidth of the H200 (bench/README.md).
    assert round(bench.floor_bytes(PRESETS[name], itemsize) / 4.24e12 * 1e6) == floor_us


def test_levels_on_the_device_or_the_host(bench):
    args = bench.parse_args(["--smoke", "--levels", "device", "host"])
    assert args.levels == ["device", "host"] and bench.parse_args(["--smoke"]).levels == ["device"]
    shape = ProblemShape(N=1, levels=((6, 5), (3, 3)), M=2, D=8, P=2, Q=10)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for levels in bench.LEVELS:
        s = bench.input_sets(shape, torch.float32, device, True, 1, levels)[0]
        where = s.args[0].device if levels == "device" else torch.device("cpu")
        assert s.args[1].device == s.args[2].device == where and len(s.args) == 6


def test_parse_shape(bench):
    assert bench.parse_shape("2,S,8,32,4,64x64,32x32") == ProblemShape(N=2, levels=((64, 64), (32, 32)))
    assert bench.parse_shape("1,10,2,8,2,6x5,3x3").num_queries == 10
    with pytest.raises(Exception):
        bench.parse_shape("1,10,2,8,2")


def test_model_presets_and_inputs(bench, monkeypatch):
    css = bench.PRESETS["cssformer"]
    assert (css.N, css.levels, css.M, css.D, css.P, css.num_queries) == (
        2, ((128, 128), (64, 64), (32, 32), (16, 16)), 8, 32, 16, css.S)
    assert bench.PRESETS["cssformer_b1"].N == 1
    # The model's bf16 call: bf16 value / offsets / logits, fp32 reference points (a tiny stand-in preset).
    tiny = ProblemShape(N=2, levels=((6, 5), (3, 3)), M=2, D=8, P=2)
    monkeypatch.setitem(bench.benchlib.MODEL_PRESETS, "tiny", tiny)
    for inputs in ("uniform", "local"):
        s = bench.input_sets(tiny, torch.bfloat16, torch.device("cpu"), True, 1, inputs=inputs, shape_name="tiny")[0]
        value, ref, offsets, logits = (s.args[0], *s.args[3:])
        assert value.dtype == offsets.dtype == logits.dtype == torch.bfloat16 and ref.dtype == torch.float32, inputs
        assert ref.shape[:2] == (2, tiny.S) and ref.shape[-1] == 2
    s = bench.input_sets(tiny, torch.bfloat16, torch.device("cpu"), True, 1, inputs="local", shape_name="other")[0]
    assert s.args[3].dtype == torch.bfloat16  # other presets: every tensor in the row's dtype
    # local: the reference points are the queries' own pixel centres.
    assert torch.allclose(s.args[3][0, 5].float(), torch.tensor([0.5 / 5, 1.5 / 6]), atol=1e-2)
    assert bench.input_layers("local", "x", ProblemShape(N=1, levels=((4, 4),), Q=3)) == []
    assert bench.input_layers("recorded", "seg512", bench.PRESETS["seg512"]) == []


def test_configs_and_reference_speedup(bench):
    from cssformer_kernels import autotune

    assert bench.parse_config("auto") is None
    assert bench.parse_config("default") == autotune.DEFAULT_CONFIG
    assert bench.parse_config("16x2x4x1,LAYOUT=tile,TILE=8") == dict(BLOCK_R=16, P_BLOCK=2, num_warps=4, num_stages=1,
                                                                     LAYOUT="tile", TILE=8)
    for bad in ("16x2x4", "axbxcxd", "16x2x4x1,LAYOUT"):
        with pytest.raises(ValueError, match="--configs"):
            bench.parse_config(bad)
    original = autotune.choose
    with bench.forced_config({"BLOCK_R": 8}):
        assert autotune.choose("k", 1, "key", None, torch.device("cpu")) == {"BLOCK_R": 8}
    assert autotune.choose is original
    rows = [dict(shape="s", inputs="local", layer=None, levels="device", mode="fwd", impl=impl, dtype=dt, time_us=t)
            for impl, dt, t in (("reference", "fp32", 100.0), ("triton", "bf16", 4.0), ("reference", "bf16", 50.0))]
    bench.add_reference_speedup(rows)
    assert [r["vs_ref_fp32"] for r in rows] == [1.0, 25.0, 2.0]
