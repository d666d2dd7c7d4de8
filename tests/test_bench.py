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
